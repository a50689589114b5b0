"""Stages 2 and 3: models on cached features only (no backbone is loaded), chosen on folds of the training rows.

    from pipeline.heads import HeadConfig, train_linear_heads, train_concat, train_ensemble, select_best
    cfg = HeadConfig(workdir="runs/digits")
    train_linear_heads(cfg)       # a swept linear probe per backbone (and per mirrored view, +hflip)
    train_concat(cfg)             # one swept probe on every backbone's features side by side
    train_ensemble(cfg)           # the book's three-branch head (Adam, early stopping on a fold)
    select_best(cfg)              # `best`: greedy selection over the models' out-of-fold predictions

Every choice is made on the training rows' folds, as scikit-learn's LogisticRegressionCV makes it:
C from a grid (or the epochs), the temperature that calibrates a model, and `best`'s members, all
on out-of-fold predictions. The validation rows (or the holdout standing in for them) only report,
so their numbers are an honest estimate for unseen images. Writes, under the workdir:
heads/<name>.pt and .json, and the model's outputs (pipeline.outputs: metrics/<name>.json,
-history.csv, -valid.csv, -oof.csv).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features import (ALL_BACKBONES, BOOK, CacheError, ConfigError, FeatureCache, accuracy, cache_path, extract_hint,
                      class_prior, dataset_name, get_backbone, log_loss, plain_settings, resolve_device, split_names,
                      writes_workdir)

from ..outputs import Probabilities, read_metrics, write_model_outputs
from .blend import fit_temperature, view_proba
from .config import CONCAT, ENSEMBLE, FLIP_SUFFIX, HEAD_FORMAT, HFLIP, HeadConfig
from .learners import learner_for
from .models import Classifier, save_model
from .predict import check_feature_settings
from .rows import Rows, resolve_rows
from .status import feature_settings, heads_dir, inputs_key, key_inputs, read_sidecar
from .table import FeatureTable, concat_tables

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    name: str
    metrics: dict[str, Any]
    trained: bool  # False when the saved model was already up to date
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Candidate:
    name: str
    kind: str  # "linear" (a probe) or "ensemble" (the three-branch head)
    backbones: tuple[str, ...]
    views: tuple[str, ...] = ("",)


def train_one(cache: FeatureCache, cfg: HeadConfig, cand: Candidate, rows: Rows) -> TrainResult:
    """Fit (or reuse) one model and write its checkpoint, metrics, history and validation predictions."""
    inputs = key_inputs(cache, cfg, cand.kind, cand.backbones, cand.views)
    key = inputs_key(cache, inputs)
    if not cfg.force and (metrics := up_to_date(cfg.workdir, cand.name, key)) is not None:
        log.info("%s: up to date (%s)", cand.name, heads_dir(cfg.workdir) / f"{cand.name}.pt")
        return TrainResult(cand.name, metrics, trained=False)
    device = resolve_device(cfg.device)
    classes = cache.classes

    def tables(split: str, row_numbers: np.ndarray) -> list[FeatureTable]:
        return [FeatureTable(cache, split, {b: dataset_name(b, view) for b in cand.backbones}, row_numbers)
                for view in cand.views]

    train, val = tables(rows.train_split, rows.train), tables(rows.val_split, rows.val)
    # the validation rows report on features like the training rows': refused (or named) before any fitting
    check_feature_settings(cand.name, feature_settings(cache, rows.train_split, cand.backbones, cand.views), cache,
                           rows.val_split)
    learner = learner_for(inputs["solver"], cand.kind, cand.name, train, len(classes), cfg, device)
    head, history, oof = learner.fit(rows.folds, rows.n_folds)  # sees the training rows only
    if oof is None:
        log.info("%s: too few rows per class for folds; nothing chose its settings, and it is not calibrated", cand.name)
    y_train, y_val = train[0].labels, val[0].labels
    temperature = fit_temperature(oof, y_train) if cfg.calibrate and oof else 1.0
    val_logits = learner.logits(head, val)  # reported, never chosen on
    raw_val, val_proba = view_proba(val_logits), view_proba(val_logits, temperature)
    train_proba = view_proba(learner.logits(head, train), temperature)
    oof_proba = view_proba(oof, temperature) if oof else None
    metrics = {
        "model": cand.name, "kind": cand.kind, "backbones": list(cand.backbones), "views": list(cand.views),
        "val_split": rows.description, "n_train": len(y_train), "n_val": len(y_val),
        "val_accuracy": accuracy(val_proba, y_val), "val_log_loss": log_loss(val_proba, y_val),
        "val_log_loss_uncalibrated": log_loss(raw_val, y_val), "temperature": temperature,
        "train_accuracy": accuracy(train_proba, y_train), "train_log_loss": log_loss(train_proba, y_train),
        "chosen": learner.chosen, "chosen_on": learner.evidence, "folds": rows.n_folds,
        "oof_accuracy": accuracy(oof_proba, y_train) if oof_proba is not None else None,
        "oof_log_loss": log_loss(oof_proba, y_train) if oof_proba is not None else None,
        "refit": cfg.refit, "classes": list(classes),
    }
    if cfg.refit:
        head = learner.refit([concat_tables([t, v]) for t, v in zip(train, val)])
        metrics["n_refit"] = len(y_train) + len(y_val)
    model = Classifier(cand.kind, head.cpu(), learner.params, cand.views, temperature)
    meta = model_meta(cache, cfg, cand.name, cand.kind, cand.backbones, cand.views, inputs, key, rows, metrics)
    save_model(heads_dir(cfg.workdir) / f"{cand.name}.pt", model, meta,
               {"oof_proba": oof_proba, "val_proba": val_proba, "oof_key": rows.key()})
    out_of_fold = Probabilities(train[0].paths, y_train.numpy(), oof_proba.numpy(), classes) if oof else None
    write_model_outputs(cfg.workdir, cand.name, metrics, history,
                        Probabilities(val[0].paths, y_val.numpy(), val_proba.numpy(), classes), out_of_fold)
    return TrainResult(cand.name, metrics, trained=True, history=history)


def model_meta(cache: FeatureCache, cfg: HeadConfig, name: str, kind: str, backbones: tuple[str, ...], views: tuple[str, ...],
          inputs: dict, key: str, rows: Rows, metrics: dict, **extra: Any) -> dict:
    labels = cache.labels(rows.train_split)[rows.train]
    return {
        "name": name, "kind": kind, "backbones": list(backbones), "views": list(views), "classes": list(cache.classes),
        "class_prior": class_prior(labels, len(cache.classes)),
        "inputs_key": key, "key_inputs": inputs, "val_split": rows.description,
        "feature_settings": feature_settings(cache, rows.train_split, backbones, views),
        "config": plain_settings(cfg),
        "metrics": metrics, **extra,
    }


def up_to_date(workdir: Path, name: str, key: str) -> dict | None:
    """The saved metrics if heads/<name>.pt is intact and was trained on exactly these inputs."""
    sidecar = read_sidecar(workdir, name)
    if sidecar is None or sidecar.get("format") != HEAD_FORMAT or sidecar.get("inputs_key") != key:
        return None
    try:
        return read_metrics(workdir, name)
    except (OSError, ValueError):
        return None


def _book_order(names: list[str]) -> list[str]:
    return sorted(names, key=lambda b: (list(BOOK).index(b) if b in BOOK else len(BOOK), b))


def cached_backbones(cache: FeatureCache, rows: Rows) -> list[str]:
    """Backbones with features for both the training and the validation rows: the book's first, in its order."""
    return _book_order([b for b in cache.backbones(rows.train_split) if b in cache.backbones(rows.val_split)])


