"""Sharding across torchrun processes: one rank's view, and two real gloo ranks against one process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from features import FeatureCache
from features.distributed import Ranks, torchrun_ranks

from .conftest import IMAGE_SIZE, snapshot


def test_batches_go_round_robin_so_ranks_share_every_split():
    batches = list(range(7))
    shares = [Ranks(rank, 3).mine(batches) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(shares, [])) == batches


def test_outside_torchrun_there_is_one_rank(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with torchrun_ranks(torch.device("cpu")) as ranks:
        assert ranks == Ranks() and ranks.main and ranks.gather(5) == [5]
        assert ranks.share(lambda: "planned") == "planned"
        with pytest.raises(KeyError):
            ranks.share(lambda: {}["missing"])
        assert ranks.device(torch.device("cuda")) == torch.device("cuda")  # one process keeps the device asked for
    assert Ranks(1, 2, local_rank=1).device(torch.device("cuda")) == torch.device("cuda", 1)


def test_torchrun_with_two_ranks_writes_the_single_process_cache(reference, digits_folder, tmp_path):
    workdir = tmp_path / "work"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "pipeline", "extract", "--data", str(digits_folder), "--workdir", str(workdir),
               "--weights", "random", "--image-size", str(IMAGE_SIZE), "--batch-size", "4", "--workers", "0",
               "--device", "cpu", "--backbone", "resnet34"]
    # torchrun would give each rank one thread; CPU kernels split sums by thread count, so match this process's
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("Extracted") == 1 and "42 images by 2 ranks" in done.stdout  # rank 0 reports for both
    expected, got = snapshot(reference), snapshot(workdir)
    assert sorted(got) == sorted(key for key in expected if key[1] == "resnet34")
    for key, values in got.items():
        np.testing.assert_array_equal(values, expected[key], err_msg=str(key))
    with FeatureCache(reference / "features.h5") as one, FeatureCache(workdir / "features.h5") as two:
        for split in one.splits:
            assert one.paths(split) == two.paths(split)
            np.testing.assert_array_equal(one.labels(split), two.labels(split))
    assert not (workdir / ".staging").exists()
