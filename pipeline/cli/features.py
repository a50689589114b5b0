"""Commands of the features part: extract, prepare, info, backbones."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

import click

from features import (DECODERS, DEFAULT_LABEL_PATTERN, POOLS, PRECISIONS, ConfigError, ExtractConfig, FeatureGroup,
                      PrepareConfig, finetuned_path, names_checkpoint, registry_names)

from .common import (BATCHES_KEPT, EXIT_PROBLEM, JOB, NOTHING_HALF_WRITTEN, JobUpdate, backbones_option, device_option,
                     force_option, given, handled, job_update, job_workdir_option, options, read_workdir_option,
                     seed_option, setting_option, settings, shown_setting, views_option, usable_path, with_progress)


def extract_options(views_default: tuple[str, ...]) -> Callable[..., Any]:
    return options(
        click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
                     help="Folder with one subfolder per split: train/<class>/*.jpg, valid/<class>/*.jpg, test/*.jpg "
                          "[default: the workdir's job's]."),
        click.option("--weights", default=ExtractConfig.weights,
                     help="imagenet: each model's pretrained weights; a weights name of the model (IMAGENET1K_V2, "
                          "see `cnnfeat backbones`); a fine-tuned checkpoint path/to/<backbone>.pt (what `cnnfeat "
                          "finetune` writes); random: seeded, for smoke runs only."),
        click.option("--pool", type=click.Choice(POOLS), default=ExtractConfig.pool, help="none stores the whole feature map."),
        setting_option("--image-size", ExtractConfig,
                       help="Images are resized to this square size [default: 299 for the book's three, else each "
                          "model's own]."),
        setting_option("--batch-size", ExtractConfig, "extract_batch_size", help="Images per forward pass."),
        setting_option("--workers", ExtractConfig, help="Decoding processes [default: from the core count]."),
        device_option,
        click.option("--precision", type=click.Choice(PRECISIONS), default=ExtractConfig.precision),
        click.option("--decode", type=click.Choice(DECODERS), default=ExtractConfig.decode,
                     help="device: JPEGs decoded and resized where the models run (nvJPEG on a GPU); auto: on a GPU only."),
        views_option(views_default),
        seed_option,
    )


def extract_config(o: dict[str, Any], group: FeatureGroup) -> ExtractConfig:
    """The command's options as extraction settings for one group of backbones (--batch-size is
    extract_batch_size: `run` has a head's too)."""
    values = {**o, "backbones": group.backbones, "weights": group.weights, "image_size": group.image_size,
              "batch_size": o["extract_batch_size"]}
    return settings(ExtractConfig, **{f.name: values[f.name] for f in fields(ExtractConfig) if f.name in values})


def feature_groups(o: dict[str, Any], backbones: tuple[str, ...],
                   whole_job: bool) -> tuple[list[FeatureGroup], list[FeatureGroup], list[str]]:
    """(the groups this command extracts, the job's groups after it, what it changed in them).

    Backbones named on the command line (or by --config) are added to the job, each at the weights and
    size given, else at the ones the job has for it, else at those of the job's first group that is not a
    checkpoint; `extract` then extracts those only, `run` (whole_job) the whole job. Without them, the
    job's groups are extracted, with --weights and --image-size changing every group where given. A
    checkpoint path is recorded absolute, as the data root is, so the job finds it from any folder."""
    job = click.get_current_context().meta.get(JOB)
    weights = str(Path(o["weights"]).resolve()) if finetuned_path(o["weights"]) else o["weights"]
    if job is None or not job.features:
        group = FeatureGroup(tuple(registry_names(backbones)), weights, o["image_size"])
        return [group], [group], []
    if given("backbones"):
        groups = []
        # a backbone new to the job: the first group's weights, unless they are another architecture's checkpoint
        stock = next((g for g in job.features if not names_checkpoint(g.weights)),
                     FeatureGroup((), ExtractConfig.weights, None))
        for name in registry_names(backbones):
            known = job.groups_for((name,)) or [stock]
            groups.append(FeatureGroup((name,), weights if given("weights") else known[0].weights,
                                       o["image_size"] if given("image_size") else known[0].image_size))
    else:
        groups = [FeatureGroup(g.backbones, weights if given("weights") else g.weights,
                               o["image_size"] if given("image_size") else g.image_size) for g in job.features]
    changes = []
    for group in groups:
        job, changed = job.with_group(group)
        changes += changed
    extracted = groups if given("backbones") and not whole_job else job.features
    return extracted, job.features, changes


