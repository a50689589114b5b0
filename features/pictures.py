"""Image files to upright 8-bit RGB PIL images: the one decoding rule, shared by extraction, fine-tuning
and the report's thumbnails. Imports no torch (the report opens images without it).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

# An image to decode: a file (a path, or its bytes), or a picture already decoded that a caller holds in
# memory (a PIL image, or a uint8 (3, H, W) RGB torch tensor or numpy array)
ImageSource = Union[str, Path, bytes, Image.Image, "torch.Tensor", np.ndarray]


def open_rgb(source: ImageSource, at_least: int | None = None) -> Image.Image:
    """Decode any PIL-readable image, upright as its EXIF orientation says, as 8-bit RGB.

    Grayscale, palette, CMYK and 16-bit images become RGB; transparency is composited on white. A PIL
    image is converted the same way (so one opened by the caller gets what its file gets); an array must
    be uint8 (3, H, W) RGB, already upright. With `at_least`, a JPEG is decoded at the smallest scale
    (1/2, 1/4, 1/8) that keeps both sides at least that many pixels: a thumbnail of a 12-megapixel photo
    then costs a fraction of a full decode.
    """
    if isinstance(source, Image.Image):
        source.load()
        return _to_rgb(ImageOps.exif_transpose(source))
    if not isinstance(source, (str, Path, bytes)):  # a tensor or an array, read without importing torch
        pixels = np.asarray(source)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[0] != 3:
            raise ValueError(f"an image tensor must be uint8 (3, H, W) RGB, not {pixels.dtype} {pixels.shape}")
        return Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), "RGB")
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        if at_least:
            img.draft(None, (at_least, at_least))
        img.load()
        return _to_rgb(ImageOps.exif_transpose(img))


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
