"""What adding a few files to a large split costs: a full extraction against the same one after new files.

    python benchmarks/incremental.py                          # 20,000 JPEGs of 64 px, +10, mobilenet_v3_small
    python benchmarks/incremental.py --images 2000 --added 10 --backbone resnet18

One labeled split of --images small JPEGs (two classes), seeded random weights (no download), one
small backbone at 64 px. Times are extract()'s own (ExtractReport.seconds: scanning, planning,
decoding, the forward passes and the rewrite of features.h5), so the interpreter's start-up and
model imports are left out of both. The second extraction decodes only the added files and copies
every other row; its cost is the scan of the folder plus the rewrite of the cache.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features import ExtractConfig, FeatureCache, cache_path, extract  # noqa: E402


def write_images(folder: Path, count: int, start: int, size: int, rng: np.random.Generator) -> None:
    """count JPEGs of size x size noise, alternately in class folders a/ and b/."""
    for i in range(start, start + count):
        target = folder / "train" / "ab"[i % 2]
        target.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(target / f"{i:06d}.jpg", quality=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--added", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        data, workdir = Path(tmp) / "data", Path(tmp) / "work"
        started = time.perf_counter()
        write_images(data, args.images, 0, args.size, rng)
        print(f"wrote {args.images} JPEGs of {args.size} px in {time.perf_counter() - started:.1f} s")
        cfg = ExtractConfig(data=data, workdir=workdir, backbones=(args.backbone,), weights="random",
                            image_size=args.size, batch_size=args.batch_size, workers=args.workers)
        full = extract(cfg)
        print(f"full extraction:    {full.images_decoded:6d} images decoded in {full.seconds:7.2f} s")
        write_images(data, args.added, args.images, args.size, rng)
        added = extract(cfg)
        print(f"after +{args.added} files:   {added.images_decoded:6d} images decoded in {added.seconds:7.2f} s "
              f"({100 * added.seconds / full.seconds:.2f} % of the full extraction)")
        with FeatureCache(cache_path(workdir)) as cache:
            rows = len(cache.paths("train"))
        print(f"cache: {rows} rows, {cache_path(workdir).stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
