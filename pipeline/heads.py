"""Heads on cached features: a linear head per backbone, and the book's three-branch ensemble.

Both take {backbone: features} and standardise each input with statistics of the training split
that live in the module's buffers, so a saved state dict is all that prediction needs.

    head = build_head("ensemble", {"resnet34": 512, "inception": 2048, "densenet121": 1024}, n_classes=2)
    logits = head({"resnet34": r, "inception": i, "densenet121": d})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from features.store import atomic_output


class Standardize(nn.Module):
    """(x - mean) / std per feature; flattens a feature map first. Filled in by set_stats."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 0, std, torch.ones_like(std)))  # as scikit-learn: constant features stay 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - self.mean) / self.std  # (N, C[, H, W]) -> (N, D)


class FeatureHead(nn.Module):
    """What every head shares: one standardiser per input backbone, in a fixed order."""

    def __init__(self, feature_dims: Mapping[str, int]) -> None:
        super().__init__()
        if not feature_dims:
            raise ValueError("a head needs at least one backbone's features")
        self.backbones = tuple(feature_dims)
        self.scalers = nn.ModuleDict({name: Standardize(dim) for name, dim in feature_dims.items()})

    def standardized(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self.scalers[name](inputs[name]) for name in self.backbones}


class LinearHead(FeatureHead):
    """Dropout (the book used it for Inception) then one Linear: logistic regression on features."""

    def __init__(self, feature_dims: Mapping[str, int], n_classes: int, dropout: float = 0.0) -> None:
        super().__init__(feature_dims)
        if len(feature_dims) != 1:
            raise ValueError(f"a linear head takes one backbone, not {list(feature_dims)}; use the ensemble")
        (dim,) = feature_dims.values()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, n_classes)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        (x,) = self.standardized(inputs).values()
        return self.fc(self.dropout(x))


class EnsembleHead(FeatureHead):
    """One Linear per backbone into a shared hidden space, summed, dropout, a Linear to the classes."""

    def __init__(self, feature_dims: Mapping[str, int], n_classes: int, hidden: int = 512, dropout: float = 0.5) -> None:
        super().__init__(feature_dims)
        if len(feature_dims) < 2:
            raise ValueError(f"the ensemble needs two or more backbones, not {list(feature_dims)}")
        self.branches = nn.ModuleDict({name: nn.Linear(dim, hidden) for name, dim in feature_dims.items()})
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        hidden = sum(self.branches[name](x) for name, x in self.standardized(inputs).items())
        return self.fc(self.dropout(hidden))


HEADS: dict[str, type[FeatureHead]] = {"linear": LinearHead, "ensemble": EnsembleHead}


def build_head(kind: str, feature_dims: Mapping[str, int], n_classes: int, **params: float) -> FeatureHead:
    """A head by kind; params are the kind's own options (dropout, hidden)."""
    if kind not in HEADS:
        raise ValueError(f"unknown head kind {kind!r}; known: {', '.join(HEADS)}")
    return HEADS[kind](dict(feature_dims), n_classes, **params)


def predict_proba(head: FeatureHead, batches: Iterable[tuple[dict[str, torch.Tensor], Any]], device: torch.device) -> np.ndarray:
    """Class probabilities, (N, n_classes) float64, in batch order; eval mode, no gradients."""
    head.eval()
    chunks = []
    with torch.inference_mode():
        for inputs, _ in batches:
            logits = head({name: x.to(device, non_blocking=True) for name, x in inputs.items()})
            chunks.append(torch.softmax(logits.double(), dim=1).cpu())
    return torch.cat(chunks).numpy() if chunks else np.empty((0, head.fc.out_features))


def save_head(path: Path, head: FeatureHead, kind: str, params: Mapping[str, float], meta: Mapping[str, Any]) -> None:
    """Weights plus all that prediction needs, as plain tensors and containers (weights_only loadable)."""
    checkpoint = {
        "kind": kind,
        "params": dict(params),
        "feature_dims": {name: scaler.mean.numel() for name, scaler in head.scalers.items()},
        "n_classes": head.fc.out_features,
        "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "meta": dict(meta),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(checkpoint, tmp)


def load_head(path: Path) -> tuple[FeatureHead, dict[str, Any]]:
    """Rebuild a saved head; never unpickles code (weights_only=True)."""
    if not path.exists():
        raise FileNotFoundError(f"no trained head at {path}; train it first with `cnnfeat train-head` or `cnnfeat ensemble`")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        head = build_head(checkpoint["kind"], checkpoint["feature_dims"], checkpoint["n_classes"], **checkpoint["params"])
        head.load_state_dict(checkpoint["state_dict"])
    except Exception as err:  # noqa: BLE001 - any failure here means the file is not a usable head
        raise ValueError(f"{path} is not a loadable cnnfeat head ({type(err).__name__}: {err}); retrain it") from err
    return head.eval(), checkpoint["meta"]
