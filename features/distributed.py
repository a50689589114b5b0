"""Extraction shared by torchrun processes: torch.distributed (NCCL on GPUs, gloo on CPU), rank 0 in charge.

    torchrun --nproc_per_node=4 -m pipeline extract --data DATA --workdir W --backbone all

Rank 0 scans the data, plans the batches still missing and broadcasts the plan; batch k goes to
rank k % world_size, and each rank stages its own batches under <workdir>/.staging/ (its shard).
When every rank is done, rank 0 merges the staged batches into features.h5, exactly as a single
process does. A plain `cnnfeat extract` is the same code with one rank.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# Ranks wait for each other while rank 0 plans and merges: allow for a large cache.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, make: Callable[[], T]) -> T:
        """make() on rank 0, its result (or its exception, re-raised) on every rank."""
        if self.world_size == 1:
            return make()
        box: list[Any] = [None]
        if self.main:
            try:
                box[0] = (make(), None)
            except Exception as err:  # noqa: BLE001 - handed to every rank, then raised there
                box[0] = (None, err)
        dist.broadcast_object_list(box, src=0)
        result, error = box[0]
        if error is not None:
            raise error
        return result

    def gather(self, value: T) -> list[T]:
        """Every rank's value, in rank order, on every rank."""
        if self.world_size == 1:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def mine(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's share: every world_size-th item, so a split's batches spread evenly."""
        return items[self.rank :: self.world_size]

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process on a machine: the local rank's."""
        # CUDA: torchrun starts one process per GPU and numbers them by LOCAL_RANK (torchrun's docs)
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.world_size > 1 else device


@contextmanager
def torchrun_ranks(device: torch.device) -> Iterator[Ranks]:
    """The ranks torchrun started (WORLD_SIZE, RANK, LOCAL_RANK), or one rank outside torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield Ranks()
        return
    ranks = Ranks(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    owned = not dist.is_initialized()
    if device.type == "cuda":
        torch.cuda.set_device(ranks.local_rank)  # before NCCL starts, so each rank talks from its own GPU
    if owned:
        # NCCL for CUDA tensors, gloo for CPU ones (torch.distributed's backend table); the object
        # collectives used here work on both
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield ranks
    finally:
        if owned:
            dist.destroy_process_group()
