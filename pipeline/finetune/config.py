"""Settings of `cnnfeat finetune`, each default given once, with its reason. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from features import (COUNT, DEFAULT_DEVICE, DEFAULT_SEED, DEFAULT_TRAIN_SPLIT, DEFAULT_VAL_SPLIT, DEFAULT_WORKDIR,
                      DEVICES, IMAGE_SIZE, NON_NEGATIVE, NON_NEGATIVE_COUNT, POSITIVE, PRECISIONS, SEED, SHARE, Bounds,
                      bounded, check_bounds, require_choices, require_two_splits)

FINETUNED_PREFIX = "finetuned-"  # `finetuned-<backbone>`: the fine-tuned network's own classifier as a model name
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine")
AUGMENTS = ("none", "crop", "trivial")  # crop: random resized crop + horizontal flip; trivial: crop + TrivialAugment
CLASSIFIER = "classifier"  # --train-layers' name for the model's own classifier block, whatever the model calls it
BELOW_ONE = Bounds(0, 1, high_open=True)  # a share that may be none, never all


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
    train_layers: str = CLASSIFIER  # blocks to unfreeze (comma list, `all`); the new classifier always trains
    epochs: int = bounded(5, COUNT)  # an upper bound when patience stops earlier
    batch_size: int = bounded(32, COUNT)  # fits a ResNet-34 at 299 px in 8 GB; --accumulate for bigger effective batches
    accumulate: int = bounded(1, COUNT)  # batches per optimizer step (gradient accumulation)
    optimizer: str = "adamw"  # adamw, or sgd with momentum 0.9 (torchvision's reference recipe)
    lr: float = bounded(1e-3, POSITIVE)  # the classifier's; AdamW's usual for a new head, too high for pretrained
    # blocks, hence lr_decay
    lr_decay: float = bounded(0.5, Bounds(0, 1, low_open=True))  # each block below the classifier gets this times
    # the lr of the block above it
    schedule: str = "onecycle"  # onecycle, or cosine: both warm up, then anneal to ~0
    warmup: float = bounded(0.1, BELOW_ONE)  # share of the optimizer steps spent warming up
    weight_decay: float = bounded(0.05, NON_NEGATIVE)  # AdamW's decoupled decay, as timm's fine-tuning recipes use
    label_smoothing: float = bounded(0.0, BELOW_ONE)  # 0.1 is torchvision's ImageNet recipe; 0 keeps log loss honest
    precision: str = "fp32"  # bf16/fp16 autocast; fp16 adds a GradScaler on CUDA
    channels_last: bool = False  # NHWC memory: faster convolutions with tensor cores on a GPU
    augment: str = "crop"  # on the training split only; validation gets the extraction's square resize
    patience: int = bounded(5, COUNT)  # epochs without a better loss on the training holdout before stopping; its best is kept
    bn_train: bool | None = None  # BatchNorm statistics in unfrozen blocks: None = update them only from
    # random weights (pretrained statistics are better than a small batch's); frozen blocks' never change
    train_split: str = DEFAULT_TRAIN_SPLIT
    val_split: str = DEFAULT_VAL_SPLIT
    holdout: float = bounded(0.1, SHARE)  # that share, as the heads use; the same share of the training rows chooses the epoch
    # (scikit-learn's nested validation: the validation rows only report, so their numbers are not optimistic)
    image_size: int | None = bounded(None, IMAGE_SIZE)  # default: the backbone's (299 for the book's three)
    device: str = DEFAULT_DEVICE
    workers: int | None = bounded(None, NON_NEGATIVE_COUNT)  # DataLoader processes; None: as extraction chooses
    seed: int = bounded(DEFAULT_SEED, SEED)
    force: bool = False  # start over instead of resuming or reusing a finished run

    def __post_init__(self) -> None:
        self.data, self.workdir = Path(self.data), Path(self.workdir)
        check_bounds(self)
        require_choices(self, optimizer=OPTIMIZERS, schedule=SCHEDULES, augment=AUGMENTS, precision=PRECISIONS,
                        device=DEVICES)
        require_two_splits(self.train_split, self.val_split)
