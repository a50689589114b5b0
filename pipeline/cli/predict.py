"""`cnnfeat predict`: a submission from a saved head or a fine-tuned network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from features import CnnfeatError

from ..config import PredictConfig
from .common import (NOTHING_HALF_WRITTEN, device_option, force_option, handled, setting_option, settings,
                     usable_path, workdir_option)


@click.command("predict")
@click.option("--model", default=PredictConfig.model,
              help="best, ensemble, concat, a backbone name (its linear probe), any of those + '+hflip', or "
                   "finetuned-<backbone> (the network `cnnfeat finetune` trained).")
@workdir_option
@click.option("--split", default=PredictConfig.split, help="The split to predict.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=usable_path("--output"), help="[default: <workdir>/submission.csv]")
@click.option("--kaggle-binary", is_flag=True, help="Write id,label with label = probability of the second class.")
@setting_option("--clip", PredictConfig, help="Clip probabilities to [clip, 1-clip] (log-loss safety).")
@click.option("--tta", is_flag=True, help="finetuned-<backbone>: average each image's and its mirror's probabilities.")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="finetuned-<backbone>: the data folder [default: the one it was trained on].")
@device_option
@force_option
@handled(NOTHING_HALF_WRITTEN)
def predict_command(model: str, **o: Any) -> None:
    """Stage 4: a Kaggle submission CSV, a row for every file of the split."""
    cfg = settings(PredictConfig, model=model, **o)
    from ..predict import predict

    cfg.model = _model_name(cfg.workdir, model)
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
