"""Settings of the heads' stage and the names of the models it makes, each default given once, with its reason.

Imports no torch: the CLI builds its options from these defaults at start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from features import (COUNT, DEFAULT_DEVICE, DEFAULT_SEED, DEFAULT_TRAIN_SPLIT, DEFAULT_VAL_SPLIT, DEFAULT_WORKDIR,
                      DEVICES, HFLIP, NON_NEGATIVE, POSITIVE, SEED, SHARE, Bounds, ConfigError, bounded, check_bounds,
                      require_choices, require_two_splits)

# Bumped when what a saved model holds changes (3: L-BFGS probes with views, temperature and
# out-of-fold predictions; 4: every choice made on folds of the training rows, the solver in the key),
# so models saved by an older cnnfeat are retrained once instead of read half-way.
HEAD_FORMAT = 4
BEST = "best"  # the model chosen on held-out evidence
ENSEMBLE = "ensemble"  # the book's three-branch head
CONCAT = "concat"  # one linear probe on every backbone's features side by side
FLIP_SUFFIX = "+" + HFLIP  # a model trained on both views and predicting on their mean
# log grid of scikit-learn's C (inverse L2 strength, per training row): 1e-4 ... 1e2 in half decades
C_GRID = tuple(round(10 ** (e / 2), 6) for e in range(-8, 5))
# where no folds can be drawn (a class with a single training row) nothing may choose C: scikit-learn's default
UNTUNED_C = 1.0


def default_memory_budget() -> int:
    """A quarter of the machine's memory: features above it stream from the HDF5 file (and a probe on
    them is trained by minibatches)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


@dataclass
class HeadConfig:
    workdir: Path = DEFAULT_WORKDIR
    train_split: str = DEFAULT_TRAIN_SPLIT
    val_split: str = DEFAULT_VAL_SPLIT
    holdout: float = bounded(0.1, SHARE)  # that share (DINOv2's linear probe holds out 10 %)
    # linear probes: full-batch L-BFGS logistic regression, swept over C_GRID
    c_grid: tuple[float, ...] = bounded(C_GRID, POSITIVE)  # each value
    max_iter: int = bounded(500, COUNT)  # L-BFGS iterations per grid value; warm starts along the grid need far fewer
    concat: bool = True  # also a probe on all backbones' features concatenated (the 99.6 % pipeline's head)
    flip: bool = True  # also train on mirrored views (+hflip models) where extract stored them
    # the book's three-branch ensemble: Adam, early stopping
    epochs: int = bounded(200, COUNT)  # an upper bound: early stopping on a fold of the training rows usually ends sooner
    lr: float = bounded(1e-3, POSITIVE)  # Adam's default suits standardised inputs
    batch_size: int = bounded(64, COUNT)  # the book's
    weight_decay: float = bounded(0.0, NON_NEGATIVE)
    # epochs without a better loss on that fold before stopping: these heads overfit within a few epochs (the
    # benchmark's best epoch is the first), so most of the head's time was patience; fine-tuning waits 5 too
    patience: int = bounded(5, COUNT)
    dropout: float = bounded(0.5, Bounds(0, 1, high_open=True))  # the book's
    hidden: int = bounded(512, COUNT)  # the book's shared space
    # held-out evidence from the training rows: what chooses C, epochs, temperatures and `best`
    folds: int = bounded(5, COUNT)  # out-of-fold predictions on the training rows (the validation rows only report)
    calibrate: bool = True  # a temperature per model, fitted on its out-of-fold predictions
    select: bool = True  # build `best`: greedy ensemble selection over every model
    refit: bool = False  # finally retrain each chosen configuration on train + validation rows
    seed: int = bounded(DEFAULT_SEED, SEED)
    device: str = DEFAULT_DEVICE
    force: bool = False  # retrain even when the saved head is up to date

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        try:  # a grid from TOML or Python may spell its numbers as strings: one representation, one key
            self.c_grid = tuple(float(c) for c in self.c_grid)
        except (TypeError, ValueError):
            raise ConfigError(f"c_grid must be numbers above 0, not {self.c_grid!r}", setting="c_grid") from None
        check_bounds(self)
        self.c_grid = tuple(sorted(self.c_grid))
        if not self.c_grid:
            raise ConfigError("c_grid needs at least one value of C", setting="c_grid")
        require_choices(self, device=DEVICES)
        require_two_splits(self.train_split, self.val_split)
