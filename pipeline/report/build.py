"""`cnnfeat report`: one offline HTML page comparing the models and showing the chosen one's mistakes.

    from pipeline.report import ReportConfig, build_reports
    report = build_reports(ReportConfig(workdir="runs/dvc"))    # or build_reports("runs/dvc")
    report.page                                                 # runs/dvc/reports/index.html

reports/ gets index.html (inline CSS, no network: it opens offline and in a Kaggle notebook's output),
thumbs/ (the images it shows, a few KB each), training_curves.png, confusion_<model>.png,
label_issues.csv and duplicates.csv. Everything comes from what training saved (metrics/<name>.json,
-history.csv, -valid.csv, -oof.csv) and from the feature cache: nothing is retrained or re-predicted,
and no torch is loaded. A model whose inputs changed since it was trained is left out, with a note,
rather than shown with numbers that no longer hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features import CacheError, FeatureCache, MissingInputError, ProgressFn, atomic_output, cache_path, log_loss, writes_workdir

from ..outputs import (OUT_OF_FOLD, VALID, Probabilities, metrics_dir, predictions_path, read_metrics,
                       read_predictions, trained_models, write_csv)
from ..status import staleness
from .config import ReportConfig
from .content import Example, ModelReport, PageContent
from .duplicates import Duplicates, find_duplicates
from .figures import TRAINING_CURVES, confusion_figure, save_figure, training_curves
from .mistakes import (calibration_error, class_scores, confusion, label_issues, losses, most_confused,
                       top_losses)
from .page import render_page
from .thumbnails import make_thumbnails

PAGE = "index.html"
LABEL_ISSUES = "label_issues.csv"
DUPLICATES = "duplicates.csv"
MOST_CONFUSED = 10  # class pairs listed


@dataclass
class Report:
    models: list[ModelReport] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (model, why it is left out)
    shown: str | None = None  # the model whose mistakes the page shows
    label_issues: int | None = None  # rows listed in label_issues.csv; None: no out-of-fold predictions
    duplicates: Duplicates | None = None
    page: Path | None = None
    notes: dict[str, str] = field(default_factory=dict)  # section -> why it is empty


def reports_dir(workdir: Path) -> Path:
    return Path(workdir) / "reports"


@writes_workdir
def build_reports(cfg: ReportConfig | Path | str, progress: ProgressFn | None = None) -> Report:
    """(Re)write reports/: the page, its thumbnails and CSVs, every up-to-date model's confusion matrix and curves."""
    cfg = cfg if isinstance(cfg, ReportConfig) else ReportConfig(workdir=Path(cfg))
    names = trained_models(cfg.workdir)
    if not names:
        raise MissingInputError(f"no trained model in {metrics_dir(cfg.workdir)}; run `cnnfeat train-head --workdir "
                                f"{cfg.workdir}` or `cnnfeat run --workdir {cfg.workdir}` first")
    folder = reports_dir(cfg.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    cache = _open_cache(cfg.workdir)
    try:
        content = _gather(cfg, names, cache, progress)
        data_root = Path(cache.data_root) if cache is not None else None
    finally:
        if cache is not None:
            cache.close()
    _add_pictures(content, folder, data_root, progress)
    page = folder / PAGE
    with atomic_output(page) as tmp:
        tmp.write_text(render_page(content), encoding="utf-8")
    return Report(content.models, content.skipped, content.shown.model if content.shown else None,
                  None if content.issues is None else len(content.issues), content.duplicates, page, content.notes)


def _open_cache(workdir: Path) -> FeatureCache | None:
    """The feature cache, or None (the page then says what it cannot show without it)."""
    try:
        return FeatureCache(cache_path(workdir))
    except CacheError:
        return None


def _gather(cfg: ReportConfig, names: list[str], cache: FeatureCache | None, progress: ProgressFn | None) -> PageContent:
    folder = reports_dir(cfg.workdir)
    stale = {name: staleness(cache, cfg.workdir, name) for name in names} if cache is not None else {}
    content = PageContent(str(cfg.workdir), [], [], None)
    validation: dict[str, Probabilities] = {}
    members: dict[str, float] = {}
    for name in names:
        if stale.get(name):
            content.skipped.append((name, stale[name]))
            continue
        try:
            metrics = read_metrics(cfg.workdir, name)
            validation[name] = _predictions(cfg.workdir, name)
            content.models.append(_model_report(name, metrics, validation[name]))
        except (OSError, ValueError, KeyError) as err:
            content.skipped.append((name, f"its metrics are incomplete ({type(err).__name__}: {err}); retrain it"))
            continue
        members |= metrics.get("members", {})
        save_figure(confusion_figure(confusion(validation[name]), validation[name].classes,
                                     f"{name}: accuracy {content.models[-1].accuracy:.3f}"), folder / f"confusion_{name}.png")
    for model in content.models:
        model.weight = 1.0 if model.kind == "selection" else members.get(model.model, 0.0)
    save_figure(training_curves(cfg.workdir, [m.model for m in content.models]), folder / TRAINING_CURVES)
    content.links = {"curves": TRAINING_CURVES, **{f"confusion {m.model}": f"confusion_{m.model}.png" for m in content.models}}
    content.shown = _shown_model(content.models)
    if content.shown is not None:
        _mistakes(cfg, content, validation[content.shown.model])
    if cache is None:
        content.notes["duplicates"] = f"no readable feature cache at {cache_path(cfg.workdir)}"
        (folder / DUPLICATES).unlink(missing_ok=True)
    else:
        _duplicates(cfg, content, cache, progress)
    return content


def _predictions(workdir: Path, name: str) -> Probabilities:
    found = read_predictions(workdir, name, VALID)
    if found is None:
        raise FileNotFoundError(f"{predictions_path(workdir, name, VALID)} is missing")
    return found


def _model_report(name: str, metrics: dict, probs: Probabilities) -> ModelReport:
    matrix = confusion(probs)
    recall = {s.name: s.recall for s in class_scores(matrix, probs.classes)}
    correct = float(matrix.trace() / matrix.sum()) if len(probs.labels) else float("nan")
    return ModelReport(name, metrics.get("kind", ""), metrics["val_split"], correct, log_loss(probs.proba, probs.labels),
                       recall, _chosen(metrics), calibration_error(probs), float(metrics.get("temperature", 1.0)),
                       metrics.get("oof_log_loss"), 0.0)


def _chosen(metrics: dict) -> str:
    if "members" in metrics:
        return " + ".join(f"{w:.2f} {n}" for n, w in metrics["members"].items())
    chosen = metrics.get("chosen", {})
    if "C" in chosen:
        return f"C={chosen['C']:g}"
    return f"epoch {chosen.get('epochs', '?')}"


def _shown_model(models: list[ModelReport]) -> ModelReport | None:
    """The selection (`best`) where there is one; else the model with the lowest out-of-fold log loss, the evidence
    everything else was chosen on; else the first."""
    selection = [m for m in models if m.kind == "selection"]
    with_folds = [m for m in models if m.oof_log_loss is not None]
    if selection:
        return selection[0]
    return min(with_folds, key=lambda m: m.oof_log_loss) if with_folds else (models[0] if models else None)


def _mistakes(cfg: ReportConfig, content: PageContent, valid: Probabilities) -> None:
    """Per-class scores, confusions and top losses on the validation rows; top losses and likely label errors on
    the out-of-fold training rows."""
    name, folder = content.shown.model, reports_dir(cfg.workdir)
    content.classes, content.matrix = valid.classes, confusion(valid)
    content.scores = class_scores(content.matrix, valid.classes)
    content.confused = most_confused(content.matrix, MOST_CONFUSED)
    predicted, loss = valid.proba.argmax(1), losses(valid)
    per_cell = max(1, cfg.gallery // 4)
    for i, j in zip(*np.nonzero(content.matrix)):
        rows = top_losses(valid, per_cell, np.flatnonzero((valid.labels == i) & (predicted == j)))
        content.cells[int(i), int(j)] = [_loss_example(valid, r, loss) for r in rows]
    content.valid_losses = [_loss_example(valid, r, loss) for r in top_losses(valid, cfg.gallery)]
    content.links["valid csv"] = os.path.relpath(predictions_path(cfg.workdir, name, VALID), folder)
    oof = read_predictions(cfg.workdir, name, OUT_OF_FOLD)
    if oof is None:
        content.notes["label-issues"] = content.notes["oof-losses"] = (
            f"{name} has no out-of-fold predictions on its training rows: folds need two or more training rows per "
            f"class, and models trained by cnnfeat 0.2.0 or older did not save them (retrain: `cnnfeat run --force --workdir {cfg.workdir}`)")
        (folder / LABEL_ISSUES).unlink(missing_ok=True)
        return
    content.links["oof csv"] = os.path.relpath(predictions_path(cfg.workdir, name, OUT_OF_FOLD), folder)
    oof_loss = losses(oof)
    content.oof_losses = [_loss_example(oof, r, oof_loss) for r in top_losses(oof, cfg.gallery)]
    content.issues = label_issues(oof)
    write_csv(folder / LABEL_ISSUES, ["path", "given_label", "suggested_label", "score"],
              [[i.path, i.given, i.suggested, f"{i.score:.6f}"] for i in content.issues])
    content.links["label issues"] = LABEL_ISSUES
    content.issue_examples = [Example(i.path, (f"given {i.given}", f"suggested {i.suggested}", f"quality {i.score:.3f}"))
                              for i in content.issues[: 2 * cfg.gallery]]


def _loss_example(probs: Probabilities, row: int, loss: np.ndarray) -> Example:
    true, guess = int(probs.labels[row]), int(probs.proba[row].argmax())
    return Example(probs.paths[row], (f"true {probs.classes[true]}",
                                      f"predicted {probs.classes[guess]} ({probs.proba[row, guess]:.3f})",
                                      f"p(true) {probs.proba[row, true]:.3f}, loss {loss[row]:.2f}"))


def _duplicates(cfg: ReportConfig, content: PageContent, cache: FeatureCache, progress: ProgressFn | None) -> None:
    folder = reports_dir(cfg.workdir)
    found = find_duplicates(cache, cfg.similarity, cfg.duplicates_backbone, progress)
    if found is None:
        content.notes["duplicates"] = f"no backbone has features for every split of {cache.path}"
        (folder / DUPLICATES).unlink(missing_ok=True)
        return
    content.duplicates = found
    write_csv(folder / DUPLICATES, ["path_a", "split_a", "path_b", "split_b", "similarity"],
              [[p.path_a, p.split_a, p.path_b, p.split_b, p.similarity] for p in found.pairs])
    content.links["duplicates"] = DUPLICATES
    leaks_first = sorted(found.pairs, key=lambda p: p.split_a == p.split_b)  # stable: most similar first within each
    content.duplicate_examples = [(Example(p.path_a, (p.split_a,)), Example(p.path_b, (p.split_b,)), p.similarity)
                                  for p in leaks_first[: cfg.gallery]]


def _add_pictures(content: PageContent, folder: Path, data_root: Path | None, progress: ProgressFn | None) -> None:
    """Thumbnails of every image the page shows, and links to the images themselves."""
    if data_root is None:
        content.notes["pictures"] = "no feature cache to find the data folder by: images are named, not shown"
        return
    shown = [e.path for e in content.valid_losses + content.oof_losses + content.issue_examples]
    shown += [e.path for examples in content.cells.values() for e in examples]
    shown += [e.path for a, b, _ in content.duplicate_examples for e in (a, b)]
    content.thumbs = make_thumbnails(folder, data_root, shown, progress)
    content.originals = {path: os.path.relpath(data_root / path, folder) for path, thumb in content.thumbs.items() if thumb}
    if not data_root.is_dir():
        content.notes["pictures"] = f"the data folder {data_root} is not reachable: images are named, not shown"
