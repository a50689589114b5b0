"""What a model got wrong, from the probabilities it saved: per-class scores, confusions, top losses, label errors.

    probs = read_predictions(workdir, "best", VALID)         # pipeline.outputs.Probabilities
    matrix = confusion(probs); scores = class_scores(matrix, probs.classes)
    worst = top_losses(probs, 24)                             # row numbers, highest loss first
    issues = label_issues(read_predictions(workdir, "best", OUT_OF_FOLD))

Likely label errors come from out-of-fold probabilities (each training row predicted by a model that
did not see it) by confident learning, with cleanlab (Northcutt et al., JAIR 2021): how many labels
are wrong is estimated from per-class thresholds of confidence, not from mere disagreement with the
model, and the rows whose given label the model finds least probable are those. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features import EPS

from ..outputs import Probabilities

CALIBRATION_BINS = 15  # Guo et al. 2017's expected calibration error


@dataclass(frozen=True)
class ClassScores:
    name: str
    precision: float
    recall: float
    f1: float
    support: int  # rows whose true class it is


@dataclass(frozen=True)
class LabelIssue:
    path: str
    given: str
    suggested: str  # the class the model finds most probable
    score: float  # cleanlab's label quality (the model's probability of the given label): lower is likelier wrong


def confusion(probs: Probabilities) -> np.ndarray:
    """(classes, classes) counts: row = true class, column = predicted class."""
    k = len(probs.classes)
    return np.bincount(probs.labels * k + probs.proba.argmax(1), minlength=k * k).reshape(k, k)


def class_scores(matrix: np.ndarray, classes: tuple[str, ...]) -> list[ClassScores]:
    """Precision, recall and F1 per class from a confusion matrix (0 where a class is never predicted or present)."""
    hits, predicted, actual = matrix.diagonal(), matrix.sum(0), matrix.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.nan_to_num(hits / predicted)
        recall = np.nan_to_num(hits / actual)
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return [ClassScores(name, float(p), float(r), float(f), int(n))
            for name, p, r, f, n in zip(classes, precision, recall, f1, actual)]


def most_confused(matrix: np.ndarray, top: int) -> list[tuple[int, int, int]]:
    """(true class, predicted class, count) of the largest off-diagonal cells, largest first (fastai's most_confused)."""
    off = matrix * (1 - np.eye(len(matrix), dtype=matrix.dtype))
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    return [(int(i), int(j), int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape)) if off[i, j]]


def calibration_error(probs: Probabilities) -> float:
    """Expected calibration error: |accuracy - confidence| over equal-width bins of the top probability, weighted
    by the rows in each bin. 0 for a model whose 80 % predictions are right 80 % of the time."""
    if not len(probs.labels):
        return float("nan")
    confidence = probs.proba.max(1)
    correct = probs.proba.argmax(1) == probs.labels
    bins = np.minimum((confidence * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    gap = np.bincount(bins, weights=correct - confidence, minlength=CALIBRATION_BINS)
    return float(np.abs(gap).sum() / len(confidence))


def losses(probs: Probabilities) -> np.ndarray:
    """Each row's log loss, -log p(true class)."""
    return -np.log(np.clip(probs.proba[np.arange(len(probs.labels)), probs.labels], EPS, None))


def top_losses(probs: Probabilities, top: int, rows: np.ndarray | None = None) -> np.ndarray:
    """The `top` rows (of `rows`, default all) with the highest loss, highest first."""
    rows = np.arange(len(probs.labels)) if rows is None else np.asarray(rows)
    return rows[np.argsort(-losses(probs)[rows], kind="stable")[:top]]


def label_issues(probs: Probabilities) -> list[LabelIssue]:
    """Rows whose given label is likely wrong, likeliest first: cleanlab's label quality scores (self-confidence)
    cut at its estimate of how many labels are wrong (the calibrated confident joint's off-diagonal), the recipe
    its documentation gives for a ranking. Empty when a class has fewer than two rows to estimate from."""
    if len(probs.labels) == 0 or np.bincount(probs.labels, minlength=len(probs.classes)).min() < 2:
        return []
    from cleanlab.count import num_label_issues  # only here: cleanlab loads scikit-learn and scipy
    from cleanlab.rank import get_label_quality_scores

    proba = probs.proba / probs.proba.sum(1, keepdims=True)  # cleanlab checks the rows sum to 1 to 1e-6
    scores = get_label_quality_scores(probs.labels, proba)
    count = num_label_issues(probs.labels, proba, estimation_method="off_diagonal_calibrated")
    suggested = proba.argmax(1)
    return [LabelIssue(probs.paths[r], probs.classes[probs.labels[r]], probs.classes[suggested[r]], float(scores[r]))
            for r in np.argsort(scores, kind="stable")[:count]]
