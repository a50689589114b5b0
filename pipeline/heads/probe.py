"""Linear probes: multinomial logistic regression by full-batch L-BFGS, swept over its L2 strength.

    fit = sweep([X_train], y_train, n_classes, C_GRID, folds, k)     # X: standardised (N, D) tensors
    fit.weight, fit.bias, fit.c, fit.table, fit.oof

The protocol of the CLIP and DINOv2 linear evaluations, with the held-out rows taken from the
training rows by cross-validation (scikit-learn's LogisticRegressionCV): the regularisation strength
is chosen from a log grid on out-of-fold predictions, each fit warm-started from the previous one,
from the strongest regularisation to the weakest. No validation row chooses anything, so the
validation numbers reported afterwards are honest. The objective is scikit-learn's, scaled by 1/n:
the mean cross-entropy plus ||W||^2 / (2 C n), the bias unpenalised, so C means what it means in
LogisticRegression.

A model may see several views of each image (plain and mirrored): it trains on all of them as
extra rows and predicts the mean of their probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from features import accuracy, log_loss

from .blend import view_proba
from .config import UNTUNED_C

# feature values up to which probes compute in float64 (128 MiB), float32 beyond: past a few million values the
# float64 design's copy and its doubled memory traffic cost more than its digits (25,000 x 2048: 410 MiB, and
# the slowest fit of the stage) while float32 L-BFGS reaches the same accuracy
FLOAT64_LIMIT = 1 << 24


@dataclass
class ProbeFit:
    weight: torch.Tensor  # (K, D)
    bias: torch.Tensor  # (K,)
    c: float
    table: list[dict[str, float]] = field(default_factory=list)  # one row per C tried
    oof: list[torch.Tensor] | None = None  # each training row's logits (per view) at C from the model without its fold


def probe_dtype(views: list[torch.Tensor]) -> torch.dtype:
    """float64 where it fits (exact enough to match scikit-learn to the last image), float32 for big tables."""
    return torch.float64 if sum(x.numel() for x in views) <= FLOAT64_LIMIT else torch.float32


def fit_logistic(views: list[torch.Tensor], labels: torch.Tensor, n_classes: int, c: float,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None, max_iter: int = 500,
                 masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) minimising mean cross-entropy over every view's rows + ||W||^2 / (2 C n).

    With masks (P, N) of rows, P independent problems (cross-validation folds, say) are solved at
    once, each on its own rows: one pass over the features serves them all, as a matrix product
    of P times the width costs little more than one when it is memory that limits. Then weight is
    (P, K, D) and bias (P, K).
    """
    x0 = views[0]
    batched = masks is not None
    rows = (masks if batched else torch.ones(1, len(labels), dtype=torch.bool)).to(x0.device).T.to(x0.dtype)  # (N, P)
    problems = rows.shape[1]
    counts = rows.sum(0) * len(views)  # (P,) training rows of each problem; every view of an image is a row
    share = rows / counts  # (N, P): each row's weight in its problems' mean
    y = labels.to(x0.device)
    weight = torch.zeros(problems, n_classes, x0.shape[1], dtype=x0.dtype, device=x0.device)
    bias = torch.zeros(problems, n_classes, dtype=x0.dtype, device=x0.device)
    if init is not None:
        weight.copy_(init[0].expand_as(weight))
        bias.copy_(init[1].expand_as(bias))
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-5, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    @torch.no_grad()
    def objective() -> torch.Tensor:
        """The loss, its gradient written by hand a block of rows at a time: autograd over every row at
        once kept several (rows, problems, classes) tensors alive, most of the memory at a million rows."""
        loss = (weight.pow(2).sum((1, 2)) / (2 * c * counts)).sum()
        weight.grad = weight / (c * counts).view(-1, 1, 1)
        bias.grad = torch.zeros_like(bias)
        for x in views:
            for block in _blocks(len(x)):
                logits = (x[block] @ weight.view(-1, x.shape[1]).T).view(-1, problems, n_classes) + bias
                label = y[block].view(-1, 1, 1).expand(-1, problems, 1)
                log_proba = logits - torch.logsumexp(logits, 2, keepdim=True)
                loss -= (log_proba.gather(2, label).squeeze(2) * share[block]).sum()
                residual = log_proba.exp_().scatter_add_(2, label, torch.full_like(log_proba[..., :1], -1.0))
                residual *= share[block].unsqueeze(2)  # d loss / d logits: (softmax - one-hot) x the row's share
                weight.grad += (residual.view(len(residual), -1).T @ x[block]).view_as(weight)
                bias.grad += residual.sum(0)
        return loss

    optimizer.step(objective)
    return (weight, bias) if batched else (weight[0], bias[0])


