"""A trained model on new images, anywhere: the Python API that `predict --images` and `export` build on.

    from pipeline import load_predictor
    predictor = load_predictor("runs/digits", "best")        # the model and its backbones, built once
    out = predictor.predict(["new/7.jpg", "more/"])         # files, folders (recursively), list files
    out = predictor.predict([Image.open("a.jpg")])          # PIL images, or a uint8 (N, 3, H, W) tensor
    out.frame                                               # path, a probability column per class, label
    out.proba                                               # (N, classes) float64, the frame's rows

A head's images are made into exactly the features it was trained on: the datasets it reads, with
the settings the cache recorded for them (backbone, weights, pooling, size, precision, view,
decoder), by features.ImageFeaturizer; nothing is read from or written to features.h5. A fine-tuned
network reads images as it did in training. An image that cannot be decoded gets the training
split's class frequencies, as in a submission, and is named.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np
import torch

from features import (DEFAULT_DEVICE, ConfigError, ImageFeaturizer, ImageSource, ProgressFn, find_images,
                      resolve_device)

from . import finetuned
from .heads import HeadError, load_model
from .heads.config import BEST
from .heads.models import Model
from .heads.predict import features_proba, model_datasets
from .heads.status import heads_dir
from .outputs import Probabilities, prediction_frame

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from .finetune import Network

log = logging.getLogger(__name__)

# what predict takes: paths (files, folders, list files), PIL images, uint8 (3, H, W) tensors, or a (N, 3, H, W) batch
Images = Union[str, Path, "Image.Image", torch.Tensor, Sequence[Union[str, Path, "Image.Image", torch.Tensor]]]


@dataclass
class Predictions:
    """A model's predictions on images, one row per image in the order given (folders expanded in place)."""

    frame: "pd.DataFrame"  # path, a probability column per class, label (the most probable class)
    proba: np.ndarray  # (N, classes) float64, rows sum to 1: the frame's probability columns
    classes: tuple[str, ...]
    fallback: list[str] = field(default_factory=list)  # images that could not be decoded: their rows are the prior


@dataclass
class Predictor:
    """A saved model, ready for images: a head with the backbones that make its features, or a fine-tuned network.
    Build it with load_predictor."""

    name: str
    classes: tuple[str, ...]
    class_prior: list[float]  # the training split's class frequencies: the row of an image that cannot be decoded
    device: torch.device
    model: Model | None = None  # a head or blend (None for a fine-tuned network)
    featurizer: ImageFeaturizer | None = None
    network: "Network | None" = None
    tta: bool = False  # a fine-tuned network: each image's and its mirror's probabilities averaged

    def predict(self, images: Images, batch_size: int = 64, workers: int | None = None,
                progress: ProgressFn | None = None) -> Predictions:
        """Probabilities for every image; `workers` decoding processes (default: from the cores and the device)."""
        names, items = _items(images)
        if self.network is not None:
            from .finetune import network_proba

            proba, rows, failed = network_proba(self.network, Path(), items, self.tta, batch_size, workers)
        else:
            found = self.featurizer(items, batch_size, workers, progress)
            proba = features_proba(self.model, {k: torch.from_numpy(v) for k, v in found.features.items()},
                                   self.device).numpy()
            rows, failed = found.rows, list(found.failed)
        probs = Probabilities.with_fallback([names[r] for r in rows], np.full(len(rows), -1), proba, self.classes,
                                            [names[r] for r in failed], np.full(len(failed), -1), self.class_prior,
                                            given=names)
        return Predictions(prediction_frame(probs), probs.proba, self.classes, probs.fallback)


def load_predictor(workdir: str | Path, model: str = BEST, device: str = DEFAULT_DEVICE, tta: bool = False,
                   precision: str | None = None) -> Predictor:
    """The workdir's saved model `model` (best, ensemble, concat, a backbone's probe, any of those +hflip, or
    finetuned-<backbone>), with everything it needs to read images built once. `precision`: the backbones
    compute in it instead of the precision their features were extracted in (export uses fp32)."""
    workdir = Path(workdir)
    if finetuned.is_finetuned(model):
        network = finetuned.network(workdir, model, device)
        return Predictor(model, network.classes, network.class_prior, network.device, network=network, tta=tta)
    if tta:
        raise ConfigError("--tta applies to finetuned-<backbone> models; for the heads, predict with a +hflip model")
    loaded, meta, _ = load_model(heads_dir(workdir) / f"{model}.pt")
    return Predictor(model, tuple(meta["classes"]), list(meta["class_prior"]), resolve_device(device), model=loaded,
                     featurizer=ImageFeaturizer(recorded_features(workdir, model, loaded, meta), device,
                                                checkpoints=finetuned.checkpoints(workdir), precision=precision))


def recorded_features(workdir: Path, name: str, model: Model, meta: dict[str, Any]) -> dict[str, dict]:
    """{dataset: its recorded settings} for every dataset the model reads, from what the model kept."""
    recorded = meta.get("feature_settings", {})
    missing = [d for d in model_datasets(model) if d not in recorded]
    if missing:
        raise HeadError(f"model {name!r} does not record how its features {', '.join(missing)} were made; "
                        f"retrain it with this cnnfeat (`cnnfeat run --force --workdir {workdir}`)")
    return {d: recorded[d] for d in model_datasets(model)}


def _items(images: Images) -> tuple[list[str], list[ImageSource]]:
    """(a name per image, the image): paths expanded (folders, list files), a batch split into its images."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.dtype != torch.uint8 or images.shape[1] != 3:
            raise ConfigError(f"an image batch must be a uint8 (N, 3, H, W) RGB tensor, not {images.dtype} "
                              f"{tuple(images.shape)}")
        images = list(images.cpu())
    elif isinstance(images, (str, Path)) or not isinstance(images, Sequence):
        images = [images]
    names: list[str] = []
    items: list[ImageSource] = []
    for position, item in enumerate(images):
        if isinstance(item, (str, Path)):
            found = [path for path in find_images([item]) if path not in names]  # a file named twice: one row
            names += found
            items += found
        else:
            names.append(str(getattr(item, "filename", "") or f"<image {position}>"))
            items.append(item)
    if len(set(names)) != len(names):  # a file named twice, or a picture of a file also given by path
        names = [f"{name} <{i}>" if names.count(name) > 1 else name for i, name in enumerate(names)]
    return names, items
