"""Settings of `cnnfeat predict` and of what `cnnfeat run` adds to the stages, each default given once. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from features import DEFAULT_DEVICE, DEFAULT_WORKDIR, DEVICES, HFLIP, Bounds, bounded, check_bounds, require_choices

from .heads.config import BEST

# `cnnfeat run` also extracts mirrored views: +hflip models then compete for `best` (mirroring
# helps photos and hurts digits and text, so held-out rows decide); `--views none` turns it off
RUN_VIEWS = (HFLIP,)


@dataclass
class PredictConfig:
    workdir: Path = DEFAULT_WORKDIR
    model: str = BEST  # best, ensemble, concat, a backbone name, or any of those + "+hflip"
    split: str = "test"
    output: Path | None = None  # default: <workdir>/submission.csv
    kaggle_binary: bool = False  # Dogs vs Cats Redux: id,label = probability of the second class
    clip: float | None = bounded(None, Bounds(0, 0.5, high_open=True))  # keep probabilities in [clip, 1 - clip]: log loss punishes certainty hard
    tta: bool = False  # finetuned models: average the image's and its mirror's probabilities
    data: Path | None = None  # finetuned models decode images: default, the folder they were trained on
    device: str = DEFAULT_DEVICE
    force: bool = False  # rewrite even when the submission is up to date

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.data = Path(self.data) if self.data is not None else None
        self.output = Path(self.output) if self.output is not None else self.workdir / "submission.csv"
        check_bounds(self)
        require_choices(self, device=DEVICES)
