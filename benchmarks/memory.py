"""Peak memory of `cnnfeat extract --backbone all` on N and on 10N images: it must not grow with N.

    python benchmarks/memory.py                   # 200 and 2,000 JPEGs of 160x120 at 96 px, CPU, bf16
    python benchmarks/memory.py --images 1000 --image-size 299 --device cuda

Each run is a fresh process; its peak resident memory (ru_maxrss) and that of its decoding
workers are read when it ends. Features stream to the staging area batch by batch and into
features.h5 block by block, so only the models and a few batches are ever in memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from extract import make_folder  # benchmarks/extract.py: the same ordinary JPEGs

MEASURE = """
import json, resource, sys
from features import ExtractConfig, extract
extract(ExtractConfig(**json.loads(sys.argv[1])))
kib = lambda who: resource.getrusage(who).ru_maxrss
print(json.dumps({"main": kib(resource.RUSAGE_SELF), "workers": kib(resource.RUSAGE_CHILDREN)}))
"""


def peak_rss(settings: dict) -> dict[str, float]:
    """MiB at the peak: the extracting process, and its largest decoding worker."""
    done = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(settings)], capture_output=True, text=True, check=True)
    return {who: kib / 1024 for who, kib in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cnnfeat-memory-") as scratch:
        for n in (args.images, 10 * args.images):
            data = make_folder(Path(scratch) / f"data-{n}", n)
            settings = dict(data=str(data), workdir=str(Path(scratch) / f"work-{n}"), weights="random",
                            image_size=args.image_size, batch_size=args.batch_size, workers=args.workers,
                            device=args.device, precision=args.precision)
            rows.append((n, peak_rss(settings)))
    print(f"\ncnnfeat extract --backbone all, {args.image_size} px, batch {args.batch_size}, {args.workers} worker(s), "
          f"{args.device}, {args.precision}: peak resident memory")
    print(f"{'images':>8} {'main MiB':>9} {'worker MiB':>11}")
    for n, peak in rows:
        print(f"{n:>8} {peak['main']:9.0f} {peak['workers']:11.0f}")
    growth = rows[1][1]["main"] / rows[0][1]["main"]
    print(f"10x the images: {growth:.2f}x the peak memory of the main process")


if __name__ == "__main__":
    main()
