"""The `cnnfeat` command: option parsing and terminal output only; the work is in features/ and pipeline/.

    cnnfeat extract --data data/digits --backbone all --workdir runs/digits
    cnnfeat train-head --workdir runs/digits
    cnnfeat ensemble --workdir runs/digits
    cnnfeat predict --model best --workdir runs/digits
    cnnfeat finetune --data data/digits --workdir runs/digits --backbone resnet34 --train-layers layer4
    cnnfeat run --data data/digits --workdir runs/digits        # all of the above
    cnnfeat info --workdir runs/digits

Start-up imports only click and the torch-free settings modules; each command imports the stage
code it runs when it runs, so `--help`, `--version`, `info` and `prepare` never load torch.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
import tomllib
import traceback
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

import click

from features import (DECODERS, DEFAULT_LABEL_PATTERN, DEVICES, POOLS, PRECISIONS, VIEWS, CnnfeatError,
                      ExtractConfig, PrepareConfig, WorkdirBusyError, __version__)

from .config import (AUGMENTS, BEST, C_GRID, FINETUNED_PREFIX, FLIP_SUFFIX, OPTIMIZERS, RUN_VIEWS, SCHEDULES, FinetuneConfig,
                     HeadConfig, PredictConfig)

log = logging.getLogger(__name__)

# Exit statuses (README: "Exit status"): one meaning each, so scripts can act on them.
EXIT_PROBLEM = 1  # something to fix; the message says what and which command to run
EXIT_USAGE = 2  # click: a bad option or argument
EXIT_BUSY = 3  # another cnnfeat process holds the workdir: retrying later can work
EXIT_INTERNAL = 70  # a bug in cnnfeat (EX_SOFTWARE): the traceback is printed
EXIT_INTERRUPTED = 130
# OS errors a user fixes (a full disk, a read-only folder); any other exception is a bug
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def handled(kept: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """cnnfeat's own errors as one clear line and a non-zero exit; Ctrl-C as a resume hint; bugs with
    their traceback. `kept` says what a failed run of this command leaves behind."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except CnnfeatError as err:
                click.secho(f"error: {err}", fg="red", err=True)
                sys.exit(EXIT_BUSY if isinstance(err, WorkdirBusyError) else EXIT_PROBLEM)
            except BrokenPipeError:  # the reader went away (`cnnfeat backbones | head`): nothing to say
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(EXIT_PROBLEM)
            except OSError as err:
                if err.errno not in ENVIRONMENT_ERRNOS:
                    _internal_error()
                click.secho(f"error: {err}", fg="red", err=True)
                click.secho(f"{kept}; free space or fix the folder's permissions, then run the same command again",
                            fg="red", err=True)
                sys.exit(EXIT_PROBLEM)
            except KeyboardInterrupt:
                click.secho(f"\ninterrupted: {kept}; run the same command again to carry on.", fg="yellow", err=True)
                sys.exit(EXIT_INTERRUPTED)
            except Exception:  # noqa: BLE001 - anything else is a bug in cnnfeat
                _internal_error()

        return wrapper

    return decorate


def _internal_error() -> None:
    click.secho("internal error: this is a bug in cnnfeat, not in your data or settings; please report it "
                "with the traceback below", fg="red", err=True)
    traceback.print_exc()
    sys.exit(EXIT_INTERNAL)


