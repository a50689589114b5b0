"""Heads on cached features, and the saved models built from them.

A head takes {backbone: features} and standardises each input with statistics of its training
rows, kept in its buffers. Two kinds:

    LinearHead    one Linear on one or more backbones' standardised features side by side
                  (logistic regression: a linear probe; on several backbones, the concatenation head)
    EnsembleHead  the book's three-branch head: a Linear per backbone into a shared space, summed,
                  dropout, a Linear to the classes

A saved model is a head with the views it averages (plain, or plain and mirrored) and its
temperature, or a weighted blend of such models (`best`). Files load with weights_only=True.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from features import CnnfeatError, atomic_output, read_torch_file

from .config import HEAD_FORMAT


class HeadError(CnnfeatError, ValueError):
    """A saved head or model is missing, unreadable or does not fit the cache."""


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
            raise HeadError("a head needs at least one backbone's features")
        self.backbones = tuple(feature_dims)
        self.scalers = nn.ModuleDict({name: Standardize(dim) for name, dim in feature_dims.items()})

    def standardized(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self.scalers[name](inputs[name]) for name in self.backbones}

    def set_stats(self, stats: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for name, (mean, std) in stats.items():
            self.scalers[name].set_stats(mean, std)


class LinearHead(FeatureHead):
    """Logistic regression on the standardised features of one or more backbones, side by side."""

    def __init__(self, feature_dims: Mapping[str, int], n_classes: int) -> None:
        super().__init__(feature_dims)
        self.fc = nn.Linear(sum(feature_dims.values()), n_classes)

    def design(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(N, D) standardised features, the backbones' side by side: what fc sees."""
        return torch.cat(list(self.standardized(inputs).values()), dim=1)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.fc(self.design(inputs))


class EnsembleHead(FeatureHead):
    """One Linear per backbone into a shared hidden space, summed, dropout, a Linear to the classes."""

    def __init__(self, feature_dims: Mapping[str, int], n_classes: int, hidden: int = 512, dropout: float = 0.5) -> None:
        super().__init__(feature_dims)
        if len(feature_dims) < 2:
            raise HeadError(f"the ensemble needs two or more backbones, not {list(feature_dims)}")
        self.branches = nn.ModuleDict({name: nn.Linear(dim, hidden) for name, dim in feature_dims.items()})
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        hidden = sum(self.branches[name](x) for name, x in self.standardized(inputs).items())
        return self.fc(self.dropout(hidden))


HEADS: dict[str, type[FeatureHead]] = {"linear": LinearHead, "ensemble": EnsembleHead}


def build_head(kind: str, feature_dims: Mapping[str, int], n_classes: int, **params: float) -> FeatureHead:
    """A head by kind; params are the kind's own options (hidden, dropout)."""
    if kind not in HEADS:
        raise HeadError(f"unknown head kind {kind!r}; known: {', '.join(HEADS)}")
    return HEADS[kind](dict(feature_dims), n_classes, **params)


def head_logits(head: FeatureHead, table: Any, device: torch.device, batch_size: int = 4096) -> torch.Tensor:
    """(N, classes) float64 logits of a head on a data.FeatureTable, in its row order; eval mode, no gradients."""
    head.eval()
    chunks = []
    with torch.inference_mode():
        for inputs, _ in table.batches(batch_size):
            chunks.append(head({name: x.to(device, non_blocking=True) for name, x in inputs.items()}).double().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, head.fc.out_features, dtype=torch.float64)


@dataclass
class Classifier:
    """A trained head as predict uses it: the views whose probabilities it averages, and its temperature."""

    kind: str
    head: FeatureHead
    params: dict[str, Any] = field(default_factory=dict)
    views: tuple[str, ...] = ("",)  # "" the plain features, "hflip" the mirrored ones
    temperature: float = 1.0

    def checkpoint(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "params": dict(self.params), "views": list(self.views), "temperature": self.temperature,
            "feature_dims": {name: scaler.mean.numel() for name, scaler in self.head.scalers.items()},
            "n_classes": self.head.fc.out_features,
            "state_dict": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
        }

    @staticmethod
    def from_checkpoint(saved: Mapping[str, Any]) -> "Classifier":
        head = build_head(saved["kind"], saved["feature_dims"], saved["n_classes"], **saved["params"])
        head.load_state_dict(saved["state_dict"])
        return Classifier(saved["kind"], head.eval(), dict(saved["params"]), tuple(saved["views"]),
                          float(saved["temperature"]))


@dataclass
class Blend:
    """A weighted average of classifiers' calibrated probabilities, then a temperature of its own."""

    members: list[tuple[float, Classifier]]
    temperature: float = 1.0
    kind: str = "selection"

    def checkpoint(self) -> dict[str, Any]:
        return {"kind": self.kind, "temperature": self.temperature,
                "members": [{"weight": weight, "model": member.checkpoint()} for weight, member in self.members]}

    @staticmethod
    def from_checkpoint(saved: Mapping[str, Any]) -> "Blend":
        return Blend([(float(m["weight"]), Classifier.from_checkpoint(m["model"])) for m in saved["members"]],
                     float(saved["temperature"]))


Model = Classifier | Blend


def save_model(path: Path, model: Model, meta: Mapping[str, Any], extra: Mapping[str, torch.Tensor] | None = None) -> None:
    """heads/<name>.pt (plain tensors and containers) and heads/<name>.json, which `cnnfeat info`
    reads without torch; the JSON holds the .pt's SHA-256, so a damaged .pt is known without loading it.
    The hash is of the bytes written here, not read back after the rename: it never vouches for a file
    another writer put there meanwhile."""
    checkpoint = {"format": HEAD_FORMAT, **model.checkpoint(), "meta": dict(meta), **(extra or {})}
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    sidecar = {"format": HEAD_FORMAT, "sha256": hashlib.sha256(data).hexdigest(),
               **{k: meta[k] for k in ("name", "kind", "inputs_key", "key_inputs", "members", "val_split") if k in meta}}
    with atomic_output(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n")


def saved_model(path: Path) -> Path:
    """path, where a trained model is; a HeadError saying how to train one otherwise."""
    if not path.exists():
        workdir = f"--workdir {path.parent.parent}"  # heads/<name>.pt
        raise HeadError(f"no trained model at {path}; train it first with `cnnfeat train-head {workdir}`, "
                        f"`cnnfeat ensemble {workdir}` or `cnnfeat run {workdir}`")
    return path


def load_model(path: Path) -> tuple[Model, dict[str, Any], dict[str, Any]]:
    """(model, meta, the whole checkpoint); never unpickles code (weights_only=True)."""
    fix = "retrain it (`cnnfeat run`, or the stage that made it, with --force)"
    saved = read_torch_file(saved_model(path), f"a loadable cnnfeat model (format {HEAD_FORMAT})", HeadError, fix,
                            HEAD_FORMAT)
    try:
        model = Blend.from_checkpoint(saved) if saved["kind"] == "selection" else Classifier.from_checkpoint(saved)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # a file of the right format that does not fit
        raise HeadError(f"{path} is not a loadable cnnfeat model ({type(err).__name__}: {err}); {fix}") from err
    return model, saved["meta"], saved