def _chosen(cache: FeatureCache, rows: Rows, backbones: list[str] | tuple[str, ...]) -> list[str]:
    """'all' means every backbone the cache has for both splits; named ones must all be there. A name the cache
    holds is taken as it is (no model library is asked), any other as the registry spells it (resnet -> resnet34)."""
    available = cached_backbones(cache, rows)
    wanted = split_names(backbones)
    if not wanted:
        raise ConfigError(f"no backbone given; name some of {', '.join(available) or 'the cached ones'}, or all")
    if any(name.lower() == "all" for name in wanted):
        if not available:
            raise CacheError(f"no backbone has features for both {rows.train_split!r} and {rows.val_split!r} in "
                             f"{cache.path}; run `{extract_hint(cache.path.parent, cache.data_root)}` first")
        return available
    names = _book_order(list(dict.fromkeys(n if n in available else get_backbone(n).name for n in wanted)))
    for name in names:
        for split in (rows.train_split, rows.val_split):
            cache.check_features(split, name)
    return names


def _has_view(cache: FeatureCache, rows: Rows, backbones: tuple[str, ...], view: str) -> bool:
    return all(dataset_name(b, view) in cache.datasets(s) for b in backbones for s in (rows.train_split, rows.val_split))


def _with_flip(cache: FeatureCache, cfg: HeadConfig, rows: Rows, cand: Candidate) -> list[Candidate]:
    """The candidate, and its mirrored-view twin where the cache has the mirrored features."""
    if not (cfg.flip and _has_view(cache, rows, cand.backbones, HFLIP)):
        return [cand]
    return [cand, Candidate(cand.name + FLIP_SUFFIX, cand.kind, cand.backbones, ("", HFLIP))]