BATCHES_KEPT = "finished batches are kept and nothing incomplete was written"
NOTHING_HALF_WRITTEN = "nothing half-written was kept; earlier outputs are as they were"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, "--version", prog_name="cnnfeat")
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def main(verbose: bool) -> None:
    """cnnfeat: frozen-CNN features, linear probes and ensembles, Kaggle submissions."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")


def options(*decorators: Callable[..., Any]) -> Callable[..., Any]:
    """Bundle click options so that several commands share one definition."""

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


def _floats(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[float, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(float(v) for v in value)
    try:
        return tuple(float(v) for v in str(value).split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma list of numbers") from None


def _views(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[str, ...]:
    names = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
    names = [n.strip() for n in names if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        raise click.BadParameter(f"unknown view(s) {unknown}; known: {', '.join(VIEWS)}, or none")
    return tuple(names)


workdir_option = click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
                              default=ExtractConfig.workdir, help="Where features.h5 and everything after it live.")
force_option = click.option("--force", is_flag=True, help="Redo even what is up to date.")
device_option = click.option("--device", type=click.Choice(DEVICES), default=ExtractConfig.device)


def extract_options(views_default: tuple[str, ...]) -> Callable[..., Any]:
    return options(
        click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
                     help="Folder with one subfolder per split: train/<class>/*.jpg, valid/<class>/*.jpg, test/*.jpg."),
        click.option("--weights", default=ExtractConfig.weights,
                     help="imagenet: each model's pretrained weights; random: seeded, for smoke runs only; "
                          "or a weights name of the model (IMAGENET1K_V2, see `cnnfeat backbones`)."),
        click.option("--pool", type=click.Choice(POOLS), default=ExtractConfig.pool, help="none stores the whole feature map."),
        click.option("--image-size", type=int, default=ExtractConfig.image_size,
                     help="Images are resized to this square size [default: 299 for the book's three, else each "
                          "model's own]."),
        click.option("--batch-size", "extract_batch_size", type=int, default=ExtractConfig.batch_size,
                     help="Images per forward pass."),
        click.option("--workers", type=int, default=ExtractConfig.workers,
                     help="Decoding processes [default: from the core count]."),
        device_option,
        click.option("--precision", type=click.Choice(PRECISIONS), default=ExtractConfig.precision),
        click.option("--decode", type=click.Choice(DECODERS), default=ExtractConfig.decode,
                     help="device: JPEGs decoded and resized where the models run (nvJPEG on a GPU); auto: on a GPU only."),
        click.option("--views", default=",".join(views_default) or "none", callback=_views,
                     help="hflip: also store the features of each image mirrored left-right; none: not."),
        click.option("--seed", type=int, default=ExtractConfig.seed, help="Seed of --weights random, and of the heads."),
    )


head_common_options = options(
    click.option("--train-split", default=HeadConfig.train_split, help="Labeled split to fit on."),
    click.option("--val-split", default=HeadConfig.val_split,
                 help="Labeled split to choose and report on; without one, a share of train (--holdout)."),
    click.option("--holdout", type=float, default=HeadConfig.holdout,
                 help="Share of train held out when there is no --val-split."),
    click.option("--folds", type=int, default=HeadConfig.folds,
                 help="Out-of-fold predictions on train, for calibration and for choosing `best`."),
    click.option("--calibrate/--no-calibrate", default=HeadConfig.calibrate,
                 help="A temperature per model fitted on its out-of-fold predictions."),
    click.option("--select/--no-select", default=HeadConfig.select,
                 help="Build `best`, chosen on out-of-fold predictions among every trained model."),
    click.option("--refit", is_flag=True, default=HeadConfig.refit,
                 help="Retrain each model's chosen configuration on train + validation rows for the submission."),
)
probe_options = options(
    click.option("--c-grid", default=",".join(f"{c:g}" for c in C_GRID), callback=_floats,
                 help="Inverse L2 strengths (scikit-learn's C) the linear probes are swept over."),
    click.option("--max-iter", type=int, default=HeadConfig.max_iter, help="L-BFGS iterations per C at most."),
    click.option("--flip/--no-flip", default=HeadConfig.flip,
                 help="Also train +hflip models (both views, mean of both at prediction) where the cache has them."),
)
ensemble_options = options(
    click.option("--epochs", type=int, default=HeadConfig.epochs, help="At most; early stopping usually ends sooner."),
    click.option("--lr", type=float, default=HeadConfig.lr, help="Adam's learning rate."),
    click.option("--weight-decay", type=float, default=HeadConfig.weight_decay),
    click.option("--patience", type=int, default=HeadConfig.patience,
                 help="Epochs without a better validation loss before stopping."),
    click.option("--dropout", type=float, default=HeadConfig.dropout),
    click.option("--hidden", type=int, default=HeadConfig.hidden, help="The ensemble's shared hidden size."),
    click.option("--concat/--no-concat", default=HeadConfig.concat,
                 help="Also a probe on all backbones' features concatenated."),
)


def head_batch_option(*names: str) -> Callable[..., Any]:
    """`run` has --batch-size for extraction, so there the head's is only --head-batch-size."""
    return click.option("--head-batch-size", *names, "head_batch_size", type=int, default=HeadConfig.batch_size,
                        help="Rows per Adam step (the three-branch head).")


