"""Which saved heads are up to date: one key per model over exactly what it was trained from.

A model's inputs key covers its kind, backbones, views, its solver and the settings that solver
and kind use (no others: an L-BFGS probe ignores --lr and --hidden), the classes, the fingerprints
of its splits and the settings of its features, where they came from (decoder, device) included. heads/<name>.json holds the key and what it was computed from, so
`cnnfeat info` tells what is stale without loading torch. Imports no torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import numpy as np

from features import BOOK, STAGING_SETTINGS, FeatureCache, dataset_name

from .config import BEST, CONCAT, ENSEMBLE, FLIP_SUFFIX, HEAD_FORMAT, HFLIP, HeadConfig, default_memory_budget

COMMON_SETTINGS = ("train_split", "val_split", "folds", "calibrate", "refit", "seed")
KIND_SETTINGS = {"linear": (), "ensemble": ("dropout", "hidden"), "selection": ()}
SOLVER_SETTINGS = {
    "lbfgs": ("c_grid", "max_iter"),  # full-batch L-BFGS, C swept
    "adam": ("epochs", "lr", "batch_size", "weight_decay", "patience"),  # minibatches, epochs early-stopped
    "": (),  # `best` trains nothing: it selects
}


def heads_dir(workdir: Path) -> Path:
    return Path(workdir) / "heads"


def saved_heads(workdir: Path) -> list[str]:
    """Names of the models saved under heads/."""
    folder = heads_dir(workdir)
    return [p.stem for p in sorted(folder.glob("*.pt"))] if folder.is_dir() else []


def solver(cache: FeatureCache, cfg: HeadConfig, kind: str, backbones: Iterable[str], views: Iterable[str]) -> str:
    """'lbfgs' for a probe whose training features (every view) fit in memory, 'adam' for one that must
    stream and for the three-branch head, '' for the selection. Decided here once, recorded in the key."""
    if kind != "linear":
        return "adam" if kind == ENSEMBLE else ""
    datasets = [dataset_name(b, v) for b in backbones for v in views]
    row_bytes = sum(4 * int(np.prod(cache.feature_shape(cfg.train_split, d))) for d in datasets)
    return "lbfgs" if row_bytes * cache.row_count(cfg.train_split, datasets[0]) <= default_memory_budget() else "adam"


def key_inputs(cache: FeatureCache, cfg: HeadConfig, kind: str, backbones: Iterable[str], views: Iterable[str]) -> dict:
    """What a model of this kind depends on beyond the cache: its kind, inputs, solver and the settings they use."""
    backbones, views = list(backbones), list(views)
    how = solver(cache, cfg, kind, backbones, views)
    used = COMMON_SETTINGS + KIND_SETTINGS[kind] + SOLVER_SETTINGS[how] + \
        (() if cfg.val_split in cache.splits else ("holdout",))
    settings = {k: v for k, v in asdict(cfg).items() if k in used}
    return {"kind": kind, "backbones": backbones, "views": views, "solver": how, "settings": settings}


def inputs_key(cache: FeatureCache, inputs: dict, members: dict[str, str] | None = None) -> str:
    """Changes whenever the features, the splits' files, the classes or a setting the model uses change."""
    settings = inputs["settings"]
    splits = [s for s in (settings["train_split"], settings["val_split"]) if s in cache.splits]
    blob = {
        "head_format": HEAD_FORMAT, **inputs, "classes": cache.classes, "members": members or {},
        "splits": {s: cache.fingerprint(s) for s in splits},
        "features": {f"{s}/{dataset}": settings
                     for s in splits for dataset, settings in feature_settings(cache, s, inputs["backbones"], inputs["views"]).items()},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def feature_settings(cache: FeatureCache, split: str, backbones: Iterable[str], views: Iterable[str]) -> dict[str, dict]:
    """{dataset: its settings a model depends on}: the values, and where they were computed (decoder, device)."""
    settings = {}
    for backbone in backbones:
        for view in views:
            stored = cache.settings(split, dataset_name(backbone, view))
            settings[dataset_name(backbone, view)] = {k: stored.get(k) for k in STAGING_SETTINGS}
    return settings


def read_sidecar(workdir: Path, name: str) -> dict | None:
    """heads/<name>.json if it describes an intact heads/<name>.pt, else None."""
    model, sidecar = heads_dir(workdir) / f"{name}.pt", heads_dir(workdir) / f"{name}.json"
    try:
        data = json.loads(sidecar.read_text())
        intact = hashlib.sha256(model.read_bytes()).hexdigest() == data["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data if intact else None


def staleness(cache: FeatureCache, workdir: Path, name: str, changing: set[tuple[str, str]] = frozenset()) -> str:
    """'' when heads/<name>.pt is up to date, else why `cnnfeat run` would train it again."""
    if not (heads_dir(workdir) / f"{name}.pt").exists():
        return "not trained yet"
    data = read_sidecar(workdir, name)
    if data is None:
        return "its file is damaged or unreadable"
    if data.get("format") != HEAD_FORMAT:
        return "saved by an older cnnfeat"
    inputs = data["key_inputs"]
    splits = (inputs["settings"]["train_split"], inputs["settings"]["val_split"])
    if any((split, dataset_name(b, v)) in changing or (split, "*") in changing
           for split in splits for b in inputs["backbones"] for v in inputs["views"]):
        return "its features will be extracted again"
    members = data.get("members") or {}
    for member, key in members.items():
        other = read_sidecar(workdir, member)
        if staleness(cache, workdir, member, changing) or other is None or other["inputs_key"] != key:
            return f"its member {member} changed"
    try:
        current = inputs_key(cache, inputs, members)
    except Exception:  # noqa: BLE001 - a split or dataset it needs is gone from the cache
        return "its features are no longer in the cache"
    return "" if current == data["inputs_key"] else "its features or the split files changed"


def expected_heads(backbones: list[str], views: Iterable[str], cfg: HeadConfig) -> list[str]:
    """The heads `cnnfeat run` makes from these backbones' features: a probe each (and its +hflip twin where
    the views are mirrored too), concat and ensemble of two or more, best."""
    flip = [FLIP_SUFFIX] if cfg.flip and HFLIP in views else []
    probes = [name + suffix for name in backbones for suffix in ("", *flip)]
    combined = ([CONCAT + suffix for suffix in ("", *flip)] if cfg.concat else []) + [ENSEMBLE]
    return probes + (combined if len(backbones) >= 2 else []) + ([BEST] if cfg.select else [])


def stale_heads(cache: FeatureCache, workdir: Path, changing: set[tuple[str, str]],
                expected: Iterable[str] = (*BOOK, CONCAT, ENSEMBLE, BEST)) -> list[tuple[str, str]]:
    """(model, why) for every head `cnnfeat run` would train again, `changing` being the (split, dataset)
    features it will extract first; `expected`: the heads the job makes (expected_heads), besides those saved."""
    names = list(dict.fromkeys([*expected, *saved_heads(workdir)]))
    found = [(name, staleness(cache, workdir, name, changing)) for name in names]
    return [(name, why) for name, why in found if why]
