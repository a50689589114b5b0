"""How a head is fitted to cached features: every choice made on folds of the training rows.

    learner = learner_for("lbfgs", "linear", "resnet34", train_tables, n_classes, cfg, device)
    head, history, oof = learner.fit(folds, k)  # C swept (probes) or epochs early-stopped (Adam) on folds
    head = learner.refit(parts)                 # the chosen configuration on other rows (--refit)

No validation row is seen: `oof` holds each training row's logits from a model that did not see it,
which is what calibrates the model and lets `best` choose. Probes whose features fit in memory are
solved by full-batch L-BFGS; the three-branch head, and a probe whose features must stream from the
HDF5 file, by minibatch Adam.
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
from .models import FeatureHead, HeadError, build_head, head_logits
from .probe import fit_logistic, probe_dtype, sweep
from .table import FeatureTable, stats

Fit = tuple[FeatureHead, list[dict], list[torch.Tensor] | None]  # head, history, out-of-fold logits per view


class Learner:
    """How one candidate is fitted: chosen on folds of the training rows, then refitted as asked with what was chosen."""

    def __init__(self, kind: str, name: str, train: list[FeatureTable], n_classes: int, cfg: HeadConfig,
                 device: torch.device) -> None:
        self.kind, self.name, self.train, self.n_classes, self.cfg, self.device = (
            kind, name, train, n_classes, cfg, device)
        self.params = {"hidden": cfg.hidden, "dropout": cfg.dropout} if kind == ENSEMBLE else {}
        self.stats = stats(train[:1])  # the plain view's training rows standardise every view
        self.chosen: dict[str, float] = {}
        self.evidence = "nothing: too few training rows per class for folds, so the defaults were used"

    def new_head(self, head_stats: dict) -> FeatureHead:
        head = build_head(self.kind, self.train[0].feature_dims, self.n_classes, **self.params)
        head.set_stats(head_stats)
        return head.to(self.device)

    def logits(self, head: FeatureHead, tables: list[FeatureTable]) -> list[torch.Tensor]:
        return [head_logits(head, table, self.device) for table in tables]


class ProbeLearner(Learner):
    """Full-batch L-BFGS on standardised features held in memory, C swept on out-of-fold predictions."""

    def _designs(self, head: FeatureHead, tables: list[FeatureTable]) -> list[torch.Tensor]:
        """Standardised features, in float64 unless too big."""
        designs = [_design(head, table, self.device) for table in tables]
        return [x.to(probe_dtype(designs)) for x in designs]

    def fit(self, folds: np.ndarray, n_folds: int) -> Fit:
        head = self.new_head(self.stats)
        self.probe = sweep(self._designs(head, self.train), self.train[0].labels, self.n_classes, self.cfg.c_grid,
                           torch.from_numpy(folds), n_folds, self.cfg.max_iter)
        self.chosen = {"C": self.probe.c}
        if n_folds:
            self.evidence = f"out-of-fold predictions on the training rows ({n_folds} folds)"
        _set_linear(head, self.probe.weight, self.probe.bias)
        return head, self.probe.table, self.probe.oof

    def refit(self, parts: list[FeatureTable]) -> FeatureHead:
        head = self.new_head(stats(parts[:1]))
        weight, bias = fit_logistic(self._designs(head, parts), parts[0].labels, self.n_classes, self.probe.c,
                                    (self.probe.weight, self.probe.bias), self.cfg.max_iter)
        _set_linear(head, weight, bias)
        return head


def _design(head: FeatureHead, table: FeatureTable, device: torch.device, block_rows: int = 2048) -> torch.Tensor:
    """head.design of every row, standardised a block of rows at a time into one tensor: standardising all
    rows at once held each backbone's standardised copy beside the concatenation, the stage's peak memory."""
    design = torch.empty(len(table), head.fc.in_features, device=device)
    with torch.no_grad():  # data for the solver, whose gradient is written by hand: no graph to keep
        for start, (inputs, _) in zip(range(0, len(table), block_rows), table.batches(block_rows)):
            block = head.design({name: x.to(device) for name, x in inputs.items()})
            design[start:start + len(block)] = block
    return design


def _set_linear(head: FeatureHead, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        head.fc.weight.copy_(weight)
        head.fc.bias.copy_(bias)


class AdamLearner(Learner):
    """Minibatch Adam, the book's way, for the three-branch head (and for a probe whose features do not
    fit in memory); any table size, streamed if need be. The epochs are chosen by early stopping on
    the first fold of the training rows, then every fold's model and the final one train that long."""

    def fit(self, folds: np.ndarray, n_folds: int) -> Fit:
        if not n_folds:  # nothing to stop on: the whole --epochs
            self.chosen = {"epochs": self.cfg.epochs}
            return self._trained(self.train, self.stats), [], None
        oof = [torch.empty(len(folds), self.n_classes, dtype=torch.float64) for _ in self.train]
        held, rest = np.flatnonzero(folds == 0), np.flatnonzero(folds != 0)
        torch.manual_seed(self.cfg.seed)
        head = self.new_head(self.stats)
        history = self._epochs(head, [t.subset(rest) for t in self.train], self.cfg.epochs,
                               [t.subset(held) for t in self.train])
        chosen = min(range(len(history)), key=lambda i: history[i]["fold_loss"])
        for i, row in enumerate(history):
            row["chosen"] = i == chosen
        self.chosen = {"epochs": chosen + 1}
        self.evidence = f"early stopping on one of {n_folds} folds of the training rows"
        head.load_state_dict(self._best_state)  # fold 0's model at the chosen epoch: its out-of-fold logits
        for fold in range(n_folds):
            held = np.flatnonzero(folds == fold)
            if fold:
                head = self._trained([t.subset(np.flatnonzero(folds != fold)) for t in self.train], self.stats)
            for view, logits in enumerate(self.logits(head, [t.subset(held) for t in self.train])):
                oof[view][held] = logits
        return self._trained(self.train, self.stats), history, oof

    def _epochs(self, head: FeatureHead, tables: list[FeatureTable], epochs: int,
                held: list[FeatureTable] | None = None) -> list[dict]:
        """Adam for `epochs` epochs; with held-out tables, stop after `patience` epochs without a better
        loss on them and keep the best epoch's weights in self._best_state."""
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
            if not math.isfinite(row["train_loss"]):
                raise HeadError(f"{self.name}: the training loss became {row['train_loss']} in epoch {epoch}; the "
                                f"learning rate is likely too high for these features: try a lower --lr (now {self.cfg.lr:g})")
            if held is not None:
                proba = view_proba(self.logits(head, held))
                row.update(fold_loss=log_loss(proba, held[0].labels), fold_accuracy=accuracy(proba, held[0].labels))
                if row["fold_loss"] < best_loss:
                    best_loss, best_epoch, self._best_state = row["fold_loss"], epoch, copy.deepcopy(head.state_dict())
            history.append(row)
            if held is not None and epoch - best_epoch >= self.cfg.patience:
                break
        return history

    def _trained(self, tables: list[FeatureTable], head_stats: dict) -> FeatureHead:
        torch.manual_seed(self.cfg.seed)
        head = self.new_head(head_stats)
        self._epochs(head, tables, int(self.chosen["epochs"]))
        return head

    def refit(self, parts: list[FeatureTable]) -> FeatureHead:
        return self._trained(parts, stats(parts[:1]))


LEARNERS = {"lbfgs": ProbeLearner, "adam": AdamLearner}  # by the solver heads.status chose for the model's key


def learner_for(solver: str, kind: str, name: str, train: list[FeatureTable], n_classes: int, cfg: HeadConfig,
                device: torch.device) -> Learner:
    return LEARNERS[solver](kind, name, train, n_classes, cfg, device)
