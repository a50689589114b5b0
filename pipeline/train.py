"""Stages 2 and 3: heads fitted on cached features only (no backbone is loaded), best epoch kept.

    from pipeline.train import HeadConfig, train_linear_heads, train_ensemble
    results = train_linear_heads(HeadConfig(workdir="runs/digits"), ["resnet34"])
    result = train_ensemble(HeadConfig(workdir="runs/digits"))

Writes, under the workdir: heads/<name>.pt, metrics/<name>.json and metrics/<name>-history.csv,
where <name> is the backbone for a linear head, or "ensemble".
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import log_loss

from features import BACKBONES, CacheError, FeatureCache, cache_path, resolve_backbones
from features.backbones import split_names
from features.extract import resolve_device
from features.store import VALUE_SETTINGS, atomic_output

from .data import FeatureTable
from .heads import FeatureHead, build_head, load_head, predict_proba, save_head

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
# Bumped when what a head's files hold changes (2: metrics name their val_split, meta its kind and
# params), so heads saved by an older cnnfeat are retrained once instead of read half-way.
HEAD_FORMAT = 2


@dataclass
class HeadConfig:
    workdir: Path = Path("cnnfeat-out")
    train_split: str = "train"
    val_split: str = "valid"
    epochs: int = 200  # an upper bound: early stopping on validation loss usually ends sooner
    lr: float = 1e-3  # Adam's default suits standardised inputs
    batch_size: int = 64  # the book's
    weight_decay: float = 0.0
    patience: int = 10  # epochs without a better validation loss before stopping
    dropout: float | None = None  # None: 0 for a linear head, 0.5 for the ensemble (the book's)
    hidden: int = 512  # the ensemble's shared space (the book's)
    seed: int = 0
    device: str = "auto"
    force: bool = False  # retrain even when the saved head is up to date

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        for name in ("epochs", "batch_size", "patience", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, not {self.lr}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.train_split == self.val_split:
            raise ValueError(f"train and validation splits must differ, both are {self.train_split!r}")


@dataclass
class TrainResult:
    name: str
    metrics: dict[str, Any]
    trained: bool  # False when the saved head was already up to date
    history: list[dict[str, float]] = field(default_factory=list)


def heads_dir(workdir: Path) -> Path:
    return Path(workdir) / "heads"


def metrics_dir(workdir: Path) -> Path:
    return Path(workdir) / "metrics"


def evaluate(head: FeatureHead, table: FeatureTable, device: torch.device, batch_size: int = 4096) -> tuple[float, float]:
    """(log loss, accuracy) of a head on a labeled table."""
    proba = predict_proba(head, table.batches(batch_size), device)
    labels = table.labels.numpy()
    return float(log_loss(labels, proba, labels=range(proba.shape[1]))), float((proba.argmax(1) == labels).mean())


def fit(head: FeatureHead, train: FeatureTable, val: FeatureTable, cfg: HeadConfig, device: torch.device) -> tuple[list[dict], int]:
    """Adam with early stopping on validation loss; the head ends with its best epoch's weights.

    An epoch's training loss and accuracy are the running ones over its minibatches (dropout on),
    as Keras reports them; the validation ones are exact, in eval mode.
    """
    for name, (mean, std) in train.stats().items():
        head.scalers[name].set_stats(mean, std)
    head.to(device)
    # fused: one kernel per step instead of a dozen small ones; most of a linear head's step time
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    best_loss, best_state, best_epoch = math.inf, copy.deepcopy(head.state_dict()), 0
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        loss_sum = correct = torch.zeros((), device=device)  # summed on the device: no sync per step
        for inputs, labels in train.batches(cfg.batch_size, generator):
            labels = labels.to(device, non_blocking=True)
            logits = head({name: x.to(device, non_blocking=True) for name, x in inputs.items()})
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum = loss_sum + loss.detach() * len(labels)
            correct = correct + (logits.argmax(1) == labels).sum()
        val_loss, val_acc = evaluate(head, val, device)
        history.append(dict(epoch=epoch, train_loss=loss_sum.item() / len(train), train_accuracy=correct.item() / len(train),
                            val_loss=val_loss, val_accuracy=val_acc))
        if val_loss < best_loss:
            best_loss, best_state, best_epoch = val_loss, copy.deepcopy(head.state_dict()), epoch
        elif epoch - best_epoch >= cfg.patience:
            break
    head.load_state_dict(best_state)
    return history, best_epoch


def _tables(cache: FeatureCache, cfg: HeadConfig, backbones: list[str]) -> tuple[FeatureTable, FeatureTable]:
    for split in (cfg.train_split, cfg.val_split):
        if not cache.is_labeled(split):
            raise CacheError(
                f"split {split!r} has no labels (its images are not in class folders); "
                f"train on labeled splits with --train-split/--val-split"
            )
    return FeatureTable(cache, cfg.train_split, backbones), FeatureTable(cache, cfg.val_split, backbones)


def _inputs_key(cache: FeatureCache, cfg: HeadConfig, kind: str, backbones: list[str], params: dict) -> str:
    """Changes whenever the features, the splits' files or a training setting that matters change."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("workdir", "device", "force")}
    blob = {
        "head_format": HEAD_FORMAT, "kind": kind, "params": params, "settings": settings, "classes": cache.classes,
        "splits": {s: cache.fingerprint(s) for s in (cfg.train_split, cfg.val_split)},
        "features": {b: {k: cache.settings(cfg.train_split, b)[k] for k in VALUE_SETTINGS} for b in backbones},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _up_to_date(path: Path, key: str) -> dict | None:
    """The saved metrics if the head at path was trained on exactly these inputs."""
    try:
        _, meta = load_head(path)
    except (FileNotFoundError, ValueError):
        return None
    return meta.get("metrics") if meta.get("inputs_key") == key else None


def train_one(cache: FeatureCache, cfg: HeadConfig, name: str, kind: str, backbones: list[str]) -> TrainResult:
    """Fit (or reuse) one head and write its checkpoint, metrics and history."""
    params = {"dropout": cfg.dropout if cfg.dropout is not None else (0.5 if kind == ENSEMBLE else 0.0)}
    if kind == ENSEMBLE:
        params["hidden"] = cfg.hidden
    key = _inputs_key(cache, cfg, kind, backbones, params)
    path = heads_dir(cfg.workdir) / f"{name}.pt"
    if not cfg.force and (metrics := _up_to_date(path, key)) is not None:
        log.info("%s: up to date (%s)", name, path)
        return TrainResult(name, metrics, trained=False)
    train, val = _tables(cache, cfg, backbones)
    torch.manual_seed(cfg.seed)
    head = build_head(kind, train.feature_dims, len(cache.classes), **params)
    device = resolve_device(cfg.device)
    history, best_epoch = fit(head, train, val, cfg, device)
    best = history[best_epoch - 1]
    train_loss, train_acc = evaluate(head, train, device)  # exact, in eval mode, for the kept epoch
    metrics = {
        "model": name, "val_accuracy": best["val_accuracy"], "val_log_loss": best["val_loss"],
        "train_accuracy": train_acc, "train_log_loss": train_loss,
        "best_epoch": best_epoch, "epochs": len(history), "n_train": len(train), "n_val": len(val),
        "val_split": cfg.val_split,
        "classes": list(cache.classes), "backbones": backbones,
    }
    meta = {
        "name": name, "head_format": HEAD_FORMAT, "kind": kind, "params": params, "backbones": backbones, "classes": list(cache.classes), "inputs_key": key,
        "feature_settings": {b: {k: cache.settings(cfg.train_split, b)[k] for k in VALUE_SETTINGS} for b in backbones},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}, "metrics": metrics,
    }
    save_head(path, head.cpu(), kind, params, meta)
    _write_metrics(cfg.workdir, name, metrics, history)
    return TrainResult(name, metrics, trained=True, history=history)


