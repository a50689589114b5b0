"""Settings of `cnnfeat report`, each default given once with its reason. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from features import COUNT, DEFAULT_WORKDIR, Bounds, bounded, check_bounds

# cosine similarity of whitened features (duplicates.py) from which two images are listed as near-duplicates:
# resized, re-encoded copies of digits scored 0.957-0.998 and distinct digits at most 0.84 (README, Reports)
SIMILARITY = 0.9


@dataclass
class ReportConfig:
    workdir: Path = DEFAULT_WORKDIR
    similarity: float = bounded(SIMILARITY, Bounds(0, 1, low_open=True))
    duplicates_backbone: str = ""  # "": the cached backbone with the fewest feature values (resnet34 of the book's)
    gallery: int = bounded(24, COUNT)  # images per gallery (top losses, label errors, each confusion cell); the CSVs hold every one

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        check_bounds(self)
