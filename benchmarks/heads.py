"""Seconds and peak memory of the whole heads stage as the rows grow, against the book's single head.

    python benchmarks/heads.py                                    # 25,000 and 200,000 rows x (512 + 2048 + 1024)
    python benchmarks/heads.py --rows 1000000 --backbones resnet34 --classes 10 --parts probes,best
    python benchmarks/heads.py --rows 25000 --train-only          # no valid/: a 10 % holdout of train reports

The stage is what `cnnfeat run` does after extraction: a linear probe per backbone (13 values of C,
each fitted on 5 folds at once to choose on out-of-fold predictions, then on every row, and a
temperature), the concatenation probe, the book's three-branch head (Adam, early stopping on a fold,
then the other folds and a fit on every row) and `best`. Each size runs in a fresh process, whose
peak resident memory (ru_maxrss) is compared with the float32 feature matrix it learns from. The
baseline is the book's loop for one linear head (a per-sample Dataset over a list of tensors,
DataLoader batch 64, Adam, 10 epochs), timed at the first size. Features are class-dependent
Gaussians written through the store's own staging, so the cache is a real features.h5.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIMS = {"resnet34": 512, "inception": 2048, "densenet121": 1024}
NOISE = 8.0  # per-feature spread around the class centres
LABEL_NOISE = 0.02  # share of images whose features belong to a random class, like Dogs vs Cats' odd photos
PARTS = ("probes", "concat", "ensemble", "best")


def make_cache(workdir: Path, rows: int, backbones: list[str], classes: int, train_only: bool, seed: int = 0,
               test: int = 0, data_root: str = "/nowhere") -> None:
    """A features.h5 of class-dependent Gaussian features: train, valid (a twelfth of train) unless train_only, and
    `test` unlabeled rows; its paths are relative to data_root."""
    from features import cache_path
    from features.staging import Staging
    from features.store import SplitContent, commit_cache

    rng = np.random.default_rng(seed)
    centers = {name: rng.normal(size=(classes, DIMS[name])).astype(np.float32) for name in backbones}
    splits = [("train", rows)] + ([] if train_only else [("valid", max(rows // 12, 50))]) + ([("test", test)] if test else [])
    contents = []
    for split, n in splits:
        labels = np.sort(rng.integers(0, classes, size=n))  # a real cache is sorted by path, i.e. by class
        labeled = split != "test"
        truth = np.where(rng.random(n) < LABEL_NOISE, rng.integers(0, classes, size=n), labels)
        staged = {}
        for name in backbones:
            staging = Staging(workdir, split, name, "bench")
            for start in range(0, n, 16384):
                stop = min(start + 16384, n)
                noise = rng.normal(scale=NOISE, size=(stop - start, DIMS[name])).astype(np.float32)
                staging.save(start, stop, np.arange(start, stop), centers[name][truth[start:stop]] + noise, [], [])
            settings = dict(backbone=name, weights="random:seed=0", pool="avg", image_size=299, precision="fp32",
                            orientation="exif", view="")
            staged[name] = (staging, settings, (DIMS[name],))
        paths = tuple(f"{split}/c{label}/{i:07d}.jpg" if labeled else f"{split}/{i:07d}.jpg" for i, label in enumerate(labels))
        contents.append(SplitContent(split, split, paths, labels.astype(np.int64) if labeled else np.full(n, -1),
                                     labeled, staged))
    commit_cache(cache_path(workdir), tuple(f"c{i}" for i in range(classes)), data_root, contents)


def book_head(workdir: Path, backbone: str, epochs: int = 10) -> float:
    """Seconds for the book's linear head on one backbone's features: Adam, batch 64, validated each epoch."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from features import FeatureCache, cache_path

    started = time.perf_counter()
    with FeatureCache(cache_path(workdir)) as cache:
        train = list(zip(torch.from_numpy(cache.features("train", backbone)), cache.labels("train").tolist()))
        valid = list(zip(torch.from_numpy(cache.features("valid", backbone)), cache.labels("valid").tolist())) \
            if "valid" in cache.splits else []
        classes = len(cache.classes)
    model = torch.nn.Linear(DIMS[backbone], classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for x, y in DataLoader(train, batch_size=64, shuffle=True):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            for x, y in DataLoader(valid, batch_size=64):
                F.cross_entropy(model(x), y)
    return time.perf_counter() - started


def stage(workdir: Path, parts: list[str], device: str) -> dict:
    """Run the heads stage's parts in this process: seconds per part, peak memory, what each model scored."""
    from pipeline.heads import HeadConfig, select_best, train_concat, train_ensemble, train_linear_heads

    cfg = HeadConfig(workdir=workdir, device=device)
    steps = {"probes": lambda: train_linear_heads(cfg), "concat": lambda: train_concat(cfg),
             "ensemble": lambda: [train_ensemble(cfg)], "best": lambda: [select_best(cfg)]}
    seconds, scores = {}, {}
    for part in parts:
        started = time.perf_counter()
        results = steps[part]()
        seconds[part] = time.perf_counter() - started
        scores |= {r.name: (r.metrics["val_accuracy"], r.metrics["val_log_loss"]) for r in results}
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak_mib, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[25_000, 200_000])
    parser.add_argument("--backbones", default=",".join(DIMS))
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument("--train-only", action="store_true", help="no valid/ split: a holdout of train reports")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stage", type=Path, help=argparse.SUPPRESS)  # internal: run the stage on this workdir
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if args.stage:
        print(json.dumps(stage(args.stage, parts, args.device)))
        return
    backbones = args.backbones.split(",")
    width = sum(DIMS[b] for b in backbones)
    print(f"{' + '.join(str(DIMS[b]) for b in backbones)} features, {args.classes} classes, "
          f"{'train only (10 % holdout)' if args.train_only else 'train + valid (a twelfth of train)'}, {args.device}")
    print(f"{'rows':>9} " + " ".join(f"{p:>9}" for p in parts) + f" {'total s':>9} {'peak MiB':>9} {'matrix MiB':>10}")
    totals = {}
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="cnnfeat-bench-") as scratch:
            workdir = Path(scratch)
            make_cache(workdir, rows, backbones, args.classes, args.train_only)
            done = subprocess.run([sys.executable, __file__, "--stage", str(workdir), "--parts", ",".join(parts),
                                   "--device", args.device], capture_output=True, text=True)
            if done.returncode:
                sys.exit(done.stderr)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            book = book_head(workdir, backbones[-1]) if rows == args.rows[0] and not args.train_only else None
        totals[rows] = sum(result["seconds"].values())
        matrix = rows * width * 4 / 2**20
        print(f"{rows:>9} " + " ".join(f"{result['seconds'][p]:9.1f}" for p in parts) +
              f" {totals[rows]:9.1f} {result['peak_mib']:9.0f} {matrix:10.0f}", flush=True)
        for name, (accuracy, loss) in result["scores"].items():
            print(f"{'':>9}   {name:<16} val acc {accuracy:.4f}  log loss {loss:.4f}")
        if book is not None:
            print(f"{'':>9}   book: one Adam head on {backbones[-1]}, 10 epochs: {book:.1f} s")
    first = args.rows[0]
    for rows in args.rows[1:]:
        print(f"{rows / first:g}x the rows: {totals[rows] / totals[first]:.1f}x the time")


if __name__ == "__main__":
    main()