def job_extraction(o: dict[str, Any], backbones: tuple[str, ...],
                   whole_job: bool = False) -> tuple[list[ExtractConfig], JobUpdate]:
    """The extraction settings of this command, per feature group, and the job it leaves the workdir with."""
    extracted, recorded, changes = feature_groups(o, backbones, whole_job)
    configs = [extract_config(o, group) for group in extracted]
    return configs, job_update(o["workdir"], o, recorded, tuple(changes))


@click.command("extract")
@backbones_option("--backbone", "all (the book's resnet34, inception, densenet121), any torchvision model "
                                "(`cnnfeat backbones`), timm:<name>; comma lists, repeatable [default: the job's].")
@job_workdir_option
@extract_options(())
@force_option
@handled(BATCHES_KEPT)
def extract_command(backbones: tuple[str, ...], **o: Any) -> None:
    """Stage 1: decode every image once, run the frozen backbones, cache the features in HDF5."""
    configs, job = job_extraction(o, backbones)
    from features import extract, workdir_lock

    with workdir_lock(o["workdir"]):  # through the job's record: no other writer in between
        report = with_progress(lambda progress: extract(configs, progress=progress))
        if report.main:  # under torchrun, rank 0 speaks for all, and records the job
            print_extract(report)
            job.save()


def print_extract(report: Any) -> None:
    for note in report.notes:
        click.echo(note)
    for split, skipped in report.skipped_files.items():
        click.echo(f"{split}: {len(skipped)} file(s) could not be decoded and are left out (see `cnnfeat info`)")
    if not report.computed:
        click.echo(f"Nothing to do: {report.cache} is up to date for {_pairs(report.up_to_date)}.")
        return
    ranks = f" by {len(report.images_per_rank)} ranks" if len(report.images_per_rank) > 1 else ""
    built = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.build_seconds.items()) or "none needed"
    click.echo(
        f"Extracted {_pairs(report.computed)}: {report.images_decoded} images decoded{ranks} in {report.seconds:.1f} s "
        f"({report.images_per_second:.1f} img/s; models built in {built}) -> {report.cache}"
    )
    if report.up_to_date:
        click.echo(f"Already up to date: {_pairs(report.up_to_date)}.")


def label_pattern(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--label-from-name's regex, refused by the option parser when it cannot give a label (features.prepare's rule)."""
    from features import label_regex

    try:
        return value if value is None else label_regex(value).pattern
    except ConfigError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None


def _pairs(pairs: list[tuple[str, str]]) -> str:
    by_split: dict[str, list[str]] = {}
    for split, backbone in pairs:
        by_split.setdefault(split, []).append(backbone)
    return "; ".join(f"{split}: {', '.join(names)}" for split, names in by_split.items())


@click.command("prepare")
@click.option("--train", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Flat folder of labeled images, as Kaggle ships train/.")
@click.option("--out", type=click.Path(path_type=Path), required=True, callback=usable_path("--out folder"),
              help="The split layout to create (symlinks).")
@click.option("--label-from-name", "label_pattern", is_flag=False, flag_value=DEFAULT_LABEL_PATTERN, default=None,
              callback=label_pattern,
              help=f"Label = first group of this regex on the file name [flag alone: {DEFAULT_LABEL_PATTERN}].")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV with an id and a label column.")
@click.option("--id-column", default=PrepareConfig.id_column, help="The CSV's column of ids (file names, with or without extension).")
@click.option("--label-column", default=PrepareConfig.label_column, help="The CSV's column of labels.")
@click.option("--test", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Flat folder of unlabeled images.")
@setting_option("--val-fraction", PrepareConfig, help="Stratified share of train that becomes valid/ (0: none).")
@setting_option("--seed", PrepareConfig)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@handled("nothing was made: --out is as it was")
def prepare_command(**o: Any) -> None:
    """Turn a raw Kaggle download into train/<class>/, valid/<class>/ and test/, without copying images."""
    cfg = settings(PrepareConfig, **o)
    from features import PROBLEMS_FILE, prepare

    report = prepare(cfg)
    counts = ", ".join(f"{split} {n}" for split, n in report.counts.items())
    click.echo(f"{report.out}: {counts} images, {len(report.classes)} classes ({', '.join(report.classes[:10])}"
               f"{', ...' if len(report.classes) > 10 else ''})")
    if report.problems:
        click.secho(f"{len(report.problems)} file(s) or row(s) left out, listed in {report.out / PROBLEMS_FILE}:", fg="yellow")
        for kind, item, detail in report.problems[:5]:
            click.secho(f"  {kind}: {item} ({detail})", fg="yellow")
    click.echo(f"next: cnnfeat run --data {report.out}")


@click.command("info")
@read_workdir_option
@click.option("--verify", is_flag=True, help="Also read every stored byte, checking the checksums.")
@handled(NOTHING_HALF_WRITTEN)
def info_command(workdir: Path, verify: bool) -> None:
    """Show the workdir's job, what its feature cache holds, and what the next `cnnfeat run` would redo."""
    from features import FeatureCache, cache_path, extract_hint, lock_holder, read_job

    job = read_job(workdir)
    if job is not None:
        print_job(workdir, job)
    holder = lock_holder(workdir)
    if holder is not None:
        print_running(workdir, holder, job)
    if not cache_path(workdir).exists() and (job is not None or holder is not None):
        if holder is None:
            click.echo(f"\nno feature cache yet: `{extract_hint(workdir)}` (or `cnnfeat run --workdir {workdir}`) "
                       f"makes it")
        return
    with FeatureCache(cache_path(workdir)) as cache:
        print_cache(cache)
        damaged = cache.verify() if verify else []
        pending, stale = next_run(cache, workdir, job)
    if verify:
        click.echo("\nverify: every dataset reads back and matches its checksums" if not damaged else "\nverify:")
        for line in damaged:
            click.secho(f"  {line}", fg="red")
    click.echo(f"\nthe next `cnnfeat run --workdir {workdir}` would:" if job is not None else
               "\nthe next `cnnfeat run` with the same settings would:")
    if not pending and not stale and not damaged:
        click.echo("  do nothing: everything is up to date")
    if damaged:
        click.echo(f"  fail on the damaged datasets: rebuild with `{extract_hint(workdir, force=True)}`")
    for split, dataset, why in pending:
        click.echo(f"  extract {split}/{dataset}: {why}")
    for name, why in stale:
        click.echo(f"  train {name}: {why}")
    if damaged:
        sys.exit(EXIT_PROBLEM)


