"""A fine-tuned network applied to the images of a split, decoded as in training.

    found = network_predictions(checkpoint, "test", data=None)   # data: the folder it was trained on by default
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from features import (DEFAULT_DEVICE, DataLayoutError, ImageSource, build_model, default_workers, get_backbone,
                      load_finetuned, resolve_device, scan_data_folder)

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


@dataclass
class Network:
    """A fine-tuned network built once, with the preprocessing it was trained with, ready to predict."""

    module: nn.Module
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    class_prior: list[float]  # the training split's class frequencies
    device: torch.device


def load_network(checkpoint: Path, device: str = DEFAULT_DEVICE) -> Network:
    saved = load_finetuned(checkpoint)
    target = resolve_device(device)
    prep = saved["preprocessing"]
    module = build_model(get_backbone(saved["backbone"]), str(checkpoint)).to(target).eval()
    return Network(module, int(prep["image_size"]), tuple(prep["mean"]), tuple(prep["std"]), tuple(saved["classes"]),
                   list(saved["class_prior"]), target)


def network_proba(network: Network, root: Path, items: Sequence[ImageSource], tta: bool = False, batch_size: int = 64,
                  workers: int | None = None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(probabilities of the decoded items, their positions, the positions that failed), decoded as in training."""
    dataset = ImageRows(root, items, np.full(len(items), -1), network.image_size)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate,
                        num_workers=default_workers(network.device) if workers is None else workers)
    inputs = normalizer(network.mean, network.std, network.device, channels_last=False)
    with torch.inference_mode():
        proba, done, failed = evaluate(network.module, inputs, loader, network.device, tta)
    return proba.numpy(), done.numpy(), sorted(failed)


def network_predictions(checkpoint: Path, split: str, data: Path, device: str = DEFAULT_DEVICE, tta: bool = False,
                        batch_size: int = 64, workers: int | None = None) -> NetworkPredictions:
    """With tta, each image's and its mirror's probabilities averaged."""
    network = load_network(checkpoint, device)
    folder = scan_data_folder(data)
    rows = folder.split(split)
    if rows.labeled and folder.classes != network.classes:
        raise DataLayoutError(f"{folder.root} has classes {list(folder.classes)}, the model {list(network.classes)}")
    proba, done, failed = network_proba(network, folder.root, rows.paths, tta, batch_size, workers)
    for row in failed:
        log.warning("%s cannot be decoded: it gets the class frequencies", rows.paths[row])
    return NetworkPredictions([rows.paths[r] for r in done], rows.labels[done], proba,
                              [rows.paths[r] for r in failed], rows.labels[failed], network.classes,
                              network.class_prior)
