"""Cached features of one split as training batches: from memory when they fit, else block by block.

    with FeatureCache(cache_path(workdir)) as cache:
        table = FeatureTable(cache, "train", ["resnet34", "inception"])
        for inputs, labels in table.batches(64, generator):   # inputs: {backbone: (B, D) tensor}
            ...
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch

from features import CacheError, FeatureCache

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


def default_memory_budget() -> int:
    """A quarter of the machine's memory: features above it stream from the HDF5 file."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


class FeatureTable:
    """Rows of one split for some backbones, aligned by image path, with their labels.

    Every backbone's dataset in a split is stored against the split's one `paths` list, so rows
    join by path by construction; a dataset whose row count disagrees is refused, never trimmed.
    """

    def __init__(self, cache: FeatureCache, split: str, backbones: list[str],
                 memory_budget: int | None = None, rows_per_block: int = 4096) -> None:
        self.cache, self.split, self.backbones = cache, split, list(backbones)
        self.paths = cache.paths(split)
        self.labels = torch.from_numpy(cache.labels(split))
        self.shapes = {name: cache.feature_shape(split, name) for name in self.backbones}
        for name in self.backbones:
            rows = cache.row_count(split, name)
            if rows != len(self.paths):
                raise CacheError(
                    f"{cache.path}: {split}/{name} has {rows} rows but {split}/paths has {len(self.paths)}; "
                    f"the cache is inconsistent: run `cnnfeat extract --force --backbone {name}`"
                )
        row_bytes = sum(4 * int(np.prod(shape)) for shape in self.shapes.values())
        budget = default_memory_budget() if memory_budget is None else memory_budget
        self.rows_per_block = rows_per_block
        self.in_memory: dict[str, torch.Tensor] | None = None
        if row_bytes * len(self.paths) <= budget:
            self.in_memory = {name: torch.from_numpy(cache.features(split, name)) for name in self.backbones}

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def feature_dims(self) -> dict[str, int]:
        return {name: int(np.prod(shape)) for name, shape in self.shapes.items()}

    @property
    def labeled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def blocks(self, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """All rows at once from memory; else contiguous blocks from disk, in random order if a generator is given."""
        if self.in_memory is not None:
            yield self.in_memory, self.labels
            return
        starts = torch.arange(0, len(self), self.rows_per_block)
        if generator is not None:
            starts = starts[torch.randperm(len(starts), generator=generator)]
        for start in starts.tolist():
            stop = start + self.rows_per_block
            rows = slice(start, stop)
            yield {n: torch.from_numpy(self.cache.features(self.split, n, rows)) for n in self.backbones}, self.labels[rows]

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Minibatches; shuffled (within each block, when streaming) if a generator is given."""
        for inputs, labels in self.blocks(generator):
            order = torch.randperm(len(labels), generator=generator) if generator is not None else None
            for start in range(0, len(labels), batch_size):
                rows = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
                yield {name: values[rows] for name, values in inputs.items()}, labels[rows]

    def stats(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-feature mean and standard deviation: exact per block, blocks merged (Chan et al.) in float64."""
        merged: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}  # name -> (count, mean, sum of squared deviations)
        for inputs, _ in self.blocks():
            for name, values in inputs.items():
                count = len(values)
                var, mean = torch.var_mean(values.flatten(1), dim=0, correction=0)  # two-pass, in the block's dtype
                mean, m2 = mean.double(), var.double() * count
                if name in merged:
                    seen, seen_mean, seen_m2 = merged[name]
                    delta = mean - seen_mean
                    total = seen + count
                    mean = seen_mean + delta * count / total
                    m2 = seen_m2 + m2 + delta**2 * seen * count / total
                    count = total
                merged[name] = (count, mean, m2)
        return {name: (mean.float(), (m2 / max(count, 1)).sqrt().float()) for name, (count, mean, m2) in merged.items()}
