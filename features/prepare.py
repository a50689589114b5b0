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

import csv
import os
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataLayoutError, MissingInputError, OutputExistsError
from .config import DEFAULT_SEED, SEED, Bounds, bounded, check_bounds
from .folder import IMAGE_EXTENSIONS
from .splits import stratified_holdout

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
    val_fraction: float = bounded(0.08, Bounds(0, 1, high_open=True))  # the book's Dogs vs Cats: 2,000 of 25,000
    seed: int = bounded(DEFAULT_SEED, SEED)
    force: bool = False  # replace an existing `out`

    def __post_init__(self) -> None:
        self.train, self.out = Path(self.train), Path(self.out)
        if (self.label_pattern is None) == (self.labels is None):
            raise ConfigError("give exactly one source of labels: --label-from-name [PATTERN] or --labels CSV",
                              setting="label_pattern")
        if self.label_pattern is not None:
            label_regex(self.label_pattern)
        check_bounds(self)
        for name in ("train", "test", "labels"):
            value = getattr(self, name)
            if value is not None and not Path(value).exists():
                raise MissingInputError(f"--{name} {value} does not exist")


def label_regex(pattern: str) -> re.Pattern[str]:
    """The compiled --label-from-name pattern; a ConfigError when it is no regex or has no group for the label."""
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"--label-from-name {pattern!r} is not a regular expression ({err}); the default "
                          f"{DEFAULT_LABEL_PATTERN!r} reads cat.0.jpg as cat", setting="label_pattern") from None
    if regex.groups < 1:
        raise ConfigError(f"--label-from-name {pattern!r} needs a (group) that captures the label, as in "
                          f"{DEFAULT_LABEL_PATTERN!r}", setting="label_pattern")
    return regex


@dataclass
class PrepareReport:
    out: Path
    counts: dict[str, int] = field(default_factory=dict)  # split -> images linked
    classes: list[str] = field(default_factory=list)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, file or id, detail)


def prepare(cfg: PrepareConfig) -> PrepareReport:
    """Link the raw images into train/valid/test; what cannot be used is reported, never guessed."""
    if (cfg.out.exists() or cfg.out.is_symlink()) and not cfg.force:
        raise OutputExistsError(f"{cfg.out} already exists; pass --force to replace it")
    report = PrepareReport(cfg.out)
    images = _images(cfg.train)
    if cfg.label_pattern is not None:
        labels = _labels_from_names(images, cfg.label_pattern, report)
    else:
        labels = _labels_from_csv(images, cfg, report)
    report.classes = sorted(set(labels.values()))
    if not labels:
        raise DataLayoutError(f"no image of the {len(images)} in {cfg.train} got a label: {_examples(report.problems)}; "
                              f"{_label_source_hint(cfg)}")
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
        with open(tmp / PROBLEMS_FILE, "w", newline="") as handle:
            csv.writer(handle).writerows([("problem", "item", "detail"), *report.problems])
        _replace(tmp, cfg.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _examples(problems: list[tuple[str, str, str]]) -> str:
    """The first few problems, as one clause: their items, and what was wrong with the first."""
    items = ", ".join(item for _, item, _ in problems[:3]) + (f", ... ({len(problems)} in all)" if len(problems) > 3 else "")
    return f"{items} ({problems[0][2]})" if problems else "no row or file to read"


def _label_source_hint(cfg: PrepareConfig) -> str:
    if cfg.label_pattern is not None:
        return (f"give --label-from-name a regex whose first group is the label in these names (the default "
                f"{DEFAULT_LABEL_PATTERN!r} reads cat.0.jpg as cat), or --labels CSV")
    return f"check that --id-column {cfg.id_column!r} holds these file names (with or without extension)"


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
    regex = label_regex(pattern)
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
    with open(cfg.labels, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for column in (cfg.id_column, cfg.label_column):
            if column not in columns:
                raise DataLayoutError(f"{cfg.labels} has no column {column!r} (it has {', '.join(columns)}); "
                                      f"name the columns with --id-column and --label-column")
        rows = [(line, row[cfg.id_column] or "", row[cfg.label_column] or "") for line, row in enumerate(reader, start=2)]
    by_id = {}
    for name in images:
        by_id.setdefault(name, name)
        by_id.setdefault(Path(name).stem, name)
    given: dict[str, list[tuple[int, str, str]]] = defaultdict(list)  # image -> (line, id, label) of each row
    for line, image_id, label in rows:
        name = by_id.get(image_id.strip())
        if name is None:
            report.problems.append(("id without image", image_id, f"{cfg.labels} line {line}: no such file in {cfg.train}"))
        else:
            given[name].append((line, image_id, label.strip()))
    labels: dict[str, str] = {}
    for name in images:
        found = given.get(name, [])
        distinct = sorted({label for _, _, label in found})
        if not found:
            report.problems.append(("image without label", name, f"no row of {cfg.labels} has its id"))
        elif len(distinct) > 1:  # neither label is trusted, even when one of them is unusable
            lines = ", ".join(str(line) for line, _, _ in found)
            report.problems.append(("conflicting labels", found[0][1], f"{cfg.labels} lines {lines}: {distinct}"))
        elif not _usable_label(distinct[0]):
            report.problems.append(("unknown label", found[0][1],
                                    f"{cfg.labels} line {found[0][0]}: {distinct[0]!r} cannot be a class name"))
        else:
            labels[name] = distinct[0]
    return labels


def _stratified(names: list[str], labels: list[str], cfg: PrepareConfig) -> tuple[list[str], list[str]]:
    """Every class keeps its share in valid/ (at least one image, and one left in train): the split rule's holdout."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for name, label in zip(names, labels):
        by_class[label].append(name)
    wanted = round(len(names) * cfg.val_fraction)
    small = sorted(label for label, members in by_class.items() if len(members) < 2)
    if wanted < len(by_class) or small:
        why = (f"class(es) {', '.join(small[:5])} have a single image" if small else
               f"{wanted} validation image(s) cannot hold {len(by_class)} classes; raise --val-fraction")
        raise DataLayoutError(f"cannot carve a stratified validation split of {cfg.val_fraction}: {why} "
                              f"(or pass --val-fraction 0 and let the heads hold out a share of train)")
    ordered = sorted(zip(names, labels))
    held = stratified_holdout(np.unique([label for _, label in ordered], return_inverse=True)[1], cfg.val_fraction,
                              cfg.seed)
    chosen = {name for (name, _), out in zip(ordered, held) if out}
    return [n for n in names if n not in chosen], sorted(chosen)


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source, target)


def _replace(tmp: Path, out: Path) -> None:
    """Swap the finished folder in; an --out that is a symbolic link is replaced, what it points to is kept."""
    if out.is_symlink() or out.is_file():
        out.unlink()
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)  # symlinks only: the images they point to stay
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
