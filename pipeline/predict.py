"""Stage 4: class probabilities from a saved model, written as a Kaggle submission CSV with a row per file.

    from pipeline.predict import PredictConfig, predict
    result = predict(PredictConfig(workdir="runs/dvc", model="best", kaggle_binary=True, clip=0.005))

The CSV has `id` (the file name without extension, in numeric order when every id is a number)
and one probability column per class; with kaggle_binary, Dogs vs Cats Redux's `id,label`. A
file that could not be decoded still gets its row, with the training split's class frequencies,
so Kaggle never rejects a submission for a missing id; the result names those files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from features import VALUE_SETTINGS, CacheError, ConfigError, FeatureCache, atomic_output, cache_path, check_fresh
from features import dataset_name, resolve_device, scan_data_folder

from .blend import accuracy, blend_proba, log_loss, view_proba
from .config import FINETUNED_PREFIX, PredictConfig
from .data import FeatureTable
from .heads import Blend, Classifier, Model, head_logits, load_model
from .status import finetuned_checkpoint, heads_dir


@dataclass
class PredictResult:
    path: Path
    rows: int
    written: bool  # False when the submission was already up to date
    fallback: list[str] = field(default_factory=list)  # files without features: class-frequency rows
    accuracy: float | None = None  # only for a labeled split, over the decoded files
    log_loss: float | None = None


@dataclass
class Probabilities:
    paths: list[str]
    labels: np.ndarray
    proba: np.ndarray  # (N, n_classes), rows sum to 1
    classes: tuple[str, ...]
    fallback: list[str] = field(default_factory=list)  # paths among `paths` whose row is the class prior


def model_proba(model: Model, cache: FeatureCache, split: str, device: torch.device) -> torch.Tensor:
    """(N, classes) float64: a classifier's views averaged at its temperature, or a blend of them."""
    if isinstance(model, Blend):
        members = [model_proba(member, cache, split, device) for _, member in model.members]
        return blend_proba(members, [weight for weight, _ in model.members], model.temperature)
    head = model.head.to(device)
    logits = [head_logits(head, FeatureTable(cache, split, {b: dataset_name(b, view) for b in head.backbones}), device)
              for view in model.views]
    return view_proba(logits, model.temperature)


def class_probabilities(workdir: Path, model: str, split: str, device: str = "auto") -> Probabilities:
    """A saved model applied to every file of a split, after checking that the model and the cache agree."""
    loaded, meta, _ = load_model(heads_dir(workdir) / f"{model}.pt")
    with FeatureCache(cache_path(workdir)) as cache:
        if tuple(meta["classes"]) != cache.classes:
            raise CacheError(f"model {model!r} was trained on classes {meta['classes']}, but {cache.path} holds "
                             f"{list(cache.classes)}; retrain it: `cnnfeat run --force`")
        check_fresh(cache, [split])
        for dataset, trained_on in meta["feature_settings"].items():
            now = cache.settings(split, dataset)
            changed = sorted(k for k in VALUE_SETTINGS if k in trained_on and now.get(k) != trained_on[k])
            if changed:
                raise CacheError(f"model {model!r} was trained on {dataset} features with other {', '.join(changed)} "
                                 f"than {split!r} now has; retrain it with --force, or extract again with its settings")
        proba = model_proba(loaded, cache, split, resolve_device(device)).numpy()
        paths, labels = cache.paths(split), cache.labels(split)
        skipped = [path for path, _ in cache.skipped(split)]
        classes = cache.classes
    prior = np.asarray(meta["class_prior"], dtype=np.float64)
    every = paths + skipped
    order = np.argsort(every, kind="stable")  # the split's path order, fallback rows in their place
    return Probabilities([every[i] for i in order], np.concatenate([labels, _labels_of(skipped, classes)])[order],
                         np.concatenate([proba, np.tile(prior, (len(skipped), 1))])[order], classes, skipped)


