"""Stage 4: class probabilities from a saved head, written as a Kaggle submission CSV.

    from pipeline.predict import PredictConfig, predict
    result = predict(PredictConfig(workdir="runs/dvc", model="ensemble", kaggle_binary=True, clip=0.02))

The CSV has `id` (the file name without extension, in numeric order when every id is a number)
and one probability column per class; with kaggle_binary, Dogs vs Cats Redux's `id,label`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss

from features import CacheError, FeatureCache, cache_path
from features.extract import resolve_device
from features.store import VALUE_SETTINGS, atomic_output

from .data import FeatureTable
from .heads import load_head, predict_proba
from .train import heads_dir


@dataclass
class PredictConfig:
    workdir: Path = Path("cnnfeat-out")
    model: str = "ensemble"  # a backbone name (its linear head) or "ensemble"
    split: str = "test"
    output: Path | None = None  # default: <workdir>/submission.csv
    kaggle_binary: bool = False  # Dogs vs Cats Redux: id,label = probability of the second class
    clip: float | None = None  # keep probabilities in [clip, 1 - clip]: log loss punishes certainty hard
    device: str = "auto"
    force: bool = False  # rewrite even when the submission is up to date

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.output = Path(self.output) if self.output is not None else self.workdir / "submission.csv"
        if self.clip is not None and not 0 <= self.clip < 0.5:
            raise ValueError(f"clip must be in [0, 0.5), not {self.clip}")


@dataclass
class PredictResult:
    path: Path
    rows: int
    written: bool  # False when the submission was already up to date
    accuracy: float | None = None  # only for a labeled split
    log_loss: float | None = None


@dataclass
class Probabilities:
    paths: list[str]
    labels: np.ndarray
    proba: np.ndarray  # (N, n_classes), rows sum to 1
    classes: tuple[str, ...]


def class_probabilities(workdir: Path, model: str, split: str, device: str = "auto") -> Probabilities:
    """A saved head applied to a split, after checking that the head and the cache agree."""
    head, meta = load_head(heads_dir(workdir) / f"{model}.pt")
    with FeatureCache(cache_path(workdir)) as cache:
        if tuple(meta["classes"]) != cache.classes:
            raise CacheError(
                f"head {model!r} was trained on classes {meta['classes']}, but {cache.path} holds "
                f"{list(cache.classes)}; retrain it: `cnnfeat train-head --force` / `cnnfeat ensemble --force`"
            )
        for backbone, trained_on in meta["feature_settings"].items():
            now = {k: cache.settings(split, backbone)[k] for k in VALUE_SETTINGS}
            changed = sorted(k for k in VALUE_SETTINGS if now[k] != trained_on[k])
            if changed:
                raise CacheError(
                    f"head {model!r} was trained on {backbone} features with other {', '.join(changed)} than "
                    f"{split!r} now has; retrain it with --force, or extract again with the head's settings"
                )
        table = FeatureTable(cache, split, meta["backbones"])
        torch_device = resolve_device(device)
        proba = predict_proba(head.to(torch_device), table.batches(4096), torch_device)
        return Probabilities(table.paths, table.labels.numpy(), proba, cache.classes)


def submission_frame(probs: Probabilities, kaggle_binary: bool = False, clip: float | None = None) -> pd.DataFrame:
    ids = [Path(p).stem for p in probs.paths]
    proba = probs.proba
    if clip:
        proba = np.clip(proba, clip, 1 - clip)
        proba = proba / proba.sum(axis=1, keepdims=True)
    if kaggle_binary:
        if len(probs.classes) != 2:
            raise ValueError(f"--kaggle-binary needs exactly two classes, the cache has {list(probs.classes)}")
        frame = pd.DataFrame({"id": ids, "label": proba[:, 1]})
    else:
        frame = pd.DataFrame(proba, columns=list(probs.classes))
        frame.insert(0, "id", ids)
    if all(i.isdigit() for i in ids):
        frame = frame.iloc[np.argsort([int(i) for i in ids], kind="stable")]
    return frame.reset_index(drop=True)


def _submission_key(cfg: PredictConfig) -> str:
    """Changes with the head file, the split's files and features, and the output options."""
    digest = hashlib.sha256((heads_dir(cfg.workdir) / f"{cfg.model}.pt").read_bytes())
    with FeatureCache(cache_path(cfg.workdir)) as cache:
        digest.update(cache.fingerprint(cfg.split).encode())
        digest.update(json.dumps({b: cache.settings(cfg.split, b) for b in cache.backbones(cfg.split)}, sort_keys=True, default=str).encode())
    digest.update(json.dumps([cfg.model, cfg.split, cfg.kaggle_binary, cfg.clip]).encode())
    return digest.hexdigest()


def predict(cfg: PredictConfig) -> PredictResult:
    """Write the submission (skipped when it is up to date); score it too when the split is labeled."""
    probs = class_probabilities(cfg.workdir, cfg.model, cfg.split, cfg.device)
    result = PredictResult(cfg.output, len(probs.paths), written=False)
    if len(probs.labels) and (probs.labels >= 0).all():
        result.accuracy = float((probs.proba.argmax(1) == probs.labels).mean())
        result.log_loss = float(log_loss(probs.labels, probs.proba, labels=range(len(probs.classes))))
    key = _submission_key(cfg)
    stamp = cfg.output.with_name(cfg.output.name + ".json")
    if not cfg.force and cfg.output.exists() and stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        return result
    frame = submission_frame(probs, cfg.kaggle_binary, cfg.clip)
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(cfg.output) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_output(stamp) as tmp:
        tmp.write_text(json.dumps({"key": key, "model": cfg.model, "split": cfg.split}) + "\n")
    result.written = True
    return result
