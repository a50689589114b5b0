"""The report's pictures drawn with matplotlib: a confusion matrix per model and every model's training curves.

    save_figure(training_curves(workdir, ["resnet34", "best"]), reports / TRAINING_CURVES)

matplotlib is imported inside the functions: it takes a second, and `cnnfeat info` never needs it.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from features import atomic_output

from ..outputs import metrics_dir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TRAINING_CURVES = "training_curves.png"


def confusion_figure(matrix: np.ndarray, classes: tuple[str, ...], title: str) -> "Figure":
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


def training_curves(workdir: Path, names: list[str]) -> "Figure":
    """One row per model: loss and accuracy per epoch (or per C of a probe's sweep) on the rows that chose it."""
    from matplotlib.figure import Figure

    rows = max(1, len(names))
    figure = Figure()
    axes = figure.subplots(rows, 2, squeeze=False)
    _fixed_margins(figure, rows, max((len(f"{name}: accuracy") for name in names), default=0))
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


CURVES_WIDTH, CURVES_ROW = 10.0, 2.6  # inches: the figure's width (at least), and its height per model
# inches around the curves' axes: a title above each, tick labels and the x label below, y tick labels left
TOP, BOTTOM, LEFT, RIGHT, ROW_GAP, COLUMN_GAP = 0.35, 0.55, 0.6, 0.15, 0.85, 0.7
TITLE_CHARACTER = 0.1  # inches per character of a title at matplotlib's default 12 pt, a little generously


def _fixed_margins(figure: "Figure", rows: int, title_length: int) -> None:
    """The spaces constrained layout would find for these fixed-size labels, set once: it took longer than
    drawing the figure (a second for six models), on every report build. The figure widens for titles longer
    than its axes (timm's names)."""
    width = max(CURVES_WIDTH, LEFT + RIGHT + COLUMN_GAP + 2 * TITLE_CHARACTER * title_length)
    height = CURVES_ROW * rows
    figure.set_size_inches(width, height)
    axes_height = (height - TOP - BOTTOM - (rows - 1) * ROW_GAP) / rows
    axes_width = (width - LEFT - RIGHT - COLUMN_GAP) / 2
    figure.subplots_adjust(left=LEFT / width, right=1 - RIGHT / width, top=1 - TOP / height,
                           bottom=BOTTOM / height, hspace=ROW_GAP / axes_height, wspace=COLUMN_GAP / axes_width)


def save_figure(figure: "Figure", path: Path) -> None:
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