def _extract_config(o: dict[str, Any], backbones: tuple[str, ...]) -> ExtractConfig:
    return ExtractConfig(data=o["data"], workdir=o["workdir"], backbones=backbones, weights=o["weights"],
                         pool=o["pool"], image_size=o["image_size"], batch_size=o["extract_batch_size"],
                         workers=o["workers"], device=o["device"], precision=o["precision"], decode=o["decode"],
                         views=o["views"], seed=o["seed"], force=o["force"])


def _head_config(o: dict[str, Any]) -> HeadConfig:
    given = {**o, "batch_size": o.get("head_batch_size", HeadConfig.batch_size)}
    return HeadConfig(**{f.name: given[f.name] for f in fields(HeadConfig) if f.name in given})


def _progress(prefix: str) -> Any:
    from tqdm import tqdm

    class StepProgress:
        """One tqdm bar per step in turn (a split, an epoch), showing images per second and any running loss."""

        bar: Any = None
        what = ""

        def __call__(self, what: str, advanced: int, total: int, loss: float | None = None) -> None:
            if self.bar is None or what != self.what:
                self.close()
                self.bar, self.what = tqdm(total=total, desc=f"{prefix}{what}", unit="img", dynamic_ncols=True), what
            self.bar.update(advanced)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if self.bar.n >= total:  # close now, so the bar's rate is not diluted by what comes next
                self.close()

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()
            self.bar = None

    return StepProgress()


def _with_progress(run: Callable[[Any], Any], prefix: str = "extract ") -> Any:
    from tqdm.contrib.logging import logging_redirect_tqdm

    progress = _progress(prefix)
    try:
        with logging_redirect_tqdm():
            return run(progress)
    finally:
        progress.close()


@main.command("extract")
@click.option("--backbone", "backbones", multiple=True, default=("all",),
              help="all (the book's resnet34, inception, densenet121), any torchvision model (`cnnfeat backbones`), "
                   "timm:<name>; comma lists, repeatable.")
@workdir_option
@extract_options(())
@force_option
@handled(BATCHES_KEPT)
def extract_command(backbones: tuple[str, ...], **o: Any) -> None:
    """Stage 1: decode every image once, run the frozen backbones, cache the features in HDF5."""
    from features import extract

    report = _with_progress(lambda progress: extract(_extract_config(o, backbones), progress=progress))
    if report.main:  # under torchrun, rank 0 speaks for all
        _print_extract(report)


def _print_extract(report: Any) -> None:
    for split, skipped in report.skipped_files.items():
        click.echo(f"{split}: {len(skipped)} file(s) could not be decoded and are left out (see `cnnfeat info`)")
    if not report.computed:
        click.echo(f"Nothing to do: {report.cache} is up to date for {_pairs(report.up_to_date)}.")
        return
    ranks = f" by {len(report.images_per_rank)} ranks" if len(report.images_per_rank) > 1 else ""
    built = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.build_seconds.items())
    click.echo(
        f"Extracted {_pairs(report.computed)}: {report.images_decoded} images{ranks} in {report.seconds:.1f} s "
        f"({report.images_per_second:.1f} img/s; models built in {built}) -> {report.cache}"
    )
    if report.up_to_date:
        click.echo(f"Already up to date: {_pairs(report.up_to_date)}.")


def _pairs(pairs: list[tuple[str, str]]) -> str:
    by_split: dict[str, list[str]] = {}
    for split, backbone in pairs:
        by_split.setdefault(split, []).append(backbone)
    return "; ".join(f"{split}: {', '.join(names)}" for split, names in by_split.items())


@main.command("train-head")
@click.option("--backbone", "backbones", multiple=True, default=("all",),
              help="Backbone(s) to fit a linear probe on, or all that the cache has.")
