"""Settings of `cnnfeat predict`, `cnnfeat export` and of what `cnnfeat run` adds to the stages, each default given once. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from features import DEFAULT_DEVICE, DEFAULT_WORKDIR, DEVICES, HFLIP, Bounds, bounded, check_bounds, require_choices

from .heads.config import BEST

# `cnnfeat run` also extracts mirrored views: +hflip models then compete for `best` (mirroring
# helps photos and hurts digits and text, so held-out rows decide); `--views none` turns it off
RUN_VIEWS = (HFLIP,)
SUBMISSION = "submission.csv"  # predict on a split: the Kaggle submission
PREDICTIONS = "predictions.csv"  # predict --images: path, a probability per class, label


@dataclass
class PredictConfig:
    workdir: Path = DEFAULT_WORKDIR
    model: str = BEST  # best, ensemble, concat, a backbone name, or any of those + "+hflip"
    split: str = "test"
    output: Path | None = None  # default: <workdir>/submission.csv (with images: <workdir>/predictions.csv)
    kaggle_binary: bool = False  # Dogs vs Cats Redux: id,label = probability of the second class
    clip: float | None = bounded(None, Bounds(0, 0.5, high_open=True))  # every probability in [clip, 1 - clip] (outputs.clip_probabilities): log loss punishes certainty hard
    tta: bool = False  # finetuned models: average the image's and its mirror's probabilities
    data: Path | None = None  # finetuned models decode images: default, the folder they were trained on
    device: str = DEFAULT_DEVICE
    force: bool = False  # rewrite even when the submission is up to date
    images: tuple[Path, ...] = ()  # instead of a split: image files, folders, list files anywhere (output: predictions)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.data = Path(self.data) if self.data is not None else None
        self.images = tuple(Path(p) for p in self.images)
        default = PREDICTIONS if self.images else SUBMISSION
        self.output = Path(self.output) if self.output is not None else self.workdir / default
        check_bounds(self)
        require_choices(self, device=DEVICES)


EXPORT_FORMATS = ("pt2", "onnx")  # pt2: torch.export's file; onnx: the same graph for onnxruntime


@dataclass
class ExportConfig:
    workdir: Path = DEFAULT_WORKDIR
    model: str = BEST
    output: Path | None = None  # default: <workdir>/<model>.pt2 (or .onnx)
    format: str = "pt2"  # pt2: torch.export; onnx: the same graph for onnxruntime (pip install "cnnfeat[onnx]")

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        require_choices(self, format=EXPORT_FORMATS)
        self.output = Path(self.output) if self.output is not None else self.workdir / f"{self.model}.{self.format}"
