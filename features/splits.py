"""Which labeled rows train and which judge: the validation split, else a stratified holdout of train.

    plan = validation_plan({"train": True, "test": False}, "train", "valid", holdout=0.1, seed=0)
    plan.val_split                       # "train": there is no valid/, so rows of train are held out
    held = plan.held_out(labels)         # mask over every file of the train split, in path order
    folds, k = stratified_folds(labels[~held], 5, seed=0)

Decided here once for the heads, fine-tuning and `cnnfeat run`. The holdout is drawn over every
file of the split (decodable or not, in path order), so the heads, which read the cache, and
fine-tuning, which reads the images, hold out the same files under the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .config import DEFAULT_VAL_SPLIT
from .errors import DataLayoutError, did_you_mean


@dataclass(frozen=True)
class ValidationPlan:
    train_split: str
    val_split: str  # where the validation rows come from: the validation split, or train_split itself
    holdout: float | None  # the share of train held out; None when there is a validation split
    seed: int
    description: str  # what the metrics say the validation rows are

    def held_out(self, labels: np.ndarray) -> np.ndarray:
        """Mask of train_split's files (all of them, in path order) that are validation rows, not training rows."""
        if self.holdout is None:
            return np.zeros(len(labels), dtype=bool)
        held = stratified_holdout(labels, self.holdout, self.seed)
        if not held.any():
            raise DataLayoutError(f"there is no validation split and {self.train_split!r} is too small to hold rows "
                                  f"out of it; add a validation split (train/<class>/ and valid/<class>/)")
        return held


def validation_plan(labeled: Mapping[str, bool], train_split: str, val_split: str, holdout: float,
                    seed: int) -> ValidationPlan:
    """The plan for splits {name: labeled}: refuses an unlabeled or missing training split, an unlabeled
    validation split, whose labels could not judge anything, and a validation split named otherwise than the
    default that does not exist (a typo must not quietly become a holdout)."""
    if not labeled.get(train_split, False):
        what = "has no class folders" if train_split in labeled else f"does not exist{did_you_mean(train_split, labeled)}"
        raise DataLayoutError(f"there is no labeled {train_split}/ split to train on ({train_split!r} {what}; splits: "
                              f"{', '.join(labeled) or 'none'}); a labeled split has one folder of images per class, "
                              f"and `cnnfeat prepare` makes one from a Kaggle download")
    if val_split in labeled:
        if not labeled[val_split]:
            raise DataLayoutError(f"split {val_split!r} has no labels (no class folders); a validation split needs "
                                  f"them (or remove it, and {holdout:.0%} of {train_split!r} is held out instead)")
        return ValidationPlan(train_split, val_split, None, seed, val_split)
    if val_split != DEFAULT_VAL_SPLIT:
        raise DataLayoutError(f"--val-split {val_split!r} does not exist{did_you_mean(val_split, labeled)} (splits: "
                              f"{', '.join(labeled)}); name a labeled split, or leave --val-split out: then "
                              f"{DEFAULT_VAL_SPLIT}/ is used, or {holdout:.0%} of {train_split!r} held out when there "
                              f"is none")
    return ValidationPlan(train_split, train_split, holdout, seed,
                          f"{train_split} (a stratified {holdout:.0%} held out, seed {seed}; "
                          f"there is no {val_split!r} split)")


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A mask of rows to hold out: the same share of every class (at least one row of each class
    that has two or more), drawn with the seed."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        if len(rows) >= 2:
            held[rows[: min(max(1, round(len(rows) * fraction)), len(rows) - 1)]] = True
    return held


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, int]:
    """(fold number of each row, number of folds): each class dealt round-robin over the folds after a
    seeded shuffle. Fewer folds when a class has fewer rows than k; 0 folds when one has a single row."""
    counts = np.bincount(labels[labels >= 0]) if len(labels) else np.zeros(0, dtype=int)
    k = min(k, int(counts[counts > 0].min())) if (counts > 0).any() else 0
    folds = np.zeros(len(labels), dtype=np.int64)
    if k < 2:
        return folds, 0
    rng = np.random.default_rng(seed)
    for label in np.flatnonzero(counts):
        rows = np.flatnonzero(labels == label)
        folds[rng.permutation(rows)] = np.arange(len(rows)) % k
    return folds, k
