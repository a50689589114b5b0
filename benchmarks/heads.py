"""Seconds for the whole heads stage on Dogs-vs-Cats-sized features, against the book's single head.

    python benchmarks/heads.py                      # 25,000 train rows x (512 + 2048 + 1024), 2,000 valid
    python benchmarks/heads.py --rows 5000 --device cuda

The stage is what `cnnfeat run` does after extraction: a linear probe per backbone (13 values of C
swept, 5 out-of-fold fits, a temperature), the concatenation probe, the book's three-branch head
(Adam, early stopping, 5 out-of-fold fits) and `best`. The baseline is the book's loop for one
linear head (a per-sample Dataset over a list of tensors, DataLoader batch 64, Adam, 10 epochs).
Features are class-dependent Gaussians written through the store's own staging, so the cache is a
real features.h5.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from features import FeatureCache, cache_path
from features.staging import Staging
from features.store import SplitContent, commit_cache
from pipeline.heads import HeadConfig, select_best, train_concat, train_ensemble, train_linear_heads

DIMS = {"resnet34": 512, "inception": 2048, "densenet121": 1024}
NOISE = 8.0  # per-feature spread around the class centres
LABEL_NOISE = 0.02  # share of images whose features belong to a random class, like Dogs vs Cats' odd photos


def make_cache(workdir: Path, rows: int, classes: int = 2, seed: int = 0) -> None:
    """A features.h5 of class-dependent Gaussian features for three backbones, train and valid."""
    rng = np.random.default_rng(seed)
    centers = {name: rng.normal(size=(classes, dim)).astype(np.float32) for name, dim in DIMS.items()}
    contents = []
    for split, n in (("train", rows), ("valid", max(rows // 12, 50))):
        labels = np.sort(rng.integers(0, classes, size=n))  # a real cache is sorted by path, i.e. by class
        truth = np.where(rng.random(n) < LABEL_NOISE, rng.integers(0, classes, size=n), labels)
        staged = {}
        for name, dim in DIMS.items():
            staging = Staging(workdir, split, name, "bench")
            for start in range(0, n, 4096):
                stop = min(start + 4096, n)
                noise = rng.normal(scale=NOISE, size=(stop - start, dim)).astype(np.float32)
                staging.save(start, stop, np.arange(start, stop), centers[name][truth[start:stop]] + noise, [], [])
            settings = dict(backbone=name, weights="random:seed=0", pool="avg", image_size=299, precision="fp32",
                            orientation="exif", view="")
            staged[name] = (staging, settings, (dim,))
        paths = tuple(f"{split}/c{label}/{i:06d}.jpg" for i, label in enumerate(labels))
        contents.append(SplitContent(split, split, paths, labels.astype(np.int64), True, staged))
    commit_cache(cache_path(workdir), tuple(f"c{i}" for i in range(classes)), "/nowhere", contents)


class ListDataset(Dataset):
    def __init__(self, features: list[torch.Tensor], labels: list[int]) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.features[i], self.labels[i]


def book_head(workdir: Path, epochs: int = 10) -> None:
    """The book's linear head on Inception's features: Adam, batch 64, validated each epoch."""
    with FeatureCache(cache_path(workdir)) as cache:
        train = ListDataset(list(torch.from_numpy(cache.features("train", "inception"))), cache.labels("train").tolist())
        valid = ListDataset(list(torch.from_numpy(cache.features("valid", "inception"))), cache.labels("valid").tolist())
    model = nn.Linear(2048, 2)
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


def timed(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=25_000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cnnfeat-bench-") as scratch:
        workdir = Path(scratch)
        make_cache(workdir, args.rows)
        cfg = HeadConfig(workdir=workdir, device=args.device)
        book, _ = timed(book_head, workdir)
        parts = {
            "probe per backbone": timed(train_linear_heads, cfg),
            "concatenation probe": timed(train_concat, cfg),
            "three-branch head": timed(train_ensemble, cfg),
            "best (selection)": timed(select_best, cfg),
        }
    total = sum(seconds for seconds, _ in parts.values())
    print(f"\n{args.rows} x (512 + 2048 + 1024) train rows, 2 classes, {args.device}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    for name, (seconds, _) in parts.items():
        print(f"{name:<24} {seconds:7.1f} s")
    print(f"{'whole heads stage':<24} {total:7.1f} s")
    print(f"{'book: one Adam head':<24} {book:7.1f} s   (10 epochs, inception only; the stage does "
          f"{total / book:.1f}x its time for 6 models, each swept, cross-fitted and calibrated)")
    results = [r for _, result in parts.values() for r in (result if isinstance(result, list) else [result])]
    for r in results:
        print(f"  {r.name:<16} val acc {r.metrics['val_accuracy']:.4f}  log loss {r.metrics['val_log_loss']:.4f}")


if __name__ == "__main__":
    main()
