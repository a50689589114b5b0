"""Extraction settings, each default given once, with its reason. Imports no torch (the CLI reads it at start-up).

    cfg = ExtractConfig(data="data/digits", workdir="runs/digits", backbones=("all",), precision="bf16")
"""

from __future__ import annotations

import math
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError

# Defaults every stage shares, given once: each stage's settings and the CLI take them from here.
DEFAULT_WORKDIR = Path("cnnfeat-out")
DEFAULT_DEVICE = "auto"  # the GPU when torch sees one
DEFAULT_SEED = 0
ALL_BACKBONES = ("all",)  # the book's three (extract, run), or every backbone the cache has (the heads)
DEFAULT_TRAIN_SPLIT = "train"
DEFAULT_VAL_SPLIT = "valid"  # when the data has no such split, a stratified share of train stands in; a split
# named otherwise must exist (a typo must not silently become a holdout)

POOLS = ("avg", "max", "none")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
DECODERS = ("auto", "pil", "device")
HFLIP = "hflip"  # the image mirrored left-right
VIEWS = (HFLIP,)


@dataclass(frozen=True)
class Bounds:
    """The numbers a setting may take. Its settings dataclass checks them (check_bounds) and the CLI's option
    type is made from them (pipeline/cli/common.py), so each rule is written once and a bad value is refused
    by the option parser, before any work starts."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is excluded
    high_open: bool = False
    integer: bool = False

    def __str__(self) -> str:
        if self.high is None:
            return f"{'above' if self.low_open else 'at least'} {self.low:g}"
        return f"in {'(['[not self.low_open]}{self.low:g}, {self.high:g}{')]'[not self.high_open]}"

    def allows(self, value: Any) -> bool:
        """True for a finite number of the right kind within the bounds (NaN and infinities never are)."""
        kinds = (int,) if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below


COUNT = Bounds(1, integer=True)
NON_NEGATIVE_COUNT = Bounds(0, integer=True)
SEED = Bounds(0, 2**32 - 1, integer=True)  # numpy's and torch's seeds: 32 bits unsigned
SHARE = Bounds(0, 1, low_open=True, high_open=True)  # a part of the rows, never none or all of them
POSITIVE = Bounds(0, low_open=True)
NON_NEGATIVE = Bounds(0)
# the total stride of ImageNet CNNs: a smaller image leaves their last map a single pixel of padding
MIN_IMAGE_SIZE = 32
IMAGE_SIZE = Bounds(MIN_IMAGE_SIZE, integer=True)
BOUNDS = "bounds"  # the key of a field's Bounds in its metadata


def bounded(default: Any, bounds: Bounds) -> Any:
    """A settings field with its default and its Bounds (a None default: None means "choose for me")."""
    return field(default=default, metadata={BOUNDS: bounds})


def bounds_of(settings: Any, name: str) -> Bounds:
    """The Bounds of a settings dataclass's field."""
    found: Field[Any] = next(f for f in fields(settings) if f.name == name)
    return found.metadata[BOUNDS]


def check_bounds(cfg: Any) -> None:
    """Every bounded setting of cfg within its Bounds (each number of a tuple; None where None is the default)."""
    for f in fields(cfg):
        bounds, value = f.metadata.get(BOUNDS), getattr(cfg, f.name)
        if bounds is None or (value is None and f.default is None):
            continue
        for number in value if isinstance(value, tuple) else [value]:
            if not bounds.allows(number):
                kind = "a whole number" if bounds.integer else "a number"
                raise ConfigError(f"{f.name} must be {kind} {bounds}, not {number!r}", setting=f.name)


@dataclass
class ExtractConfig:
    data: Path
    workdir: Path = DEFAULT_WORKDIR
    backbones: tuple[str, ...] = ALL_BACKBONES
    weights: str = "imagenet"  # "random" (seeded) only for smoke runs; recorded in the cache either way
    pool: str = "avg"  # avg: exactly what each model's classifier consumes
    image_size: int | None = bounded(None, IMAGE_SIZE)  # None: each backbone's own (299 for the book's three, Inception's native
    # input, as the book did; the weights' own size for any other model)
    batch_size: int = bounded(64, COUNT)  # fills a CPU's cores; raise it to 256 on a GPU
    workers: int | None = bounded(None, NON_NEGATIVE_COUNT)  # decoding processes; None: from the cores and device
    device: str = DEFAULT_DEVICE
    precision: str = "fp32"  # bf16/fp16 autocast: 2-5x faster forward passes, features within ~1%
    decode: str = "auto"  # "device": JPEGs decoded by torchvision.io where the models run; auto: on a GPU only
    views: tuple[str, ...] = ()  # "hflip": also store each image's features mirrored left-right
    seed: int = bounded(DEFAULT_SEED, SEED)  # for weights="random"
    force: bool = False  # recompute even what is up to date

    def __post_init__(self) -> None:
        self.data, self.workdir = Path(self.data), Path(self.workdir)
        if isinstance(self.backbones, str):
            self.backbones = (self.backbones,)
        self.views = tuple(dict.fromkeys(self.views))
        require_choices(self, pool=POOLS, precision=PRECISIONS, device=DEVICES, decode=DECODERS)
        for view in self.views:
            if view not in VIEWS:
                raise ConfigError(f"views must be among {', '.join(VIEWS)}, not {view!r}", setting="views")
        check_bounds(self)


def require_choices(cfg: object, **allowed: tuple[str, ...]) -> None:
    """Each named setting of cfg is one of its allowed values."""
    for name, values in allowed.items():
        if getattr(cfg, name) not in values:
            raise ConfigError(f"{name} must be one of {', '.join(values)}, not {getattr(cfg, name)!r}", setting=name)


def require_two_splits(train_split: str, val_split: str) -> None:
    for name, split in (("train_split", train_split), ("val_split", val_split)):
        if not isinstance(split, str) or not split.strip() or "/" in split:
            raise ConfigError(f"{name} must name a split folder (train, valid, ...), not {split!r}", setting=name)
    if train_split == val_split:
        raise ConfigError(f"--train-split and --val-split must differ, both are {train_split!r}", setting="val_split")


class ProgressFn(Protocol):
    """Told as work finishes: what (a split, an epoch), items just done, items in it, a running loss if any."""

    def __call__(self, what: str, done: int, total: int, loss: float | None = None) -> None: ...


def plain_settings(cfg: Any) -> dict[str, Any]:
    """A settings dataclass as JSON-ready values (paths as strings): what checkpoints and metrics record."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