@workdir_option
@head_common_options
@probe_options
@click.option("--seed", type=int, default=HeadConfig.seed)
@device_option
@force_option
@handled(NOTHING_HALF_WRITTEN)
def train_head_command(backbones: tuple[str, ...], **o: Any) -> None:
    """Stage 2: a linear probe per backbone, its L2 strength swept and chosen on validation rows."""
    from .train import select_best, train_linear_heads

    cfg = _head_config(o)
    results = train_linear_heads(cfg, backbones)
    if cfg.select:
        results.append(select_best(cfg))
    _after_training(cfg.workdir, results)


@main.command("ensemble")
@click.option("--backbones", "backbones", multiple=True, default=("all",),
              help="Two or more backbones (comma list or repeated), or all that the cache has.")
@workdir_option
@head_common_options
@probe_options
@ensemble_options
@head_batch_option("--batch-size")
@click.option("--seed", type=int, default=HeadConfig.seed)
@device_option
@force_option
@handled(NOTHING_HALF_WRITTEN)
def ensemble_command(backbones: tuple[str, ...], **o: Any) -> None:
    """Stage 3: the book's three-branch head and the concatenation probe, then `best` among every model."""
    from .train import select_best, train_concat, train_ensemble

    cfg = _head_config(o)
    results = [train_ensemble(cfg, backbones)]
    if cfg.concat:
        results = train_concat(cfg, backbones) + results
    if cfg.select:
        results.append(select_best(cfg))
    _after_training(cfg.workdir, results)


def _after_training(workdir: Path, results: list[Any]) -> None:
    """The summary table, written and shown; the reports, rebuilt when a model changed."""
    from .report import TRAINING_CURVES, build_reports, reports_dir
    from .train import write_summary

    write_summary(workdir)
    _print_summary(workdir, {r.name: r.trained for r in results})
    if any(r.trained for r in results) or not (reports_dir(workdir) / TRAINING_CURVES).exists():
        report = build_reports(workdir)
        for name, why in report.skipped:
            click.echo(f"  (report leaves out {name}: {why})")
        click.echo(f"reports: {reports_dir(workdir)} (training curves, a confusion matrix per model; "
                   f"`cnnfeat report` compares them)")


def _print_summary(workdir: Path, fresh: dict[str, bool]) -> None:
    """One screen: each model's validation accuracy and log loss, and what `best` is made of."""
    import csv

    from .train import SUMMARY
    from .status import metrics_dir

    with open(metrics_dir(workdir) / SUMMARY, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["model"] in fresh]
    click.echo(f"\n{'model':<22} {'val acc':>8} {'log loss':>9} {'uncalib.':>9} {'T':>6}  chosen")
    for r in rows:
        note = "" if fresh[r["model"]] else "  (up to date)"
        weight = float(r["weight"])
        chosen = "yes" if r["model"] == BEST else (f"{weight:.2f} of best" if weight else "")
        uncalibrated = f"{float(r['val_log_loss_uncalibrated']):9.4f}" if r["val_log_loss_uncalibrated"] else f"{'':9}"
        click.echo(f"{r['model']:<22} {float(r['val_accuracy']):8.4f} {float(r['val_log_loss']):9.4f} {uncalibrated} "
                   f"{float(r['temperature']):6.2f}  {chosen}{note}")


@main.command("predict")
@click.option("--model", default=PredictConfig.model,
              help="best, ensemble, concat, a backbone name (its linear probe), any of those + '+hflip', or "
                   "finetuned-<backbone> (the network `cnnfeat finetune` trained).")
@workdir_option
@click.option("--split", default=PredictConfig.split, help="The split to predict.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="[default: <workdir>/submission.csv]")
@click.option("--kaggle-binary", is_flag=True, help="Write id,label with label = probability of the second class.")
@click.option("--clip", type=float, default=PredictConfig.clip, help="Clip probabilities to [clip, 1-clip] (log-loss safety).")
@click.option("--tta", is_flag=True, help="finetuned-<backbone>: average each image's and its mirror's probabilities.")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="finetuned-<backbone>: the data folder [default: the one it was trained on].")
@device_option
@force_option
@handled(NOTHING_HALF_WRITTEN)
def predict_command(model: str, **o: Any) -> None:
    """Stage 4: a Kaggle submission CSV, a row for every file of the split."""
    from .predict import predict

    name = _model_name(o["workdir"], model)
    _print_prediction(name, o["split"], predict(PredictConfig(model=name, **o)))


