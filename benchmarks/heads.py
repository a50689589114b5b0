"""Seconds to train a linear head for a fixed number of epochs: cnnfeat against the book's loop.

    python benchmarks/heads.py                       # 20,000 x 2048 train rows (Dogs vs Cats with Inception)
    python benchmarks/heads.py --rows 5000 --epochs 3 --dim 512

Both read the same cached features. The book's loop wraps a list of per-image tensors in a
per-sample Dataset and a DataLoader of batch 64 and validates each epoch; cnnfeat slices batches
out of one tensor already in memory, and also standardises, keeps the best epoch and writes its files.
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
from features.store import SplitContent, Staging, commit_cache
from pipeline.train import HeadConfig, train_linear_heads


def make_cache(workdir: Path, rows: int, dim: int, classes: int = 2, seed: int = 0) -> None:
    """A features.h5 of class-dependent Gaussian features, written through the store's own staging."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)).astype(np.float32)
    contents = []
    for split, n in (("train", rows), ("valid", rows // 10)):
        labels = rng.integers(0, classes, size=n)
        staging = Staging(workdir, split, "inception", "bench")
        for start in range(0, n, 4096):
            stop = min(start + 4096, n)
            noise = rng.normal(scale=4.0, size=(stop - start, dim)).astype(np.float32)
            staging.save(start, stop, np.arange(start, stop), centers[labels[start:stop]] + noise, [], [])
        paths = tuple(f"{split}/c{label}/{i:06d}.jpg" for i, label in enumerate(labels))
        settings = dict(backbone="inception", weights="random:seed=0", pool="avg", image_size=299,
                        layer="Mixed_7c", precision="fp32")
        contents.append(SplitContent(split, split, paths, labels.astype(np.int64), {"inception": (staging, settings, (dim,))}))
    commit_cache(cache_path(workdir), tuple(f"c{i}" for i in range(classes)), "/bench", contents)


class ListDataset(Dataset):
    def __init__(self, features: list[torch.Tensor], labels: list[int]) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.features[i], self.labels[i]


def book_loop(workdir: Path, epochs: int) -> None:
    with FeatureCache(cache_path(workdir)) as cache:
        train = ListDataset(list(torch.from_numpy(cache.features("train", "inception"))), cache.labels("train").tolist())
        valid = ListDataset(list(torch.from_numpy(cache.features("valid", "inception"))), cache.labels("valid").tolist())
        classes = len(cache.classes)
    model = nn.Linear(train.features[0].numel(), classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        model.train()
        for x, y in DataLoader(train, batch_size=64, shuffle=True):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for x, y in DataLoader(valid, batch_size=64):
                F.cross_entropy(model(x), y)


def cnnfeat_loop(workdir: Path, epochs: int) -> dict:
    (result,) = train_linear_heads(HeadConfig(workdir=workdir, epochs=epochs, patience=epochs, force=True), ["inception"])
    return result.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs; the best of each counts")
    args = parser.parse_args()
    book = ours = float("inf")
    with tempfile.TemporaryDirectory(prefix="cnnfeat-bench-") as scratch:
        workdir = Path(scratch)
        make_cache(workdir, args.rows, args.dim)
        for _ in range(args.repeats):
            start = time.perf_counter()
            book_loop(workdir, args.epochs)
            book = min(book, time.perf_counter() - start)
            start = time.perf_counter()
            metrics = cnnfeat_loop(workdir, args.epochs)
            ours = min(ours, time.perf_counter() - start)
    print(f"\nbest of {args.repeats}: {args.rows} x {args.dim} train rows, {args.rows // 10} valid, {args.epochs} epochs, batch 64, "
          f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"book loop (per-sample Dataset + DataLoader)   {book:7.2f} s")
    print(f"cnnfeat train-head                            {ours:7.2f} s   {book / ours:5.1f}x faster")
    print(f"(cnnfeat head: val accuracy {metrics['val_accuracy']:.3f}, log loss {metrics['val_log_loss']:.3f})")


if __name__ == "__main__":
    main()
