"""Stage 4: class probabilities from a saved model, written as a Kaggle submission CSV with a row per file.

    from pipeline.predict import PredictConfig, predict
    result = predict(PredictConfig(workdir="runs/dvc", model="best", kaggle_binary=True, clip=0.005))

The model is a head on cached features (pipeline.heads) or a fine-tuned network reading images
(pipeline.finetuned, the one door to it). The CSV is outputs.submission_frame's; a file that could
not be decoded still gets its row, with the training split's class frequencies, so Kaggle never
rejects a submission for a missing id; the result names those files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features import (HFLIP, ConfigError, FeatureCache, ProgressFn, accuracy, atomic_output, cache_path, check_fresh,
                      did_you_mean, extract_hint, log_loss, scan_data_folder, writes_workdir)

from . import finetuned
from .config import PredictConfig
from .heads.config import BEST, CONCAT, ENSEMBLE, FLIP_SUFFIX
from .heads.status import heads_dir
from .outputs import Probabilities, submission_frame


@dataclass
class PredictResult:
    path: Path
    rows: int
    written: bool  # False when the submission was already up to date
    fallback: list[str] = field(default_factory=list)  # files without features: class-frequency rows
    accuracy: float | None = None  # only for a labeled split, over the decoded files
    log_loss: float | None = None


RESULT_FIELDS = ("rows", "fallback", "accuracy", "log_loss")  # kept in the stamp: an up-to-date predict reports them


def _model_file(cfg: PredictConfig) -> Path:
    """The file the model is: a fine-tuned network's checkpoint, or heads/<model>.pt; it must exist."""
    if finetuned.is_finetuned(cfg.model):
        return finetuned.checkpoint(cfg.workdir, cfg.model)
    from .heads import HeadError

    path = heads_dir(cfg.workdir) / f"{cfg.model}.pt"
    if not path.exists():
        raise HeadError(_missing_model(cfg))
    return path


def _missing_model(cfg: PredictConfig) -> str:
    """Which models there are, and what makes the one asked for."""
    there = sorted(p.stem for p in heads_dir(cfg.workdir).glob("*.pt")) + finetuned.trained_models(cfg.workdir)
    base = cfg.model.removesuffix(FLIP_SUFFIX)
    workdir = f"--workdir {cfg.workdir}"
    if base == BEST:
        how = f"`cnnfeat train-head {workdir}` or `cnnfeat ensemble {workdir}` builds it"
    elif base in (ENSEMBLE, CONCAT):
        how = f"`cnnfeat ensemble {workdir}` builds it (two or more backbones)"
    else:
        how = f"`cnnfeat train-head {workdir} --backbone {base}` trains it on features `cnnfeat extract` stored"
    if cfg.model.endswith(FLIP_SUFFIX):
        how += f" with mirrored views: `{extract_hint(cfg.workdir, views=HFLIP)}` first"
    listed = ", ".join(there) if there else "none yet"
    return (f"--model {cfg.model!r}: there is no such model in {cfg.workdir}{did_you_mean(cfg.model, there)}; "
            f"{how}. Models there: {listed}")


def _submission_key(cfg: PredictConfig, data: Path | None) -> str:
    """Changes with the model file, the split's files (and features), and the output options.

    Computed from files only, before any probability: an up-to-date submission costs no forward pass.
    """
    digest = hashlib.sha256(_model_file(cfg).read_bytes())
    if data is not None:  # a fine-tuned network: the images it reads
        digest.update(scan_data_folder(data).fingerprint(cfg.split).encode())
        digest.update(json.dumps([str(data.resolve()), cfg.tta]).encode())
    else:
        with FeatureCache(cache_path(cfg.workdir)) as cache:
            check_fresh(cache, [cfg.split])  # stale features are refused, whether the submission is up to date or not
            digest.update(cache.fingerprint(cfg.split).encode())
            settings = {b: cache.settings(cfg.split, b) for b in cache.datasets(cfg.split)}
            digest.update(json.dumps([cache.classes, settings], sort_keys=True, default=str).encode())
    digest.update(json.dumps([cfg.model, cfg.split, cfg.kaggle_binary, cfg.clip]).encode())
    return digest.hexdigest()


def _image_folder(cfg: PredictConfig) -> Path | None:
    """The image folder a fine-tuned network reads; None for a head, which reads the cache."""
    if finetuned.is_finetuned(cfg.model):
        return finetuned.data_folder(cfg.workdir, cfg.model, cfg.data)
    if cfg.tta:
        raise ConfigError("--tta applies to finetuned-<backbone> models; for the heads, predict with a +hflip model")
    return None


def probabilities(cfg: PredictConfig, data: Path | None) -> Probabilities:
    """The model's probabilities on the split; `data`: the image folder a fine-tuned network reads."""
    if data is not None:
        return finetuned.probabilities(cfg.workdir, cfg.model, cfg.split, data, cfg.device, cfg.tta)
    from .heads.predict import class_probabilities

    return class_probabilities(cfg.workdir, cfg.model, cfg.split, cfg.device)


def _stamp(cfg: PredictConfig) -> Path:
    """<output>.json: the key the submission was made from, and its result."""
    return cfg.output.with_name(cfg.output.name + ".json")


def _up_to_date(cfg: PredictConfig, key: str) -> PredictResult | None:
    """The stored result if the submission was made from exactly this key, else None."""
    try:
        saved = json.loads(_stamp(cfg).read_text())
    except (OSError, ValueError):
        return None
    if cfg.force or not cfg.output.exists() or saved.get("key") != key or not all(f in saved for f in RESULT_FIELDS):
        return None
    return PredictResult(cfg.output, written=False, **{f: saved[f] for f in RESULT_FIELDS})


@writes_workdir
def predict(cfg: PredictConfig, progress: ProgressFn | None = None) -> PredictResult:
    """Write the submission (skipped when it is up to date); score it too when the split is labeled. With
    cfg.images, the predictions of those images instead (pipeline.inference)."""
    if cfg.images:
        return _predict_images(cfg, progress)
    data = _image_folder(cfg)
    key = _submission_key(cfg, data)
    if (result := _up_to_date(cfg, key)) is not None:
        return result
    probs = probabilities(cfg, data)
    frame = submission_frame(probs, cfg.kaggle_binary, cfg.clip)
    result = PredictResult(cfg.output, len(frame), written=True, fallback=probs.fallback)
    decoded = ~np.isin(probs.paths, probs.fallback)
    if decoded.any() and (probs.labels[decoded] >= 0).all():
        result.accuracy = accuracy(probs.proba[decoded], probs.labels[decoded])
        result.log_loss = log_loss(probs.proba[decoded], probs.labels[decoded])
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(cfg.output) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_output(_stamp(cfg)) as tmp:
        stamp = {"key": key, "model": cfg.model, "split": cfg.split, **{f: getattr(result, f) for f in RESULT_FIELDS}}
        tmp.write_text(json.dumps(stamp) + "\n")
    return result


def _predict_images(cfg: PredictConfig, progress: ProgressFn | None) -> PredictResult:
    """The model on images anywhere, written as path, a probability per class, label; always computed."""
    from .inference import load_predictor

    found = load_predictor(cfg.workdir, cfg.model, cfg.device, cfg.tta).predict(list(cfg.images), progress=progress)
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(cfg.output) as tmp:
        found.frame.to_csv(tmp, index=False)
    return PredictResult(cfg.output, len(found.frame), written=True, fallback=found.fallback)
