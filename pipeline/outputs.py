"""What every model leaves in the workdir, and the submission: written and read here only.

    write_model_outputs(workdir, name, metrics, history, validation, out_of_fold)
                                     # metrics/<name>.json, -history.csv, -valid.csv, -oof.csv
    validation = read_predictions(workdir, name, VALID)                # a Probabilities, or None
    write_summary(workdir)                                             # metrics/summary.csv: one row per model
    frame = submission_frame(probabilities, kaggle_binary=True, clip=0.005)
    proba = clip_probabilities(proba, 0.005)                           # every value in [c, 1-c], rows sum to 1

A model is a head on cached features or a fine-tuned network: either way its numbers land in
metrics/, which `summary.csv`, the reports and `cnnfeat info` read. Imports no torch.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from features import ConfigError, atomic_output

if TYPE_CHECKING:
    import pandas as pd

SUMMARY = "summary.csv"
# val_*: reported on validation rows that chose nothing; oof_log_loss: what the choices were made on
SUMMARY_COLUMNS = ("model", "kind", "val_accuracy", "val_log_loss", "val_log_loss_uncalibrated", "temperature",
                   "oof_log_loss", "chosen", "weight")
# summary and reports list single-backbone models first, then the combined ones, the selection last
_KIND_ORDER = {"linear": 0, "finetuned": 0, "ensemble": 2, "selection": 3}


@dataclass
class Probabilities:
    """A model's class probabilities for every file of a split, in the split's path order."""

    paths: list[str]
    labels: np.ndarray  # class index per file, -1 in an unlabeled split
    proba: np.ndarray  # (N, n_classes) float64, rows sum to 1
    classes: tuple[str, ...]
    fallback: list[str] = field(default_factory=list)  # paths whose row is the class prior: they could not be decoded

    @staticmethod
    def with_fallback(paths: list[str], labels: np.ndarray, proba: np.ndarray, classes: tuple[str, ...],
                      failed: list[str], failed_labels: np.ndarray, prior: list[float],
                      given: list[str] | None = None) -> "Probabilities":
        """The decoded files' rows and, for every file that could not be decoded, the class prior, all in path
        order (or in the order of `given`, every path once): a submission has a row for every file, and says
        which rows are guesses."""
        every = list(paths) + list(failed)
        position = {path: i for i, path in enumerate(given)} if given is not None else None
        order = np.argsort(every if position is None else [position[p] for p in every], kind="stable")
        rows = np.concatenate([proba.reshape(len(paths), len(classes)), np.tile(np.asarray(prior, np.float64), (len(failed), 1))])
        return Probabilities([every[i] for i in order], np.concatenate([labels, failed_labels]).astype(np.int64)[order],
                             rows[order], tuple(classes), sorted(failed))


def metrics_dir(workdir: Path) -> Path:
    return Path(workdir) / "metrics"


def read_metrics(workdir: Path, name: str) -> dict[str, Any]:
    """metrics/<name>.json: what the model measured on its validation rows and what was chosen."""
    return json.loads((metrics_dir(workdir) / f"{name}.json").read_text())


def write_model_outputs(workdir: Path, name: str, metrics: dict, history: list[dict], validation: Probabilities,
                        out_of_fold: Probabilities | None = None) -> None:
    """metrics/<name>.json, -history.csv, -valid.csv and -oof.csv (each training row's probabilities from a model
    that did not see it, where folds were drawn): what summary, report and status read of any model."""
    folder = metrics_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(folder / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    if history:  # `best` is a blend: nothing was trained step by step
        write_csv(folder / f"{name}-history.csv", list(history[0]), [list(r.values()) for r in history])
    _write_predictions(predictions_path(workdir, name, VALID), validation)
    if out_of_fold is None:  # no folds this time: an older file would describe another training
        predictions_path(workdir, name, OUT_OF_FOLD).unlink(missing_ok=True)
    else:
        _write_predictions(predictions_path(workdir, name, OUT_OF_FOLD), out_of_fold)


VALID, OUT_OF_FOLD = "valid", "oof"  # metrics/<name>-valid.csv: the validation rows; -oof.csv: the training rows


def predictions_path(workdir: Path, name: str, rows: str) -> Path:
    return metrics_dir(workdir) / f"{name}-{rows}.csv"


def _write_predictions(path: Path, probs: Probabilities) -> None:
    classes = probs.classes
    write_csv(path, ["path", "label", *classes],
              [[p, classes[int(y)], *row] for p, y, row in zip(probs.paths, probs.labels.tolist(), probs.proba.tolist())])


def read_predictions(workdir: Path, name: str, rows: str) -> Probabilities | None:
    """A model's saved probabilities for its validation (VALID) or out-of-fold training (OUT_OF_FOLD) rows;
    None when the model saved none. Classes are the CSV's columns, labels their indices."""
    path = predictions_path(workdir, name, rows)
    if not path.exists():
        return None
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        classes = tuple(next(reader)[2:])
        table = list(reader)
    index = {c: i for i, c in enumerate(classes)}
    proba = np.array([row[2:] for row in table], dtype=np.float64).reshape(len(table), len(classes))
    return Probabilities([row[0] for row in table], np.array([index[row[1]] for row in table], dtype=np.int64),
                         proba, classes)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _all_metrics(workdir: Path) -> dict[str, dict[str, Any]]:
    """Every model's metrics, read once: single-backbone models, then the combined ones, the selection last."""
    folder = metrics_dir(workdir)
    found = {}
    for name in sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []:
        try:
            found[name] = read_metrics(workdir, name)
        except (OSError, ValueError):
            found[name] = {}

    def rank(name: str) -> int:
        kind = found[name].get("kind", "")
        return 1 if kind == "linear" and len(found[name].get("backbones", ())) > 1 else _KIND_ORDER.get(kind, 0)

    return {name: found[name] for name in sorted(found, key=lambda n: (rank(n), n))}


