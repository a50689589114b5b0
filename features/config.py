"""Extraction settings, each default given once, with its reason. Imports no torch (the CLI reads it at start-up).

    cfg = ExtractConfig(data="data/digits", workdir="runs/digits", backbones=("all",), precision="bf16")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError

# Defaults every stage shares, given once: each stage's settings and the CLI take them from here.
DEFAULT_WORKDIR = Path("cnnfeat-out")
DEFAULT_DEVICE = "auto"  # the GPU when torch sees one
DEFAULT_SEED = 0
ALL_BACKBONES = ("all",)  # the book's three (extract, run), or every backbone the cache has (the heads)

POOLS = ("avg", "max", "none")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
DECODERS = ("auto", "pil", "device")
HFLIP = "hflip"  # the image mirrored left-right
VIEWS = (HFLIP,)


@dataclass
class ExtractConfig:
    data: Path
    workdir: Path = DEFAULT_WORKDIR
    backbones: tuple[str, ...] = ALL_BACKBONES
    weights: str = "imagenet"  # "random" (seeded) only for smoke runs; recorded in the cache either way
    pool: str = "avg"  # avg: exactly what each model's classifier consumes
    image_size: int | None = None  # None: each backbone's own (299 for the book's three, Inception's native
    # input, as the book did; the weights' own size for any other model)
    batch_size: int = 64  # fills a CPU's cores; raise it to 256 on a GPU
    workers: int | None = None  # decoding processes; None: from the core count and the device
    device: str = DEFAULT_DEVICE
    precision: str = "fp32"  # bf16/fp16 autocast: 2-5x faster forward passes, features within ~1%
    decode: str = "auto"  # "device": JPEGs decoded by torchvision.io where the models run; auto: on a GPU only
    views: tuple[str, ...] = ()  # "hflip": also store each image's features mirrored left-right
    seed: int = DEFAULT_SEED  # for weights="random"
    force: bool = False  # recompute even what is up to date

    def __post_init__(self) -> None:
        self.data, self.workdir = Path(self.data), Path(self.workdir)
        if isinstance(self.backbones, str):
            self.backbones = (self.backbones,)
        self.views = tuple(dict.fromkeys(self.views))
        require_choices(self, pool=POOLS, precision=PRECISIONS, device=DEVICES, decode=DECODERS)
        for view in self.views:
            if view not in VIEWS:
                raise ConfigError(f"views must be among {', '.join(VIEWS)}, not {view!r}")
        require_counts(self, ("batch_size",))
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be 0 or more, not {self.workers}")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"image_size must be positive, not {self.image_size}")


def require_counts(cfg: object, names: tuple[str, ...]) -> None:
    """Each named setting of cfg is a count: 1 or more."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be at least 1, not {getattr(cfg, name)}")


def require_choices(cfg: object, **allowed: tuple[str, ...]) -> None:
    """Each named setting of cfg is one of its allowed values."""
    for name, values in allowed.items():
        if getattr(cfg, name) not in values:
            raise ConfigError(f"{name} must be one of {', '.join(values)}, not {getattr(cfg, name)!r}")


def require_two_splits(train_split: str, val_split: str) -> None:
    if train_split == val_split:
        raise ConfigError(f"train and validation splits must differ, both are {train_split!r}")


class ProgressFn(Protocol):
    """Told as work finishes: what (a split, an epoch), items just done, items in it, a running loss if any."""

    def __call__(self, what: str, done: int, total: int, loss: float | None = None) -> None: ...


def plain_settings(cfg: Any) -> dict[str, Any]:
    """A settings dataclass as JSON-ready values (paths as strings): what checkpoints and metrics record."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