def _write_metrics(workdir: Path, name: str, metrics: dict, history: list[dict]) -> None:
    folder = metrics_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(folder / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    with atomic_output(folder / f"{name}-history.csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def _open(cfg: HeadConfig) -> FeatureCache:
    return FeatureCache(cache_path(cfg.workdir))


def cached_backbones(cache: FeatureCache, cfg: HeadConfig) -> list[str]:
    """Backbones with features for both the training and the validation split."""
    return [b for b in cache.backbones(cfg.train_split) if b in cache.backbones(cfg.val_split)]


def train_linear_heads(cfg: HeadConfig, backbones: list[str] | tuple[str, ...] = ("all",)) -> list[TrainResult]:
    """A linear head per backbone ('all': every backbone in the cache)."""
    with _open(cfg) as cache:
        names = _chosen(cache, cfg, backbones)
        return [train_one(cache, cfg, name, "linear", [name]) for name in names]


def train_ensemble(cfg: HeadConfig, backbones: list[str] | tuple[str, ...] = ("all",)) -> TrainResult:
    """The three-branch head on two or more backbones ('all': every backbone in the cache)."""
    with _open(cfg) as cache:
        names = _chosen(cache, cfg, backbones)
        if len(names) < 2:
            raise CacheError(
                f"the ensemble needs two or more backbones, the cache has {names or 'none'} for "
                f"{cfg.train_split}/{cfg.val_split}; run `cnnfeat extract --backbone all` first"
            )
        result = train_one(cache, cfg, ENSEMBLE, ENSEMBLE, names)
    singles = {}
    for name in names:
        single = metrics_dir(cfg.workdir) / f"{name}.json"
        if single.exists():
            values = json.loads(single.read_text())
            singles[name] = {"val_accuracy": values["val_accuracy"], "val_log_loss": values["val_log_loss"]}
    if singles:
        result.metrics["single_heads"] = singles
        with atomic_output(metrics_dir(cfg.workdir) / f"{ENSEMBLE}.json") as tmp:
            tmp.write_text(json.dumps(result.metrics, indent=2) + "\n")
    return result


def _chosen(cache: FeatureCache, cfg: HeadConfig, backbones: list[str] | tuple[str, ...]) -> list[str]:
    """'all' means every backbone the cache has for both splits; named ones must all be there."""
    if any(name.lower() == "all" for name in split_names(backbones)):
        available = cached_backbones(cache, cfg)
        if not available:
            raise CacheError(
                f"no backbone has features for both {cfg.train_split!r} and {cfg.val_split!r} in {cache.path}; "
                f"run `cnnfeat extract` first"
            )
        return available
    names = [spec.name for spec in resolve_backbones(backbones)]
    for name in names:
        for split in (cfg.train_split, cfg.val_split):
            cache.check_features(split, name)
    return names


def stale_heads(cache: FeatureCache, workdir: Path, changing: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """(head, why) for the heads `cnnfeat run` would train again, `changing` being the (split, backbone)
    features it will extract first."""
    names = list(BACKBONES) + [ENSEMBLE]
    stale = []
    for name in names:
        path = heads_dir(workdir) / f"{name}.pt"
        if not path.exists():
            stale.append((name, "not trained yet"))
            continue
        _, meta = load_head(path)
        if meta.get("head_format") != HEAD_FORMAT:
            stale.append((name, "saved by an older cnnfeat"))
            continue
        cfg = HeadConfig(**meta["config"])
        splits = (cfg.train_split, cfg.val_split)
        if any((split, b) in changing or (split, "*") in changing for split in splits for b in meta["backbones"]):
            stale.append((name, "its features will be extracted again"))
        elif _inputs_key(cache, cfg, meta["kind"], meta["backbones"], meta["params"]) != meta["inputs_key"]:
            stale.append((name, "its features or the split files changed"))
    return stale


def load_metrics(workdir: Path) -> list[dict]:
    """Every saved model's metrics, for summaries."""
    folder = metrics_dir(workdir)
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
