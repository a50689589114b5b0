"""A fine-tuned network applied to the images of a split, decoded as in training.

    found = network_predictions(checkpoint, "test", data=None)   # data: the folder it was trained on by default
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from features import (DEFAULT_DEVICE, DataLayoutError, build_model, default_workers, get_backbone, load_finetuned,
                      resolve_device, scan_data_folder)

from .data import ImageRows, collate
from .train import evaluate, normalizer

log = logging.getLogger(__name__)


@dataclass
class NetworkPredictions:
    """Probabilities of the files of a split that decoded; the others are named."""

    paths: list[str]  # the decoded files, in the split's order
    labels: np.ndarray
    proba: np.ndarray  # (len(paths), n_classes) float64
    failed: list[str]  # files that could not be decoded
    failed_labels: np.ndarray
    classes: tuple[str, ...]
    class_prior: list[float]  # the training split's class frequencies


def trained_data(checkpoint: Path) -> Path:
    """The data folder the network was fine-tuned on."""
    return Path(load_finetuned(checkpoint)["settings"]["data"])


def network_predictions(checkpoint: Path, split: str, data: Path, device: str = DEFAULT_DEVICE, tta: bool = False,
                        batch_size: int = 64, workers: int | None = None) -> NetworkPredictions:
    """With tta, each image's and its mirror's probabilities averaged."""
    saved = load_finetuned(checkpoint)
    folder = scan_data_folder(data)
    rows = folder.split(split)
    if rows.labeled and folder.classes != tuple(saved["classes"]):
        raise DataLayoutError(f"{folder.root} has classes {list(folder.classes)}, the model {saved['classes']}")
    target = resolve_device(device)
    network = build_model(get_backbone(saved["backbone"]), str(checkpoint)).to(target)
    prep = saved["preprocessing"]
    dataset = ImageRows(folder.root, rows.paths, rows.labels, int(prep["image_size"]))
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate,
                        num_workers=default_workers(target) if workers is None else workers)
    inputs = normalizer(tuple(prep["mean"]), tuple(prep["std"]), target, channels_last=False)
    proba, done, failed = evaluate(network, inputs, loader, target, tta)
    failed = sorted(failed)
    for row in failed:
        log.warning("%s cannot be decoded: it gets the class frequencies", rows.paths[row])
    done = done.numpy()
    return NetworkPredictions([rows.paths[r] for r in done], rows.labels[done], proba.numpy(),
                              [rows.paths[r] for r in failed], rows.labels[failed], tuple(saved["classes"]),
                              list(saved["class_prior"]))
