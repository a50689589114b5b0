"""Image files to upright 8-bit RGB PIL images: the one decoding rule, shared by extraction, fine-tuning
and the report's thumbnails. Imports no torch (the report opens images without it).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def open_rgb(source: str | Path | bytes, at_least: int | None = None) -> Image.Image:
    """Decode any PIL-readable image, upright as its EXIF orientation says, as 8-bit RGB.

    Grayscale, palette, CMYK and 16-bit images become RGB; transparency is composited on white.
    With `at_least`, a JPEG is decoded at the smallest scale (1/2, 1/4, 1/8) that keeps both sides
    at least that many pixels: a thumbnail of a 12-megapixel photo then costs a fraction of a full decode.
    """
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
