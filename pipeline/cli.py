"""The `cnnfeat` command: option parsing and terminal output only; the work is in features/ and pipeline/.

    cnnfeat extract --data data/digits --backbone all --workdir runs/digits
    cnnfeat train-head --workdir runs/digits
    cnnfeat ensemble --workdir runs/digits
    cnnfeat predict --model ensemble --workdir runs/digits
    cnnfeat run --data data/digits --workdir runs/digits        # all of the above
    cnnfeat info --workdir runs/digits
"""

from __future__ import annotations

import functools
import logging
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable

import click
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from features import (
    CacheError,
    DataLayoutError,
    ExtractConfig,
    FeatureCache,
    WeightsUnavailableError,
    WorkdirBusyError,
    cache_path,
    extract,
)
from features import ExtractReport, get_backbone
from features.backbones import POOLS, WEIGHTS
from features.extract import DECODERS, DEVICES, PRECISIONS, ProgressFn, pending_extraction
from features.prepare import DEFAULT_LABEL_PATTERN, PROBLEMS_FILE, PrepareConfig, prepare

from .predict import PredictConfig, PredictResult, predict
from .report import TRAINING_CURVES, build_reports, reports_dir
from .run import run_pipeline
from .train import ENSEMBLE, HeadConfig, TrainResult, load_metrics, stale_heads, train_ensemble, train_linear_heads

# Errors that mean the user has something to fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, DataLayoutError, WeightsUnavailableError, CacheError, WorkdirBusyError, FileNotFoundError,
               FileExistsError)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one clear message and a non-zero exit; Ctrl-C into a resume hint."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with logging_redirect_tqdm():
                return command(*args, **kwargs)
        except USER_ERRORS as err:
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(2 if isinstance(err, WorkdirBusyError) else 1)
        except OSError as err:  # a full disk, a read-only folder: nothing half-written was kept
            click.secho(f"error: {err}", fg="red", err=True)
            click.secho("nothing incomplete was kept and finished batches are; free space or fix the folder's "
                        "permissions, then run the same command again", fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.secho(
                "\ninterrupted: finished batches are kept; run the same command again to resume.",
                fg="yellow",
                err=True,
            )
            sys.exit(130)

    return wrapper


class _SplitProgress:
    """One tqdm bar per split in turn, showing images per second."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __call__(self, split: str, advanced: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=f"extract {split}", unit="img", dynamic_ncols=True)
        self.bar.update(advanced)
        if self.bar.n >= total:  # close now, so the bar's rate is not diluted by what comes next
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def main(verbose: bool) -> None:
    """cnnfeat: frozen-CNN features, linear and ensemble heads, Kaggle submissions."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")


workdir_option = click.option(
    "--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("cnnfeat-out"),
    help="Where features.h5 and everything after it live.",
)


def options(*decorators: Callable[..., Any]) -> Callable[..., Any]:
    """Bundle click options so that several commands share one definition."""

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


extract_options = options(
    click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
                 help="Folder with one subfolder per split: train/<class>/*.jpg, valid/<class>/*.jpg, test/*.jpg."),
    click.option("--weights", type=click.Choice(WEIGHTS), default="imagenet",
                 help="imagenet: torchvision's pretrained weights; random: seeded, for smoke runs only."),
    click.option("--pool", type=click.Choice(POOLS), default="avg", help="none stores the whole feature map."),
    click.option("--image-size", type=int, default=299, help="Images are resized to this square size."),
    click.option("--batch-size", "extract_batch_size", type=int, default=64, help="Images per forward pass."),
    click.option("--workers", type=int, default=None, help="Decoding processes [default: from the core count]."),
    click.option("--device", type=click.Choice(DEVICES), default="auto"),
    click.option("--precision", type=click.Choice(tuple(PRECISIONS)), default="fp32"),
    click.option("--decode", type=click.Choice(DECODERS), default="auto",
                 help="device: JPEGs decoded and resized where the models run (nvJPEG on a GPU); auto: on a GPU only."),
    click.option("--seed", type=int, default=0, help="Seed of --weights random, and of head training."),
)

training_options = options(
    click.option("--train-split", default="train", help="Labeled split to fit on."),
    click.option("--val-split", default="valid", help="Labeled split for early stopping and metrics."),
    click.option("--epochs", type=int, default=200, help="At most; early stopping usually ends sooner."),
    click.option("--lr", type=float, default=1e-3, help="Adam's learning rate."),
    click.option("--weight-decay", type=float, default=0.0),
    click.option("--patience", type=int, default=10, help="Epochs without a better validation loss before stopping."),
    click.option("--dropout", type=float, default=None, help="[default: 0 for linear heads, 0.5 for the ensemble]"),
)
hidden_option = click.option("--hidden", type=int, default=512, help="The ensemble's shared hidden size.")


