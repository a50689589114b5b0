"""Commands of the heads part: train-head, ensemble, report; the summary and report after training."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

import click

from features import bounds_of

from ..heads.config import BEST, C_GRID, HeadConfig
from ..report.config import ReportConfig
from .common import (NOTHING_HALF_WRITTEN, NumberList, backbones_option, device_option, force_option, handled,
                     job_update, job_workdir_option, options, seed_option, setting_option, settings, with_progress,
                     workdir_option)


head_common_options = options(
    click.option("--train-split", default=HeadConfig.train_split, help="Labeled split to fit on."),
    click.option("--val-split", default=HeadConfig.val_split,
                 help=f"Labeled split to choose and report on; without {HeadConfig.val_split}/, a share of train "
                      f"(--holdout); another name must exist."),
    setting_option("--holdout", HeadConfig, help="Share of train held out when there is no --val-split."),
    setting_option("--folds", HeadConfig,
                   help="Out-of-fold predictions on train, for calibration and for choosing `best`."),
    click.option("--calibrate/--no-calibrate", default=HeadConfig.calibrate,
                 help="A temperature per model fitted on its out-of-fold predictions."),
    click.option("--select/--no-select", default=HeadConfig.select,
                 help="Build `best`, chosen on out-of-fold predictions among every trained model."),
    click.option("--refit/--no-refit", default=HeadConfig.refit,
                 help="Retrain each model's chosen configuration on train + validation rows for the submission."),
)
probe_options = options(
    click.option("--c-grid", type=NumberList(bounds_of(HeadConfig, "c_grid")), default=",".join(map(str, C_GRID)),
                 help="Inverse L2 strengths (scikit-learn's C) the linear probes are swept over."),
    setting_option("--max-iter", HeadConfig, help="L-BFGS iterations per C at most."),
    click.option("--flip/--no-flip", default=HeadConfig.flip,
                 help="Also train +hflip models (both views, mean of both at prediction) where the cache has them."),
)
ensemble_options = options(
    setting_option("--epochs", HeadConfig, help="At most; early stopping usually ends sooner."),
    setting_option("--lr", HeadConfig, help="Adam's learning rate."),
    setting_option("--weight-decay", HeadConfig),
    setting_option("--patience", HeadConfig, help="Epochs without a better loss on a fold of the training rows before stopping."),
    setting_option("--dropout", HeadConfig),
    setting_option("--hidden", HeadConfig, help="The ensemble's shared hidden size."),
    click.option("--concat/--no-concat", default=HeadConfig.concat,
                 help="Also a probe on all backbones' features concatenated."),
)


def head_batch_option(*names: str) -> Callable[..., Any]:
    """`run` has --batch-size for extraction, so there the head's is only --head-batch-size."""
    return setting_option("--head-batch-size", HeadConfig, *names, "head_batch_size", field="batch_size",
                          help="Rows per Adam step (the three-branch head).")


def head_config(o: dict[str, Any]) -> HeadConfig:
    given = {**o, "batch_size": o.get("head_batch_size", HeadConfig.batch_size)}
    return settings(HeadConfig, **{f.name: given[f.name] for f in fields(HeadConfig) if f.name in given})


def head_stage(*stage_options: Callable[..., Any]) -> Callable[..., Any]:
    """What train-head and ensemble both take, around their own options."""
    return options(job_workdir_option, head_common_options, probe_options, *stage_options, seed_option, device_option,
                   force_option, handled(NOTHING_HALF_WRITTEN))


@click.command("train-head")
@backbones_option("--backbone", "Backbone(s) to fit a linear probe on, or all that the cache has.")
@head_stage()
def train_head_command(backbones: tuple[str, ...], **o: Any) -> None:
    """Stage 2: a linear probe per backbone, its L2 strength swept and chosen on out-of-fold predictions of the training rows."""
    cfg, job = head_config(o), job_update(o["workdir"], o)
    from features import workdir_lock

    from ..heads import select_best, train_linear_heads

    with workdir_lock(cfg.workdir):  # through the summary and reports: no other writer in between
        results = train_linear_heads(cfg, backbones)
        if cfg.select:
            results.append(select_best(cfg))
        after_training(cfg.workdir, results)
        job.save()