def _labels_of(paths: list[str], classes: tuple[str, ...]) -> np.ndarray:
    """Labels of skipped files from their class folder (split/<class>/file), -1 in an unlabeled split."""
    return np.array([classes.index(p.split("/")[1]) if p.count("/") >= 2 and p.split("/")[1] in classes else -1
                     for p in paths], dtype=np.int64)


def submission_frame(probs: Probabilities, kaggle_binary: bool = False, clip: float | None = None) -> pd.DataFrame:
    ids = [Path(p).stem for p in probs.paths]
    proba = probs.proba
    if clip:
        proba = np.clip(proba, clip, 1 - clip)
        proba = proba / proba.sum(axis=1, keepdims=True)
    if kaggle_binary:
        if len(probs.classes) != 2:
            raise ConfigError(f"--kaggle-binary needs exactly two classes, the cache has {list(probs.classes)}")
        frame = pd.DataFrame({"id": ids, "label": proba[:, 1]})
    else:
        frame = pd.DataFrame(proba, columns=list(probs.classes))
        frame.insert(0, "id", ids)
    if all(i.isdigit() for i in ids):
        frame = frame.iloc[np.argsort([int(i) for i in ids], kind="stable")]
    return frame.reset_index(drop=True)


def _submission_key(cfg: PredictConfig, data: Path | None) -> str:
    """Changes with the model file, the split's files (and features), and the output options."""
    if data is not None:  # a fine-tuned network: its checkpoint and the images it reads
        digest = hashlib.sha256(finetuned_checkpoint(cfg.workdir, cfg.model).read_bytes())
        digest.update(scan_data_folder(data).fingerprint(cfg.split).encode())
        digest.update(json.dumps([str(data.resolve()), cfg.tta]).encode())
    else:
        digest = hashlib.sha256((heads_dir(cfg.workdir) / f"{cfg.model}.pt").read_bytes())
        with FeatureCache(cache_path(cfg.workdir)) as cache:
            digest.update(cache.fingerprint(cfg.split).encode())
            digest.update(json.dumps({b: cache.settings(cfg.split, b) for b in cache.datasets(cfg.split)},
                                     sort_keys=True, default=str).encode())
    digest.update(json.dumps([cfg.model, cfg.split, cfg.kaggle_binary, cfg.clip]).encode())
    return digest.hexdigest()


def predict(cfg: PredictConfig) -> PredictResult:
    """Write the submission (skipped when it is up to date); score it too when the split is labeled.

    `finetuned-<backbone>` predicts with that fine-tuned network from the images themselves."""
    data = None
    if cfg.model.startswith(FINETUNED_PREFIX):
        from .finetune import finetuned_data, finetuned_probabilities  # torch models only when asked for

        data = finetuned_data(cfg.workdir, cfg.model, cfg.data)
        probs = finetuned_probabilities(cfg.workdir, cfg.model, cfg.split, cfg.device, data, cfg.tta)
    elif cfg.tta:
        raise ConfigError("--tta applies to finetuned-<backbone> models; for the heads, predict with a +hflip model")
    else:
        probs = class_probabilities(cfg.workdir, cfg.model, cfg.split, cfg.device)
    frame = submission_frame(probs, cfg.kaggle_binary, cfg.clip)
    result = PredictResult(cfg.output, len(frame), written=False, fallback=probs.fallback)
    decoded = ~np.isin(probs.paths, probs.fallback)
    if decoded.any() and (probs.labels[decoded] >= 0).all():
        proba, labels = torch.from_numpy(probs.proba[decoded]), torch.from_numpy(probs.labels[decoded])
        result.accuracy, result.log_loss = accuracy(proba, labels), log_loss(proba, labels)
    key = _submission_key(cfg, data)
    stamp = cfg.output.with_name(cfg.output.name + ".json")
    if not cfg.force and cfg.output.exists() and stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        return result
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(cfg.output) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_output(stamp) as tmp:
        tmp.write_text(json.dumps({"key": key, "model": cfg.model, "split": cfg.split}) + "\n")
    result.written = True
    return result
