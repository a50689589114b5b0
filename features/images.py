"""Image folders to splits, and image files to uint8 tensors.

A data folder holds one subfolder per split. A split whose subfolders hold images is labeled
(class = subfolder name); a split with images directly inside (Kaggle's test/) is unlabeled:

    data/train/cat/1.jpg  data/train/dog/2.jpg  data/valid/cat/3.jpg  data/test/4.jpg

Hidden entries (names starting with '.', such as .ipynb_checkpoints) are ignored everywhere.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2.functional import InterpolationMode, resize

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
UNLABELED = -1


class DataLayoutError(ValueError):
    """The data folder does not have the split/class layout cnnfeat reads."""


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

    def fingerprint(self, split: str) -> str:
        """Changes whenever a file of the split is added, removed, renamed, rewritten or relabeled."""
        digest = hashlib.sha256("\n".join(self.classes).encode())
        for rel, label in zip(self.splits[split].paths, self.splits[split].labels):
            stat = (self.root / rel).stat()
            digest.update(f"\n{rel}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
        return digest.hexdigest()


def _visible(entries: list[Path]) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


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
        entries = _visible(list(split_dir.iterdir()))
        images = [p for p in entries if _is_image(p)]
        class_dirs = [p for p in entries if p.is_dir()]
        if images and class_dirs:
            raise DataLayoutError(
                f"split {split_dir} holds both images and subfolders; put a labeled split's images "
                f"in one subfolder per class, and an unlabeled split's images directly in it"
            )
        if images:
            unlabeled[split_dir.name] = [p.relative_to(root).as_posix() for p in images]
        elif class_dirs:
            labeled[split_dir.name] = {
                d.name: [p.relative_to(root).as_posix() for p in _visible(list(d.iterdir())) if _is_image(p)]
                for d in class_dirs
            }
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


def load_rgb(path: str | Path, size: int) -> torch.Tensor:
    """Decode any PIL-readable image to a (3, size, size) uint8 tensor, resized square as the book did.

    Grayscale, palette, CMYK and 16-bit images become RGB; transparency is composited on white.
    """
    with Image.open(path) as img:
        img.load()
        img = _to_rgb(img)
    img = img.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # PIL clips 16- and 32-bit gray to 255 when converting; scale to 8 bits instead.
        wide = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or wide.max() > 255 else 255.0
        img = Image.fromarray(np.clip(wide / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


JPEG_MAGIC = b"\xff\xd8\xff"


class DecodedBatch(NamedTuple):
    rows: torch.Tensor  # (B,) int64 positions in the split of the decoded images, ascending
    images: torch.Tensor  # (B, 3, H, W) uint8
    failed_rows: list[int]  # positions that could not be decoded
    failed_reasons: list[str]
    jpeg_rows: list[int] = []  # positions whose JPEG bytes are left to decode_on_device
    jpeg_bytes: list[torch.Tensor] = []


class ImageFiles(Dataset):
    """Item i is the split's image i, decoded once for every backbone; a broken file yields its error.

    With jpeg_bytes=True a JPEG comes back undecoded, for decode_on_device to decode a whole batch
    at once where the models run (nvJPEG on a GPU); other formats are still decoded here with PIL.
    """

    def __init__(self, root: Path, paths: tuple[str, ...], size: int, jpeg_bytes: bool = False) -> None:
        self.root, self.paths, self.size, self.jpeg_bytes = root, paths, size, jpeg_bytes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor | None, str]:
        path = self.root / self.paths[row]
        try:
            if self.jpeg_bytes:
                data = path.read_bytes()
                if data.startswith(JPEG_MAGIC):
                    return row, torch.frombuffer(bytearray(data), dtype=torch.uint8), "jpeg"
            return row, load_rgb(path, self.size), ""
        except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files; each is a skip
            return row, None, f"{type(err).__name__}: {err}"


def collate_decoded(items: list[tuple[int, torch.Tensor | None, str]]) -> DecodedBatch:
    good = [(row, img) for row, img, note in items if img is not None and note != "jpeg"]
    bad = [(row, reason) for row, img, reason in items if img is None]
    jpegs = [(row, data) for row, data, note in items if note == "jpeg"]
    images = torch.stack([img for _, img in good]) if good else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    return DecodedBatch(
        torch.tensor([row for row, _ in good], dtype=torch.int64),
        images,
        [row for row, _ in bad],
        [reason for _, reason in bad],
        [row for row, _ in jpegs],
        [data for _, data in jpegs],
    )


def decode_on_device(batch: DecodedBatch, root: Path, paths: tuple[str, ...], size: int,
                     device: torch.device) -> DecodedBatch:
    """Decode the batch's JPEG bytes with torchvision.io.decode_jpeg on the device and resize there.

    One batched call (nvJPEG on a GPU, libjpeg-turbo on a CPU); if it fails, image by image, and an
    image the device cannot decode gets PIL's verdict, so a broken file is skipped as on the PIL path.
    """
    if not batch.jpeg_rows:
        return batch
    try:
        decoded = decode_jpeg(batch.jpeg_bytes, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        decoded = [_decode_one(data, device) for data in batch.jpeg_bytes]
    rows, images = batch.rows.tolist(), [batch.images.to(device, non_blocking=True)] if len(batch.rows) else []
    failed = dict(zip(batch.failed_rows, batch.failed_reasons))
    for row, image in zip(batch.jpeg_rows, decoded):
        if image is None:
            try:
                image = load_rgb(root / paths[row], size).to(device)
            except Exception as err:  # noqa: BLE001 - as in ImageFiles
                failed[row] = f"{type(err).__name__}: {err}"
                continue
        else:
            with torch.autocast(device.type, enabled=False):  # resize uint8 pixels in fp32 even under --precision
                image = resize(image, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
        rows.append(row)
        images.append(image[None])
    order = sorted(range(len(rows)), key=rows.__getitem__)
    pixels = torch.cat(images)[torch.tensor(order, device=device)] if rows else batch.images
    return DecodedBatch(torch.tensor(sorted(rows), dtype=torch.int64), pixels, sorted(failed),
                        [failed[r] for r in sorted(failed)])


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None
