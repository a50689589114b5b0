"""`cnnfeat finetune`: train a backbone's top blocks (or all of it) on the data's classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from features import PRECISIONS

from ..finetune.config import AUGMENTS, OPTIMIZERS, SCHEDULES, FinetuneConfig
from .common import device_option, handled, seed_option, setting_option, settings, with_progress, workdir_option
from .heads import after_training


@click.command("finetune")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder with train/<class>/*.jpg (and valid/<class>/*.jpg).")
@workdir_option
@click.option("--backbone", default=FinetuneConfig.backbone, help="resnet34, inception, densenet121 or any torchvision model.")
@click.option("--weights", default=FinetuneConfig.weights,
              help="imagenet, random (training from scratch), or a weights name of the model.")
@click.option("--train-layers", default=FinetuneConfig.train_layers,
              help="Blocks to unfreeze, comma list (resnet34: layer1..layer4, fc), all, or classifier (the model's own "
                   "classifier block, whatever its name); the new classifier always trains.")
@setting_option("--epochs", FinetuneConfig, help="At most; --patience may stop sooner.")
@setting_option("--batch-size", FinetuneConfig)
@setting_option("--accumulate", FinetuneConfig, help="Batches per optimizer step.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=FinetuneConfig.optimizer)
@setting_option("--lr", FinetuneConfig, help="The classifier's peak learning rate.")
@setting_option("--lr-decay", FinetuneConfig, help="Each lower block's learning rate is this times the one above it.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=FinetuneConfig.schedule)
@setting_option("--warmup", FinetuneConfig, help="Share of the steps spent warming up.")
@setting_option("--weight-decay", FinetuneConfig)
@setting_option("--label-smoothing", FinetuneConfig)
@click.option("--precision", type=click.Choice(PRECISIONS), default=FinetuneConfig.precision)
@click.option("--channels-last", is_flag=True, default=FinetuneConfig.channels_last, help="NHWC memory layout (GPUs).")
@click.option("--augment", type=click.Choice(AUGMENTS), default=FinetuneConfig.augment,
              help="Training split only: crop = random resized crop + horizontal flip; trivial = crop + TrivialAugment.")
@setting_option("--patience", FinetuneConfig, help="Epochs without a better loss on the training holdout (--holdout).")
@click.option("--bn-train/--no-bn-train", default=FinetuneConfig.bn_train,
              help="Update BatchNorm statistics in unfrozen blocks [default: only from random weights].")
@click.option("--train-split", default=FinetuneConfig.train_split)
@click.option("--val-split", default=FinetuneConfig.val_split, help="Without it, a share of train (--holdout).")
@setting_option("--holdout", FinetuneConfig,
                help="Share of the training rows held out to choose the epoch (and, without a validation split, "
                     "to validate on).")
@setting_option("--image-size", FinetuneConfig, help="[default: the backbone's]")
@device_option
@setting_option("--workers", FinetuneConfig, help="Decoding processes [default: from the core count].")
@seed_option
@click.option("--force", is_flag=True, help="Start over instead of resuming.")
@handled("the last finished epoch's checkpoint is kept; the same command resumes from it")
def finetune_command(**o: Any) -> None:
    """Train a backbone's top blocks (or all of it) on the data's classes; resumes where a run stopped."""
    cfg = settings(FinetuneConfig, **o)
    from .. import finetuned

    result = with_progress(lambda progress: finetuned.train(cfg, progress=progress), prefix="")
    if not result.metrics:  # a torchrun rank other than 0
        return
    if result.skipped:
        click.secho(f"warning: {len(result.skipped)} file(s) could not be decoded and were skipped: "
                    f"{', '.join(result.skipped[:5])}", fg="yellow", err=True)
    click.echo(f"{result.checkpoint}: best epoch {result.metrics['chosen']['epochs']}, trained "
               f"{', '.join(result.metrics['trained_blocks'])}")
    after_training(o["workdir"], [result])
