"""Settings of `cnnfeat report`, each default given once with its reason. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from features import DEFAULT_WORKDIR, ConfigError

# cosine similarity of whitened features (duplicates.py) from which two images are listed as near-duplicates:
# resized, re-encoded copies of digits scored 0.957-0.998 and distinct digits at most 0.84 (README, Reports)
SIMILARITY = 0.9


@dataclass
class ReportConfig:
    workdir: Path = DEFAULT_WORKDIR
    similarity: float = SIMILARITY
    duplicates_backbone: str = ""  # "": the cached backbone with the fewest feature values (resnet34 of the book's)
    gallery: int = 24  # images per gallery (top losses, label errors, each confusion cell); the CSVs hold every one

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        if not 0 < self.similarity <= 1:
            raise ConfigError(f"similarity must be in (0, 1], not {self.similarity}")
        if self.gallery < 1:
            raise ConfigError(f"gallery must be a positive number of images, not {self.gallery}")
