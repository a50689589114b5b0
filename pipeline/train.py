"""Stages 2 and 3: models on cached features only (no backbone is loaded), chosen on held-out rows.

    from pipeline.train import HeadConfig, train_linear_heads, train_concat, train_ensemble, select_best
    cfg = HeadConfig(workdir="runs/digits")
    train_linear_heads(cfg)       # a swept linear probe per backbone (and per mirrored view, +hflip)
    train_concat(cfg)             # one swept probe on every backbone's features side by side
    train_ensemble(cfg)           # the book's three-branch head (Adam, early stopping)
    select_best(cfg)              # `best`: greedy selection over the models' out-of-fold predictions

Every model is tuned on the validation rows (C from a grid, or the epoch), then fitted again on
k-1 folds of the training rows to predict the k-th: those out-of-fold predictions calibrate it
(one temperature) and let `best` be chosen on rows no model saw, so its validation numbers are
honest. Writes, under the workdir: heads/<name>.pt and .json, metrics/<name>.json,
metrics/<name>-history.csv, metrics/<name>-valid.csv (validation probabilities), metrics/summary.csv.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from features import (BOOK, CacheError, ConfigError, FeatureCache, HeadError, atomic_output, cache_path, check_fresh,
                      dataset_name, resolve_backbones, resolve_device, split_names)

from .blend import (accuracy, blend_proba, fit_temperature, greedy_selection, log_loss, stratified_folds,
                    stratified_holdout, view_proba)
from .config import BEST, CONCAT, ENSEMBLE, FINETUNED_PREFIX, FLIP_SUFFIX, HEAD_FORMAT, HFLIP, HeadConfig
from .data import FeatureTable, concat_tables, stats
from .heads import Blend, Classifier, FeatureHead, build_head, head_logits, load_model, save_model
from .probe import fit_logistic, out_of_fold, probe_dtype, sweep
from .status import heads_dir, inputs_key, key_inputs, metrics_dir, read_sidecar, staleness, trained_models

log = logging.getLogger(__name__)

SUMMARY = "summary.csv"
SUMMARY_COLUMNS = ("model", "kind", "val_accuracy", "val_log_loss", "val_log_loss_uncalibrated", "temperature",
                   "chosen", "weight")


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


@dataclass
class Rows:
    """The labeled rows every model learns from and is judged on: decided once, here."""

    train_split: str
    train: np.ndarray  # row numbers in train_split
    val_split: str
    val: np.ndarray  # row numbers in val_split
    description: str  # "valid", or how the validation rows were held out of train
    folds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # fold of each training row
    n_folds: int = 0

    def key(self) -> str:
        """Identifies the training rows and their folds, so out-of-fold predictions of two models align."""
        blob = json.dumps([self.train_split, self.train.tolist(), self.folds.tolist()])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve_rows(cache: FeatureCache, cfg: HeadConfig) -> Rows:
    """Train on train_split; judge on val_split, or on a stratified share of train when there is none."""
    check_fresh(cache, [s for s in (cfg.train_split, cfg.val_split) if s in cache.splits])
    _require_labeled(cache, cfg.train_split)
    labels = cache.labels(cfg.train_split)
    if cfg.val_split in cache.splits:
        _require_labeled(cache, cfg.val_split)
        rows = Rows(cfg.train_split, np.arange(len(labels)), cfg.val_split,
                    np.arange(len(cache.labels(cfg.val_split))), cfg.val_split)
    else:
        held = stratified_holdout(labels, cfg.holdout, cfg.seed)
        if not held.any():
            raise CacheError(f"there is no {cfg.val_split!r} split and {cfg.train_split!r} is too small to hold "
                             f"rows out of it; add a validation split (train/<class>/ and valid/<class>/)")
        rows = Rows(cfg.train_split, np.flatnonzero(~held), cfg.train_split, np.flatnonzero(held),
                    f"{cfg.train_split} (a stratified {cfg.holdout:.0%} held out, seed {cfg.seed}; "
                    f"there is no {cfg.val_split!r} split)")
    rows.folds, rows.n_folds = stratified_folds(labels[rows.train], cfg.folds, cfg.seed)
    return rows


def _require_labeled(cache: FeatureCache, split: str) -> None:
    if not cache.is_labeled(split):
        raise CacheError(f"split {split!r} has no labels (its images are not in class folders); "
                         f"train on labeled splits with --train-split/--val-split")


class _Learner:
    """How one candidate is fitted: tuned on the validation rows, then refitted as asked with what was chosen."""

    def __init__(self, cand: Candidate, train: list[FeatureTable], val: list[FeatureTable], n_classes: int,
                 cfg: HeadConfig, device: torch.device) -> None:
        self.cand, self.train, self.val, self.n_classes, self.cfg, self.device = cand, train, val, n_classes, cfg, device
        self.params = {"hidden": cfg.hidden, "dropout": cfg.dropout} if cand.kind == ENSEMBLE else {}
        self.stats = stats(train[:1])  # the plain view's training rows standardise every view
        self.chosen: dict[str, float] = {}

    def new_head(self, head_stats: dict) -> FeatureHead:
        head = build_head(self.cand.kind, self.train[0].feature_dims, self.n_classes, **self.params)
        head.set_stats(head_stats)
        return head.to(self.device)

    def logits(self, head: FeatureHead, tables: list[FeatureTable]) -> list[torch.Tensor]:
        return [head_logits(head, table, self.device) for table in tables]


class _ProbeLearner(_Learner):
    """Full-batch L-BFGS on standardised features held in memory, C swept on the validation rows."""

    def _designs(self, head: FeatureHead, tables: list[FeatureTable], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Standardised features, in float64 unless too big (or in `dtype`, the training rows' choice)."""
        with torch.no_grad():  # not inference_mode: L-BFGS differentiates through these when they stay float32
            designs = [head.design({k: v.to(self.device) for k, v in t.in_memory.items()}) for t in tables]
        return [x.to(dtype or probe_dtype(designs)) for x in designs]

    def tune(self) -> tuple[FeatureHead, list[dict]]:
        head = self.new_head(self.stats)
        self.x_train = self._designs(head, self.train)
        x_val = self._designs(head, self.val, self.x_train[0].dtype)
        fit = sweep(self.x_train, self.train[0].labels, x_val, self.val[0].labels, self.n_classes,
                    self.cfg.c_grid, self.cfg.max_iter)
        self.fit, self.chosen = fit, {"C": fit.c}
        _set_linear(head, fit.weight, fit.bias)
        return head, fit.table

    def out_of_fold(self, folds: np.ndarray, n_folds: int) -> list[torch.Tensor]:
        return out_of_fold(self.x_train, self.train[0].labels, self.n_classes, self.fit.c,
                           torch.from_numpy(folds).to(self.device), n_folds, self.cfg.max_iter)

    def refit(self, parts: list[FeatureTable]) -> FeatureHead:
        head = self.new_head(stats(parts[:1]))
        weight, bias = fit_logistic(self._designs(head, parts), parts[0].labels, self.n_classes, self.fit.c,
                                    (self.fit.weight, self.fit.bias), self.cfg.max_iter)
        _set_linear(head, weight, bias)
        return head


