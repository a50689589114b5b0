"""Held-out evidence and what is built on it: folds, calibration, ensemble selection.

    folds = stratified_folds(labels, k=5, seed=0)                 # a fold number per training row
    t = fit_temperature([oof_logits], labels)                       # Guo et al. 2017
    weights = greedy_selection({"a": proba_a, "b": proba_b}, labels)  # Caruana et al. 2004

Probabilities here are float64 tensors (N, classes) whose rows sum to 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch

EPS = 1e-15  # scikit-learn's clip for log loss


def view_proba(logits: list[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """The mean over views of softmax(logits / T): test-time augmentation when there are several views."""
    return torch.stack([torch.softmax(x.double() / temperature, dim=1) for x in logits]).mean(0)


def log_loss(proba: torch.Tensor, labels: torch.Tensor) -> float:
    picked = proba[torch.arange(len(labels)), labels.to(proba.device)]
    return float(-picked.clamp_min(EPS).log().mean())


def accuracy(proba: torch.Tensor, labels: torch.Tensor) -> float:
    return float((proba.argmax(1).cpu() == labels.cpu()).double().mean())


def fit_temperature(logits: list[torch.Tensor], labels: torch.Tensor) -> float:
    """The T > 0 that minimises the log loss of view_proba(logits, T); accuracy stays as it is.

    Two weak priors keep T where the rows can tell it. log T ~ N(0, 1) pulls it to 1. And each
    row counts as if its predicted class were wrong 1/(n + 1) of the time: n rows without a mistake
    are consistent with an error rate near 1/n (the "rule of one"), so where the log loss alone
    would sharpen towards certainty and make the next mistake cost dearly, confidence stops near
    1 - 1/n. Both vanish as n grows.
    """
    views = [x.detach().double() for x in logits]
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")
    y = labels.to(views[0].device)
    smoothing = 1 / (len(y) + 1)

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        proba = torch.stack([torch.softmax(x / log_t.exp(), dim=1) for x in views]).mean(0)
        nll = -proba[torch.arange(len(y)), y].clamp_min(EPS).log().mean()
        doubt = -(1 - proba.max(1).values).clamp_min(EPS).log().mean()  # as if the predicted class were wrong
        loss = (1 - smoothing) * nll + smoothing * doubt + log_t.pow(2) / (2 * len(y))
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) else 1.0


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, int]:
    """(fold number of each row, number of folds): each class dealt round-robin over the folds after a
    seeded shuffle. Fewer folds when a class has fewer rows than k; 0 folds when one has a single row."""
    counts = np.bincount(labels[labels >= 0]) if len(labels) else np.zeros(0, dtype=int)
    k = min(k, int(counts[counts > 0].min())) if (counts > 0).any() else 0
    folds = np.zeros(len(labels), dtype=np.int64)
    if k < 2:
        return folds, 0
    rng = np.random.default_rng(seed)
    for label in np.flatnonzero(counts):
        rows = np.flatnonzero(labels == label)
        folds[rng.permutation(rows)] = np.arange(len(rows)) % k
    return folds, k


def greedy_selection(probas: dict[str, torch.Tensor], labels: torch.Tensor, rounds: int = 50) -> dict[str, float]:
    """Forward selection with replacement (Caruana et al.): start from the best model, add whichever
    model lowers the log loss of the running average most, stop when none does. Weights sum to 1."""
    names = list(probas)
    chosen: list[str] = []
    total = torch.zeros_like(next(iter(probas.values())))
    best = math.inf
    for _ in range(rounds):
        scores = {name: log_loss((total + probas[name]) / (len(chosen) + 1), labels) for name in names}
        name = min(scores, key=scores.__getitem__)
        if scores[name] >= best - 1e-12:
            break
        best = scores[name]
        chosen.append(name)
        total = total + probas[name]
    return {name: chosen.count(name) / len(chosen) for name in dict.fromkeys(chosen)}


def blend_proba(probas: list[torch.Tensor], weights: list[float], temperature: float = 1.0) -> torch.Tensor:
    """sum_i w_i p_i, then sharpened or softened by T: softmax(log p / T)."""
    mixed = sum(w * p for w, p in zip(weights, probas))
    return view_proba([mixed.clamp_min(EPS).log()], temperature)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A mask of rows to hold out: the same share of every class (at least one row of each class
    that has two or more), drawn with the seed."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        if len(rows) >= 2:
            held[rows[: min(max(1, round(len(rows) * fraction)), len(rows) - 1)]] = True
    return held
