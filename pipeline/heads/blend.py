"""What is built on held-out evidence: calibration, ensemble selection, blends of probabilities.

    t = fit_temperature([oof_logits], labels)                       # Guo et al. 2017
    weights = greedy_selection({"a": proba_a, "b": proba_b}, labels)  # Caruana et al. 2004

Probabilities here are float64 tensors (N, classes) whose rows sum to 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from features import EPS, log_loss


def view_proba(logits: list[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """The mean over views of softmax(logits / T): test-time augmentation when there are several views."""
    return torch.stack([torch.softmax(x.double() / temperature, dim=1) for x in logits]).mean(0)


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
        nll = F.nll_loss(proba.clamp_min(EPS).log(), y)
        doubt = -(1 - proba.max(1).values).clamp_min(EPS).log().mean()  # as if the predicted class were wrong
        loss = (1 - smoothing) * nll + smoothing * doubt + log_t.pow(2) / (2 * len(y))
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) else 1.0


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
