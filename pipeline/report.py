"""Reports people can look at: training curves and confusion matrices as PNGs, and a comparison table.

    from pipeline.report import build_reports
    rows = build_reports("runs/dvc")    # writes runs/dvc/reports/*.png; one row per trained model

Everything comes from what training saved (metrics/, heads/) and the feature cache; nothing is retrained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix, log_loss

from features import CacheError
from features.store import atomic_output

from .predict import class_probabilities
from .train import heads_dir, metrics_dir

TRAINING_CURVES = "training_curves.png"


@dataclass
class ModelReport:
    model: str
    split: str  # the validation split the numbers are on
    accuracy: float
    log_loss: float
    recall: dict[str, float]  # per class
    best_epoch: int
    epochs: int


def reports_dir(workdir: Path) -> Path:
    return Path(workdir) / "reports"


def build_reports(workdir: Path, device: str = "auto") -> list[ModelReport]:
    """(Re)write every model's confusion matrix and the page of training curves; one row per model."""
    workdir = Path(workdir)
    names = sorted(p.stem for p in heads_dir(workdir).glob("*.pt")) if heads_dir(workdir).is_dir() else []
    if not names:
        raise FileNotFoundError(f"no trained head in {heads_dir(workdir)}; run `cnnfeat train-head` or `cnnfeat run` first")
    folder = reports_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [_model_report(workdir, name, device) for name in names]
    _save(_training_curves(workdir, rows), folder / TRAINING_CURVES)
    return rows


def _model_report(workdir: Path, name: str, device: str) -> ModelReport:
    metrics = json.loads((metrics_dir(workdir) / f"{name}.json").read_text())
    split = metrics["val_split"]
    probs = class_probabilities(workdir, name, split, device)
    if not (len(probs.labels) and (probs.labels >= 0).all()):
        raise CacheError(f"split {split!r} has no labels; a report needs the labeled validation split")
    predicted = probs.proba.argmax(1)
    accuracy = float((predicted == probs.labels).mean())
    classes = list(probs.classes)
    matrix = confusion_matrix(probs.labels, predicted, labels=range(len(classes)))
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = matrix.diagonal() / matrix.sum(axis=1)
    figure = Figure(figsize=(2 + 0.6 * len(classes), 1.5 + 0.6 * len(classes)), layout="constrained")
    ConfusionMatrixDisplay(matrix, display_labels=classes).plot(ax=figure.add_subplot(), colorbar=False)
    figure.axes[0].set_title(f"{name} on {split}: accuracy {accuracy:.3f}")
    _save(figure, reports_dir(workdir) / f"confusion_{name}.png")
    return ModelReport(
        model=name, split=split, accuracy=accuracy,
        log_loss=float(log_loss(probs.labels, probs.proba, labels=range(len(classes)))),
        recall={c: float(r) for c, r in zip(classes, recall)},
        best_epoch=metrics["best_epoch"], epochs=metrics["epochs"],
    )


def _training_curves(workdir: Path, models: list[ModelReport]) -> Figure:
    """One row per model: loss and accuracy per epoch, training and validation, best epoch marked."""
    figure = Figure(figsize=(10, 2.6 * len(models)), layout="constrained")
    axes = figure.subplots(len(models), 2, squeeze=False)
    for row, model in zip(axes, models):
        history = pd.read_csv(metrics_dir(workdir) / f"{model.model}-history.csv")
        for ax, quantity in zip(row, ("loss", "accuracy")):
            ax.plot(history["epoch"], history[f"train_{quantity}"], label="train")
            ax.plot(history["epoch"], history[f"val_{quantity}"], label="validation")
            ax.axvline(model.best_epoch, color="grey", linestyle=":", label=f"kept: epoch {model.best_epoch}")
            ax.set(title=f"{model.model}: {quantity}", xlabel="epoch")
            ax.legend(fontsize="small")
    return figure


def _save(figure: Figure, path: Path) -> None:
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
