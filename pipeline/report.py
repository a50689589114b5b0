"""Reports people can look at: training curves and confusion matrices as PNGs, and a comparison table.

    from pipeline.report import build_reports
    report = build_reports("runs/dvc")    # writes runs/dvc/reports/*.png; one row per up-to-date model

Everything comes from what training saved (metrics/<name>.json, -history.csv, -valid.csv):
nothing is retrained or re-predicted, and no torch is loaded. A model whose inputs changed since
it was trained is left out, with a note, rather than shown with numbers that no longer hold.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from features import (CacheError, FeatureCache, MissingInputError, accuracy, atomic_output, cache_path, log_loss,
                      writes_workdir)

from .outputs import metrics_dir, read_metrics, trained_models
from .status import staleness

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TRAINING_CURVES = "training_curves.png"


@dataclass
class ModelReport:
    model: str
    split: str  # the validation rows the numbers are on
    accuracy: float
    log_loss: float
    recall: dict[str, float]  # per class
    chosen: str  # what was chosen on those rows: "C=0.1", "epoch 12 of 22", "2 members"


@dataclass
class Report:
    models: list[ModelReport] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (model, why it is left out)


def reports_dir(workdir: Path) -> Path:
    return Path(workdir) / "reports"


@writes_workdir
def build_reports(workdir: Path) -> Report:
    """(Re)write every up-to-date model's confusion matrix and the page of training curves."""
    workdir = Path(workdir)
    names = trained_models(workdir)
    if not names:
        raise MissingInputError(f"no trained model in {metrics_dir(workdir)}; run `cnnfeat train-head` or `cnnfeat run` first")
    report = Report()
    stale = _stale(workdir, names)
    folder = reports_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if stale.get(name):
            report.skipped.append((name, stale[name]))
            continue
        try:
            report.models.append(_model_report(workdir, name))
        except (OSError, ValueError, KeyError) as err:
            report.skipped.append((name, f"its metrics are incomplete ({type(err).__name__}: {err}); retrain it"))
    _save(_training_curves(workdir, [m.model for m in report.models]), folder / TRAINING_CURVES)
    return report


def _stale(workdir: Path, names: list[str]) -> dict[str, str]:
    try:
        with FeatureCache(cache_path(workdir)) as cache:
            return {name: staleness(cache, workdir, name) for name in names}
    except CacheError:  # no cache to compare with: show what training measured
        return {}


def _model_report(workdir: Path, name: str) -> ModelReport:
    metrics = read_metrics(workdir, name)
    classes = list(metrics["classes"])
    rows = list(csv.reader((metrics_dir(workdir) / f"{name}-valid.csv").read_text().splitlines()))[1:]
    labels = np.array([classes.index(row[1]) for row in rows])
    proba = np.array([[float(v) for v in row[2:]] for row in rows]).reshape(len(rows), len(classes))
    predicted = proba.argmax(1)
    matrix = np.bincount(labels * len(classes) + predicted, minlength=len(classes) ** 2).reshape(len(classes), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = matrix.diagonal() / matrix.sum(axis=1)
    correct = accuracy(proba, labels) if len(labels) else float("nan")
    _save(_confusion(matrix, classes, f"{name}: accuracy {correct:.3f}"), reports_dir(workdir) / f"confusion_{name}.png")
    return ModelReport(name, metrics["val_split"], correct, log_loss(proba, labels), dict(zip(classes, recall.tolist())),
                       _chosen(metrics))


def _chosen(metrics: dict) -> str:
    if "members" in metrics:
        return " + ".join(f"{w:.2f} {n}" for n, w in metrics["members"].items())
    chosen = metrics.get("chosen", {})
    if "C" in chosen:
        return f"C={chosen['C']:g}"
    return f"epoch {chosen.get('epochs', '?')}"


def _confusion(matrix: np.ndarray, classes: list[str], title: str) -> "Figure":
    from matplotlib.figure import Figure  # only here: matplotlib takes a second to import

    size = len(classes)
    figure = Figure(figsize=(2 + 0.6 * size, 1.5 + 0.6 * size), layout="constrained")
    ax = figure.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    ax.set(xticks=range(size), yticks=range(size), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title=title)
    return figure


# history columns <prefix>_loss / <prefix>_accuracy: a probe's sweep has out-of-fold ones, Adam's epochs the
# training rows' and those of the fold that stopped it, fine-tuning's those of the holdout of train that did
CURVES = (("train", "train"), ("out-of-fold", "oof"), ("held-out fold", "fold"), ("holdout of train", "holdout"))


def _training_curves(workdir: Path, names: list[str]) -> "Figure":
    """One row per model: loss and accuracy per epoch (or per C of a probe's sweep) on the rows that chose it."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 2.6 * max(1, len(names))), layout="constrained")
    axes = figure.subplots(max(1, len(names)), 2, squeeze=False)
    for row, name in zip(axes, names):
        path = metrics_dir(workdir) / f"{name}-history.csv"
        history = list(csv.DictReader(path.read_text().splitlines())) if path.exists() else []
        if not history:  # best: a blend, nothing trained step by step
            row[0].set_axis_off()
            row[1].set_axis_off()
            row[0].set_title(f"{name}: a blend of other models")
            continue
        by_c = "C" in history[0]
        x = [float(h["C" if by_c else "epoch"]) for h in history]
        kept = next((xi for xi, h in zip(x, history) if h.get("chosen") == "True"), None)
        for ax, quantity in zip(row, ("loss", "accuracy")):
            for label, prefix in CURVES:
                if f"{prefix}_{quantity}" in history[0]:
                    ax.plot(x, [float(h[f"{prefix}_{quantity}"]) for h in history], label=label)
            if kept is not None:
                ax.axvline(kept, color="grey", linestyle=":", label=f"kept: {'C=' if by_c else 'epoch '}{kept:g}")
            ax.set(title=f"{name}: {quantity}", xlabel="C (inverse L2 strength)" if by_c else "epoch",
                   xscale="log" if by_c else "linear")
            ax.legend(fontsize="small")
    return figure


def _save(figure: "Figure", path: Path) -> None:
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
