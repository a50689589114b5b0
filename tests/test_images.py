from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from features.images import DataLayoutError, ImageFiles, collate_decoded, load_rgb, scan_data_folder


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


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _odd_images() -> dict[str, bytes]:
    gray = Image.new("L", (30, 20), 128)
    palette = gray.convert("P")
    clear = Image.new("RGBA", (30, 20), (255, 0, 0, 0))
    wide = Image.fromarray(np.full((20, 30), 65535, dtype=np.uint16))
    return {
        "gray.jpg": _encode(gray, "JPEG"),
        "bilevel.png": _encode(gray.convert("1"), "PNG"),
        "palette.gif": _encode(palette, "GIF"),
        "palette_transparent.png": _encode(palette, "PNG", transparency=0),
        "rgba_clear.png": _encode(clear, "PNG"),
        "gray_alpha.png": _encode(Image.new("LA", (30, 20), (0, 255)), "PNG"),
        "cmyk.jpg": _encode(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG"),
        "white_16bit.png": _encode(wide, "PNG"),
        "webp.webp": _encode(Image.new("RGB", (30, 20), (1, 2, 3)), "WEBP"),
        "tiff.tif": _encode(Image.new("RGB", (30, 20), (1, 2, 3)), "TIFF"),
    }


@pytest.mark.parametrize("name", list(_odd_images()))
def test_odd_image_kinds_become_rgb(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(_odd_images()[name])
    pixels = load_rgb(path, 24)
    assert pixels.shape == (3, 24, 24) and pixels.dtype == torch.uint8


def test_conversions_keep_the_picture(tmp_path):
    images = _odd_images()
    for name, expected in (("white_16bit.png", 255), ("rgba_clear.png", 255), ("gray_alpha.png", 0)):
        (tmp_path / name).write_bytes(images[name])
        assert load_rgb(tmp_path / name, 8).unique().tolist() == [expected], name
    (tmp_path / "cmyk.jpg").write_bytes(images["cmyk.jpg"])
    red, green, blue = load_rgb(tmp_path / "cmyk.jpg", 8).float().mean(dim=(1, 2)).tolist()
    assert red > 200 and green < 60 and blue < 60


def _broken_files(tmp_path: Path) -> list[str]:
    good = _encode(Image.new("RGB", (64, 48), (10, 200, 10)), "JPEG")
    files = {
        "empty.jpg": b"",
        "garbage.jpg": os.urandom(2048),
        "text.png": b"hello, I am not a PNG",
        "truncated.jpg": good[: len(good) // 2],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "good.jpg").write_bytes(good)
    return sorted(files) + ["good.jpg"]


def test_undecodable_files_come_back_as_failures_not_exceptions(tmp_path):
    names = _broken_files(tmp_path)
    dataset = ImageFiles(tmp_path, tuple(names), 32)
    batch = collate_decoded([dataset[i] for i in range(len(dataset))])
    assert batch.rows.tolist() == [4]
    assert batch.images.shape == (1, 3, 32, 32)
    assert batch.failed_rows == [0, 1, 2, 3]
    assert all(reason for reason in batch.failed_reasons)


def test_a_batch_of_only_broken_files(tmp_path):
    names = _broken_files(tmp_path)[:4]
    batch = collate_decoded([ImageFiles(tmp_path, tuple(names), 32)[i] for i in range(4)])
    assert len(batch.rows) == 0 and len(batch.images) == 0 and batch.failed_rows == [0, 1, 2, 3]


def test_items_are_indexed_by_split_position(tmp_path):
    names = [f"{i}.jpg" for i in range(5)]
    for name in names:
        _jpeg(tmp_path / name)
    dataset = ImageFiles(tmp_path, tuple(names), 16)
    assert len(dataset) == 5 and [dataset[i][0] for i in (3, 4)] == [3, 4]