def _model_name(workdir: Path, name: str) -> str:
    """A saved model's file name as given; else a backbone alias (resnet -> resnet34) resolved."""
    from .status import heads_dir

    if (heads_dir(workdir) / f"{name}.pt").exists():
        return name
    from features import get_backbone

    if name.startswith(FINETUNED_PREFIX):  # finetuned-resnet -> finetuned-resnet34
        try:
            return FINETUNED_PREFIX + get_backbone(name[len(FINETUNED_PREFIX):]).name
        except CnnfeatError:
            return name
    base, plus, suffix = name.partition("+")
    try:
        return get_backbone(base).name + plus + suffix
    except CnnfeatError:
        return name


def _print_prediction(model: str, split: str, result: Any) -> None:
    state = "wrote" if result.written else "up to date:"
    fallback = f", {len(result.fallback)} of them undecodable (class frequencies)" if result.fallback else ""
    click.echo(f"{model} on {split}: {state} {result.path} ({result.rows} rows{fallback})")
    if result.fallback:
        names = ", ".join(result.fallback[:5]) + (", ..." if len(result.fallback) > 5 else "")
        click.secho(f"warning: {len(result.fallback)} file(s) could not be decoded and got the training split's class "
                    f"frequencies: {names}", fg="yellow", err=True)
    if result.accuracy is not None:
        click.echo(f"  accuracy {result.accuracy:.4f}, log loss {result.log_loss:.4f} (on the decoded files)")


