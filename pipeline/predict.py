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

from features import ConfigError, FeatureCache, accuracy, atomic_output, cache_path, log_loss, scan_data_folder

from . import finetuned
from .config import PredictConfig
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


def _submission_key(cfg: PredictConfig, data: Path | None) -> str:
    """Changes with the model file, the split's files (and features), and the output options."""
    if data is not None:  # a fine-tuned network: its checkpoint and the images it reads
        digest = hashlib.sha256(finetuned.checkpoint(cfg.workdir, cfg.model).read_bytes())
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


def probabilities(cfg: PredictConfig) -> tuple[Probabilities, Path | None]:
    """The model's probabilities on the split, and the image folder read when the model reads images."""
    if finetuned.is_finetuned(cfg.model):
        data = finetuned.data_folder(cfg.workdir, cfg.model, cfg.data)
        return finetuned.probabilities(cfg.workdir, cfg.model, cfg.split, data, cfg.device, cfg.tta), data
    if cfg.tta:
        raise ConfigError("--tta applies to finetuned-<backbone> models; for the heads, predict with a +hflip model")
    from .heads.predict import class_probabilities

    return class_probabilities(cfg.workdir, cfg.model, cfg.split, cfg.device), None


def predict(cfg: PredictConfig) -> PredictResult:
    """Write the submission (skipped when it is up to date); score it too when the split is labeled."""
    probs, data = probabilities(cfg)
    frame = submission_frame(probs, cfg.kaggle_binary, cfg.clip)
    result = PredictResult(cfg.output, len(frame), written=False, fallback=probs.fallback)
    decoded = ~np.isin(probs.paths, probs.fallback)
    if decoded.any() and (probs.labels[decoded] >= 0).all():
        result.accuracy = accuracy(probs.proba[decoded], probs.labels[decoded])
        result.log_loss = log_loss(probs.proba[decoded], probs.labels[decoded])
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
