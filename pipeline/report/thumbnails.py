"""Small JPEG copies of the images the report shows, beside the page in reports/thumbs/.

    thumbs = make_thumbnails(reports_dir, data_root, ["train/cat/1.jpg", ...], progress)
    thumbs["train/cat/1.jpg"]       # "thumbs/3f2a...jpg", or None when the file cannot be read

A thumbnail is named by its image's path, size and modification time, so a later report reuses it
and an image that changed gets a new one; thumbnails no longer shown are removed. Imports no torch.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterable

from PIL import Image

from features import ProgressFn, atomic_output, open_rgb

log = logging.getLogger(__name__)

THUMBNAIL_PX = 112  # the longer side: about 3 KB as JPEG, so a page of hundreds stays light
THUMBNAIL_QUALITY = 80
THUMBS = "thumbs"


def make_thumbnails(folder: Path, data_root: Path, paths: Iterable[str],
                    progress: ProgressFn | None = None) -> dict[str, str | None]:
    """{path: the thumbnail's path relative to `folder`, or None where the image is missing or unreadable}."""
    target = folder / THUMBS
    target.mkdir(parents=True, exist_ok=True)
    wanted = sorted(set(paths))
    made: dict[str, str | None] = {}
    for path in wanted:
        made[path] = _thumbnail(data_root / path, target)
        if progress:
            progress("thumbnails", 1, len(wanted))
    kept = {Path(name).name for name in made.values() if name}
    for old in target.glob("*.jpg"):
        if old.name not in kept:
            old.unlink(missing_ok=True)
    return made


def _thumbnail(source: Path, target: Path) -> str | None:
    try:
        stat = source.stat()
    except OSError:
        return None
    key = hashlib.sha1(f"{source}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:20]
    path = target / f"{key}.jpg"
    if not path.exists():
        try:
            image = open_rgb(source, at_least=THUMBNAIL_PX)
        except Exception as err:  # noqa: BLE001 - PIL raises many types for a bad file; the page shows its path
            log.warning("no thumbnail of %s: %s: %s", source, type(err).__name__, err)
            return None
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.BILINEAR)
        with atomic_output(path) as tmp:
            image.save(tmp, format="JPEG", quality=THUMBNAIL_QUALITY)
    return f"{THUMBS}/{path.name}"