@click.command("ensemble")
@backbones_option("--backbones", "Two or more backbones (comma list or repeated), or all that the cache has.")
@head_stage(ensemble_options, head_batch_option("--batch-size"))
def ensemble_command(backbones: tuple[str, ...], **o: Any) -> None:
    """Stage 3: the book's three-branch head and the concatenation probe, then `best` among every model."""
    cfg, job = head_config(o), job_update(o["workdir"], o)
    from features import workdir_lock

    from ..heads import select_best, train_concat, train_ensemble

    with workdir_lock(cfg.workdir):  # through the summary and reports: no other writer in between
        results = [train_ensemble(cfg, backbones)]
        if cfg.concat:
            results = train_concat(cfg, backbones) + results
        if cfg.select:
            results.append(select_best(cfg))
        after_training(cfg.workdir, results)
        job.save()


def after_training(workdir: Path, results: list[Any]) -> None:
    """The summary table, written and shown; the report page, rebuilt when a model changed."""
    from ..outputs import write_summary
    from ..report import PAGE, build_reports, reports_dir

    write_summary(workdir)
    _print_summary(workdir, {r.name: r.trained for r in results})
    if any(r.trained for r in results) or not (reports_dir(workdir) / PAGE).exists():
        report = with_progress(lambda progress: build_reports(ReportConfig(workdir=workdir), progress), "report ")
        for name, why in report.skipped:
            click.echo(f"  (report leaves out {name}: {why})")
        click.echo(f"report: {report.page} (models, mistakes, likely label errors, near-duplicates; "
                   f"`cnnfeat report` rebuilds it)")


def _print_summary(workdir: Path, fresh: dict[str, bool]) -> None:
    """One screen: each model's validation accuracy and log loss (rows that chose nothing), the out-of-fold
    log loss its choices were made on, and what `best` is made of."""
    from ..outputs import read_summary

    rows = [r for r in read_summary(workdir) if r["model"] in fresh]
    click.echo(f"\n{'model':<22} {'val acc':>8} {'log loss':>9} {'uncalib.':>9} {'T':>6} {'oof loss':>9}  chosen")
    for r in rows:
        note = "" if fresh[r["model"]] else "  (up to date)"
        weight = float(r["weight"])
        chosen = "yes" if r["model"] == BEST else (f"{weight:.2f} of best" if weight else "")
        uncalibrated, oof = (f"{float(r[k]):9.4f}" if r[k] else f"{'':9}" for k in ("val_log_loss_uncalibrated", "oof_log_loss"))
        click.echo(f"{r['model']:<22} {float(r['val_accuracy']):8.4f} {float(r['val_log_loss']):9.4f} {uncalibrated} "
                   f"{float(r['temperature']):6.2f} {oof}  {chosen}{note}")


@click.command("report")
@workdir_option
@setting_option("--similarity", ReportConfig,
                help="Cosine similarity of whitened features from which two images are listed as near-duplicates.")
@click.option("--duplicates-backbone", default=ReportConfig.duplicates_backbone,
              help="Backbone whose features find near-duplicates; default: the cached one with the fewest values.")
@setting_option("--gallery", ReportConfig, help="Images per gallery on the page (the CSVs list every one).")
@handled(NOTHING_HALF_WRITTEN)
def report_command(**o: Any) -> None:
    """Rebuild reports/index.html (models, mistakes, label errors, near-duplicates) and compare the models."""
    cfg = settings(ReportConfig, **o)
    from ..report import DUPLICATES, LABEL_ISSUES, build_reports

    report = with_progress(lambda progress: build_reports(cfg, progress), "report ")
    click.echo(f"report: {report.page}")
    for name, why in report.skipped:
        click.echo(f"  left out {name}: {why}")
    rows = report.models
    scored_on = rows[0].split if rows else "validation"  # scored there; what each model chose, it chose on folds
    click.echo(f"\n{'model':<22} {'accuracy':>9} {'log loss':>9}  chosen on training folds (scored on {scored_on})")
    for r in rows:
        click.echo(f"{r.model:<22} {r.accuracy:9.4f} {r.log_loss:9.4f}  {r.chosen}")
    if rows:
        click.echo(f"\nrecall per class {'':<5}" + "".join(f"{r.model[:13]:>14}" for r in rows))
        for name in rows[0].recall:
            click.echo(f"{name[:21]:<22}" + "".join(f"{r.recall[name]:14.3f}" for r in rows))
    if report.label_issues is not None:
        click.echo(f"\n{report.label_issues} likely label error(s) in the training rows ({report.shown}'s out-of-fold "
                   f"predictions): {report.page.parent / LABEL_ISSUES}")
    if report.duplicates is not None:
        click.echo(f"{report.duplicates.found} near-duplicate pair(s) ({report.duplicates.backbone} features, similarity "
                   f">= {report.duplicates.similarity:g}): {report.page.parent / DUPLICATES}")
