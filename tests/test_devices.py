from __future__ import annotations

import pytest
import torch

from features import ConfigError
from features import devices as devices_module


def test_default_workers_share_the_cores_among_torchrun_processes(monkeypatch):
    monkeypatch.setattr(devices_module.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    cuda = torch.device("cuda")
    assert devices_module.default_workers(cuda) == 16 and devices_module.default_workers(cuda, reads_bytes_only=True) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert devices_module.default_workers(cuda) == 2 and devices_module.default_workers(torch.device("cpu")) == 1


def test_cuda_asked_for_without_a_gpu_says_what_to_use(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices_module.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device auto or cpu"):
        devices_module.resolve_device("cuda")
