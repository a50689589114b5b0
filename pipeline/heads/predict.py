"""A saved head applied to the cached features of a split: class probabilities for every file.

    probs = class_probabilities("runs/digits", "best", "test")     # pipeline.outputs.Probabilities
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from features import (DEFAULT_DEVICE, ORIGIN_SETTINGS, VALUE_SETTINGS, CacheError, FeatureCache, cache_path, check_fresh, dataset_name,
                      label_of, resolve_device)

from ..outputs import Probabilities
from .blend import blend_proba, view_proba
from .models import Blend, FeatureHead, Model, head_logits, load_model
from .status import heads_dir
from .table import FeatureTable

log = logging.getLogger(__name__)


# (head, view) -> (N, classes) float64 logits of the head on that view's features
LogitsFn = Callable[[FeatureHead, str], torch.Tensor]


def view_datasets(head: FeatureHead, view: str) -> dict[str, str]:
    """{backbone: the dataset holding its features in that view}: what a head reads."""
    return {b: dataset_name(b, view) for b in head.backbones}


def model_proba(model: Model, logits_of: LogitsFn) -> torch.Tensor:
    """(N, classes) float64: a classifier's views averaged at its temperature, or a blend of them. The one
    rule for applying a saved model, whatever its features come from (the cache, images, a traced graph)."""
    if isinstance(model, Blend):
        members = [model_proba(member, logits_of) for _, member in model.members]
        return blend_proba(members, [weight for weight, _ in model.members], model.temperature)
    return view_proba([logits_of(model.head, view) for view in model.views], model.temperature)


def cache_proba(model: Model, cache: FeatureCache, split: str, device: torch.device) -> torch.Tensor:
    """The model on a split's cached features."""
    return model_proba(model, lambda head, view: head_logits(head.to(device),
                                                             FeatureTable(cache, split, view_datasets(head, view)), device))


def features_logits(features: Mapping[str, torch.Tensor]) -> LogitsFn:
    """Logits of a head on features in memory, {dataset: (N, ...)}: for images, and for an exported model's graph."""
    return lambda head, view: head({b: features[d] for b, d in view_datasets(head, view).items()}).double()


def features_proba(model: Model, features: Mapping[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """The model on features in memory, computed from images."""
    for head in model_heads(model):
        head.to(device).eval()
    with torch.inference_mode():
        return model_proba(model, features_logits({d: x.to(device) for d, x in features.items()})).cpu()


def model_heads(model: Model) -> list[FeatureHead]:
    """Every head the model applies."""
    return [head for _, member in model.members for head in model_heads(member)] if isinstance(model, Blend) \
        else [model.head]


def model_datasets(model: Model) -> list[str]:
    """Every dataset the model reads, in the order it reads them."""
    if isinstance(model, Blend):
        return list(dict.fromkeys(d for _, member in model.members for d in model_datasets(member)))
    return list(dict.fromkeys(d for view in model.views for d in view_datasets(model.head, view).values()))


def check_feature_settings(model: str, trained_on: Mapping[str, Mapping], cache: FeatureCache, split: str) -> None:
    """Refuse a split's features made with other values (weights, size, pooling...) than the model was trained
    on; warn, naming the settings, where only their origin differs (decoder, device, convolution precision),
    since such features agree only to rounding."""
    for dataset, then in trained_on.items():
        now = cache.settings(split, dataset)
        changed = sorted(k for k in VALUE_SETTINGS if k in then and now.get(k) != then[k])
        if changed:
            raise CacheError(f"model {model!r} was trained on {dataset} features with other {', '.join(changed)} "
                             f"than {split!r} now has; retrain it with --force, or extract again with its settings")
        moved = [f"{k} {now.get(k)} (trained on {then[k]})" for k in ORIGIN_SETTINGS if k in then and now.get(k) != then[k]]
        if moved:
            log.warning("model %r is applied to %s/%s features made with another %s: they agree with the training "
                        "features only to rounding; for identical conditions, extract every split on one device and "
                        "decoder (or retrain with --force after extracting again)", model, split, dataset, ", ".join(moved))


def class_probabilities(workdir: Path, model: str, split: str, device: str = DEFAULT_DEVICE) -> Probabilities:
    """A saved model applied to every file of a split, after checking that the model and the cache agree."""
    loaded, meta, _ = load_model(heads_dir(workdir) / f"{model}.pt")
    with FeatureCache(cache_path(workdir)) as cache:
        if tuple(meta["classes"]) != cache.classes:
            raise CacheError(f"model {model!r} was trained on classes {meta['classes']}, but {cache.path} holds "
                             f"{list(cache.classes)}; retrain it: `cnnfeat run --force --workdir {workdir}`")
        check_fresh(cache, [split])
        check_feature_settings(model, meta["feature_settings"], cache, split)
        proba = cache_proba(loaded, cache, split, resolve_device(device)).numpy()
        paths, labels = cache.paths(split), cache.labels(split)
        skipped = [path for path, _ in cache.skipped(split)]
        classes = cache.classes
    return Probabilities.with_fallback(paths, labels, proba, classes, skipped,
                                       np.array([label_of(p, classes) for p in skipped], dtype=np.int64),
                                       meta["class_prior"])