def head_batch_option(*names: str) -> Callable[..., Any]:
    """`run` has --batch-size for extraction, so there the head's is only --head-batch-size."""
    return click.option("--head-batch-size", *names, "head_batch_size", type=int, default=64, help="Rows per training step.")


force_option = click.option("--force", is_flag=True, help="Redo even what is up to date.")

# train-head and ensemble: where no extraction option takes --batch-size
head_training_options = options(
    workdir_option,
    training_options,
    head_batch_option("--batch-size"),
    click.option("--seed", type=int, default=0),
    click.option("--device", type=click.Choice(DEVICES), default="auto"),
    force_option,
)


def _extract_config(o: dict[str, Any], backbones: tuple[str, ...]) -> ExtractConfig:
    return ExtractConfig(data=o["data"], workdir=o["workdir"], backbones=backbones, weights=o["weights"],
                         pool=o["pool"], image_size=o["image_size"], batch_size=o["extract_batch_size"],
                         workers=o["workers"], device=o["device"], precision=o["precision"], decode=o["decode"],
                         seed=o["seed"], force=o["force"])


def _head_config(o: dict[str, Any]) -> HeadConfig:
    return HeadConfig(workdir=o["workdir"], train_split=o["train_split"], val_split=o["val_split"],
                      epochs=o["epochs"], lr=o["lr"], batch_size=o["head_batch_size"], weight_decay=o["weight_decay"],
                      patience=o["patience"], dropout=o["dropout"], hidden=o.get("hidden", HeadConfig.hidden), seed=o["seed"],
                      device=o["device"], force=o["force"])


def _extract_with_progress(run: Callable[[ProgressFn], Any]) -> Any:
    progress = _SplitProgress()
    try:
        return run(progress)
    finally:
        progress.close()


@main.command("extract")
@click.option("--backbone", "backbones", multiple=True, default=("all",),
              help="resnet34, inception, densenet121 (aliases resnet, inception_v3, densenet), comma lists, or all.")
@workdir_option
@extract_options
@force_option
@user_errors
def extract_command(backbones: tuple[str, ...], **o: Any) -> None:
    """Stage 1: decode every image once, run the frozen backbones, cache the features in HDF5."""
    report = _extract_with_progress(lambda progress: extract(_extract_config(o, backbones), progress=progress))
    if report.main:  # under torchrun, rank 0 speaks for all
        _print_extract(report)


def _print_extract(report: ExtractReport) -> None:
    for split, skipped in report.skipped_files.items():
        click.echo(f"{split}: {len(skipped)} file(s) could not be decoded and are left out (see `cnnfeat info`)")
    if not report.computed:
        click.echo(f"Nothing to do: {report.cache} is up to date for {_pairs(report.up_to_date)}.")
        return
    ranks = f" by {len(report.images_per_rank)} ranks" if len(report.images_per_rank) > 1 else ""
    click.echo(
        f"Extracted {_pairs(report.computed)}: {report.images_decoded} images{ranks} in {report.seconds:.1f} s "
        f"({report.images_per_second:.1f} img/s) -> {report.cache}"
    )
    if report.up_to_date:
        click.echo(f"Already up to date: {_pairs(report.up_to_date)}.")


@main.command("train-head")
@click.option("--backbone", "backbones", multiple=True, default=("all",),
              help="Backbone(s) to fit a linear head on, or all that the cache has.")
@head_training_options
@user_errors
def train_head_command(backbones: tuple[str, ...], **o: Any) -> None:
    """Stage 2: a linear head per backbone on the cached features."""
    results = train_linear_heads(_head_config(o), backbones)
    _print_summary(o["workdir"], [r.name for r in results], results)
    _write_reports(o["workdir"], o["device"], results)


@main.command("ensemble")
@click.option("--backbones", "backbones", multiple=True, default=("all",),
              help="Two or more backbones (comma list or repeated), or all that the cache has.")
@head_training_options
@hidden_option
@user_errors
def ensemble_command(backbones: tuple[str, ...], **o: Any) -> None:
    """Stage 3: the three-branch ensemble head on the cached features."""
    result = train_ensemble(_head_config(o), backbones)
    _print_summary(o["workdir"], [*result.metrics.get("single_heads", {}), ENSEMBLE], [result])
    _write_reports(o["workdir"], o["device"], [result])


