from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from features import DataLayoutError, scan_data_folder, scan_prepared_folder


def _jpeg(path: Path, color=(200, 30, 30), size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_labeled_and_unlabeled_splits(tmp_path):
    for rel in ("train/dog/b.jpg", "train/cat/z.JPG", "train/cat/a.jpeg", "valid/dog/c.Png", "valid/cat/d.jpg"):
        _jpeg(tmp_path / rel)
    _jpeg(tmp_path / "test/2.jpg")
    _jpeg(tmp_path / "test/10.jpg")
    (tmp_path / "train/cat/notes.txt").write_text("not an image")
    folder = scan_data_folder(tmp_path)
    assert folder.classes == ("cat", "dog")
    train = folder.splits["train"]
    assert train.paths == ("train/cat/a.jpeg", "train/cat/z.JPG", "train/dog/b.jpg")
    assert train.labels.tolist() == [0, 0, 1]
    assert folder.splits["valid"].labels.tolist() == [0, 1]
    test = folder.splits["test"]
    assert test.paths == ("test/10.jpg", "test/2.jpg") and test.labels.tolist() == [-1, -1]
    assert train.labeled and not test.labeled


def test_hidden_folders_never_shift_labels(tmp_path):
    """.ipynb_checkpoints sorts before every class name; it must not become class 0."""
    _jpeg(tmp_path / "train/cat/1.jpg")
    _jpeg(tmp_path / "train/dog/2.jpg")
    _jpeg(tmp_path / "train/.ipynb_checkpoints/3.jpg")
    _jpeg(tmp_path / ".hidden_split/x/4.jpg")
    _jpeg(tmp_path / "train/dog/.5.jpg")
    folder = scan_data_folder(tmp_path)
    assert list(folder.splits) == ["train"]
    assert folder.classes == ("cat", "dog")
    assert folder.splits["train"].paths == ("train/cat/1.jpg", "train/dog/2.jpg")


def test_empty_class_folder_is_an_error(tmp_path):
    _jpeg(tmp_path / "train/cat/1.jpg")
    (tmp_path / "train/bird").mkdir()
    with pytest.raises(DataLayoutError, match="bird.*hold no images"):
        scan_data_folder(tmp_path)


def test_splits_must_agree_on_classes(tmp_path):
    _jpeg(tmp_path / "train/cat/1.jpg")
    _jpeg(tmp_path / "train/dog/2.jpg")
    _jpeg(tmp_path / "valid/cat/3.jpg")
    with pytest.raises(DataLayoutError, match="disagree on the classes"):
        scan_data_folder(tmp_path)


def test_mixed_split_and_missing_folder_are_errors(tmp_path):
    _jpeg(tmp_path / "train/cat/1.jpg")
    _jpeg(tmp_path / "train/2.jpg")
    with pytest.raises(DataLayoutError, match="both images and subfolders"):
        scan_data_folder(tmp_path)
    with pytest.raises(DataLayoutError, match="does not exist"):
        scan_data_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataLayoutError, match="no images found"):
        scan_data_folder(tmp_path / "empty")


def test_fingerprint_follows_file_changes(tmp_path):
    path = _jpeg(tmp_path / "train/cat/1.jpg")
    _jpeg(tmp_path / "test/1.jpg")
    folder = scan_data_folder(tmp_path)
    train, test = folder.fingerprint("train"), folder.fingerprint("test")
    assert train == scan_data_folder(tmp_path).fingerprint("train")
    _jpeg(path, color=(0, 0, 0), size=(41, 30))
    os.utime(path, ns=(1, 1))
    after = scan_data_folder(tmp_path)
    assert after.fingerprint("train") != train
    assert after.fingerprint("test") == test


def test_a_folder_without_a_labeled_split_is_refused_with_what_to_run(tmp_path):
    """A raw download (flat train/) or class folders given as the data folder: the prepare command, not silence."""
    for name in ("train/cat.0.jpg", "train/dog.1.jpg", "test/1.jpg"):
        (tmp_path / "raw" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "raw" / name)
    with pytest.raises(DataLayoutError, match=f"cnnfeat prepare --train {tmp_path / 'raw' / 'train'} --test"):
        scan_prepared_folder(tmp_path / "raw")
    (tmp_path / "classes" / "cat").mkdir(parents=True)
    (tmp_path / "classes" / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "classes" / "cat" / "1.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "classes" / "dog" / "2.jpg")
    with pytest.raises(DataLayoutError, match="subfolders cat, dog hold images directly.*one level too deep"):
        scan_prepared_folder(tmp_path / "classes")