def _blocks(n_rows: int, block_rows: int = 65536) -> list[slice]:
    """Row blocks that bound the (rows, problems, classes) intermediates; large enough for full-speed products."""
    return [slice(start, start + block_rows) for start in range(0, n_rows, block_rows)]


def logits_of(views: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor) -> list[torch.Tensor]:
    return [torch.addmm(bias, x, weight.T) for x in views]


def fold_logits(views: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor, folds: torch.Tensor) -> list[torch.Tensor]:
    """Each row's logits (per view) from the solution of the problem that held its fold out: weight (P, K, D)."""
    problems, n_classes = bias.shape
    oof = []
    for x in views:
        view_oof = torch.empty(len(x), n_classes, dtype=torch.float64)
        for block in _blocks(len(x)):
            every = (x[block] @ weight.view(-1, x.shape[1]).T).view(-1, problems, n_classes) + bias  # (B, P, K)
            view_oof[block] = every.gather(1, folds[block].view(-1, 1, 1).expand(-1, 1, n_classes)).squeeze(1)  # to float64 CPU
        oof.append(view_oof)
    return oof


def sweep(train: list[torch.Tensor], labels: torch.Tensor, n_classes: int, c_grid: tuple[float, ...],
          folds: torch.Tensor, n_folds: int, max_iter: int = 500) -> ProbeFit:
    """C chosen on out-of-fold predictions of the training rows, as LogisticRegressionCV does; then one fit on them all.

    Every C of the grid is fitted on the k-1 folds of each of the k problems at once, warm-started from
    the last C's solution of the same problem (a regularisation path: each start is close to its optimum,
    and no problem ever starts from weights that saw its held-out fold). Preferred: the best out-of-fold
    accuracy, as the CLIP and DINOv2 probes choose, and among equals the lowest out-of-fold log loss.
    The chosen C's out-of-fold logits come free: they calibrate the model and let `best` choose.
    Without folds (a class with a single row) nothing can choose: C is UNTUNED_C and there are no
    out-of-fold logits.

    The fold problems only choose C, so they are solved in float32 whatever the probe's dtype (a float32
    copy of float64 features); the final fit stays in the probe's dtype. Measured on 25,000 x 2048
    features, one thread: the float64 sweep took 444.6 s, the float32 one 194.7 s, with the same C chosen
    and out-of-fold accuracy equal to 1e-4.
    """
    if not n_folds:
        weight, bias = fit_logistic(train, labels, n_classes, UNTUNED_C, None, max_iter)
        return ProbeFit(weight, bias, UNTUNED_C, [{"C": UNTUNED_C, "chosen": True}])
    choosing = [x.float() for x in train]  # no copy when the probe is float32 already
    masks = torch.stack([folds != fold for fold in range(n_folds)])
    table: list[dict] = []
    init = kept = None  # kept: (score, C, fold solutions, out-of-fold logits) of the preferred C so far
    for c in sorted(c_grid):
        init = fit_logistic(choosing, labels, n_classes, c, init, max_iter, masks)
        oof = fold_logits(choosing, *init, folds.to(train[0].device))
        proba = view_proba(oof)
        table.append({"C": c, "oof_loss": log_loss(proba, labels), "oof_accuracy": accuracy(proba, labels)})
        score = (table[-1]["oof_accuracy"], -table[-1]["oof_loss"])
        if kept is None or score > kept[0]:
            kept = (score, c, init, oof)
    _, c, (fold_weight, fold_bias), oof = kept
    for row in table:
        row["chosen"] = row["C"] == c
    # started from the folds' average, which is near the optimum on all rows (copied into the probe's dtype)
    weight, bias = fit_logistic(train, labels, n_classes, c, (fold_weight.mean(0), fold_bias.mean(0)), max_iter)
    return ProbeFit(weight, bias, c, table, oof)