@main.command("predict")
@click.option("--model", default=ENSEMBLE, help="ensemble, or a backbone name for its linear head.")
@workdir_option
@click.option("--split", default="test", help="The split to predict.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="[default: <workdir>/submission.csv]")
@click.option("--kaggle-binary", is_flag=True, help="Write id,label with label = probability of the second class.")
@click.option("--clip", type=float, default=None, help="Clip probabilities to [clip, 1-clip] (log-loss safety).")
@click.option("--device", type=click.Choice(DEVICES), default="auto")
@force_option
@user_errors
def predict_command(model: str, **o: Any) -> None:
    """Stage 4: a Kaggle submission CSV from a trained head."""
    name = model if model == ENSEMBLE else get_backbone(model).name
    result = predict(PredictConfig(model=name, **o))
    _print_prediction(name, o["split"], result)


def _print_prediction(model: str, split: str, result: PredictResult) -> None:
    state = "wrote" if result.written else "up to date:"
    click.echo(f"{model} on {split}: {state} {result.path} ({result.rows} rows)")
    if result.accuracy is not None:
        click.echo(f"  accuracy {result.accuracy:.4f}, log loss {result.log_loss:.4f}")


@main.command("run", context_settings={"show_default": True})
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), is_eager=True,
              expose_value=False, callback=lambda ctx, param, value: _load_toml(ctx, value),
              help="TOML file of settings, keys named like the options; options given here win.")
@workdir_option
@extract_options
@training_options
@head_batch_option()
@hidden_option
@click.option("--kaggle-binary", is_flag=True, help="Predict as id,label (two classes).")
@click.option("--clip", type=float, default=None, help="Clip predicted probabilities to [clip, 1-clip].")
@force_option
@user_errors
def run_command(**o: Any) -> None:
    """Every stage in order: extract (all backbones), heads, ensemble, predict."""
    extract_cfg = _extract_config(o, ("all",))
    predict_cfg = PredictConfig(workdir=o["workdir"], kaggle_binary=o["kaggle_binary"], clip=o["clip"],
                                device=o["device"], force=o["force"])
    report = _extract_with_progress(lambda progress: run_pipeline(extract_cfg, _head_config(o), predict_cfg, progress))
    if not report.extract.main:  # under torchrun, rank 0 trains, predicts and speaks for all
        return
    _print_extract(report.extract)
    _print_summary(o["workdir"], [r.name for r in report.heads], report.heads)
    _write_reports(o["workdir"], o["device"], report.heads)
    if report.prediction is not None:
        _print_prediction(report.predicted_with, predict_cfg.split, report.prediction)


def _load_toml(ctx: click.Context, path: Path | None) -> None:
    """Settings from a TOML file become the command's defaults, so options on the command line win."""
    if path is None:
        return
    try:
        settings = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise click.BadParameter(f"{path} is not valid TOML: {err}") from err
    known = {p.name: p for p in ctx.command.params if p.name}
    aliases = {"batch_size": "extract_batch_size"}
    defaults = {}
    for key, value in settings.items():
        name = aliases.get(key.replace("-", "_"), key.replace("-", "_"))
        if name not in known or name == "config":
            raise click.BadParameter(f"{path}: unknown setting {key!r}; use the names of `cnnfeat run --help` options")
        defaults[name] = value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def _print_summary(workdir: Path, names: list[str], results: list[TrainResult]) -> None:
    """One screen: each model's validation accuracy and log loss (Kaggle's Dogs vs Cats metric)."""
    fresh = {r.name: r.trained for r in results}
    metrics = {m["model"]: m for m in load_metrics(workdir)}
    click.echo(f"\n{'model':<14} {'val acc':>8} {'val log loss':>13} {'best epoch':>11}  ")
    for name in names:
        if name in metrics:
            m = metrics[name]
            note = "" if fresh.get(name, True) else "(up to date)"
            click.echo(f"{name:<14} {m['val_accuracy']:8.4f} {m['val_log_loss']:13.4f} "
                       f"{m['best_epoch']:>5}/{m['epochs']:<5}  {note}")


def _write_reports(workdir: Path, device: str, results: list[TrainResult]) -> None:
    """After training; when no head changed, the reports already on disk are current."""
    if not any(r.trained for r in results) and (reports_dir(workdir) / TRAINING_CURVES).exists():
        return
    build_reports(workdir, device)
    click.echo(f"reports: {reports_dir(workdir)} (training curves, a confusion matrix per model; `cnnfeat report` compares them)")


