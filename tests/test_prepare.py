from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from features import DataLayoutError, scan_data_folder
from features.prepare import DEFAULT_LABEL_PATTERN, PROBLEMS_FILE, PrepareConfig, prepare
from pipeline.cli import main


def _raw_dogs_vs_cats(digits_folder: Path, root: Path) -> Path:
    """Kaggle's layout: flat train/ named <label>.<n>.jpg, flat test/<n>.jpg (digit scans standing in)."""
    names = {"0": "zero", "1": "one", "2": "two"}
    for i, image in enumerate(sorted((digits_folder / "train").rglob("*.jpg"))):
        (root / "train").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, root / "train" / f"{names[image.parent.name]}.{i}.jpg")
    (root / "test").mkdir()
    for i, image in enumerate(sorted((digits_folder / "test").glob("*.jpg")), start=1):
        shutil.copy(image, root / "test" / f"{i}.jpg")
    return root


def test_labels_from_file_names_and_a_stratified_validation_split(digits_folder, tmp_path):
    raw = _raw_dogs_vs_cats(digits_folder, tmp_path / "raw")
    shutil.copy(raw / "train" / "zero.0.jpg", raw / "train" / "mystery.jpg")  # no number: no label
    (raw / "train" / "notes.txt").write_text("not an image")
    out = tmp_path / "data"
    report = prepare(PrepareConfig(train=raw / "train", test=raw / "test", out=out,
                                   label_pattern=DEFAULT_LABEL_PATTERN, val_fraction=0.25, seed=0))
    assert report.classes == ["one", "two", "zero"]
    assert report.counts == {"train": 18, "valid": 6, "test": 6}
    assert report.problems == [("image without label", "mystery.jpg", f"the name does not match {DEFAULT_LABEL_PATTERN!r}")]
    folder = scan_data_folder(out)
    assert folder.classes == ("one", "two", "zero") and sorted(folder.splits) == ["test", "train", "valid"]
    valid = folder.splits["valid"]
    assert sorted(folder.classes[label] for label in valid.labels) == ["one", "one", "two", "two", "zero", "zero"]
    for path, label in zip(valid.paths, valid.labels):
        linked = out / path
        assert linked.is_symlink() and Path(path).name.startswith(folder.classes[label] + ".")
        assert linked.read_bytes() == (raw / "train" / Path(path).name).read_bytes()
    assert pd.read_csv(out / PROBLEMS_FILE)["item"].tolist() == ["mystery.jpg"]

    again = tmp_path / "again"
    prepare(PrepareConfig(train=raw / "train", out=again, label_pattern=DEFAULT_LABEL_PATTERN, val_fraction=0.25, seed=0))
    assert scan_data_folder(again).splits["valid"].paths == valid.paths  # same seed, same split
    other = tmp_path / "other"
    prepare(PrepareConfig(train=raw / "train", out=other, label_pattern=DEFAULT_LABEL_PATTERN, val_fraction=0.25, seed=1))
    assert scan_data_folder(other).splits["valid"].paths != valid.paths


