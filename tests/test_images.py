from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from features.images import (DecodeStream, ImageFiles, collate_decoded, decode_on_device, exif_orientation, load_rgb,
                             open_rgb, upright)


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
    dataset = ImageFiles(tmp_path, tuple(names), (32,))
    batch = collate_decoded([dataset[i] for i in range(len(dataset))])
    assert batch.rows.tolist() == [4]
    assert batch.images[32].shape == (1, 3, 32, 32)
    assert batch.failed_rows == [0, 1, 2, 3]
    assert all(reason for reason in batch.failed_reasons)


def test_a_batch_of_only_broken_files(tmp_path):
    names = _broken_files(tmp_path)[:4]
    batch = collate_decoded([ImageFiles(tmp_path, tuple(names), (32,))[i] for i in range(4)])
    assert len(batch.rows) == 0 and not batch.images and batch.failed_rows == [0, 1, 2, 3]


def test_items_are_indexed_by_split_position(tmp_path):
    names = [f"{i}.jpg" for i in range(5)]
    for name in names:
        _jpeg(tmp_path / name)
    dataset = ImageFiles(tmp_path, tuple(names), (16,))
    assert len(dataset) == 5 and [dataset[i][0] for i in (3, 4)] == [3, 4]


def _photo(orientation: int) -> bytes:
    """A 40x30 JPEG whose top-left quarter is red, stored with an EXIF orientation tag."""
    pixels = np.zeros((30, 40, 3), dtype=np.uint8)
    pixels[:15, :20] = (250, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_by_both_decoders(orientation, tmp_path):
    data = _photo(orientation)
    (tmp_path / "photo.jpg").write_bytes(data)
    with Image.open(io.BytesIO(data)) as img:
        expected = np.asarray(img.transpose(_PIL_TURN[orientation]) if orientation > 1 else img.convert("RGB"))
    pil = open_rgb(tmp_path / "photo.jpg")
    assert np.array_equal(np.asarray(pil), expected)
    assert exif_orientation(data) == orientation
    raw = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()).permute(2, 0, 1)
    assert torch.equal(upright(raw, orientation), torch.from_numpy(expected.copy()).permute(2, 0, 1))
    files = ImageFiles(tmp_path, ("photo.jpg",), (24,), jpeg_bytes=True)
    on_device = decode_on_device(collate_decoded([files[0]]), tmp_path, ("photo.jpg",), (24,), torch.device("cpu"))
    by_pil = load_rgb(tmp_path / "photo.jpg", 24)
    assert on_device.images[24].shape == (1, 3, 24, 24)
    assert (on_device.images[24][0].float() - by_pil.float()).abs().mean() < 8  # decoders and resizers differ by rounding


_PIL_TURN = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}


def test_each_image_is_decoded_once_for_every_size(tmp_path, monkeypatch):
    _jpeg(tmp_path / "a.jpg")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: (opened.append(1), real_open(*a, **k))[1])
    batch = collate_decoded([ImageFiles(tmp_path, ("a.jpg",), (80, 224, 299))[0]])
    assert len(opened) == 1 and sorted(batch.images) == [80, 224, 299]
    assert all(batch.images[s].shape == (1, 3, s, s) for s in (80, 224, 299))


def test_a_batch_of_jpeg_bytes_crosses_processes_as_one_tensor(tmp_path):
    names = []
    for i in range(5):
        _jpeg(tmp_path / f"{i}.jpg", color=(40 * i, 0, 0))
        names.append(f"{i}.jpg")
    (tmp_path / "5.png").write_bytes(_encode(Image.new("RGB", (20, 20)), "PNG"))
    names.append("5.png")
    files = ImageFiles(tmp_path, tuple(names), (16,), jpeg_bytes=True)
    batch = collate_decoded([files[i] for i in range(6)])
    tensors = [value for value in batch if isinstance(value, torch.Tensor)] + list(batch.images.values())
    assert len(tensors) == 4  # rows, packed bytes, offsets, one PNG size: not one per image
    assert batch.jpeg_rows == [0, 1, 2, 3, 4] and batch.rows.tolist() == [5]
    for i in range(5):
        assert bytes(batch.jpeg(i).numpy()) == (tmp_path / f"{i}.jpg").read_bytes()
    decoded = decode_on_device(batch, tmp_path, tuple(names), (16,), torch.device("cpu"), DecodeStream(torch.device("cpu")))
    assert decoded.rows.tolist() == list(range(6)) and decoded.images[16].shape == (6, 3, 16, 16)
    assert decoded.images[16][4, 0].float().mean() > decoded.images[16][1, 0].float().mean()  # rows kept in order


def _jpeg(path: Path, color=(200, 30, 30), size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_a_truncated_jpeg_is_skipped_by_both_decoders(tmp_path):
    names = _broken_files(tmp_path)  # truncated.jpg among them, which libjpeg alone would decode half grey
    for on_device in (False, True):
        files = ImageFiles(tmp_path, tuple(names), (16,), jpeg_bytes=on_device)
        batch = collate_decoded([files[i] for i in range(len(names))])
        if on_device:
            batch = decode_on_device(batch, tmp_path, tuple(names), (16,), torch.device("cpu"))
        assert [names[r] for r in batch.failed_rows] == ["empty.jpg", "garbage.jpg", "text.png", "truncated.jpg"]
        assert batch.rows.tolist() == [names.index("good.jpg")]


def test_the_decode_stream_waits_before_decoding_and_hands_the_batch_to_compute(monkeypatch):
    """The CUDA ordering, with fake streams: its own finished work first, then decode on it, then compute
    waits for it by an event and owns the decoded tensors (nothing here can run on a real GPU in CI)."""
    events: list[str] = []

    class FakeStream:
        def __init__(self, name: str) -> None:
            self.name = name

        def synchronize(self) -> None:
            events.append(f"{self.name}.synchronize")

        def wait_stream(self, other: "FakeStream") -> None:
            events.append(f"{self.name}.wait_stream({other.name})")

    class Using:
        def __init__(self, stream: FakeStream) -> None:
            self.stream = stream

        def __enter__(self) -> None:
            events.append(f"use {self.stream.name}")

        def __exit__(self, *exc: object) -> None:
            events.append(f"leave {self.stream.name}")

    class DecodedTensor:
        def record_stream(self, stream: FakeStream) -> None:
            events.append(f"record_stream({stream.name})")

    compute = FakeStream("compute")
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: FakeStream("decode"))
    monkeypatch.setattr(torch.cuda, "stream", Using)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: compute)
    stream = DecodeStream(torch.device("cuda"))
    for _ in range(2):  # the second batch's decode starts after the first's work on the stream is done
        with stream:
            events.append("decode")
        stream.hand_over([DecodedTensor()])
    batch = ["decode.synchronize", "use decode", "decode", "leave decode", "compute.wait_stream(decode)",
             "record_stream(compute)"]
    assert events == batch + batch