def open_cache(cfg: HeadConfig) -> FeatureCache:
    return FeatureCache(cache_path(cfg.workdir))


@writes_workdir
def train_linear_heads(cfg: HeadConfig, backbones: list[str] | tuple[str, ...] = ALL_BACKBONES) -> list[TrainResult]:
    """A swept linear probe per backbone ('all': every backbone in the cache), and per mirrored view."""
    with open_cache(cfg) as cache:
        rows = resolve_rows(cache, cfg)
        candidates = [c for b in _chosen(cache, rows, backbones)
                      for c in _with_flip(cache, cfg, rows, Candidate(b, "linear", (b,)))]
        return [train_one(cache, cfg, cand, rows) for cand in candidates]


def _combined(cache: FeatureCache, rows: Rows, backbones: list[str] | tuple[str, ...], what: str) -> tuple[str, ...]:
    names = _chosen(cache, rows, backbones)
    if len(names) < 2:
        another = next(b for b in ("resnet18", "mobilenet_v3_small") if b not in names)  # a hint that adds one
        raise CacheError(f"the {what} needs two or more backbones, the cache has {names or 'none'} for "
                         f"{rows.train_split}/{rows.val_split}; extract another first: "
                         f"`{extract_hint(cache.path.parent, cache.data_root, another)}` "
                         f"(or any backbone of `cnnfeat backbones`)")
    return tuple(names)


def combined_name(kind: str, cache: FeatureCache, rows: Rows, names: tuple[str, ...]) -> str:
    """`concat` or `ensemble` of every backbone the cache has; of fewer, `<kind>@<a>,<b>`: a model of another set
    of backbones lives beside it instead of replacing it."""
    return kind if set(names) == set(cached_backbones(cache, rows)) else f"{kind}@{','.join(names)}"


@writes_workdir
def train_concat(cfg: HeadConfig, backbones: list[str] | tuple[str, ...] = ALL_BACKBONES) -> list[TrainResult]:
    """One swept probe on two or more backbones' standardised features side by side (and mirrored)."""
    with open_cache(cfg) as cache:
        rows = resolve_rows(cache, cfg)
        names = _combined(cache, rows, backbones, "concatenation head")
        return [train_one(cache, cfg, cand, rows)
                for cand in _with_flip(cache, cfg, rows,
                                       Candidate(combined_name(CONCAT, cache, rows, names), "linear", names))]


@writes_workdir
def train_ensemble(cfg: HeadConfig, backbones: list[str] | tuple[str, ...] = ALL_BACKBONES) -> TrainResult:
    """The book's three-branch head on two or more backbones ('all': every backbone in the cache)."""
    with open_cache(cfg) as cache:
        rows = resolve_rows(cache, cfg)
        names = _combined(cache, rows, backbones, "ensemble")
        return train_one(cache, cfg, Candidate(combined_name(ENSEMBLE, cache, rows, names), ENSEMBLE, names), rows)
