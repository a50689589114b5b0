"""Seconds to build the report of a 25,000-image job: `cnnfeat report` alone, in a fresh process.

    python benchmarks/report.py                       # 25,000 train + 2,083 valid + 12,500 test rows, 2 classes
    python benchmarks/report.py --rows 5000 --test 0

The job is Dogs vs Cats' size: the book's three backbones' features (512 + 2048 + 1024, synthetic
class-dependent Gaussians written through the store's own staging, 2 % of labels noisy, as
benchmarks/heads.py makes them), a probe per backbone, the concatenation probe, the three-branch
head and `best`, trained by the heads' stage (a short C grid and at most 20 epochs: the report's
time depends on the models' outputs, not on how long they trained). Then every path gets an image
file, a symbolic link to one of 64 JPEG photos of 500 x 375 pixels, and the report is built, which
reads every model's predictions, finds the label issues in 25,000 out-of-fold rows, searches all
pairs of the 39,583 images for near-duplicates and makes the thumbnails of the images it shows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heads import DIMS, make_cache  # noqa: E402 - the heads benchmark's synthetic cache

PHOTOS = 64


def photos(folder: Path, seed: int = 0) -> list[Path]:
    """Photo-sized JPEGs of smooth random colour fields: what a thumbnail costs to decode and shrink."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    made = []
    for k in range(PHOTOS):
        small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        path = folder / f"{k}.jpg"
        Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(path, quality=90)
        made.append(path)
    return made


def link_images(workdir: Path, data: Path) -> int:
    """Every path of the cache as a link to one of the photos."""
    from features import FeatureCache, cache_path

    sources = photos(data.parent / "photos")
    count = 0
    with FeatureCache(cache_path(workdir)) as cache:
        for split in cache.splits:
            for path in cache.paths(split):
                target = data / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(sources[count % PHOTOS])
                count += 1
    return count


def timed_report(workdir: Path) -> dict:
    """Build the report in this process; seconds and what it wrote."""
    started = time.perf_counter()
    from pipeline.report import build_reports

    report = build_reports(workdir)
    seconds = time.perf_counter() - started
    thumbs = list((report.page.parent / "thumbs").iterdir())
    return {"seconds": seconds, "page_kib": report.page.stat().st_size / 1024, "thumbnails": len(thumbs),
            "thumbs_kib": sum(p.stat().st_size for p in thumbs) / 1024, "label_issues": report.label_issues,
            "pairs": report.duplicates.found, "images": report.duplicates.images, "models": len(report.models)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=25_000, help="training rows (valid: a twelfth of them)")
    parser.add_argument("--test", type=int, default=12_500, help="unlabeled rows")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)  # internal: time the report of this workdir
    args = parser.parse_args()
    if args.report:
        print(json.dumps(timed_report(args.report)))
        return
    with tempfile.TemporaryDirectory(prefix="cnnfeat-report-") as scratch:
        workdir, data = Path(scratch) / "work", Path(scratch) / "data"
        make_cache(workdir, args.rows, list(DIMS), args.classes, False, test=args.test, data_root=str(data))
        from pipeline.heads import HeadConfig, select_best, train_concat, train_ensemble, train_linear_heads

        cfg = HeadConfig(workdir=workdir, c_grid=(0.01, 1.0), epochs=20)
        train_linear_heads(cfg), train_concat(cfg), train_ensemble(cfg), select_best(cfg)
        images = link_images(workdir, data)  # after training: the heads compare the folder with the cache
        done = subprocess.run([sys.executable, __file__, "--report", str(workdir)], capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr)
        result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{images} images, {result['models']} models: report built in {result['seconds']:.1f} s (a fresh process, "
          f"imports included); page {result['page_kib']:.0f} KiB, {result['thumbnails']} thumbnails "
          f"({result['thumbs_kib']:.0f} KiB); {result['label_issues']} likely label errors; "
          f"{result['pairs']} near-duplicate pairs among {result['images']} images")


if __name__ == "__main__":
    main()