@main.command("finetune")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder with train/<class>/*.jpg (and valid/<class>/*.jpg).")
@workdir_option
@click.option("--backbone", default=FinetuneConfig.backbone, help="resnet34, inception, densenet121 or any torchvision model.")
@click.option("--weights", default=FinetuneConfig.weights,
              help="imagenet, random (training from scratch), or a weights name of the model.")
@click.option("--train-layers", default=FinetuneConfig.train_layers,
              help="Blocks to unfreeze, comma list (resnet34: layer1..layer4, fc) or all; the new classifier always trains.")
@click.option("--epochs", type=int, default=FinetuneConfig.epochs, help="At most; --patience may stop sooner.")
@click.option("--batch-size", type=int, default=FinetuneConfig.batch_size)
@click.option("--accumulate", type=int, default=FinetuneConfig.accumulate, help="Batches per optimizer step.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=FinetuneConfig.optimizer)
@click.option("--lr", type=float, default=FinetuneConfig.lr, help="The classifier's peak learning rate.")
@click.option("--lr-decay", type=float, default=FinetuneConfig.lr_decay,
              help="Each lower block's learning rate is this times the one above it.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=FinetuneConfig.schedule)
@click.option("--warmup", type=float, default=FinetuneConfig.warmup, help="Share of the steps spent warming up.")
@click.option("--weight-decay", type=float, default=FinetuneConfig.weight_decay)
@click.option("--label-smoothing", type=float, default=FinetuneConfig.label_smoothing)
@click.option("--precision", type=click.Choice(PRECISIONS), default=FinetuneConfig.precision)
@click.option("--channels-last", is_flag=True, default=FinetuneConfig.channels_last, help="NHWC memory layout (GPUs).")
@click.option("--augment", type=click.Choice(AUGMENTS), default=FinetuneConfig.augment,
              help="Training split only: crop = random resized crop + horizontal flip; trivial = crop + TrivialAugment.")
@click.option("--patience", type=int, default=FinetuneConfig.patience, help="Epochs without a better validation loss.")
@click.option("--bn-train/--no-bn-train", default=FinetuneConfig.bn_train,
              help="Update BatchNorm statistics in unfrozen blocks [default: only from random weights].")
@click.option("--train-split", default=FinetuneConfig.train_split)
@click.option("--val-split", default=FinetuneConfig.val_split, help="Without it, a share of train (--holdout).")
@click.option("--holdout", type=float, default=FinetuneConfig.holdout)
@click.option("--image-size", type=int, default=FinetuneConfig.image_size, help="[default: the backbone's]")
@device_option
@click.option("--workers", type=int, default=FinetuneConfig.workers, help="Decoding processes [default: from the core count].")
@click.option("--seed", type=int, default=FinetuneConfig.seed)
@click.option("--force", is_flag=True, help="Start over instead of resuming.")
@handled("the last finished epoch's checkpoint is kept; the same command resumes from it")
def finetune_command(**o: Any) -> None:
    """Train a backbone's top blocks (or all of it) on the data's classes; resumes where a run stopped."""
    from .finetune import finetune

    result = _with_progress(lambda progress: finetune(FinetuneConfig(**o), progress=progress), prefix="")
    if not result.metrics:  # a torchrun rank other than 0
        return
    if result.skipped:
        click.secho(f"warning: {len(result.skipped)} file(s) could not be decoded and were skipped: "
                    f"{', '.join(result.skipped[:5])}", fg="yellow", err=True)
    click.echo(f"{result.checkpoint}: best epoch {result.metrics['chosen']['epochs']}, trained "
               f"{', '.join(result.metrics['trained_blocks'])}")
    _after_training(o["workdir"], [result])


@main.command("run", context_settings={"show_default": True})
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), is_eager=True,
              expose_value=False, callback=lambda ctx, param, value: _load_toml(ctx, value),
              help="TOML file of settings, keys named like the options (paths relative to the file); "
                   "options given here win.")
@click.option("--backbones", "backbones", multiple=True, default=("all",),
              help="all (the book's three), or any backbones as for `extract --backbone`.")
@workdir_option
@extract_options(RUN_VIEWS)
@head_common_options
@probe_options
@ensemble_options
@head_batch_option()
@click.option("--kaggle-binary", is_flag=True, help="Predict as id,label (two classes).")
@click.option("--clip", type=float, default=PredictConfig.clip, help="Clip predicted probabilities to [clip, 1-clip].")
@force_option
@handled(BATCHES_KEPT)
def run_command(backbones: tuple[str, ...], **o: Any) -> None:
    """Every stage in order: extract (with mirrored views), probes, ensemble and concat, best, predict."""
    from .run import run_pipeline

    extract_cfg, head_cfg = _extract_config(o, backbones), _head_config(o)
    predict_cfg = PredictConfig(workdir=o["workdir"], kaggle_binary=o["kaggle_binary"], clip=o["clip"],
                                device=o["device"], force=o["force"])
    report = _with_progress(lambda progress: run_pipeline(extract_cfg, head_cfg, predict_cfg, progress))
    if not report.extract.main:  # under torchrun, rank 0 trains, predicts and speaks for all
        return
    _print_extract(report.extract)
    _after_training(head_cfg.workdir, report.heads)
    if report.prediction is not None:
        _print_prediction(report.predicted_with, predict_cfg.split, report.prediction)


PATH_SETTINGS = ("data", "workdir")


def _load_toml(ctx: click.Context, path: Path | None) -> None:
    """Settings from a TOML file become the command's defaults, so options on the command line win.

    Relative paths in the file are relative to the file's folder, as with most tools' config files.
    """
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
        if name in PATH_SETTINGS and isinstance(value, str):
            value = str(path.parent / value)
        elif isinstance(value, list) and not getattr(known[name], "multiple", False):
            value = ",".join(map(str, value))  # c-grid = [0.01, 1.0] as on the command line
        defaults[name] = value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


@main.command("report")
@workdir_option
@handled(NOTHING_HALF_WRITTEN)
def report_command(workdir: Path) -> None:
    """Rebuild reports/ (training curves, confusion matrices) and compare every up-to-date model."""
    from .report import build_reports, reports_dir

    report = build_reports(workdir)
    click.echo(f"reports: {reports_dir(workdir)}")
    for name, why in report.skipped:
        click.echo(f"  left out {name}: {why}")
    rows = report.models
    click.echo(f"\n{'model':<22} {'accuracy':>9} {'log loss':>9}  chosen on {rows[0].split if rows else 'validation'}")
    for r in rows:
        click.echo(f"{r.model:<22} {r.accuracy:9.4f} {r.log_loss:9.4f}  {r.chosen}")
    if rows:
        click.echo(f"\nrecall per class {'':<5}" + "".join(f"{r.model[:13]:>14}" for r in rows))
        for name in rows[0].recall:
            click.echo(f"{name[:21]:<22}" + "".join(f"{r.recall[name]:14.3f}" for r in rows))


@main.command("prepare")
@click.option("--train", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Flat folder of labeled images, as Kaggle ships train/.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The split layout to create (symlinks).")
@click.option("--label-from-name", "label_pattern", is_flag=False, flag_value=DEFAULT_LABEL_PATTERN, default=None,
              help=f"Label = first group of this regex on the file name [flag alone: {DEFAULT_LABEL_PATTERN}].")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV with an id and a label column.")
@click.option("--id-column", default=PrepareConfig.id_column, help="The CSV's column of ids (file names, with or without extension).")
@click.option("--label-column", default=PrepareConfig.label_column, help="The CSV's column of labels.")
@click.option("--test", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Flat folder of unlabeled images.")
@click.option("--val-fraction", type=float, default=PrepareConfig.val_fraction, help="Stratified share of train that becomes valid/ (0: none).")
@click.option("--seed", type=int, default=PrepareConfig.seed)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@handled("nothing was made: --out is as it was")
def prepare_command(**o: Any) -> None:
    """Turn a raw Kaggle download into train/<class>/, valid/<class>/ and test/, without copying images."""
    from features import PROBLEMS_FILE, prepare

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
@click.option("--verify", is_flag=True, help="Also read every stored byte, checking the checksums.")
@handled(NOTHING_HALF_WRITTEN)
def info_command(workdir: Path, verify: bool) -> None:
    """Show what the feature cache holds, and what the next `cnnfeat run` would redo."""
    from features import FeatureCache, cache_path, pending_extraction

    from .status import stale_models

    with FeatureCache(cache_path(workdir)) as cache:
        click.echo(f"cache:   {cache.path}")
        click.echo(f"data:    {cache.data_root}")
        click.echo(f"classes: {', '.join(cache.classes) or '(none: no labeled split)'}")
        for split in cache.splits:
            kind = "labeled" if cache.is_labeled(split) else "unlabeled"
            skipped = cache.skipped(split)
            click.echo(f"\n{split}: {len(cache.paths(split))} images, {kind}, {len(skipped)} skipped")
            for dataset in cache.datasets(split):
                s = cache.settings(split, dataset)
                shape = "x".join(map(str, cache.feature_shape(split, dataset)))
                click.echo(f"  {dataset:<16} {shape:>10}  weights={s['weights']} pool={s['pool']} "
                           f"image_size={s['image_size']} precision={s['precision']} layer={s.get('layer', '?')}")
            for path, reason in skipped:
                click.echo(f"  skipped {path}: {reason}")
        damaged = cache.verify() if verify else []
        pending = pending_extraction(cache)
        stale = stale_models(cache, workdir, {(split, dataset) for split, dataset, _ in pending})
    if verify:
        click.echo("\nverify: every dataset reads back and matches its checksums" if not damaged else "\nverify:")
        for line in damaged:
            click.secho(f"  {line}", fg="red")
    click.echo("\nthe next `cnnfeat run` with the same settings would:")
    if not pending and not stale and not damaged:
        click.echo("  do nothing: everything is up to date")
    if damaged:
        click.echo("  fail on the damaged datasets: rebuild with `cnnfeat extract --force`")
    for split, dataset, why in pending:
        click.echo(f"  extract {split}/{dataset}: {why}")
    for name, why in stale:
        click.echo(f"  train {name}: {why}")
    if damaged:
        sys.exit(EXIT_PROBLEM)


@main.command("backbones")
@click.option("--all", "show_all", is_flag=True, help="Also the models cnnfeat cannot take (no final Linear).")
@handled(NOTHING_HALF_WRITTEN)
def backbones_command(show_all: bool) -> None:
    """List the backbones: the book's three and every torchvision classification model."""
    from features import catalog

    click.echo(f"{'backbone':<22} {'feature':>8} {'size':>5}  weights (--weights)")
    for entry in catalog():
        if entry.feature_dim or show_all:
            dim = str(entry.feature_dim) if entry.feature_dim else "none"
            click.echo(f"{entry.name:<22} {dim:>8} {entry.image_size:>5}  {', '.join(entry.weights)}")
    click.echo("\nand timm:<model> for any timm model when timm is installed (pip install 'cnnfeat[timm]').")