@main.command("report")
@workdir_option
@click.option("--device", type=click.Choice(DEVICES), default="auto")
@user_errors
def report_command(workdir: Path, device: str) -> None:
    """Rebuild reports/ (training curves, confusion matrices) and compare every trained model."""
    rows = build_reports(workdir, device)
    click.echo(f"reports: {reports_dir(workdir)}")
    click.echo(f"\n{'model':<14} {'split':<8} {'accuracy':>9} {'log loss':>9} {'best epoch':>11}")
    for r in rows:
        click.echo(f"{r.model:<14} {r.split:<8} {r.accuracy:9.4f} {r.log_loss:9.4f} {r.best_epoch:>5}/{r.epochs:<5}")
    click.echo(f"\nrecall per class {'':<4}" + "".join(f"{r.model:>14}" for r in rows))
    for name in rows[0].recall:
        click.echo(f"{name:<21}" + "".join(f"{r.recall[name]:14.3f}" for r in rows))


def _pairs(pairs: list[tuple[str, str]]) -> str:
    by_split: dict[str, list[str]] = {}
    for split, backbone in pairs:
        by_split.setdefault(split, []).append(backbone)
    return "; ".join(f"{split}: {', '.join(names)}" for split, names in by_split.items())


@main.command("prepare")
@click.option("--train", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Flat folder of labeled images, as Kaggle ships train/.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The split layout to create (symlinks).")
@click.option("--label-from-name", "label_pattern", is_flag=False, flag_value=DEFAULT_LABEL_PATTERN, default=None,
              help=f"Label = first group of this regex on the file name [flag alone: {DEFAULT_LABEL_PATTERN}].")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV with an id and a label column.")
@click.option("--id-column", default="id", help="The CSV's column of ids (file names, with or without extension).")
@click.option("--label-column", default="label", help="The CSV's column of labels.")
@click.option("--test", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Flat folder of unlabeled images.")
@click.option("--val-fraction", type=float, default=0.08, help="Stratified share of train that becomes valid/ (0: none).")
@click.option("--seed", type=int, default=0)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@user_errors
def prepare_command(**o: Any) -> None:
    """Turn a raw Kaggle download into train/<class>/, valid/<class>/ and test/, without copying images."""
    report = prepare(PrepareConfig(**o))
    counts = ", ".join(f"{split} {n}" for split, n in report.counts.items())
    click.echo(f"{report.out}: {counts} images, {len(report.classes)} classes ({', '.join(report.classes[:10])}"
               f"{', ...' if len(report.classes) > 10 else ''})")
    if report.problems:
        click.secho(f"{len(report.problems)} file(s) or row(s) left out, listed in {report.out / PROBLEMS_FILE}:", fg="yellow")
        for kind, item, detail in report.problems[:5]:
            click.secho(f"  {kind}: {item} ({detail})", fg="yellow")
    click.echo(f"next: cnnfeat run --data {report.out}")


@main.command("info")
@workdir_option
@user_errors
def info_command(workdir: Path) -> None:
    """Show what the feature cache holds, and what the next `cnnfeat run` would redo."""
    with FeatureCache(cache_path(workdir)) as cache:
        click.echo(f"cache:   {cache.path}")
        click.echo(f"data:    {cache.data_root}")
        click.echo(f"classes: {', '.join(cache.classes) or '(none: no labeled split)'}")
        for split in cache.splits:
            kind = "labeled" if cache.is_labeled(split) else "unlabeled"
            skipped = cache.skipped(split)
            click.echo(f"\n{split}: {len(cache.paths(split))} images, {kind}, {len(skipped)} skipped")
            for backbone in cache.backbones(split):
                s = cache.settings(split, backbone)
                shape = "x".join(map(str, cache.feature_shape(split, backbone)))
                click.echo(
                    f"  {backbone:<12} {shape:>10}  weights={s['weights']} pool={s['pool']} "
                    f"image_size={s['image_size']} precision={s['precision']} layer={s['layer']}"
                )
            for path, reason in skipped:
                click.echo(f"  skipped {path}: {reason}")
        pending = pending_extraction(cache)
        stale = stale_heads(cache, workdir, {(split, backbone) for split, backbone, _ in pending})
    click.echo("\nthe next `cnnfeat run` with the same settings would:")
    if not pending and not stale:
        click.echo("  do nothing: everything is up to date")
    for split, backbone, why in pending:
        click.echo(f"  extract {split}/{backbone}: {why}")
    for name, why in stale:
        click.echo(f"  train {name}: {why}")
