"""The images fine-tuning reads: the split rule's training and validation files, decoded as extraction does.

    data = load_data(cfg, size=224)      # data.train, data.choice, data.val: ImageRows (choice may be None)

The epoch is chosen on `choice`, a stratified holdout of the training rows; the validation rows only
report, so their numbers are not the ones that chose (scikit-learn's nested cross-validation, in one fold).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from features import (ImageSource, image_source, open_rgb, scan_data_folder, square_tensor, stratified_holdout,
                      validation_plan)

from .config import FinetuneConfig

log = logging.getLogger(__name__)


class ImageRows(Dataset):
    """Files of a split (or pictures in memory) as (uint8 image, label, row); an undecodable file gives an empty
    image, never an error."""

    def __init__(self, root: Path, paths: Sequence[ImageSource], labels: np.ndarray, size: int,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.root, self.paths, self.labels, self.size, self.transform = root, list(paths), labels, size, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int, int]:
        try:
            image = square_tensor(open_rgb(image_source(self.root, self.paths[row])), self.size)
        except Exception as err:  # noqa: BLE001 - any decoding failure: the file is skipped and named
            log.debug("cannot decode %s: %s", self.paths[row], err)
            return torch.zeros(0, dtype=torch.uint8), int(self.labels[row]), row
        return (self.transform(image) if self.transform else image), int(self.labels[row]), row


def collate(items: list[tuple[torch.Tensor, int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """(images, labels, rows) of the decoded items, and the rows that failed."""
    good = [item for item in items if item[0].numel()]
    failed = [row for image, _, row in items if not image.numel()]
    if not good:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), failed
    return (torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), torch.tensor([g[2] for g in good]),
            failed)


def augmentation(kind: str, size: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Training-split augmentation on uint8 tensors (torchvision.transforms.v2)."""
    if kind == "none":
        return None
    # scale from 0.25, not torchvision's ImageNet 0.08: small datasets and small images lose too much at 8 %
    steps: list[Any] = [v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    if kind == "trivial":
        steps.append(v2.TrivialAugmentWide())
    return v2.Compose(steps)


@dataclass
class FinetuneData:
    root: Path
    classes: tuple[str, ...]
    train: ImageRows  # the rows that train
    choice: ImageRows | None  # the training rows held out to choose the epoch; None when a class cannot spare one
    choice_description: str  # what the metrics say chose the epoch
    val: ImageRows  # the rows that report, never choose
    val_description: str
    key: str  # changes with the files of both parts


def load_data(cfg: FinetuneConfig, size: int) -> FinetuneData:
    """Validation: the validation split, else the files of train that the split rule holds out (the heads' rows).
    Training: the rest of train, less the stratified share (cfg.holdout, cfg.seed) that chooses the epoch."""
    folder = scan_data_folder(cfg.data)
    plan = validation_plan({name: split.labeled for name, split in folder.splits.items()}, cfg.train_split,
                           cfg.val_split, cfg.holdout, cfg.seed)
    split = folder.splits[cfg.train_split]
    paths, labels = np.array(split.paths, dtype=object), split.labels
    held = plan.held_out(labels)
    if plan.holdout is None:
        val = folder.splits[plan.val_split]
        val_paths, val_labels = np.array(val.paths, dtype=object), val.labels
        key = folder.fingerprint(cfg.train_split) + folder.fingerprint(plan.val_split)
    else:
        val_paths, val_labels = paths[held], labels[held]
        key = folder.fingerprint(cfg.train_split) + plan.description
    paths, labels = paths[~held], labels[~held]
    inner, chosen_on = _choice_holdout(labels, folder.classes, cfg)
    choice = ImageRows(folder.root, list(paths[inner]), labels[inner], size) if inner.any() else None
    return FinetuneData(folder.root, folder.classes,
                        ImageRows(folder.root, list(paths[~inner]), labels[~inner], size, augmentation(cfg.augment, size)),
                        choice, chosen_on, ImageRows(folder.root, list(val_paths), val_labels, size), plan.description,
                        key)


def _choice_holdout(labels: np.ndarray, classes: tuple[str, ...], cfg: FinetuneConfig) -> tuple[np.ndarray, str]:
    """Mask of the training rows held out to choose the epoch, and what the metrics call them. None at all when
    a class has a single training row: a holdout without that class could not judge it."""
    inner = stratified_holdout(labels, cfg.holdout, cfg.seed)
    alone = sorted(set(labels.tolist()) - set(labels[inner].tolist()))
    if alone:
        which = f"{'classes' if len(alone) > 1 else 'class'} {', '.join(classes[c] for c in alone)}"
        log.warning("%s: a single training row, so none can be held out to choose the epoch; every epoch trains and "
                    "the last is kept (no early stopping)", which)
        return np.zeros(len(labels), dtype=bool), f"nothing ({which}: a single training row), the last epoch kept"
    return inner, (f"a stratified {cfg.holdout:.0%} holdout of the training rows of {cfg.train_split} "
                   f"({int(inner.sum())} rows, seed {cfg.seed})")