def trained_models(workdir: Path) -> list[str]:
    """Names of the models with metrics: single-backbone models, then the combined ones, the selection last."""
    return list(_all_metrics(workdir))


def write_summary(workdir: Path) -> Path:
    """metrics/summary.csv: one row per model, and which ones the selection (`best`) is made of."""
    metrics = _all_metrics(workdir)
    members = next((m.get("members", {}) for m in metrics.values() if m.get("kind") == "selection"), {})
    rows = [[name, m.get("kind", ""), m["val_accuracy"], m["val_log_loss"], m.get("val_log_loss_uncalibrated", ""),
             m.get("temperature", 1.0), _blank_if_none(m.get("oof_log_loss")),
             m.get("kind") == "selection" or name in members,
             1.0 if m.get("kind") == "selection" else members.get(name, 0.0)]
            for name, m in metrics.items()]
    path = metrics_dir(workdir) / SUMMARY
    write_csv(path, list(SUMMARY_COLUMNS), rows)
    return path


def _blank_if_none(value: float | None) -> float | str:
    return "" if value is None else value


def read_summary(workdir: Path) -> list[dict[str, str]]:
    with open(metrics_dir(workdir) / SUMMARY, newline="") as handle:
        return list(csv.DictReader(handle))


def prediction_frame(probs: Probabilities) -> "pd.DataFrame":
    """Predictions of images: `path`, a probability column per class, and `label`, the most probable class."""
    import pandas as pd  # only here, as in submission_frame

    frame = pd.DataFrame(probs.proba, columns=list(probs.classes))
    frame.insert(0, "path", probs.paths)
    frame["label"] = [probs.classes[i] for i in probs.proba.argmax(axis=1)] if len(probs.paths) else []
    return frame


# halvings of the shift's interval (at most 2 wide): 2**-63 is below a float64's resolution of probabilities
_BISECTION_STEPS = 64


def clip_probabilities(proba: np.ndarray, clip: float) -> np.ndarray:
    """Each row moved to the closest probability vector (Euclidean) whose every value lies in [clip, 1 - clip]:
    p_k = min(max(q_k + t, clip), 1 - clip), one shift t per row, found by bisection. Clipping and then dividing
    by the sum lets values leave the bounds again (3 classes, clip 0.02: 0.0196); a common shift keeps them in,
    keeps every row summing to 1 and keeps the order of the classes. With K classes no row can hold K values
    of at least clip > 1/K: refused."""
    proba = np.asarray(proba, dtype=np.float64)  # (N, K)
    n_classes = proba.shape[1]
    if clip > 1 / n_classes:
        raise ConfigError(f"--clip {clip} cannot hold with {n_classes} classes: {n_classes} probabilities of at "
                          f"least {clip} sum to more than 1; the largest --clip for this model is "
                          f"1/{n_classes} = {1 / n_classes:.6g}", setting="clip")
    # the row's sum of clipped values grows with t: every value at clip (sum K*clip <= 1) at `low`,
    # every value at 1 - clip (sum K*(1 - clip) >= 1) at `high`
    low = clip - proba.max(axis=1, keepdims=True)  # (N, 1)
    high = 1 - clip - proba.min(axis=1, keepdims=True)
    for _ in range(_BISECTION_STEPS):
        shift = (low + high) / 2
        over = np.clip(proba + shift, clip, 1 - clip).sum(axis=1, keepdims=True) > 1
        high = np.where(over, shift, high)
        low = np.where(over, low, shift)
    return np.clip(proba + (low + high) / 2, clip, 1 - clip)


def submission_frame(probs: Probabilities, kaggle_binary: bool = False, clip: float | None = None) -> "pd.DataFrame":
    """The Kaggle submission: `id` (the file name without extension, in numeric order when every id is a
    number) and a probability column per class; with kaggle_binary, `id,label` = the second class's."""
    import pandas as pd  # only here: `cnnfeat info` reads this module and starts in a fraction of a second

    ids = [Path(p).stem for p in probs.paths]
    proba = clip_probabilities(probs.proba, clip) if clip else probs.proba
    if kaggle_binary:
        if len(probs.classes) != 2:
            raise ConfigError(f"--kaggle-binary needs exactly two classes, the model has {list(probs.classes)}")
        frame = pd.DataFrame({"id": ids, "label": proba[:, 1]})
    else:
        frame = pd.DataFrame(proba, columns=list(probs.classes))
        frame.insert(0, "id", ids)
    if all(i.isdigit() for i in ids):
        frame = frame.iloc[np.argsort([int(i) for i in ids], kind="stable")]
    return frame.reset_index(drop=True)
