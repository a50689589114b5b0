"""Extraction settings, each default given once, with its reason. Imports no torch (the CLI reads it at start-up).

    cfg = ExtractConfig(data="data/digits", workdir="runs/digits", backbones=("all",), precision="bf16")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

POOLS = ("avg", "max", "none")
WEIGHTS = ("imagenet", "random")  # or a weights name of the model (IMAGENET1K_V2, ...)
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
DECODERS = ("auto", "pil", "device")
HFLIP = "hflip"  # the image mirrored left-right
VIEWS = (HFLIP,)


@dataclass
class ExtractConfig:
    data: Path
    workdir: Path = Path("cnnfeat-out")
    backbones: tuple[str, ...] = ("all",)  # all: the book's three
    weights: str = "imagenet"  # "random" (seeded) only for smoke runs; recorded in the cache either way
    pool: str = "avg"  # avg: exactly what each model's classifier consumes
    image_size: int | None = None  # None: each backbone's own (299 for the book's three, Inception's native
    # input, as the book did; the weights' own size for any other model)
    batch_size: int = 64  # fills a CPU's cores; raise it to 256 on a GPU
    workers: int | None = None  # decoding processes; None: from the core count and the device
    device: str = "auto"
    precision: str = "fp32"  # bf16/fp16 autocast: 2-5x faster forward passes, features within ~1%
    decode: str = "auto"  # "device": JPEGs decoded by torchvision.io where the models run; auto: on a GPU only
    views: tuple[str, ...] = ()  # "hflip": also store each image's features mirrored left-right
    seed: int = 0  # for weights="random"
    force: bool = False  # recompute even what is up to date

    def __post_init__(self) -> None:
        self.data, self.workdir = Path(self.data), Path(self.workdir)
        if isinstance(self.backbones, str):
            self.backbones = (self.backbones,)
        self.views = tuple(dict.fromkeys(self.views))
        for name, value, allowed in (
            ("pool", self.pool, POOLS),
            ("precision", self.precision, PRECISIONS),
            ("device", self.device, DEVICES),
            ("decode", self.decode, DECODERS),
        ):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        for view in self.views:
            if view not in VIEWS:
                raise ConfigError(f"views must be among {', '.join(VIEWS)}, not {view!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, not {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be 0 or more, not {self.workers}")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"image_size must be positive, not {self.image_size}")
