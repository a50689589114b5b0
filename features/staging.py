"""Finished extraction batches, one small file each under <workdir>/.staging/, so a killed run resumes.

HDF5 has no journal: a process killed while writing can leave a file that no longer opens. So
extraction writes each batch as its own .npz (atomically renamed into place), and only a finished
run merges them into a new features.h5 (store.commit_cache).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import CacheError
from .files import atomic_output

STAGING_DIR = ".staging"
# Settings that change feature values; a dataset whose recorded settings differ is recomputed.
VALUE_SETTINGS = ("backbone", "weights", "pool", "image_size", "precision", "orientation", "view")
# Where the values were computed: features of one image from another decoder, device or convolution
# precision agree only to rounding (README's tolerance), so staged batches are reused only when these
# match too (a run stopped on a CPU and resumed on a GPU never mixes batches in one dataset), and heads
# say when they are applied to features of another origin than they were trained on.
ORIGIN_SETTINGS = ("decode", "device", "conv_precision")
STAGING_SETTINGS = (*VALUE_SETTINGS, *ORIGIN_SETTINGS)


def _atomic_save(path: Path, **arrays: np.ndarray) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def staged_rows(workdir: Path) -> dict[str, dict[str, int]]:
    """{split: {dataset: rows staged so far}}: how far a running (or stopped) extraction got."""
    root, found = Path(workdir) / STAGING_DIR, {}
    for folder in sorted(root.glob("*/*")) if root.is_dir() else ():
        rows = sum(stop - start for start, stop in map(Staging._span, folder.glob("*.npz")))
        split = found.setdefault(folder.parent.name, {})
        dataset = folder.name.rsplit("-", 1)[0]
        split[dataset] = max(rows, split.get(dataset, 0))
    return found


class Staging:
    """Finished batches of one (split, backbone, settings) job, one .npz file each, for resuming."""

    def __init__(self, workdir: Path, split: str, dataset: str, key: str) -> None:
        self.dataset = dataset
        self.folder = Path(workdir) / STAGING_DIR / split / f"{dataset}-{key}"

    @staticmethod
    def key(settings: dict, fingerprint: str) -> str:
        """Staged batches are reused only for the very same settings, decoder, device and files."""
        blob = json.dumps({k: settings.get(k) for k in STAGING_SETTINGS}, sort_keys=True) + fingerprint
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @staticmethod
    def remove_splits_other_than(workdir: Path, splits: set[str]) -> None:
        """Staged batches of splits the data folder no longer has are never used again."""
        root = Path(workdir) / STAGING_DIR
        for folder in root.iterdir() if root.is_dir() else ():
            if folder.name not in splits:
                shutil.rmtree(folder, ignore_errors=True)

    def _chunk_files(self) -> list[Path]:
        return sorted(self.folder.glob("*.npz")) if self.folder.is_dir() else []

    @staticmethod
    def _span(path: Path) -> tuple[int, int]:
        start, stop = path.stem.split("-")
        return int(start), int(stop)

    def done_rows(self, n: int) -> np.ndarray:
        """Which of the split's n scanned rows are staged; a run computes only the others."""
        done = np.zeros(n, dtype=bool)
        for path in self._chunk_files():
            start, stop = self._span(path)
            done[start:stop] = True
        return done

    def save(self, start: int, stop: int, rows: np.ndarray, features: np.ndarray,
             failed_rows: list[int], failed_reasons: list[str]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_save(
            self.folder / f"{start:010d}-{stop:010d}.npz",
            rows=rows.astype(np.int64),
            features=features.astype(np.float32, copy=False),
            failed_rows=np.asarray(failed_rows, dtype=np.int64),
            failed_reasons=np.asarray(failed_reasons, dtype=np.str_),
        )

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        """Each staged batch; never unpickles (allow_pickle=False), a damaged file is a clear error."""
        for path in self._chunk_files():
            try:
                with np.load(path, allow_pickle=False) as data:
                    chunk = {name: data[name] for name in data.files}
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
                raise CacheError(
                    f"staged batch {path} is unreadable ({type(err).__name__}: {err}); "
                    f"delete {self.folder} and run the same command again"
                ) from err
            yield chunk

    def failures(self) -> dict[int, str]:
        return {
            int(row): str(reason)
            for chunk in self.chunks()
            for row, reason in zip(chunk["failed_rows"], chunk["failed_reasons"])
        }

    def remove_other_versions(self) -> None:
        """Batches of this (split, dataset) made for other files or settings are never used again."""
        for folder in self.folder.parent.glob(f"{self.dataset}-*"):
            if folder != self.folder:
                shutil.rmtree(folder, ignore_errors=True)

    def remove_all_versions(self) -> None:
        """Once committed, this (split, dataset)'s batches are in the cache, and any other settings' are stale."""
        for folder in self.folder.parent.glob(f"{self.dataset}-*"):
            shutil.rmtree(folder, ignore_errors=True)
        for empty in (self.folder.parent, self.folder.parent.parent):
            if empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()
