"""Data folders: which splits, classes and image files there are, and when they changed.

A data folder holds one subfolder per split. A split whose subfolders hold images is labeled
(class = subfolder name); a split with images directly inside (Kaggle's test/) is unlabeled:

    data/train/cat/1.jpg  data/train/dog/2.jpg  data/valid/cat/3.jpg  data/test/4.jpg

Hidden entries (names starting with '.', such as .ipynb_checkpoints) are ignored everywhere.
Imports no torch: `cnnfeat info` and `prepare` use it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import DEFAULT_TRAIN_SPLIT
from .errors import DataLayoutError, MissingInputError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
UNLABELED = -1


@dataclass(frozen=True)
class Split:
    name: str
    paths: tuple[str, ...]  # POSIX paths relative to the data folder, sorted
    labels: np.ndarray  # int64 index into DataFolder.classes, UNLABELED for an unlabeled split

    @property
    def labeled(self) -> bool:
        return bool(len(self.labels)) and bool(self.labels[0] != UNLABELED)


@dataclass(frozen=True)
class DataFolder:
    root: Path
    classes: tuple[str, ...]
    splits: dict[str, Split]
    # each split's file identities, read once per scan: the fingerprint and the incremental plan share them
    _identities: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def split(self, name: str) -> Split:
        """The split of that name, or a DataLayoutError naming the splits there are."""
        if name not in self.splits:
            raise DataLayoutError(f"{self.root} has no split {name!r}; splits: {', '.join(self.splits)}")
        return self.splits[name]

    def fingerprint(self, split: str) -> str:
        """Changes whenever a file of the split is added, removed, renamed, rewritten or relabeled."""
        rows = self.split(split)
        lines = (f"\n{rel}\t{label}\t{size}\t{mtime_ns}"
                 for rel, label, (size, mtime_ns) in zip(rows.paths, rows.labels.tolist(), self.identities(split).tolist()))
        return hashlib.sha256(("\n".join(self.classes) + "".join(lines)).encode()).hexdigest()

    def identities(self, split: str) -> np.ndarray:
        """(N, 2) int64: each file's size and modification time (ns), in the order of its paths: with the path,
        what tells a file unchanged, so its cached row is kept (as Make and DVC tell theirs)."""
        if split not in self._identities:
            root = str(self.root)
            stats = [os.stat(os.path.join(root, rel)) for rel in self.split(split).paths]
            self._identities[split] = np.array([(s.st_size, s.st_mtime_ns) for s in stats],
                                               dtype=np.int64).reshape(-1, 2)
        return self._identities[split]


def label_of(path: str, classes: tuple[str, ...]) -> int:
    """The class of a file from its folder (split/<class>/name), UNLABELED for a file of an unlabeled split."""
    parts = path.split("/")
    return classes.index(parts[1]) if len(parts) >= 3 and parts[1] in classes else UNLABELED


def _visible(entries: list[Path]) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


def find_images(sources: Sequence[str | Path]) -> list[str]:
    """Every image the sources name, in their order, each once: an image file itself; every image under a
    folder, at any depth, sorted (hidden names skipped, as in a data folder); or the paths a text file lists,
    one a line (relative to the list's folder unless absolute; blank lines and '#' comments skipped),
    each a file (of any extension: the user named it) or a folder. A source that does not exist is an
    error naming it."""
    found: dict[str, None] = {}
    missing = []
    for source in sources:
        path = Path(source)
        if not path.exists():
            missing.append(str(path))
        elif path.is_dir():
            found.update((str(p), None) for p in _images_under(path))
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            found[str(path)] = None
        else:
            listed = _listed(path)
            missing += [str(p) for p in listed if not p.exists()]
            for item in listed:
                found.update((str(p), None) for p in (_images_under(item) if item.is_dir() else [item]))
    if missing:
        raise MissingInputError(f"{len(missing)} image path(s) do not exist: {', '.join(missing[:5])}"
                                f"{', ...' if len(missing) > 5 else ''}")
    return list(found)


def _images_under(folder: Path) -> list[Path]:
    """Images at any depth under folder, sorted; hidden files and folders skipped."""
    return sorted(p for p in folder.rglob("*") if _is_image(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _listed(path: Path) -> list[Path]:
    """The paths a text file lists, one a line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as err:
        raise DataLayoutError(f"{path} is neither an image ({', '.join(sorted(IMAGE_EXTENSIONS))}) nor a text file "
                              f"listing images, one path a line ({type(err).__name__})") from err
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return [Path(entry) if Path(entry).is_absolute() else path.parent / entry for entry in entries]


def _listing(folder: Path) -> tuple[list[str], list[str]]:
    """(image file names, folder names) directly in folder, sorted, hidden ones left out. One os.scandir, whose
    entries know their type: a split of 25,000 files is listed in milliseconds, not a stat call per file."""
    images, folders = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                folders.append(entry.name)
            elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                images.append(entry.name)
    return sorted(images), sorted(folders)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def scan_data_folder(root: str | Path) -> DataFolder:
    """Find splits, classes, image paths and labels; refuse layouts that would shift labels."""
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"data folder {root} does not exist or is not a folder")
    labeled: dict[str, dict[str, list[str]]] = {}
    unlabeled: dict[str, list[str]] = {}
    for split_dir in (p for p in _visible(list(root.iterdir())) if p.is_dir()):
        images, class_dirs = _listing(split_dir)
        if images and class_dirs:
            raise DataLayoutError(
                f"split {split_dir} holds both images and subfolders; put a labeled split's images "
                f"in one subfolder per class, and an unlabeled split's images directly in it"
            )
        if images:
            unlabeled[split_dir.name] = [f"{split_dir.name}/{name}" for name in images]
        elif class_dirs:
            labeled[split_dir.name] = {d: [f"{split_dir.name}/{d}/{name}" for name in _listing(split_dir / d)[0]]
                                       for d in class_dirs}
        else:
            log.warning("skipping %s: it holds no images and no class folders", split_dir)
    classes = _agreed_classes(root, labeled)
    splits = {name: _labeled_split(name, per_class, classes) for name, per_class in labeled.items()}
    splits.update(
        {name: Split(name, tuple(paths), np.full(len(paths), UNLABELED, np.int64)) for name, paths in unlabeled.items()}
    )
    if not splits:
        raise DataLayoutError(
            f"no images found under {root}; expected split folders such as train/<class>/*.jpg and test/*.jpg"
        )
    return DataFolder(root, classes, dict(sorted(splits.items())))


