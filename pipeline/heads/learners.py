"""How a head is fitted to cached features: tuned on the validation rows, then refitted as asked.

    learner = learner_for("linear", "resnet34", train_tables, val_tables, n_classes, cfg, device)
    head, history = learner.tune()              # C swept (probes) or epochs early-stopped (Adam)
    oof = learner.out_of_fold(folds, k)         # each training row's logits from the other folds' model

Probes whose features fit in memory are solved by full-batch L-BFGS; the three-branch head, and a
probe whose features must stream from the HDF5 file, by minibatch Adam.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from features import accuracy, log_loss

from .blend import view_proba
from .config import ENSEMBLE, HeadConfig
from .models import FeatureHead, build_head, head_logits
from .probe import fit_logistic, out_of_fold, probe_dtype, sweep
from .table import FeatureTable, stats


class Learner:
    """How one candidate is fitted: tuned on the validation rows, then refitted as asked with what was chosen."""

    def __init__(self, kind: str, name: str, train: list[FeatureTable], val: list[FeatureTable], n_classes: int,
                 cfg: HeadConfig, device: torch.device) -> None:
        self.kind, self.name, self.train, self.val, self.n_classes, self.cfg, self.device = (
            kind, name, train, val, n_classes, cfg, device)
        self.params = {"hidden": cfg.hidden, "dropout": cfg.dropout} if kind == ENSEMBLE else {}
        self.stats = stats(train[:1])  # the plain view's training rows standardise every view
        self.chosen: dict[str, float] = {}

    def new_head(self, head_stats: dict) -> FeatureHead:
        head = build_head(self.kind, self.train[0].feature_dims, self.n_classes, **self.params)
        head.set_stats(head_stats)
        return head.to(self.device)

    def logits(self, head: FeatureHead, tables: list[FeatureTable]) -> list[torch.Tensor]:
        return [head_logits(head, table, self.device) for table in tables]


class ProbeLearner(Learner):
    """Full-batch L-BFGS on standardised features held in memory, C swept on the validation rows."""

    def _designs(self, head: FeatureHead, tables: list[FeatureTable], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Standardised features, in float64 unless too big (or in `dtype`, the training rows' choice)."""
        with torch.no_grad():  # not inference_mode: L-BFGS differentiates through these when they stay float32
            designs = [head.design({k: v.to(self.device) for k, v in t.in_memory.items()}) for t in tables]
        return [x.to(dtype or probe_dtype(designs)) for x in designs]

    def tune(self) -> tuple[FeatureHead, list[dict]]:
        head = self.new_head(self.stats)
        self.x_train = self._designs(head, self.train)
        x_val = self._designs(head, self.val, self.x_train[0].dtype)
        fit = sweep(self.x_train, self.train[0].labels, x_val, self.val[0].labels, self.n_classes,
                    self.cfg.c_grid, self.cfg.max_iter)
        self.fit, self.chosen = fit, {"C": fit.c}
        _set_linear(head, fit.weight, fit.bias)
        return head, fit.table

    def out_of_fold(self, folds: np.ndarray, n_folds: int) -> list[torch.Tensor]:
        return out_of_fold(self.x_train, self.train[0].labels, self.n_classes, self.fit.c,
                           torch.from_numpy(folds).to(self.device), n_folds, self.cfg.max_iter)

    def refit(self, parts: list[FeatureTable]) -> FeatureHead:
        head = self.new_head(stats(parts[:1]))
        weight, bias = fit_logistic(self._designs(head, parts), parts[0].labels, self.n_classes, self.fit.c,
                                    (self.fit.weight, self.fit.bias), self.cfg.max_iter)
        _set_linear(head, weight, bias)
        return head


def _set_linear(head: FeatureHead, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        head.fc.weight.copy_(weight)
        head.fc.bias.copy_(bias)


class AdamLearner(Learner):
    """Minibatch Adam, early-stopped on validation loss: the book's way, for the three-branch head
    (and for a probe whose features do not fit in memory); any table size, streamed if need be."""

    def tune(self) -> tuple[FeatureHead, list[dict]]:
        torch.manual_seed(self.cfg.seed)
        head = self.new_head(self.stats)
        history = self._epochs(head, self.train, self.cfg.epochs, self.val)
        best = min(range(len(history)), key=lambda i: history[i]["val_loss"])
        head.load_state_dict(self._best_state)
        self.chosen = {"epochs": best + 1}
        return head, history

    def _epochs(self, head: FeatureHead, tables: list[FeatureTable], epochs: int,
                val: list[FeatureTable] | None = None) -> list[dict]:
        """Adam for `epochs` epochs; with validation tables, stop after `patience` epochs without a better
        validation loss and keep the best epoch's weights in self._best_state."""
        # fused: one kernel per step instead of a dozen small ones; most of a small head's step time
        optimizer = torch.optim.Adam(head.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, fused=True)
        generator = torch.Generator().manual_seed(self.cfg.seed)
        history: list[dict] = []
        best_loss, best_epoch = math.inf, 0
        rows = sum(len(t) for t in tables)
        for epoch in range(1, epochs + 1):
            head.train()
            loss_sum = correct = torch.zeros((), device=self.device)  # summed on the device: no sync per step
            for table in tables:
                for inputs, labels in table.batches(self.cfg.batch_size, generator):
                    labels = labels.to(self.device, non_blocking=True)
                    logits = head({name: x.to(self.device, non_blocking=True) for name, x in inputs.items()})
                    loss = F.cross_entropy(logits, labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum = loss_sum + loss.detach() * len(labels)
                    correct = correct + (logits.argmax(1) == labels).sum()
            row = {"epoch": epoch, "train_loss": loss_sum.item() / rows, "train_accuracy": correct.item() / rows}
            if val is not None:
                proba = view_proba(self.logits(head, val))
                row.update(val_loss=log_loss(proba, val[0].labels), val_accuracy=accuracy(proba, val[0].labels))
                if row["val_loss"] < best_loss:
                    best_loss, best_epoch, self._best_state = row["val_loss"], epoch, copy.deepcopy(head.state_dict())
            history.append(row)
            if val is not None and epoch - best_epoch >= self.cfg.patience:
                break
        return history

    def _trained(self, tables: list[FeatureTable], head_stats: dict) -> FeatureHead:
        torch.manual_seed(self.cfg.seed)
        head = self.new_head(head_stats)
        self._epochs(head, tables, int(self.chosen["epochs"]))
        return head

    def out_of_fold(self, folds: np.ndarray, n_folds: int) -> list[torch.Tensor]:
        oof = [torch.empty(len(folds), self.n_classes, dtype=torch.float64) for _ in self.train]
        for fold in range(n_folds):
            held = np.flatnonzero(folds == fold)
            head = self._trained([t.subset(np.flatnonzero(folds != fold)) for t in self.train], self.stats)
            for view, logits in enumerate(self.logits(head, [t.subset(held) for t in self.train])):
                oof[view][held] = logits
        return oof

    def refit(self, parts: list[FeatureTable]) -> FeatureHead:
        return self._trained(parts, stats(parts[:1]))


def learner_for(kind: str, name: str, train: list[FeatureTable], val: list[FeatureTable], n_classes: int,
                cfg: HeadConfig, device: torch.device) -> Learner:
    """L-BFGS for a probe whose features fit in memory, else Adam."""
    in_memory = all(t.in_memory is not None for t in (*train, *val))
    learner = ProbeLearner if kind == "linear" and in_memory else AdamLearner
    return learner(kind, name, train, val, n_classes, cfg, device)
