"""Files of weights: reading any torch file safely, and the fine-tuned checkpoint format, written and read here only.

    saved = read_torch_file(path, "a cached checkpoint", WeightsUnavailableError, fix="delete it and run again")
    save_finetuned(path, FinetunedCheckpoint(backbone="resnet34", classes=[...], state_dict=..., ...))
    saved = load_finetuned(path, spec)          # what `extract --weights PATH` and predict read

A fine-tuned checkpoint (README: "Fine-tuned checkpoints") is a dict of plain tensors and
containers, loadable with torch.load(weights_only=True): format, backbone, builder_kwargs, classes,
state_dict, settings, preprocessing (mean, std, image_size), class_prior and metrics.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CnnfeatError, ConfigError, MissingInputError, WeightsUnavailableError
from .files import atomic_output

if TYPE_CHECKING:
    import torch

    from .registry import BackboneSpec

FINETUNED_FORMAT = "cnnfeat-finetuned"
NAMED_WEIGHTS = ("imagenet", "random")  # what --weights takes besides a weights name or a checkpoint path


def read_torch_file(path: Path, what: str, error: type[CnnfeatError], fix: str,
                    expected_format: object | None = None) -> Any:
    """torch.load(weights_only=True): never unpickles code. With expected_format, the file's "format" entry
    must equal it. Any failure is one `error` naming the file, what it should have been and `fix`."""
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if expected_format is not None and (not isinstance(saved, dict) or saved.get("format") != expected_format):
            found = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
            raise ValueError(f"it is format {found!r}, not {expected_format!r}")
    except Exception as err:  # noqa: BLE001 - any failure here means the file is not usable as `what`
        reason = str(err).strip().split(". ")[0].splitlines()[0] if str(err).strip() else type(err).__name__  # torch's
        # unpickling errors run to a paragraph; their first sentence says what failed
        raise error(f"{path} is not {what} ({type(err).__name__}: {reason}); {fix}") from err
    return saved


@dataclass
class FinetunedCheckpoint:
    """What `cnnfeat finetune` saves: enough to rebuild the network and use it with nothing else."""

    backbone: str  # registry name
    builder_kwargs: dict[str, Any]  # torchvision builder's arguments besides num_classes
    classes: list[str]
    state_dict: dict[str, "torch.Tensor"]
    settings: dict[str, Any]  # the FinetuneConfig that trained it, with the resolved data folder and size
    preprocessing: dict[str, Any]  # mean, std, image_size: how its input was made in training
    class_prior: list[float]  # training split's class frequencies: the row an undecodable file gets
    metrics: dict[str, Any] = field(default_factory=dict)


def save_finetuned(path: Path, checkpoint: FinetunedCheckpoint) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save({"format": FINETUNED_FORMAT, **asdict(checkpoint)}, tmp)


def load_finetuned(path: Path, spec: "BackboneSpec | None" = None) -> dict[str, Any]:
    """A fine-tuned checkpoint, checked; with spec, it must be that backbone's."""
    saved = read_torch_file(path, "a cnnfeat fine-tuned checkpoint", WeightsUnavailableError,
                            "make it with `cnnfeat finetune`", FINETUNED_FORMAT)
    if spec is not None and saved["backbone"] != spec.name:
        raise ConfigError(f"{path} is a fine-tuned {saved['backbone']}, not {spec.name}; pass it with "
                          f"--backbone {saved['backbone']}")
    return saved


def names_checkpoint(weights: str) -> bool:
    """Whether `--weights` is a path to a checkpoint file rather than imagenet, random or a weights name."""
    return weights not in NAMED_WEIGHTS and (weights.endswith((".pt", ".pth")) or os.sep in weights)


def finetuned_path(weights: str) -> Path | None:
    """The fine-tuned checkpoint file `--weights` names (a path), or None for imagenet, random or a weights name."""
    if not names_checkpoint(weights):
        return None
    path = Path(weights)
    if not path.is_file():
        raise MissingInputError(f"--weights {weights}: no such checkpoint file; `cnnfeat finetune` writes them "
                                f"to <workdir>/finetuned/<backbone>.pt")
    return path


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def feature_name(backbone: str, tag: str = "") -> str:
    """A backbone's features at its stock weights are <backbone>; at other weights <backbone>@<tag>
    (weights_tag: resnet18@finetuned-3f2a1b2c), so both live side by side."""
    return f"{backbone}@{tag}" if tag else backbone


def weights_tag(weights: str) -> str:
    """What a backbone's features are named by besides the backbone (feature_name): '' for imagenet and for
    random (which stands in for imagenet in smoke runs), finetuned-<first 8 hex of the file's SHA-256> for a
    fine-tuned checkpoint, else the weights name in lower case (imagenet1k-v2). Features of other weights
    then never take each other's place."""
    if (path := finetuned_path(weights)) is not None:
        return f"finetuned-{file_sha256(path)[:8]}"
    return "" if weights in NAMED_WEIGHTS else weights.lower().replace("_", "-")


def file_sha256(path: Path) -> str:
    """The file's SHA-256, computed once per version of the file in a process."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
