"""The labeled rows of the cache every head learns from and is judged on: features' split rule, applied once.

    rows = resolve_rows(cache, cfg)     # rows.train, rows.val (row numbers), rows.folds, rows.description
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from features import FeatureCache, check_fresh, label_of, stratified_folds, validation_plan

from .config import HeadConfig


@dataclass
class Rows:
    train_split: str
    train: np.ndarray  # row numbers in train_split
    val_split: str
    val: np.ndarray  # row numbers in val_split
    description: str  # "valid", or how the validation rows were held out of train
    folds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # fold of each training row
    n_folds: int = 0

    def key(self) -> str:
        """Identifies the training rows and their folds, so out-of-fold predictions of two models align."""
        blob = json.dumps([self.train_split, self.train.tolist(), self.folds.tolist()])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve_rows(cache: FeatureCache, cfg: HeadConfig) -> Rows:
    """Train on train_split; judge on val_split, or on the files of train that the split rule holds out."""
    check_fresh(cache, [s for s in (cfg.train_split, cfg.val_split) if s in cache.splits])
    plan = validation_plan({s: cache.is_labeled(s) for s in cache.splits}, cfg.train_split, cfg.val_split,
                           cfg.holdout, cfg.seed)
    paths, labels = cache.paths(cfg.train_split), cache.labels(cfg.train_split)
    # the rule draws over every file of the split, the undecodable ones (not in the cache) too
    skipped = [path for path, _ in cache.skipped(cfg.train_split)]
    every = paths + skipped
    every_labels = np.concatenate([labels, np.array([label_of(p, cache.classes) for p in skipped], dtype=np.int64)])
    order = np.argsort(every, kind="stable")
    held = np.empty(len(every), dtype=bool)
    held[order] = plan.held_out(every_labels[order])
    held = held[: len(paths)]
    val = np.flatnonzero(held) if plan.holdout is not None else np.arange(len(cache.labels(plan.val_split)))
    rows = Rows(cfg.train_split, np.flatnonzero(~held), plan.val_split, val, plan.description)
    rows.folds, rows.n_folds = stratified_folds(labels[rows.train], cfg.folds, cfg.seed)
    return rows
