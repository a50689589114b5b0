"""Where the work runs: the device asked for, and how many loader processes suit it. Imports torch, not torchvision."""

from __future__ import annotations

import os

import torch

from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA GPU; use --device auto or cpu")
    return torch.device(name)


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(device: torch.device, reads_bytes_only: bool = False) -> int:
    """Loader processes: decoding for a GPU needs every core; on a CPU the models need the cores more;
    workers that only read JPEG bytes for the device to decode need few.

    Under torchrun the processes of one machine share its cores (LOCAL_WORLD_SIZE of them).
    """
    cores = max(1, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if reads_bytes_only:
        return min(4, cores)
    return min(16, cores) if device.type == "cuda" else max(1, cores // 2)
