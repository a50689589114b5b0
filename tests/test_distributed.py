"""Sharding across torchrun processes: one rank's view, and two real gloo ranks against one process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from features import FeatureCache
from features.distributed import Ranks, torchrun_ranks
from pipeline.finetune.data import ImageRows, collate
from pipeline.finetune.train import evaluate, merge_shards

from .conftest import IMAGE_SIZE, snapshot


def test_batches_go_round_robin_so_ranks_share_every_split():
    batches = list(range(7))
    shares = [Ranks(rank, 3).mine(batches) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(shares, [])) == batches


def test_evaluations_sharded_over_ranks_merge_to_the_single_process_one(digits_folder):
    """Each rank evaluates every world_size-th row; merged, the shares are one process's evaluation, in row order,
    with the files that failed to decode on any rank."""
    paths = sorted(str(p.relative_to(digits_folder)) for p in (digits_folder / "valid").glob("*/*")) + ["valid/0/gone.png"]
    dataset = ImageRows(digits_folder, paths, np.arange(len(paths)) % 3, size=8)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))

    def evaluated(rows):
        loader = DataLoader(dataset, batch_size=2, sampler=rows, collate_fn=collate)
        return evaluate(model, lambda images: images.float() / 255, loader, torch.device("cpu"))

    proba, rows, failed = evaluated(range(len(paths)))
    shards = [evaluated(Ranks(rank, 3).mine(range(len(paths)))) for rank in range(3)]
    merged_proba, merged_rows, merged_failed = merge_shards(shards)
    assert merged_rows.tolist() == rows.tolist() == list(range(len(paths) - 1))
    assert merged_failed == failed == [len(paths) - 1]
    torch.testing.assert_close(merged_proba, proba)


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
    assert done.stdout.count("Extracted") == 1 and "42 images decoded by 2 ranks" in done.stdout  # rank 0 reports for both
    expected, got = snapshot(reference), snapshot(workdir)
    assert sorted(got) == sorted(key for key in expected if key[1] == "resnet34")
    for key, values in got.items():
        np.testing.assert_array_equal(values, expected[key], err_msg=str(key))
    with FeatureCache(reference / "features.h5") as one, FeatureCache(workdir / "features.h5") as two:
        for split in one.splits:
            assert one.paths(split) == two.paths(split)
            np.testing.assert_array_equal(one.labels(split), two.labels(split))
    assert not (workdir / ".staging").exists()
