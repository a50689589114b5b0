"""Linear probes: multinomial logistic regression by full-batch L-BFGS, swept over its L2 strength.

    fit = sweep([X_train], y_train, [X_val], y_val, c_grid=C_GRID)     # X: standardised (N, D) tensors
    fit.weight, fit.bias, fit.c, fit.table

The protocol of the CLIP and DINOv2 linear evaluations: the regularisation strength is chosen on
held-out rows from a log grid, each fit warm-started from the previous one, from the strongest
regularisation to the weakest (a regularisation path: each start is close to its optimum). The objective is scikit-learn's, scaled by 1/n: the mean cross-entropy plus
||W||^2 / (2 C n), the bias unpenalised, so C means what it means in LogisticRegression.

A model may see several views of each image (plain and mirrored): it trains on all of them as
extra rows and predicts the mean of their probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from features import accuracy, log_loss

from .blend import view_proba

FLOAT64_LIMIT = 1 << 26  # feature values up to which probes compute in float64 (512 MiB); float32 beyond


@dataclass
class ProbeFit:
    weight: torch.Tensor  # (K, D)
    bias: torch.Tensor  # (K,)
    c: float
    table: list[dict[str, float]] = field(default_factory=list)  # one row per C tried


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
    x = torch.cat(views) if len(views) > 1 else views[0]
    y = labels.repeat(len(views)).to(x.device)
    batched = masks is not None
    rows = (masks if batched else torch.ones(1, len(labels), dtype=torch.bool)).to(x.device).repeat(1, len(views)).T
    problems = rows.shape[1]
    counts = rows.sum(0).to(x.dtype)  # (P,) training rows of each problem
    weight = torch.zeros(problems, n_classes, x.shape[1], dtype=x.dtype, device=x.device)
    bias = torch.zeros(problems, n_classes, dtype=x.dtype, device=x.device)
    if init is not None:
        weight.copy_(init[0].expand_as(weight))
        bias.copy_(init[1].expand_as(bias))
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-5, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        logits = (x @ weight.reshape(-1, x.shape[1]).T).view(len(x), problems, n_classes) + bias  # (R, P, K)
        losses = torch.logsumexp(logits, 2) - logits.gather(2, y.view(-1, 1, 1).expand(-1, problems, 1)).squeeze(2)
        loss = ((losses * rows).sum(0) / counts).sum() + (weight.pow(2).sum((1, 2)) / (2 * c * counts)).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    weight, bias = weight.detach(), bias.detach()
    return (weight, bias) if batched else (weight[0], bias[0])


def logits_of(views: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor) -> list[torch.Tensor]:
    return [torch.addmm(bias, x, weight.T) for x in views]


def out_of_fold(views: list[torch.Tensor], labels: torch.Tensor, n_classes: int, c: float, folds: torch.Tensor,
                n_folds: int, max_iter: int = 500) -> list[torch.Tensor]:
    """Each row's logits (per view) from the model fitted, at C, on the other folds; all folds in one solve.

    Every fold starts from zero: started from the fit on all rows, a weakly regularised fold stops
    at once, still fitting the rows it is meant not to have seen (its out-of-fold predictions would
    be perfect, and worthless).
    """
    masks = torch.stack([folds != fold for fold in range(n_folds)])
    weight, bias = fit_logistic(views, labels, n_classes, c, None, max_iter, masks)
    oof = []
    for x in views:
        every = (x @ weight.reshape(-1, x.shape[1]).T).view(len(x), n_folds, n_classes) + bias  # (N, P, K)
        oof.append(every.gather(1, folds.view(-1, 1, 1).expand(-1, 1, n_classes)).squeeze(1).double().cpu())
    return oof


def sweep(train: list[torch.Tensor], train_labels: torch.Tensor, val: list[torch.Tensor], val_labels: torch.Tensor,
          n_classes: int, c_grid: tuple[float, ...], max_iter: int = 500) -> ProbeFit:
    """Fit every C of the grid, warm-starting each from the last; keep the one held-out rows prefer.

    Preferred: the best validation accuracy, as the CLIP and DINOv2 probes choose, and among equals
    the lowest validation log loss (the model's temperature, fitted afterwards, repairs the rest).
    """
    fits, table, init = [], [], None
    for c in sorted(c_grid):
        init = fit_logistic(train, train_labels, n_classes, c, init, max_iter)
        val_proba = view_proba(logits_of(val, *init))
        train_proba = view_proba(logits_of(train, *init))
        table.append({"C": c, "val_log_loss": log_loss(val_proba, val_labels), "val_accuracy": accuracy(val_proba, val_labels),
                      "train_log_loss": log_loss(train_proba, train_labels), "train_accuracy": accuracy(train_proba, train_labels)})
        fits.append(init)
    chosen = max(range(len(table)), key=lambda i: (table[i]["val_accuracy"], -table[i]["val_log_loss"]))
    for i, row in enumerate(table):
        row["chosen"] = i == chosen
    return ProbeFit(fits[chosen][0], fits[chosen][1], table[chosen]["C"], table)
