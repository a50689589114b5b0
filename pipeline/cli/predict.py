"""`cnnfeat predict`: a submission from a saved head or a fine-tuned network, or any images' classes; `cnnfeat export`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from features import CnnfeatError

from ..config import EXPORT_FORMATS, ExportConfig, PredictConfig
from .common import (NOTHING_HALF_WRITTEN, device_option, force_option, handled, job_workdir_option, setting_option,
                     settings, usable_path, with_progress, workdir_option)


@click.command("predict")
@click.option("--model", default=PredictConfig.model,
              help="best, ensemble, concat, a backbone name (its linear probe), any of those + '+hflip', or "
                   "finetuned-<backbone> (the network `cnnfeat finetune` trained).")
@job_workdir_option
@click.option("--split", default=PredictConfig.split, help="The split to predict.")
@click.option("--images", type=click.Path(exists=True, path_type=Path), multiple=True,
              help="Predict these instead of a split: image files, folders (recursively) or text files listing paths; "
                   "repeatable, or several after one --images. Writes path, a probability per class, label.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=usable_path("--output"),
              help="[default: <workdir>/submission.csv; with --images, <workdir>/predictions.csv]")
@click.option("--kaggle-binary/--no-kaggle-binary", default=PredictConfig.kaggle_binary, help="Write id,label with label = probability of the second class.")
@setting_option("--clip", PredictConfig, help="Keep every probability in [clip, 1-clip], rows summing to 1; at most 1/classes.")
@click.option("--tta", is_flag=True, help="finetuned-<backbone>: average each image's and its mirror's probabilities.")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="finetuned-<backbone>: the data folder [default: the one it was trained on].")
@device_option
@force_option
@click.argument("more_images", nargs=-1, type=click.Path(exists=True, path_type=Path), metavar="[IMAGES]...")
@click.pass_context
def predict_command(ctx: click.Context, model: str, more_images: tuple[Path, ...], **o: Any) -> None:
    """Stage 4: a Kaggle submission CSV, a row for every file of the split; or, with --images, any images' classes."""
    o["images"] = o["images"] + more_images
    if more_images and len(o["images"]) == len(more_images):
        raise click.UsageError("image paths come after --images (`--images a.jpg b.jpg`)")
    if o["images"]:
        told = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)  # not the job's
        given = [f"--{name.replace('_', '-')}" for name in ("split", "kaggle_binary", "clip", "data", "force")
                 if ctx.get_parameter_source(name) in told]
        if given:
            raise click.UsageError(f"{', '.join(given)} apply to a split's submission, not to --images")
    _predict(model, **o)


@handled(NOTHING_HALF_WRITTEN)
def _predict(model: str, **o: Any) -> None:
    cfg = settings(PredictConfig, model=model, **o)
    from ..predict import predict

    cfg.model = _model_name(cfg.workdir, model)
    if cfg.images:
        print_prediction(cfg.model, "images", with_progress(lambda bar: predict(cfg, bar), "predict "))
        return
    print_prediction(cfg.model, cfg.split, predict(cfg))


def _model_name(workdir: Path, name: str) -> str:
    """A saved model's file name as given; else a backbone alias (resnet -> resnet34) resolved."""
    from features import get_backbone

    from .. import finetuned
    from ..heads.status import heads_dir

    if (heads_dir(workdir) / f"{name}.pt").exists():
        return name
    if finetuned.is_finetuned(name):  # finetuned-resnet -> finetuned-resnet34
        try:
            return finetuned.canonical_name(name)
        except CnnfeatError:
            return name
    base, plus, suffix = name.partition("+")
    try:
        return get_backbone(base).name + plus + suffix
    except CnnfeatError:
        return name


def print_prediction(model: str, split: str, result: Any) -> None:
    state = "wrote" if result.written else "up to date:"
    fallback = f", {len(result.fallback)} of them undecodable (class frequencies)" if result.fallback else ""
    click.echo(f"{model} on {split}: {state} {result.path} ({result.rows} rows{fallback})")
    if result.fallback:
        names = ", ".join(result.fallback[:5]) + (", ..." if len(result.fallback) > 5 else "")
        click.secho(f"warning: {len(result.fallback)} file(s) could not be decoded and got the training split's class "
                    f"frequencies: {names}", fg="yellow", err=True)
    if result.accuracy is not None:
        click.echo(f"  accuracy {result.accuracy:.4f}, log loss {result.log_loss:.4f} (on the decoded files)")


@click.command("export")
@click.option("--model", default=ExportConfig.model, help="The saved model to export, as for predict.")
@workdir_option
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=usable_path("--output"), help="[default: <workdir>/<model>.pt2, or .onnx]")
@click.option("--format", "format_", type=click.Choice(EXPORT_FORMATS), default=ExportConfig.format,
              help='pt2: torch.export, loads with torch.export.load alone; onnx: for onnxruntime (pip install "cnnfeat[onnx]").')
@handled(NOTHING_HALF_WRITTEN)
def export_command(model: str, workdir: Path, output: Path | None, format_: str) -> None:
    """One file that runs the model without cnnfeat: uint8 RGB images (N, 3, H, W) in, class probabilities out."""
    from ..export import export_model

    name = _model_name(workdir, model)
    path = export_model(ExportConfig(workdir=workdir, model=name, output=output, format=format_))
    click.echo(f"{name}: wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); README, \"Use a trained model\", shows how to run it")
