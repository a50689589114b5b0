"""What the report page shows, gathered by build.py and drawn by page.py. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .duplicates import Duplicates
from .mistakes import ClassScores, LabelIssue


@dataclass
class ModelReport:
    model: str
    kind: str  # "linear", "ensemble", "selection", "finetuned"
    split: str  # the validation rows the numbers are on
    accuracy: float
    log_loss: float
    recall: dict[str, float]  # per class
    chosen: str  # what was chosen on folds of the training rows: "C=0.1", "epoch 12", "0.50 a + 0.50 b"
    calibration_error: float  # expected calibration error on the validation rows
    temperature: float
    oof_log_loss: float | None  # on the training rows' out-of-fold predictions, where folds were drawn
    weight: float  # its weight in the selection (`best`)


@dataclass(frozen=True)
class Example:
    """One image on the page: its path relative to the data folder, and the lines under its thumbnail."""

    path: str
    lines: tuple[str, ...]


@dataclass
class PageContent:
    workdir: str
    models: list[ModelReport]
    skipped: list[tuple[str, str]]  # (model, why it is left out)
    shown: ModelReport | None  # the model whose mistakes the page shows
    classes: tuple[str, ...] = ()
    scores: list[ClassScores] = field(default_factory=list)
    matrix: np.ndarray | None = None  # its confusion matrix on the validation rows
    cells: dict[tuple[int, int], list[Example]] = field(default_factory=dict)  # the worst images of each cell
    confused: list[tuple[int, int, int]] = field(default_factory=list)  # (true, predicted, count)
    valid_losses: list[Example] = field(default_factory=list)
    oof_losses: list[Example] = field(default_factory=list)
    issues: list[LabelIssue] | None = None  # None: no out-of-fold predictions to find them with
    issue_examples: list[Example] = field(default_factory=list)
    duplicates: Duplicates | None = None
    duplicate_examples: list[tuple[Example, Example, float]] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # section id -> why it is empty
    links: dict[str, str] = field(default_factory=dict)  # file shown -> its path relative to the page
    thumbs: dict[str, str | None] = field(default_factory=dict)  # image path -> its thumbnail, relative to the page
    originals: dict[str, str] = field(default_factory=dict)  # image path -> the image itself, relative to the page