def test_labels_from_a_csv_report_every_bad_row(digits_folder, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, image in enumerate(sorted((digits_folder / "train").rglob("*.jpg"))[:8]):
        shutil.copy(image, images / f"img{i}.png" if i == 7 else images / f"img{i}.jpg")
    rows = [("img0", "cat"), ("img1", "cat"), ("img2", "dog"), ("img3", "dog"), ("img4", "cat"),
            ("img5.jpg", "dog"),  # an id with its extension
            ("img6", ""),  # an unknown (empty) label
            ("img99", "dog"),  # an id with no image; img7 has no row
            ("img4", "dog"),  # a second, conflicting label for img4
            ("img3", "")]  # a second label for img3 that is no label at all: a conflict still
    pd.DataFrame(rows, columns=["file", "breed"]).to_csv(tmp_path / "labels.csv", index=False)
    report = prepare(PrepareConfig(train=images, out=tmp_path / "data", labels=tmp_path / "labels.csv",
                                   id_column="file", label_column="breed", val_fraction=0))
    kinds = sorted((kind, item) for kind, item, _ in report.problems)
    assert kinds == [("conflicting labels", "img3"), ("conflicting labels", "img4"), ("id without image", "img99"),
                     ("image without label", "img7.png"), ("unknown label", "img6")]
    folder = scan_data_folder(tmp_path / "data")
    assert folder.splits["train"].paths == ("train/cat/img0.jpg", "train/cat/img1.jpg", "train/dog/img2.jpg",
                                            "train/dog/img5.jpg")


def test_bad_requests_are_refused_and_nothing_is_half_made(digits_folder, tmp_path):
    raw = _raw_dogs_vs_cats(digits_folder, tmp_path / "raw")
    with pytest.raises(ValueError, match="exactly one source of labels"):
        PrepareConfig(train=raw / "train", out=tmp_path / "x")
    with pytest.raises(DataLayoutError, match="stratified"):  # 1 of 24 images cannot hold 3 classes
        prepare(PrepareConfig(train=raw / "train", out=tmp_path / "x", label_pattern=DEFAULT_LABEL_PATTERN, val_fraction=0.04))
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.tmp").exists()
    (tmp_path / "x").mkdir()
    with pytest.raises(FileExistsError, match="--force"):
        prepare(PrepareConfig(train=raw / "train", out=tmp_path / "x", label_pattern=DEFAULT_LABEL_PATTERN))


def test_prepare_command_then_extract_reads_the_links(digits_folder, tmp_path):
    raw = _raw_dogs_vs_cats(digits_folder, tmp_path / "raw")
    out = tmp_path / "data"
    result = CliRunner().invoke(main, ["prepare", "--train", str(raw / "train"), "--test", str(raw / "test"),
                                       "--out", str(out), "--label-from-name", "--val-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    assert "train 18, valid 6, test 6 images, 3 classes" in result.output
    again = CliRunner().invoke(main, ["prepare", "--train", str(raw / "train"), "--out", str(out), "--label-from-name"])
    assert again.exit_code == 1 and "--force" in again.output
    extracted = CliRunner().invoke(main, ["extract", "--data", str(out), "--workdir", str(tmp_path / "work"),
                                          "--weights", "random", "--image-size", "80", "--workers", "0",
                                          "--backbone", "resnet34"])
    assert extracted.exit_code == 0, extracted.output
    assert "train: resnet34" in extracted.output and "could not be decoded" not in extracted.output


def test_force_replaces_an_out_that_is_a_symbolic_link_and_leaves_its_target(digits_folder, tmp_path):
    raw = _raw_dogs_vs_cats(digits_folder, tmp_path / "raw")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("not ours")
    (tmp_path / "data").symlink_to(target)
    prepare(PrepareConfig(train=raw / "train", out=tmp_path / "data", label_pattern=DEFAULT_LABEL_PATTERN,
                          val_fraction=0.25, force=True))
    assert (tmp_path / "data").is_dir() and not (tmp_path / "data").is_symlink()
    assert sorted(scan_data_folder(tmp_path / "data").splits) == ["train", "valid"]
    assert (target / "keep.txt").exists() and not list(tmp_path.glob("*.old")) and not list(tmp_path.glob("*.tmp"))


def test_no_name_matching_the_pattern_is_a_message_with_the_names_and_the_fix(tmp_path):
    (tmp_path / "raw").mkdir()
    for name in ("1.jpg", "2.jpg"):
        (tmp_path / "raw" / name).write_bytes(b"")
    result = CliRunner().invoke(main, ["prepare", "--train", str(tmp_path / "raw"), "--out", str(tmp_path / "out"),
                                       "--label-from-name"])
    assert result.exit_code == 1 and "1.jpg, 2.jpg (the name does not match" in result.output
    assert "give --label-from-name a regex" in result.output and "problems above" not in result.output
    assert not (tmp_path / "out").exists()
