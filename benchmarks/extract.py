"""Images per second of `cnnfeat extract --backbone all` against the book's loop, in one run.

    python benchmarks/extract.py                          # 256 JPEGs of 500x375, resized to 128 px, CPU
    python benchmarks/extract.py --images 512 --image-size 299 --batch-size 256 --device cuda

Each variant runs --repeats times, interleaved with the others, and its best time counts: a shared
2-core machine is noisy, and the best run is the one least disturbed. The ceiling rows are the same
frozen models fed synthetic uint8 tensors already in memory: what extraction would reach if
decoding and writing cost nothing.

The book's loop is one separate pass per backbone: PIL decoding through a DataLoader, a
contiguous fp32 forward pass, features accumulated in Python lists. cnnfeat decodes each image once
for all backbones, runs them channels_last (and under autocast for bf16) and streams to HDF5.
Random weights: speed does not depend on the weight values, and this needs no download.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from features import BACKBONES, ExtractConfig, FeatureCache, extract, load_backbone
from features.backbones import build_model
from features.extract import PRECISIONS, default_workers, resolve_device


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    """Ordinary photo-sized JPEGs (500x375) with smooth colour fields, so decoding costs what it costs."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / "train" / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(15, 20, 3), dtype=np.uint8)
        Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
    return root


class BookImages(Dataset):
    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths = paths
        self.transform = transforms.Compose([
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(Image.open(self.paths[i]).convert("RGB"))


def book_loop(paths: list[Path], size: int, batch_size: int, workers: int, device: torch.device) -> dict[str, np.ndarray]:
    """The book's way: for each model its own pass, hooked layer, features in a Python list."""
    out = {}
    for spec in BACKBONES.values():
        model = build_model(spec, "random").to(device).eval()
        captured = []
        layer = model.get_submodule(spec.feature_layer)
        handle = layer.register_forward_hook(lambda m, i, o: captured.append(o))
        features = []
        loader = DataLoader(BookImages(paths, size), batch_size=batch_size, num_workers=workers)
        with torch.no_grad():
            for images in loader:
                model(images.to(device))
                fmap = captured.pop()
                fmap = torch.relu(fmap) if spec.relu_before_pool else fmap
                features.append(fmap.mean(dim=(2, 3)).cpu())
        handle.remove()
        out[spec.name] = torch.cat(features).numpy()
    return out


def synthetic_forward(n: int, size: int, batch_size: int, precision: str, device: torch.device) -> None:
    """The three frozen models on ready tensors: the compute ceiling of extraction."""
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    dtype = PRECISIONS[precision]
    for spec in BACKBONES.values():
        model = load_backbone(spec, weights="random").to(device, memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            for _ in range(0, n, batch_size):
                model(images).float().cpu()


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    workers = default_workers(device) if args.workers is None else args.workers
    scratch = Path(tempfile.mkdtemp(prefix="cnnfeat-bench-"))
    best: dict[str, float] = {}
    features: dict[str, dict[str, np.ndarray]] = {}

    def record(name: str, seconds: float) -> None:
        best[name] = min(seconds, best.get(name, float("inf")))

    try:
        data = make_folder(scratch / "data", args.images)
        paths = sorted((data / "train").rglob("*.jpg"))
        warm = make_folder(scratch / "warm", 2 * args.batch_size)
        book_loop(sorted((warm / "train").rglob("*.jpg")), args.image_size, args.batch_size, workers, device)
        for repeat in range(args.repeats):
            seconds, book = timed(book_loop, paths, args.image_size, args.batch_size, workers, device)
            record("book loop, fp32", seconds)
            for precision in ("fp32", "bf16"):
                cfg = ExtractConfig(data=data, workdir=scratch / f"{precision}-{repeat}", weights="random",
                                    image_size=args.image_size, batch_size=args.batch_size, workers=workers,
                                    device=args.device, precision=precision)
                if repeat == 0:
                    extract(ExtractConfig(**{**vars(cfg), "data": warm, "workdir": scratch / f"warm-{precision}"}))
                record(f"cnnfeat extract --backbone all, {precision}", timed(extract, cfg)[0])
                record(f"ceiling: forward passes alone, {precision}",
                       timed(synthetic_forward, args.images, args.image_size, args.batch_size, precision, device)[0])
                with FeatureCache(cfg.workdir / "features.h5") as cache:
                    features[precision] = {b: cache.features("train", b) for b in cache.backbones("train")}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    for name, values in book.items():  # the baseline computes the same features
        np.testing.assert_allclose(features["fp32"][name], values, rtol=1e-3, atol=1e-3 * np.abs(values).max())
    cosines = {}
    for name, fp32 in features["fp32"].items():
        bf16 = features["bf16"][name]
        cosines[name] = float(((fp32 * bf16).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))).min())

    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"\n{args.images} JPEGs 500x375 -> {args.image_size} px, batch {args.batch_size}, {workers} decoding workers, "
          f"{device.type} ({machine}), torch {torch.__version__}")
    print(f"best of {args.repeats}    {'':27} {'seconds':>8} {'img/s':>8} {'vs book':>8}")
    for name, seconds in best.items():
        print(f"{name:40} {seconds:8.2f} {args.images / seconds:8.1f} {best['book loop, fp32'] / seconds:7.2f}x")
    for precision in ("fp32", "bf16"):
        share = best[f"ceiling: forward passes alone, {precision}"] / best[f"cnnfeat extract --backbone all, {precision}"]
        print(f"extract {precision} runs at {share:.0%} of its forward-pass ceiling")
    print("smallest bf16/fp32 cosine similarity: " + ", ".join(f"{k} {v:.5f}" for k, v in cosines.items()))


if __name__ == "__main__":
    main()
