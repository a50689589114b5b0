"""`cnnfeat run`: every stage as one batch job, settings from options or a TOML file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click

from features import names_checkpoint

from ..config import RUN_VIEWS, PredictConfig
from .common import (BATCHES_KEPT, backbones_option, force_option, handled, job_workdir_option, option_value,
                     setting_option,
                     settings, with_progress)
from .features import extract_options, job_extraction, print_extract
from .heads import after_training, ensemble_options, head_batch_option, head_common_options, head_config, probe_options
from .predict import print_prediction


@click.command("run", context_settings={"show_default": True})
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), is_eager=True,
              expose_value=False, callback=lambda ctx, param, value: _load_toml(ctx, value),
              help="TOML file of settings, keys named like the options (paths relative to the file); "
                   "options given here win.")
@backbones_option("--backbones", "all (the book's three), or any backbones as for `extract --backbone` "
                                 "[default: the job's].")
@job_workdir_option
@extract_options(RUN_VIEWS)
@head_common_options
@probe_options
@ensemble_options
@head_batch_option()
@click.option("--kaggle-binary/--no-kaggle-binary", default=PredictConfig.kaggle_binary, help="Predict as id,label (two classes).")
@setting_option("--clip", PredictConfig, help="Keep every probability in [clip, 1-clip], rows summing to 1; at most 1/classes.")
@force_option
@handled(BATCHES_KEPT)
def run_command(backbones: tuple[str, ...], **o: Any) -> None:
    """Every stage in order: extract (with mirrored views), probes, ensemble and concat, best, predict."""
    head_cfg = head_config(o)
    predict_cfg = settings(PredictConfig, workdir=o["workdir"], kaggle_binary=o["kaggle_binary"], clip=o["clip"],
                           device=o["device"], force=o["force"])
    extract_cfgs, job = job_extraction(o, backbones, whole_job=True)  # --backbones adds to the job; run runs all of it
    from features import workdir_lock

    from ..run import run_pipeline

    with workdir_lock(o["workdir"]):  # through the summary and reports: no other writer in between
        report = with_progress(lambda progress: run_pipeline(extract_cfgs, head_cfg, predict_cfg, progress))
        if not report.extract.main:  # under torchrun, rank 0 trains, predicts and speaks for all
            return
        print_extract(report.extract)
        after_training(head_cfg.workdir, report.heads)
        job.save()
    if report.prediction is not None:
        print_prediction(report.predicted_with, predict_cfg.split, report.prediction)
    if report.nothing_done:
        click.echo(f"Nothing to do: every stage of the job in {head_cfg.workdir} is up to date.")


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
        if isinstance(value, str) and (name in PATH_SETTINGS or (name == "weights" and names_checkpoint(value))):
            value = str(path.parent / value)
        defaults[name] = option_value(known[name], value)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
