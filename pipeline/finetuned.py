"""The one door between the workdir's models and fine-tuned networks: train one, tell if it is current, predict.

A fine-tuned network is a model like the heads' (`finetuned-<backbone>`: metrics, summary row,
submission), but it reads images, not the cache. Everything the rest of the pipeline knows about
it goes through these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from features import DEFAULT_DEVICE, ConfigError, ProgressFn, get_backbone, writes_workdir

from .finetune.config import FINETUNED_PREFIX, FinetuneConfig, checkpoint_file, finetuned_dir, model_name
from .outputs import Probabilities, metrics_dir, write_model_outputs, write_summary

if TYPE_CHECKING:
    from .finetune import FinetuneResult, Network


def is_finetuned(model: str) -> bool:
    return model.startswith(FINETUNED_PREFIX)


def _backbone(model: str) -> str:
    """finetuned-<backbone> -> <backbone>."""
    return model[len(FINETUNED_PREFIX):]


def canonical_name(model: str) -> str:
    """finetuned-resnet -> finetuned-resnet34 (backbone aliases resolved)."""
    return FINETUNED_PREFIX + get_backbone(_backbone(model)).name


@writes_workdir
def train(cfg: FinetuneConfig, progress: ProgressFn | None = None) -> "FinetuneResult":
    """Fine-tune (or find the finished run), then write its metrics like any model's."""
    from .finetune import finetune

    result = finetune(cfg, progress)
    if result.metrics and (result.trained or not (metrics_dir(cfg.workdir) / f"{result.name}.json").exists()):
        validation = result.validation
        write_model_outputs(cfg.workdir, result.name, result.metrics, result.history,
                            Probabilities(validation["paths"], validation["labels"].numpy(), validation["proba"].numpy(),
                                          result.classes))
        write_summary(cfg.workdir)
    return result


def checkpoint(workdir: Path, model: str) -> Path:
    """finetuned/<backbone>.pt of a `finetuned-<backbone>` model, which must exist."""
    backbone = _backbone(model)
    path = checkpoint_file(workdir, backbone)
    if not path.exists():
        raise ConfigError(f"no fine-tuned {backbone or 'network'} in {finetuned_dir(workdir)}; run `cnnfeat finetune "
                          f"--backbone {backbone or '<name>'} --workdir {workdir}` first")
    return path


def trained_models(workdir: Path) -> list[str]:
    """The `finetuned-<backbone>` models the workdir has a checkpoint of."""
    return sorted(model_name(path.stem) for path in finetuned_dir(workdir).glob("*.pt"))


def staleness(workdir: Path, model: str) -> str:
    """'' while its checkpoint is there (rerunning `cnnfeat finetune` retrains it when its data or settings change)."""
    if checkpoint_file(workdir, _backbone(model)).exists():
        return ""
    return "its fine-tuned checkpoint is missing; run `cnnfeat finetune` again"


def data_folder(workdir: Path, model: str, data: Path | None = None) -> Path:
    """The data folder to predict from: the one given, else the one the network was trained on."""
    from .finetune import trained_data

    return Path(data) if data is not None else trained_data(checkpoint(workdir, model))


def probabilities(workdir: Path, model: str, split: str, data: Path, device: str = DEFAULT_DEVICE,
                  tta: bool = False) -> Probabilities:
    """The network on every file of a split; undecodable files get the training split's class frequencies."""
    from .finetune import network_predictions

    found = network_predictions(checkpoint(workdir, model), split, data, device, tta)
    return Probabilities.with_fallback(found.paths, found.labels, found.proba, found.classes, found.failed,
                                       np.asarray(found.failed_labels), found.class_prior)


def network(workdir: Path, model: str, device: str = DEFAULT_DEVICE) -> "Network":
    """The `finetuned-<backbone>` network built once, for predicting images (pipeline.inference)."""
    from .finetune import load_network

    return load_network(checkpoint(workdir, model), device)


def checkpoints(workdir: Path) -> list[Path]:
    """The workdir's fine-tuned checkpoints: the files `extract --weights` may have read."""
    folder = finetuned_dir(workdir)
    return sorted(folder.glob("*.pt")) if folder.is_dir() else []
