"""Cached features of one split as tensors: in memory when they fit, else read chunk by chunk.

    with FeatureCache(cache_path(workdir)) as cache:
        table = FeatureTable(cache, "train", {"resnet34": "resnet34", "inception": "inception_hflip"})
        for inputs, labels in table.batches(64, generator):   # inputs: {backbone: (B, D) tensor}
            ...

A table maps each backbone to the dataset it reads (its plain or its mirrored view), and may
hold only some rows of the split (a fold, a held-out share), always in the split's row order.
"""

from __future__ import annotations

import copy
from typing import Iterator, Mapping

import numpy as np
import torch

from features import CacheError, ConfigError, FeatureCache, extract_hint

from .config import default_memory_budget

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


class FeatureTable:
    """Rows of one split for some backbones, aligned by image path, with their labels.

    Every dataset in a split is stored against the split's one `paths` list, so rows join by
    path by construction; a dataset whose row count disagrees is refused, never trimmed.
    Streaming reads chunks of `chunk_rows` in random order and shuffles `mix` of them together,
    so minibatches mix classes although the cache is sorted by path, i.e. by class.
    """

    def __init__(self, cache: FeatureCache, split: str, datasets: Mapping[str, str] | list[str],
                 rows: np.ndarray | None = None, memory_budget: int | None = None,
                 chunk_rows: int = 256, mix: int = 16) -> None:
        self.cache, self.split = cache, split
        self.datasets = dict(datasets) if isinstance(datasets, Mapping) else {name: name for name in datasets}
        all_paths = cache.paths(split)
        self.rows = np.arange(len(all_paths)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.paths = [all_paths[r] for r in self.rows]
        self.labels = torch.from_numpy(cache.labels(split)[self.rows])
        self.shapes = {name: cache.feature_shape(split, dataset) for name, dataset in self.datasets.items()}
        for dataset in self.datasets.values():
            count = cache.row_count(split, dataset)
            if count != len(all_paths):
                raise CacheError(
                    f"{cache.path}: {split}/{dataset} has {count} rows but {split}/paths has {len(all_paths)}; "
                    f"the cache is inconsistent: run `{extract_hint(cache.path.parent, cache.data_root, force=True)}`"
                )
        self.chunk_rows, self.mix = chunk_rows, mix
        row_bytes = sum(4 * int(np.prod(shape)) for shape in self.shapes.values())
        budget = default_memory_budget() if memory_budget is None else memory_budget
        self.in_memory: dict[str, torch.Tensor] | None = None
        if row_bytes * len(self.rows) <= budget:
            whole = rows is None
            self.in_memory = {name: torch.from_numpy(cache.features(split, dataset) if whole
                                                     else cache.features(split, dataset)[self.rows])
                              for name, dataset in self.datasets.items()}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def feature_dims(self) -> dict[str, int]:
        return {name: int(np.prod(shape)) for name, shape in self.shapes.items()}

    def _chunks(self, generator: torch.Generator | None) -> Iterator[Batch]:
        """Contiguous stretches of the split read from disk, each filtered to this table's rows."""
        starts = np.arange(0, int(self.rows[-1]) + 1 if len(self.rows) else 0, self.chunk_rows)
        if generator is not None:
            starts = starts[torch.randperm(len(starts), generator=generator).numpy()]
        for start in starts.tolist():
            lo, hi = np.searchsorted(self.rows, [start, start + self.chunk_rows])
            if lo == hi:
                continue
            wanted = self.rows[lo:hi]
            span = slice(int(wanted[0]), int(wanted[-1]) + 1)
            inputs = {name: torch.from_numpy(self.cache.features(self.split, dataset, span)[wanted - span.start])
                      for name, dataset in self.datasets.items()}
            yield inputs, self.labels[lo:hi]

    def blocks(self, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """All rows at once from memory; else groups of `mix` chunks, in random order given a generator."""
        if self.in_memory is not None:
            yield self.in_memory, self.labels
            return
        group: list[Batch] = []
        for chunk in self._chunks(generator):
            group.append(chunk)
            if len(group) == self.mix:
                yield _concat(group)
                group = []
        if group:
            yield _concat(group)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Minibatches; shuffled (across each block of mixed chunks, when streaming) if a generator is given."""
        for inputs, labels in self.blocks(generator):
            order = torch.randperm(len(labels), generator=generator) if generator is not None else None
            for start in range(0, len(labels), batch_size):
                rows = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
                yield {name: values[rows] for name, values in inputs.items()}, labels[rows]

    def moments(self) -> dict[str, tuple[int, torch.Tensor, torch.Tensor]]:
        """Per feature: (count, mean, sum of squared deviations), exact per block, blocks merged in float64."""
        merged: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}
        for inputs, _ in self.blocks():
            for name, values in inputs.items():
                var, mean = torch.var_mean(values.flatten(1), dim=0, correction=0)  # two-pass, in the block's dtype
                part = (len(values), mean.double(), var.double() * len(values))
                merged[name] = _merge(merged[name], part) if name in merged else part
        return merged

    def subset(self, positions: np.ndarray) -> "FeatureTable":
        """The rows at these positions of this table (a fold, say), sharing memory where it can."""
        table = copy.copy(self)
        table.rows, table.labels = self.rows[positions], self.labels[positions]
        table.paths = [self.paths[p] for p in positions]
        if self.in_memory is not None:
            index = torch.from_numpy(np.asarray(positions))
            table.in_memory = {name: values[index] for name, values in self.in_memory.items()}
        return table


def stats(tables: list[FeatureTable]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-feature mean and (population) standard deviation over every row of the tables (Chan et al.)."""
    merged: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}
    for table in tables:
        for name, part in table.moments().items():
            merged[name] = _merge(merged[name], part) if name in merged else part
    return {name: (mean.float(), (m2 / max(count, 1)).sqrt().float()) for name, (count, mean, m2) in merged.items()}


def _merge(a: tuple[int, torch.Tensor, torch.Tensor], b: tuple[int, torch.Tensor, torch.Tensor]) -> tuple[int, torch.Tensor, torch.Tensor]:
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    total = n_a + n_b
    delta = mean_b - mean_a
    return total, mean_a + delta * n_b / total, m2_a + m2_b + delta**2 * n_a * n_b / total


def _concat(group: list[Batch]) -> Batch:
    names = group[0][0].keys()
    return {name: torch.cat([inputs[name] for inputs, _ in group]) for name in names}, torch.cat([y for _, y in group])


def concat_tables(parts: list[FeatureTable]) -> FeatureTable:
    """One in-memory table of the rows of several (train and validation rows, for a refit)."""
    if len(parts) == 1:
        return parts[0]
    if any(part.in_memory is None for part in parts):
        raise ConfigError("these features are too large to hold in memory together; --refit needs them in memory "
                          "(use --pool avg, or train without --refit)")
    table = copy.copy(parts[0])
    table.rows = np.concatenate([part.rows for part in parts])
    table.paths = [path for part in parts for path in part.paths]
    table.labels = torch.cat([part.labels for part in parts])
    table.in_memory = {name: torch.cat([part.in_memory[name] for part in parts]) for name in parts[0].datasets}
    return table
