"""Images per second of `cnnfeat extract --backbone all` against the book's loop, in one run.

    python benchmarks/extract.py                          # 256 JPEGs of 500x375, resized to 128 px, CPU
    python benchmarks/extract.py --device cuda --images 8192 --image-size 299 --batch-size 256 --workers 16 --no-book

For --backbone all and for each backbone alone, in fp32 and bf16 (and on CUDA with both --decode
pil and --decode device), images per second end to end, from JPEG files to features.h5, next to the
same models fed synthetic tensors already on the device (the ceiling), and the share of the ceiling.

Each variant runs --repeats times, interleaved with the others, and its best time counts: a shared
machine is noisy, and the best run is the one least disturbed. Both sides include loading the
models; the ceiling is what extraction would reach if decoding and writing cost nothing.

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


def synthetic_forward(names: list[str], n: int, size: int, batch_size: int, precision: str, device: torch.device) -> None:
    """The frozen models on ready tensors already on the device: the compute ceiling of extraction."""
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    dtype = PRECISIONS[precision]
    for name in names:
        model = load_backbone(BACKBONES[name], weights="random").to(device, memory_format=torch.channels_last)
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


def cosine_and_relative(fp32: np.ndarray, bf16: np.ndarray) -> tuple[float, float]:
    """Smallest cosine similarity and largest relative L2 difference over the rows."""
    norms = np.linalg.norm(fp32, axis=1)
    cosine = (fp32 * bf16).sum(1) / (norms * np.linalg.norm(bf16, axis=1))
    return float(cosine.min()), float((np.linalg.norm(fp32 - bf16, axis=1) / norms).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--targets", default="all," + ",".join(BACKBONES),
                        help="what to extract, each measured alone: 'all' and/or backbone names")
    parser.add_argument("--decoders", default=None,
                        help="comma list of --decode values [default: pil,device on CUDA, pil on CPU]")
    parser.add_argument("--no-book", action="store_true", help="skip the book's loop (slow on big runs)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    workers = default_workers(device) if args.workers is None else args.workers
    targets = args.targets.split(",")
    decoders = args.decoders.split(",") if args.decoders else (["pil", "device"] if device.type == "cuda" else ["pil"])
    scratch = Path(tempfile.mkdtemp(prefix="cnnfeat-bench-"))
    best: dict[str, float] = {}
    features: dict[str, dict[str, np.ndarray]] = {}
    book: dict[str, np.ndarray] = {}

    def record(name: str, seconds: float) -> None:
        best[name] = min(seconds, best.get(name, float("inf")))

    def names(target: str) -> list[str]:
        return list(BACKBONES) if target == "all" else [target]

    try:
        data = make_folder(scratch / "data", args.images)
        paths = sorted((data / "train").rglob("*.jpg"))
        warm = make_folder(scratch / "warm", 2 * args.batch_size)
        if not args.no_book:
            book_loop(sorted((warm / "train").rglob("*.jpg")), args.image_size, args.batch_size, workers, device)
        for repeat in range(args.repeats):
            if not args.no_book:
                seconds, book = timed(book_loop, paths, args.image_size, args.batch_size, workers, device)
                record("book", seconds)
            for precision in ("fp32", "bf16"):
                for target in targets:
                    for decode in decoders:
                        cfg = ExtractConfig(data=data, workdir=scratch / f"{precision}-{target}-{decode}-{repeat}",
                                            backbones=(target,), weights="random", image_size=args.image_size,
                                            batch_size=args.batch_size, workers=workers, device=args.device,
                                            precision=precision, decode=decode)
                        if repeat == 0:
                            extract(ExtractConfig(**{**vars(cfg), "data": warm, "workdir": scratch / "warm-run"}))
                            shutil.rmtree(scratch / "warm-run")
                        record(f"{target} {precision} {decode}", timed(extract, cfg)[0])
                        if target == "all" and decode == decoders[0]:
                            with FeatureCache(cfg.workdir / "features.h5") as cache:
                                features[precision] = {b: cache.features("train", b) for b in cache.backbones("train")}
                        shutil.rmtree(cfg.workdir)
                    ceiling = timed(synthetic_forward, names(target), args.images, args.image_size, args.batch_size,
                                    precision, device)[0]
                    record(f"{target} {precision} ceiling", ceiling)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"\n{args.images} JPEGs 500x375 -> {args.image_size} px, batch {args.batch_size}, {workers} decoding workers, "
          f"{device.type} ({machine}), torch {torch.__version__}, best of {args.repeats}")
    print(f"{'extract':<13} {'precision':<9} {'decode':<7} {'img/s':>8} {'ceiling':>8} {'of ceiling':>10} {'vs book':>8}")
    for precision in ("fp32", "bf16"):
        for target in targets:
            ceiling = args.images / best[f"{target} {precision} ceiling"]
            for decode in decoders:
                rate = args.images / best[f"{target} {precision} {decode}"]
                versus = f"{best['book'] / best[f'{target} {precision} {decode}']:7.2f}x" if "book" in best and target == "all" else ""
                print(f"{target:<13} {precision:<9} {decode:<7} {rate:8.1f} {ceiling:8.1f} {rate / ceiling:10.0%} {versus:>8}")
    if "book" in best:
        print(f"{'book loop':<13} {'fp32':<9} {'PIL':<7} {args.images / best['book']:8.1f}")
    for name, values in book.items():  # the baseline computes the same features
        np.testing.assert_allclose(features["fp32"][name], values, rtol=1e-3, atol=1e-3 * np.abs(values).max())
    for name, fp32 in features.get("fp32", {}).items():
        cosine, relative = cosine_and_relative(fp32, features["bf16"][name])
        print(f"bf16 vs fp32 {name}: smallest cosine {cosine:.5f}, largest relative difference {relative:.4f}")


if __name__ == "__main__":
    main()