def print_job(workdir: Path, job: Any) -> None:
    """The job's own settings: what `cnnfeat extract --workdir W` and `cnnfeat run --workdir W` redo."""
    from features import job_path

    extraction = ("views", "pool", "precision", "decode", "seed")
    click.echo(f"job:     {job_path(workdir)}")
    click.echo(f"  data:     {job.settings.get('data', '(not recorded: give --data)')}")
    for group in job.features:
        click.echo(f"  features: {group.describe()}")
    click.echo("  extract:  " + ", ".join(f"{k}={shown_setting(job.settings[k])}" for k in extraction if k in job.settings))
    heads = [k for k in job.settings if k not in (*extraction, "data")]
    if heads:
        click.echo("  heads:    " + ", ".join(f"{k}={shown_setting(job.settings[k])}" for k in heads))
    click.echo("")


def print_running(workdir: Path, holder: str, job: Any) -> None:
    """Another process holds the workdir: say so, and how far its extraction got (its staged batches)."""
    from features import DataLayoutError, scan_data_folder, staged_rows

    click.echo(f"running: another cnnfeat process (pid {holder}) is writing to {workdir} now; what follows is the "
               f"state before it finishes")
    try:
        folder = scan_data_folder(job.settings["data"]) if job is not None and "data" in job.settings else None
    except (DataLayoutError, OSError):
        folder = None
    for split, datasets in staged_rows(workdir).items():
        total = f" of {len(folder.splits[split].paths)}" if folder is not None and split in folder.splits else ""
        done = ", ".join(f"{name} {rows}{total}" for name, rows in datasets.items())
        click.echo(f"  extracting {split}: {done} images staged")


def print_cache(cache: Any) -> None:
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


def next_run(cache: Any, workdir: Path, job: Any) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """(split, dataset, why) to extract and (model, why) to train in the next run: the job's, else the book's."""
    from features import dataset_name, pending_extraction

    from ..heads import expected_heads
    from ..status import stale_models
    from .heads import head_config

    if job is None or not job.features:
        pending = pending_extraction(cache)
        return pending, stale_models(cache, workdir, {(split, dataset) for split, dataset, _ in pending})
    names, views = job.feature_names(), job.settings.get("views", [])
    pending = pending_extraction(cache, [dataset_name(n, v) for n in names for v in ("", *views)])
    expected = expected_heads(names, views, head_config({**job.settings, "workdir": workdir}))
    return pending, stale_models(cache, workdir, {(split, dataset) for split, dataset, _ in pending}, expected)


@click.command("backbones")
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
