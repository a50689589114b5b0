"""Settings of `cnnfeat finetune`, each default given once, with its reason. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from features import (DEFAULT_DEVICE, DEFAULT_SEED, DEFAULT_WORKDIR, DEVICES, PRECISIONS, ConfigError, require_choices,
                      require_counts, require_two_splits)

FINETUNED_PREFIX = "finetuned-"  # `finetuned-<backbone>`: the fine-tuned network's own classifier as a model name
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine")
AUGMENTS = ("none", "crop", "trivial")  # crop: random resized crop + horizontal flip; trivial: crop + TrivialAugment


def model_name(backbone: str) -> str:
    return FINETUNED_PREFIX + backbone


def finetuned_dir(workdir: Path) -> Path:
    return Path(workdir) / "finetuned"


def checkpoint_file(workdir: Path, backbone: str) -> Path:
    """finetuned/<backbone>.pt, the network behind the model name `finetuned-<backbone>`."""
    return finetuned_dir(workdir) / f"{backbone}.pt"


@dataclass
class FinetuneConfig:
    data: Path = Path("data")
    workdir: Path = DEFAULT_WORKDIR
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
    patience: int = 5  # epochs without a better loss on the training holdout before stopping; its best is kept
    bn_train: bool | None = None  # BatchNorm statistics in unfrozen blocks: None = update them only from
    # random weights (pretrained statistics are better than a small batch's); frozen blocks' never change
    train_split: str = "train"
    val_split: str = "valid"  # when the data has no such split, a stratified share of train stands in
    holdout: float = 0.1  # that share, as the heads use; the same share of the training rows chooses the epoch
    # (scikit-learn's nested validation: the validation rows only report, so their numbers are not optimistic)
    image_size: int | None = None  # default: the backbone's (299 for the book's three)
    device: str = DEFAULT_DEVICE
    workers: int | None = None  # DataLoader processes; None: as extraction chooses
    seed: int = DEFAULT_SEED
    force: bool = False  # start over instead of resuming or reusing a finished run

    def __post_init__(self) -> None:
        self.data, self.workdir = Path(self.data), Path(self.workdir)
        require_counts(self, ("epochs", "batch_size", "accumulate", "patience"))
        require_choices(self, optimizer=OPTIMIZERS, schedule=SCHEDULES, augment=AUGMENTS, precision=PRECISIONS,
                        device=DEVICES)
        if self.lr <= 0 or not 0 < self.lr_decay <= 1 or not 0 <= self.warmup < 1:
            raise ConfigError(f"need lr > 0, 0 < lr_decay <= 1 and 0 <= warmup < 1, not {self.lr}, {self.lr_decay}, "
                              f"{self.warmup}")
        if not 0 <= self.label_smoothing < 1 or not 0 < self.holdout < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1) and holdout in (0, 1), not {self.label_smoothing}, "
                              f"{self.holdout}")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"image_size must be at least 16, not {self.image_size}")
        require_two_splits(self.train_split, self.val_split)