def scan_prepared_folder(root: str | Path, train_split: str = DEFAULT_TRAIN_SPLIT) -> DataFolder:
    """scan_data_folder, refusing a folder without any labeled split: what extraction is given when --data is a
    raw download (a flat train/) or one level too deep (class folders read as unlabeled splits), whose features
    nothing could be trained on."""
    folder = scan_data_folder(root)
    if any(split.labeled for split in folder.splits.values()):
        return folder
    prepare = (f"`cnnfeat prepare --train <flat folder> --label-from-name --out <new folder>` (or --labels CSV) makes "
               f"the split layout train/<class>/, valid/<class>/, test/ from a raw download")
    if train_split in folder.splits:
        test = f" --test {folder.root / 'test'}" if "test" in folder.splits else ""
        raise DataLayoutError(f"--data {folder.root}: {train_split}/ holds its images directly, not in one folder per "
                              f"class, so nothing is labeled: it looks like a raw download. Make the split layout "
                              f"with `cnnfeat prepare --train {folder.root / train_split}{test} --label-from-name "
                              f"--out {folder.root}-prepared` (labels from names like cat.0.jpg; --labels CSV for a "
                              f"table of labels), then pass --data {folder.root}-prepared")
    raise DataLayoutError(f"--data {folder.root}: no split is labeled; its subfolders {', '.join(folder.splits)} "
                          f"hold images directly, so if they are classes, --data is one level too deep: pass the "
                          f"folder that holds {train_split}/<class>/ (and valid/, test/). Otherwise {prepare}")


def _agreed_classes(root: Path, labeled: dict[str, dict[str, list[str]]]) -> tuple[str, ...]:
    """All labeled splits must name the same classes, each with images, or labels would shift."""
    classes: tuple[str, ...] = ()
    for name, per_class in labeled.items():
        empty = [c for c, paths in per_class.items() if not paths]
        if empty:
            raise DataLayoutError(
                f"class folder(s) {', '.join(f'{root / name / c}' for c in empty)} hold no images; "
                f"add images or remove the folder (an empty class would shift every label after it)"
            )
        these = tuple(sorted(per_class))
        if classes and these != classes:
            first = next(iter(labeled))
            raise DataLayoutError(
                f"splits disagree on the classes: {first}/ has {list(classes)}, {name}/ has {list(these)}; "
                f"every labeled split needs the same class folders"
            )
        classes = these
    return classes


def _labeled_split(name: str, per_class: dict[str, list[str]], classes: tuple[str, ...]) -> Split:
    rows = sorted((path, classes.index(cls)) for cls, paths in per_class.items() for path in paths)
    return Split(name, tuple(p for p, _ in rows), np.array([label for _, label in rows], dtype=np.int64))
