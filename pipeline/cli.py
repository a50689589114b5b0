"""The `cnnfeat` command: option parsing and terminal output only; the work is in features/ and pipeline/.

    cnnfeat extract --data data/digits --backbone all --workdir runs/digits
    cnnfeat info --workdir runs/digits
"""

from __future__ import annotations

import functools
import logging
import sys
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
from features.backbones import POOLS, WEIGHTS
from features.extract import DEVICES, PRECISIONS

# Errors that mean the user has something to fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, DataLayoutError, WeightsUnavailableError, CacheError, WorkdirBusyError, FileNotFoundError)


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
        self.split: str | None = None
        self.bar: tqdm | None = None

    def __call__(self, split: str, advanced: int, total: int) -> None:
        if split != self.split:
            self.close()
            self.split, self.bar = split, tqdm(total=total, desc=f"extract {split}", unit="img", dynamic_ncols=True)
        self.bar.update(advanced)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def main(verbose: bool) -> None:
    """cnnfeat: frozen-CNN features, linear and ensemble heads, Kaggle submissions."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")


workdir_option = click.option(
    "--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("cnnfeat-out"),
    help="Where features.h5 and everything after it live.",
)


@main.command("extract")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder with one subfolder per split: train/<class>/*.jpg, valid/<class>/*.jpg, test/*.jpg.")
@click.option("--backbone", "backbones", multiple=True, default=("all",),
              help="resnet34, inception, densenet121 (aliases resnet, inception_v3, densenet), comma lists, or all.")
@workdir_option
@click.option("--weights", type=click.Choice(WEIGHTS), default="imagenet",
              help="imagenet: torchvision's pretrained weights; random: seeded, for smoke runs only.")
@click.option("--pool", type=click.Choice(POOLS), default="avg", help="none stores the whole feature map.")
@click.option("--image-size", type=int, default=299, help="Images are resized to this square size.")
@click.option("--batch-size", type=int, default=64)
@click.option("--workers", type=int, default=None, help="Decoding processes [default: from the core count].")
@click.option("--device", type=click.Choice(DEVICES), default="auto")
@click.option("--precision", type=click.Choice(tuple(PRECISIONS)), default="fp32")
@click.option("--seed", type=int, default=0, help="Seed of --weights random.")
@click.option("--force", is_flag=True, help="Recompute even what is up to date.")
@user_errors
def extract_command(**options: Any) -> None:
    """Stage 1: decode every image once, run the frozen backbones, cache the features in HDF5."""
    cfg = ExtractConfig(**options)
    progress = _SplitProgress()
    try:
        report = extract(cfg, progress=progress)
    finally:
        progress.close()
    for split, skipped in report.skipped_files.items():
        click.echo(f"{split}: {len(skipped)} file(s) could not be decoded and are left out (see `cnnfeat info`)")
    if not report.computed:
        click.echo(f"Nothing to do: {report.cache} is up to date for {_pairs(report.up_to_date)}.")
        return
    click.echo(
        f"Extracted {_pairs(report.computed)}: {report.images_decoded} images in {report.seconds:.1f} s "
        f"({report.images_per_second:.1f} img/s) -> {report.cache}"
    )
    if report.up_to_date:
        click.echo(f"Already up to date: {_pairs(report.up_to_date)}.")


def _pairs(pairs: list[tuple[str, str]]) -> str:
    by_split: dict[str, list[str]] = {}
    for split, backbone in pairs:
        by_split.setdefault(split, []).append(backbone)
    return "; ".join(f"{split}: {', '.join(names)}" for split, names in by_split.items())


@main.command("info")
@workdir_option
@user_errors
def info_command(workdir: Path) -> None:
    """Show what the feature cache holds."""
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
