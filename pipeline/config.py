"""Settings of the heads' stage, of finetune and of predict, each default given once, with its reason.

Imports no torch: the CLI builds its options from these defaults at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from features import DEVICES, HFLIP, PRECISIONS, ConfigError

# Bumped when what a saved model holds changes (3: L-BFGS probes with views, temperature and
# out-of-fold predictions), so models saved by an older cnnfeat are retrained once instead of read half-way.
HEAD_FORMAT = 3
BEST = "best"  # the model chosen on held-out evidence
ENSEMBLE = "ensemble"  # the book's three-branch head
CONCAT = "concat"  # one linear probe on every backbone's features side by side
FLIP_SUFFIX = "+" + HFLIP  # a model trained on both views and predicting on their mean
# `cnnfeat run` also extracts mirrored views: +hflip models then compete for `best` (mirroring
# helps photos and hurts digits and text, so validation decides); `--views none` turns it off
RUN_VIEWS = (HFLIP,)
# log grid of scikit-learn's C (inverse L2 strength, per training row): 1e-4 ... 1e2 in half decades
C_GRID = tuple(round(10 ** (e / 2), 6) for e in range(-8, 5))
FINETUNED_PREFIX = "finetuned-"  # `finetuned-<backbone>`: the fine-tuned network's own classifier as a model name
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine")
AUGMENTS = ("none", "crop", "trivial")  # crop: random resized crop + horizontal flip; trivial: crop + TrivialAugment


def _require_counts(cfg: object, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be at least 1, not {getattr(cfg, name)}")


def _require_two_splits(train_split: str, val_split: str) -> None:
    if train_split == val_split:
        raise ConfigError(f"train and validation splits must differ, both are {train_split!r}")


@dataclass
class HeadConfig:
    workdir: Path = Path("cnnfeat-out")
    train_split: str = "train"
    val_split: str = "valid"  # when the data has no such split, a stratified share of train stands in
    holdout: float = 0.1  # that share (DINOv2's linear probe holds out 10 %)
    # linear probes: full-batch L-BFGS logistic regression, swept over C_GRID
    c_grid: tuple[float, ...] = C_GRID
    max_iter: int = 500  # L-BFGS iterations per grid value; warm starts along the grid need far fewer
    concat: bool = True  # also a probe on all backbones' features concatenated (the 99.6 % pipeline's head)
    flip: bool = True  # also train on mirrored views (+hflip models) where extract stored them
    # the book's three-branch ensemble: Adam, early stopping
    epochs: int = 200  # an upper bound: early stopping on validation loss usually ends sooner
    lr: float = 1e-3  # Adam's default suits standardised inputs
    batch_size: int = 64  # the book's
    weight_decay: float = 0.0
    patience: int = 10  # epochs without a better validation loss before stopping
    dropout: float = 0.5  # the book's
    hidden: int = 512  # the book's shared space
    # held-out evidence for calibration and for choosing `best`
    folds: int = 5  # out-of-fold predictions on the training rows
    calibrate: bool = True  # a temperature per model, fitted on its out-of-fold predictions
    select: bool = True  # build `best`: greedy ensemble selection over every model
    refit: bool = False  # finally retrain each chosen configuration on train + validation rows
    seed: int = 0
    device: str = "auto"
    force: bool = False  # retrain even when the saved head is up to date

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.c_grid = tuple(sorted(float(c) for c in self.c_grid))
        _require_counts(self, ("epochs", "batch_size", "patience", "hidden", "max_iter", "folds"))
        if self.lr <= 0 or not self.c_grid or self.c_grid[0] <= 0:
            raise ConfigError(f"lr and every C must be positive, not lr={self.lr}, C={self.c_grid}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), not {self.dropout}")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"holdout must be in (0, 1), not {self.holdout}")
        _require_two_splits(self.train_split, self.val_split)


@dataclass
class FinetuneConfig:
    data: Path = Path("data")
    workdir: Path = Path("cnnfeat-out")
    backbone: str = "resnet34"
    weights: str = "imagenet"  # imagenet, random (training from scratch) or a torchvision weights name
    train_layers: str = "fc"  # blocks to unfreeze (comma list, `all`); the new classifier always trains
    epochs: int = 5  # an upper bound when patience stops earlier
    batch_size: int = 32  # fits a ResNet-34 at 299 px in 8 GB; --accumulate for bigger effective batches
    accumulate: int = 1  # batches per optimizer step (gradient accumulation)
    optimizer: str = "adamw"  # adamw, or sgd with momentum 0.9 (torchvision's reference recipe)
    lr: float = 1e-3  # the classifier's; AdamW's usual for a new head, too high for pretrained blocks, hence lr_decay
    lr_decay: float = 0.5  # each block below the classifier gets this times the lr of the block above it
    schedule: str = "onecycle"  # onecycle, or cosine: both warm up, then anneal to ~0
    warmup: float = 0.1  # share of the optimizer steps spent warming up
    weight_decay: float = 0.05  # AdamW's decoupled decay, as timm's fine-tuning recipes use
    label_smoothing: float = 0.0  # 0.1 is torchvision's ImageNet recipe; 0 keeps log loss honest for Kaggle
    precision: str = "fp32"  # bf16/fp16 autocast; fp16 adds a GradScaler on CUDA
    channels_last: bool = False  # NHWC memory: faster convolutions with tensor cores on a GPU
    augment: str = "crop"  # on the training split only; validation gets the extraction's square resize
    patience: int = 5  # epochs without a better validation loss before stopping; the best epoch is kept
    bn_train: bool | None = None  # BatchNorm statistics in unfrozen blocks: None = update them only from
    # random weights (pretrained statistics are better than a small batch's); frozen blocks' never change
    train_split: str = "train"
    val_split: str = "valid"  # when the data has no such split, a stratified share of train stands in
    holdout: float = 0.1  # that share, as the heads use
    image_size: int | None = None  # default: the backbone's (299 for the book's three)
    device: str = "auto"
    workers: int | None = None  # DataLoader processes; None: as extraction chooses
    seed: int = 0
    force: bool = False  # start over instead of resuming or reusing a finished run

    def __post_init__(self) -> None:
        self.data, self.workdir = Path(self.data), Path(self.workdir)
        _require_counts(self, ("epochs", "batch_size", "accumulate", "patience"))
        for name, value, allowed in (("optimizer", self.optimizer, OPTIMIZERS), ("schedule", self.schedule, SCHEDULES),
                                     ("augment", self.augment, AUGMENTS), ("precision", self.precision, PRECISIONS),
                                     ("device", self.device, DEVICES)):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        if self.lr <= 0 or not 0 < self.lr_decay <= 1 or not 0 <= self.warmup < 1:
            raise ConfigError(f"need lr > 0, 0 < lr_decay <= 1 and 0 <= warmup < 1, not {self.lr}, {self.lr_decay}, "
                              f"{self.warmup}")
        if not 0 <= self.label_smoothing < 1 or not 0 < self.holdout < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1) and holdout in (0, 1), not {self.label_smoothing}, "
                              f"{self.holdout}")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"image_size must be at least 16, not {self.image_size}")
        _require_two_splits(self.train_split, self.val_split)


@dataclass
class PredictConfig:
    workdir: Path = Path("cnnfeat-out")
    model: str = BEST  # best, ensemble, concat, a backbone name, or any of those + "+hflip"
    split: str = "test"
    output: Path | None = None  # default: <workdir>/submission.csv
    kaggle_binary: bool = False  # Dogs vs Cats Redux: id,label = probability of the second class
    clip: float | None = None  # keep probabilities in [clip, 1 - clip]: log loss punishes certainty hard
    tta: bool = False  # finetuned models: average the image's and its mirror's probabilities
    data: Path | None = None  # finetuned models decode images: default, the folder they were trained on
    device: str = "auto"
    force: bool = False  # rewrite even when the submission is up to date

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.data = Path(self.data) if self.data is not None else None
        self.output = Path(self.output) if self.output is not None else self.workdir / "submission.csv"
        if self.clip is not None and not 0 <= self.clip < 0.5:
            raise ConfigError(f"clip must be in [0, 0.5), not {self.clip}")