def _set_linear(head: FeatureHead, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        head.fc.weight.copy_(weight)
        head.fc.bias.copy_(bias)


class _AdamLearner(_Learner):
    """Minibatch Adam, early-stopped on validation loss: the book's way, for the three-branch head
    (and for a probe whose features do not fit in memory); any table size, streamed if need be."""

    def tune(self) -> tuple[FeatureHead, list[dict]]:
        torch.manual_seed(self.cfg.seed)
        head = self.new_head(self.stats)
        history = self._epochs(head, self.train, self.cfg.epochs, self.val)
        best = min(range(len(history)), key=lambda i: history[i]["val_loss"])
        head.load_state_dict(self._best_state)
        self.chosen = {"epochs": best + 1}
        return head, history

    def _epochs(self, head: FeatureHead, tables: list[FeatureTable], epochs: int,
                val: list[FeatureTable] | None = None) -> list[dict]:
        """Adam for `epochs` epochs; with validation tables, stop after `patience` epochs without a better
        validation loss and keep the best epoch's weights in self._best_state."""
        # fused: one kernel per step instead of a dozen small ones; most of a small head's step time
        optimizer = torch.optim.Adam(head.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, fused=True)
        generator = torch.Generator().manual_seed(self.cfg.seed)
        history: list[dict] = []
        best_loss, best_epoch = math.inf, 0
        rows = sum(len(t) for t in tables)
        for epoch in range(1, epochs + 1):
            head.train()
            loss_sum = correct = torch.zeros((), device=self.device)  # summed on the device: no sync per step
            for table in tables:
                for inputs, labels in table.batches(self.cfg.batch_size, generator):
                    labels = labels.to(self.device, non_blocking=True)
                    logits = head({name: x.to(self.device, non_blocking=True) for name, x in inputs.items()})
                    loss = F.cross_entropy(logits, labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum = loss_sum + loss.detach() * len(labels)
                    correct = correct + (logits.argmax(1) == labels).sum()
            row = {"epoch": epoch, "train_loss": loss_sum.item() / rows, "train_accuracy": correct.item() / rows}
            if val is not None:
                proba = view_proba(self.logits(head, val))
                row.update(val_loss=log_loss(proba, val[0].labels), val_accuracy=accuracy(proba, val[0].labels))
                if row["val_loss"] < best_loss:
                    best_loss, best_epoch, self._best_state = row["val_loss"], epoch, copy.deepcopy(head.state_dict())
            history.append(row)
            if val is not None and epoch - best_epoch >= self.cfg.patience:
                break
        return history

    def _trained(self, tables: list[FeatureTable], head_stats: dict) -> FeatureHead:
        torch.manual_seed(self.cfg.seed)
        head = self.new_head(head_stats)
        self._epochs(head, tables, int(self.chosen["epochs"]))
        return head

    def out_of_fold(self, folds: np.ndarray, n_folds: int) -> list[torch.Tensor]:
        oof = [torch.empty(len(folds), self.n_classes, dtype=torch.float64) for _ in self.train]
        for fold in range(n_folds):
            held = np.flatnonzero(folds == fold)
            head = self._trained([t.subset(np.flatnonzero(folds != fold)) for t in self.train], self.stats)
            for view, logits in enumerate(self.logits(head, [t.subset(held) for t in self.train])):
                oof[view][held] = logits
        return oof

    def refit(self, parts: list[FeatureTable]) -> FeatureHead:
        return self._trained(parts, stats(parts[:1]))


def _learner(cand: Candidate, train: list[FeatureTable], val: list[FeatureTable], n_classes: int, cfg: HeadConfig,
             device: torch.device) -> _Learner:
    in_memory = all(t.in_memory is not None for t in (*train, *val))
    kind = _ProbeLearner if cand.kind == "linear" and in_memory else _AdamLearner
    return kind(cand, train, val, n_classes, cfg, device)


def train_one(cache: FeatureCache, cfg: HeadConfig, cand: Candidate, rows: Rows) -> TrainResult:
    """Fit (or reuse) one model and write its checkpoint, metrics, history and validation predictions."""
    inputs = key_inputs(cache, cfg, cand.kind, cand.backbones, cand.views)
    key = inputs_key(cache, inputs)
    if not cfg.force and (metrics := _up_to_date(cfg.workdir, cand.name, key)) is not None:
        log.info("%s: up to date (%s)", cand.name, heads_dir(cfg.workdir) / f"{cand.name}.pt")
        return TrainResult(cand.name, metrics, trained=False)
    device = resolve_device(cfg.device)
    classes = cache.classes

    def tables(split: str, row_numbers: np.ndarray) -> list[FeatureTable]:
        return [FeatureTable(cache, split, {b: dataset_name(b, view) for b in cand.backbones}, row_numbers)
                for view in cand.views]

    train, val = tables(rows.train_split, rows.train), tables(rows.val_split, rows.val)
    learner = _learner(cand, train, val, len(classes), cfg, device)
    head, history = learner.tune()
    y_train, y_val = train[0].labels, val[0].labels
    oof = _out_of_fold(learner, rows)
    temperature = fit_temperature(oof, y_train) if cfg.calibrate and oof else 1.0
    val_logits = learner.logits(head, val)
    raw_val, val_proba = view_proba(val_logits), view_proba(val_logits, temperature)
    train_proba = view_proba(learner.logits(head, train), temperature)
    oof_proba = view_proba(oof, temperature) if oof else None
    metrics = {
        "model": cand.name, "kind": cand.kind, "backbones": list(cand.backbones), "views": list(cand.views),
        "val_split": rows.description, "n_train": len(y_train), "n_val": len(y_val),
        "val_accuracy": accuracy(val_proba, y_val), "val_log_loss": log_loss(val_proba, y_val),
        "val_log_loss_uncalibrated": log_loss(raw_val, y_val), "temperature": temperature,
        "train_accuracy": accuracy(train_proba, y_train), "train_log_loss": log_loss(train_proba, y_train),
        "chosen": learner.chosen, "folds": rows.n_folds,
        "oof_log_loss": log_loss(oof_proba, y_train) if oof_proba is not None else None,
        "refit": cfg.refit, "classes": list(classes),
    }
    if cfg.refit:
        head = learner.refit([concat_tables([t, v]) for t, v in zip(train, val)])
        metrics["n_refit"] = len(y_train) + len(y_val)
    model = Classifier(cand.kind, head.cpu(), learner.params, cand.views, temperature)
    meta = _meta(cache, cfg, cand.name, cand.kind, cand.backbones, cand.views, inputs, key, rows, metrics)
    save_model(heads_dir(cfg.workdir) / f"{cand.name}.pt", model, meta,
               {"oof_proba": oof_proba, "val_proba": val_proba, "oof_key": rows.key()})
    write_outputs(cfg.workdir, cand.name, metrics, history, val[0].paths, y_val, val_proba, classes)
    return TrainResult(cand.name, metrics, trained=True, history=history)


def _out_of_fold(learner: _Learner, rows: Rows) -> list[torch.Tensor] | None:
    """Each training row's logits (per view) from a model fitted on the other folds; None without folds."""
    if not rows.n_folds:
        log.info("%s: too few rows per class for out-of-fold predictions; not calibrated", learner.cand.name)
        return None
    return learner.out_of_fold(rows.folds, rows.n_folds)


def _meta(cache: FeatureCache, cfg: HeadConfig, name: str, kind: str, backbones: tuple[str, ...], views: tuple[str, ...],
          inputs: dict, key: str, rows: Rows, metrics: dict, **extra: Any) -> dict:
    labels = cache.labels(rows.train_split)[rows.train]
    return {
        "name": name, "kind": kind, "backbones": list(backbones), "views": list(views), "classes": list(cache.classes),
        "class_prior": (np.bincount(labels, minlength=len(cache.classes)) / max(len(labels), 1)).tolist(),
        "inputs_key": key, "key_inputs": inputs, "val_split": rows.description,
        "feature_settings": {dataset_name(b, v): {k: cache.settings(rows.train_split, dataset_name(b, v)).get(k)
                                                  for k in ("backbone", "weights", "pool", "image_size", "precision",
                                                            "orientation", "view")}
                             for b in backbones for v in views},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "metrics": metrics, **extra,
    }


def _up_to_date(workdir: Path, name: str, key: str) -> dict | None:
    """The saved metrics if heads/<name>.pt is intact and was trained on exactly these inputs."""
    sidecar = read_sidecar(workdir, name)
    if sidecar is None or sidecar.get("format") != HEAD_FORMAT or sidecar.get("inputs_key") != key:
        return None
    try:
        return json.loads((metrics_dir(workdir) / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def write_outputs(workdir: Path, name: str, metrics: dict, history: list[dict], paths: list[str],
                  labels: torch.Tensor, proba: torch.Tensor, classes: tuple[str, ...]) -> None:
    """metrics/<name>.json, -history.csv and -valid.csv: what summary, report and status read of any model."""
    folder = metrics_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(folder / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    if history:  # `best` is a blend: nothing was trained step by step
        _write_csv(folder / f"{name}-history.csv", list(history[0]), [list(r.values()) for r in history])
    _write_csv(folder / f"{name}-valid.csv", ["path", "label", *classes],
               [[p, classes[int(y)], *row] for p, y, row in zip(paths, labels.tolist(), proba.tolist())])


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def cached_backbones(cache: FeatureCache, rows: Rows) -> list[str]:
    """Backbones with features for both the training and the validation rows: the book's first, in its order."""
    names = [b for b in cache.backbones(rows.train_split) if b in cache.backbones(rows.val_split)]
    return sorted(names, key=lambda b: (list(BOOK).index(b) if b in BOOK else len(BOOK), b))


def _chosen(cache: FeatureCache, rows: Rows, backbones: list[str] | tuple[str, ...]) -> list[str]:
    """'all' means every backbone the cache has for both splits; named ones must all be there."""
    if any(name.lower() == "all" for name in split_names(backbones)):
        available = cached_backbones(cache, rows)
        if not available:
            raise CacheError(f"no backbone has features for both {rows.train_split!r} and {rows.val_split!r} in "
                             f"{cache.path}; run `cnnfeat extract` first")
        return available
    names = [spec.name for spec in resolve_backbones(backbones)]
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


def _open(cfg: HeadConfig) -> FeatureCache:
    return FeatureCache(cache_path(cfg.workdir))


def train_linear_heads(cfg: HeadConfig, backbones: list[str] | tuple[str, ...] = ("all",)) -> list[TrainResult]:
    """A swept linear probe per backbone ('all': every backbone in the cache), and per mirrored view."""
    with _open(cfg) as cache:
        rows = resolve_rows(cache, cfg)
        candidates = [c for b in _chosen(cache, rows, backbones)
                      for c in _with_flip(cache, cfg, rows, Candidate(b, "linear", (b,)))]
        return [train_one(cache, cfg, cand, rows) for cand in candidates]


def _combined(cache: FeatureCache, rows: Rows, backbones: list[str] | tuple[str, ...], what: str) -> tuple[str, ...]:
    names = _chosen(cache, rows, backbones)
    if len(names) < 2:
        raise CacheError(f"the {what} needs two or more backbones, the cache has {names or 'none'} for "
                         f"{rows.train_split}/{rows.val_split}; run `cnnfeat extract --backbone all` first")
    return tuple(names)


def train_concat(cfg: HeadConfig, backbones: list[str] | tuple[str, ...] = ("all",)) -> list[TrainResult]:
    """One swept probe on two or more backbones' standardised features side by side (and mirrored)."""
    with _open(cfg) as cache:
        rows = resolve_rows(cache, cfg)
        names = _combined(cache, rows, backbones, "concatenation head")
        return [train_one(cache, cfg, cand, rows)
                for cand in _with_flip(cache, cfg, rows, Candidate(CONCAT, "linear", names))]


def train_ensemble(cfg: HeadConfig, backbones: list[str] | tuple[str, ...] = ("all",)) -> TrainResult:
    """The book's three-branch head on two or more backbones ('all': every backbone in the cache)."""
    with _open(cfg) as cache:
        rows = resolve_rows(cache, cfg)
        names = _combined(cache, rows, backbones, "ensemble")
        return train_one(cache, cfg, Candidate(ENSEMBLE, ENSEMBLE, names), rows)


def select_best(cfg: HeadConfig) -> TrainResult:
    """`best`: Caruana's greedy selection over every up-to-date model's calibrated out-of-fold predictions.

    Never worse than its best member on those rows; its validation numbers come from rows no step of
    the selection saw. Without folds (a class with a single training row) the model with the lowest
    validation log loss is taken, and the metrics say so.
    """
    with _open(cfg) as cache:
        rows = resolve_rows(cache, cfg)
        members = _selectable(cache, cfg, rows)
        if not members:
            raise HeadError(f"no up-to-date model to choose from in {heads_dir(cfg.workdir)}; "
                            f"run `cnnfeat train-head` (or `cnnfeat run`) first")
        keys = {name: sidecar["inputs_key"] for name, (_, _, sidecar) in members.items()}
        inputs = key_inputs(cache, cfg, "selection", [], [])
        key = inputs_key(cache, inputs, keys)
        if not cfg.force and (metrics := _up_to_date(cfg.workdir, BEST, key)) is not None:
            return TrainResult(BEST, metrics, trained=False)
        y_train = torch.from_numpy(cache.labels(rows.train_split)[rows.train])
        y_val = torch.from_numpy(cache.labels(rows.val_split)[rows.val])
        oof = {name: saved["oof_proba"] for name, (_, saved, _) in members.items()}
        if all(p is not None for p in oof.values()):
            weights, evidence = greedy_selection(oof, y_train), "out-of-fold predictions on the training rows"
            mixed_oof = blend_proba([oof[n] for n in weights], list(weights.values()))
            temperature = fit_temperature([mixed_oof.clamp_min(1e-15).log()], y_train) if cfg.calibrate else 1.0
        else:
            name = min(members, key=lambda n: log_loss(members[n][1]["val_proba"], y_val))
            weights, evidence, temperature = {name: 1.0}, "validation log loss (too few rows for folds)", 1.0
        blend = Blend([(w, members[n][0]) for n, w in weights.items()], temperature)
        val_proba = blend_proba([members[n][1]["val_proba"] for n in weights], list(weights.values()), temperature)
        raw_val = blend_proba([members[n][1]["val_proba"] for n in weights], list(weights.values()))
        metrics = {
            "model": BEST, "kind": "selection", "members": weights, "chosen_on": evidence,
            "val_split": rows.description, "n_train": len(y_train), "n_val": len(y_val),
            "val_accuracy": accuracy(val_proba, y_val), "val_log_loss": log_loss(val_proba, y_val),
            "val_log_loss_uncalibrated": log_loss(raw_val, y_val), "temperature": temperature,
            "candidates": {n: members[n][1]["meta"]["metrics"]["oof_log_loss"] for n in members},
            "folds": rows.n_folds, "refit": cfg.refit, "classes": list(cache.classes),
        }
        backbones = tuple(dict.fromkeys(b for n in weights for b in members[n][1]["meta"]["backbones"]))
        meta = _meta(cache, cfg, BEST, "selection", backbones, (), inputs, key, rows, metrics, members=keys)
        meta["feature_settings"] = {k: v for n in weights for k, v in members[n][1]["meta"]["feature_settings"].items()}
        save_model(heads_dir(cfg.workdir) / f"{BEST}.pt", blend, meta, {"val_proba": val_proba})
        classes = cache.classes
        val_paths = [cache.paths(rows.val_split)[r] for r in rows.val]
        write_outputs(cfg.workdir, BEST, metrics, [], val_paths, y_val, val_proba, classes)
    write_summary(cfg.workdir)
    return TrainResult(BEST, metrics, trained=True)


def _selectable(cache: FeatureCache, cfg: HeadConfig, rows: Rows) -> dict[str, tuple[Classifier, dict, dict]]:
    """Every saved model other than `best` that is up to date and has out-of-fold predictions on these rows."""
    found = {}
    for name in trained_models(cfg.workdir):
        if name == BEST or name.startswith(FINETUNED_PREFIX) or staleness(cache, cfg.workdir, name):
            continue
        model, meta, saved = load_model(heads_dir(cfg.workdir) / f"{name}.pt")
        if saved.get("oof_key") == rows.key() and isinstance(model, Classifier):
            found[name] = (model, saved, read_sidecar(cfg.workdir, name))
    return found


def write_summary(workdir: Path) -> Path:
    """metrics/summary.csv: one row per model, and which ones `best` is made of."""
    names = trained_models(workdir)
    metrics = {name: json.loads((metrics_dir(workdir) / f"{name}.json").read_text()) for name in names}
    members = metrics.get(BEST, {}).get("members", {})
    rows = [[name, m.get("kind", ""), m["val_accuracy"], m["val_log_loss"], m.get("val_log_loss_uncalibrated", ""),
             m.get("temperature", 1.0), name == BEST or name in members, 1.0 if name == BEST else members.get(name, 0.0)]
            for name, m in metrics.items()]
    path = metrics_dir(workdir) / SUMMARY
    _write_csv(path, list(SUMMARY_COLUMNS), rows)
    return path

