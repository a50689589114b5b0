"""Raw Kaggle downloads to cnnfeat's split layout, with symlinks: no image byte is copied.

    from features.prepare import PrepareConfig, prepare
    report = prepare(PrepareConfig(train=Path("raw/train"), test=Path("raw/test"), out=Path("data/dvc"),
                                   label_pattern=DEFAULT_LABEL_PATTERN, val_fraction=0.08))

Labels come from the file name (Dogs vs Cats: train/cat.0.jpg) or from a CSV of id,label (most
competitions); a stratified share of train becomes valid/. The result, out/train/<class>/<file>,
out/valid/<class>/<file> and out/test/<file>, is made beside `out` and renamed into place whole.
Rows that cannot be used are listed in out/prepare_problems.csv and left out, never guessed.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from .images import IMAGE_EXTENSIONS, DataLayoutError

DEFAULT_LABEL_PATTERN = r"^(.+?)[._-]\d+\.\w+$"  # cat.0.jpg -> cat, golden_retriever_12.jpg -> golden_retriever
PROBLEMS_FILE = "prepare_problems.csv"


@dataclass
class PrepareConfig:
    train: Path  # a flat folder of labeled images
    out: Path
    label_pattern: str | None = None  # a regex whose first group is the label, matched on the file name
    labels: Path | None = None  # or a CSV file with an id and a label column
    id_column: str = "id"  # matched against the file name, with or without its extension
    label_column: str = "label"
    test: Path | None = None  # a flat folder of unlabeled images
    val_fraction: float = 0.08  # the book's Dogs vs Cats: 2,000 of 25,000 images
    seed: int = 0
    force: bool = False  # replace an existing `out`

    def __post_init__(self) -> None:
        self.train, self.out = Path(self.train), Path(self.out)
        if (self.label_pattern is None) == (self.labels is None):
            raise ValueError("give exactly one source of labels: --label-from-name [PATTERN] or --labels CSV")
        if self.label_pattern is not None and re.compile(self.label_pattern).groups < 1:
            raise ValueError(f"the label pattern {self.label_pattern!r} needs a group, as in {DEFAULT_LABEL_PATTERN!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), not {self.val_fraction}")
        for name in ("train", "test", "labels"):
            value = getattr(self, name)
            if value is not None and not Path(value).exists():
                raise FileNotFoundError(f"--{name} {value} does not exist")


@dataclass
class PrepareReport:
    out: Path
    counts: dict[str, int] = field(default_factory=dict)  # split -> images linked
    classes: list[str] = field(default_factory=list)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, file or id, detail)


def prepare(cfg: PrepareConfig) -> PrepareReport:
    """Link the raw images into train/valid/test; what cannot be used is reported, never guessed."""
    if (cfg.out.exists() or cfg.out.is_symlink()) and not cfg.force:
        raise FileExistsError(f"{cfg.out} already exists; pass --force to replace it")
    report = PrepareReport(cfg.out)
    images = _images(cfg.train)
    if cfg.label_pattern is not None:
        labels = _labels_from_names(images, cfg.label_pattern, report)
    else:
        labels = _labels_from_csv(images, cfg, report)
    report.classes = sorted(set(labels.values()))
    if not labels:
        raise DataLayoutError(f"no image in {cfg.train} got a label; see the problems above, or check the pattern/CSV")
    names = sorted(labels)
    splits = {"train": names, "valid": []}
    if cfg.val_fraction:
        splits["train"], splits["valid"] = _stratified(names, [labels[n] for n in names], cfg)
    tmp = cfg.out.with_name(cfg.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split, members in splits.items():
            for name in members:
                _link(images[name], tmp / split / labels[name] / name)
            report.counts[split] = len(members)
        if cfg.test is not None:
            test = _images(cfg.test)
            for name, source in test.items():
                _link(source, tmp / "test" / name)
            report.counts["test"] = len(test)
        pd.DataFrame(report.problems, columns=["problem", "item", "detail"]).to_csv(tmp / PROBLEMS_FILE, index=False)
        _replace(tmp, cfg.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _images(folder: Path) -> dict[str, Path]:
    """File name -> path of every visible image directly in the folder."""
    found = {p.name: p.resolve() for p in sorted(Path(folder).iterdir())
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS}
    if not found:
        raise DataLayoutError(f"no images directly in {folder}; prepare reads flat folders such as Kaggle's train/")
    return found


def _usable_label(label: str) -> bool:
    """A label becomes a folder name: it must be one, visible, and not a path."""
    return bool(label) and not label.startswith(".") and "/" not in label and "\\" not in label


def _labels_from_names(images: dict[str, Path], pattern: str, report: PrepareReport) -> dict[str, str]:
    labels = {}
    regex = re.compile(pattern)
    for name in images:
        match = regex.search(name)
        if match is None:
            report.problems.append(("image without label", name, f"the name does not match {pattern!r}"))
        elif not _usable_label(match.group(1)):
            report.problems.append(("unknown label", name, f"{match.group(1)!r} cannot be a class name"))
        else:
            labels[name] = match.group(1)
    return labels


def _labels_from_csv(images: dict[str, Path], cfg: PrepareConfig, report: PrepareReport) -> dict[str, str]:
    table = pd.read_csv(cfg.labels, dtype=str, keep_default_na=False)
    for column in (cfg.id_column, cfg.label_column):
        if column not in table.columns:
            raise DataLayoutError(f"{cfg.labels} has no column {column!r} (it has {', '.join(table.columns)}); "
                                  f"name the columns with --id-column and --label-column")
    by_id = {}
    for name in images:
        by_id.setdefault(name, name)
        by_id.setdefault(Path(name).stem, name)
    labels: dict[str, str] = {}
    conflicted: set[str] = set()  # neither label is trusted
    for row, (image_id, label) in enumerate(zip(table[cfg.id_column], table[cfg.label_column]), start=2):
        name = by_id.get(image_id.strip())
        label = label.strip()
        if name is None:
            report.problems.append(("id without image", image_id, f"{cfg.labels} line {row}: no such file in {cfg.train}"))
        elif not _usable_label(label):
            report.problems.append(("unknown label", image_id, f"{cfg.labels} line {row}: {label!r} cannot be a class name"))
        elif name in labels and labels[name] != label:
            report.problems.append(("conflicting labels", image_id, f"{cfg.labels} line {row}: {label!r} and {labels[name]!r}"))
            conflicted.add(name)
        else:
            labels[name] = label
    for name in images:
        if name not in labels:
            report.problems.append(("image without label", name, f"no row of {cfg.labels} has its id"))
    return {name: label for name, label in labels.items() if name not in conflicted}


def _stratified(names: list[str], labels: list[str], cfg: PrepareConfig) -> tuple[list[str], list[str]]:
    """Every class keeps its share in valid/; the same seed gives the same split."""
    try:
        train, valid = train_test_split(names, test_size=cfg.val_fraction, stratify=labels, random_state=cfg.seed)
    except ValueError as err:
        raise DataLayoutError(f"cannot carve a stratified validation split of {cfg.val_fraction}: {err}") from err
    return sorted(train), sorted(valid)


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source, target)


def _replace(tmp: Path, out: Path) -> None:
    if out.exists() or out.is_symlink():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)  # symlinks only: the images they point to stay
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
