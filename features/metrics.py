"""The numbers every part reports about class probabilities: accuracy, log loss, class frequencies.

    log_loss(proba, labels)     # proba (N, classes) rows summing to 1; numpy arrays or CPU tensors

One definition, used by the heads, fine-tuning, the reports and the benchmarks. Imports no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-15  # scikit-learn's clip for log loss


def log_loss(proba: Any, labels: Any) -> float:
    """Mean -log p(true class), each probability clipped at EPS, as scikit-learn's log_loss."""
    proba, labels = np.asarray(proba), np.asarray(labels)
    picked = proba[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, EPS, None)).mean())


def accuracy(proba: Any, labels: Any) -> float:
    return float((np.asarray(proba).argmax(1) == np.asarray(labels)).mean())


def class_prior(labels: Any, n_classes: int) -> list[float]:
    """Each class's share of the rows: what a file that cannot be decoded is predicted to be."""
    labels = np.asarray(labels)
    return (np.bincount(labels, minlength=n_classes) / max(len(labels), 1)).tolist()
