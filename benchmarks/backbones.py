"""Images per second of each tested backbone's frozen forward pass, for README's "how to pick" table.

    python benchmarks/backbones.py                            # CPU, fp32, batch 16, each at its default size
    python benchmarks/backbones.py --device cuda --precision bf16 --batch-size 256
    python benchmarks/backbones.py --build                    # seconds to build the book's three, before and after

Each model is cnnfeat's own FrozenBackbone (channels_last, batch norms folded, the forward stopped
at the feature) with random weights, which run exactly as fast as pretrained ones, on a synthetic
batch already on the device, timed after a warm-up: the ceiling extraction can reach with that
model, decoding and writing left out. The feature size is what the cache stores per image.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision

from extract import pretrained_cache  # benchmarks/extract.py: seeded checkpoints under torchvision's names
from features import BOOK, build_model, default_image_size, get_backbone, load_backbone, weights_enum
from features.extract import DTYPES

# the models tests/test_backbones.py checks against their own classifiers: one per family, and timm's two
TESTED = ("resnet34", "inception", "densenet121", "efficientnet_b0", "convnext_tiny", "regnet_y_400mf",
          "mobilenet_v3_small", "mobilenet_v2", "vit_b_32", "swin_t", "timm:resnet18.a1_in1k",
          "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k")


def images_per_second(name: str, device: torch.device, precision: str, batch_size: int, seconds: float) -> tuple[int, int, float]:
    """(feature size, image size, images/s) of one backbone."""
    spec = get_backbone(name)
    backbone = load_backbone(spec, weights="random").to(device)
    size = default_image_size(spec, "random")
    dtype = DTYPES[precision]
    backbone.cast_weights(dtype)
    x = backbone.preprocess(torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device))
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        dim = backbone(x).shape[1]  # warm-up
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            backbone(x)
            done += batch_size
        if device.type == "cuda":
            torch.cuda.synchronize()
        return dim, size, done / (time.perf_counter() - started)


def build_seconds(name: str, repeats: int = 3) -> tuple[float, float, float]:
    """Median seconds of (torchvision's builder with weights, cnnfeat's build_model, load_backbone)."""
    spec = get_backbone(name)
    enum = weights_enum(spec, "imagenet")

    def timed(build) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            build()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (timed(lambda: torchvision.models.get_model(spec.builder, weights=enum)),
                timed(lambda: build_model(spec, "imagenet")), timed(lambda: load_backbone(spec, weights="imagenet")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed per model, after one warm-up batch")
    parser.add_argument("--backbones", default=",".join(TESTED))
    parser.add_argument("--build", action="store_true", help="time building the book's three instead")
    args = parser.parse_args()
    if args.build:
        with tempfile.TemporaryDirectory(prefix="cnnfeat-build-") as home:
            pretrained_cache(Path(home))
            print(f"seconds to build, median of 3, {torch.get_num_threads()} threads, torch {torch.__version__}")
            print("| backbone | torchvision (init, then load) | cnnfeat build_model | cnnfeat load_backbone (+ fold, freeze) |")
            print("| --- | ---: | ---: | ---: |")
            for name in BOOK:
                before, after, whole = build_seconds(name)
                print(f"| `{name}` | {before:.3f} | {after:.3f} | {whole:.3f} |", flush=True)
        return
    device = torch.device(args.device)
    print(f"{args.device}, {args.precision}, batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"| backbone | feature | size | images/s |\n| --- | ---: | ---: | ---: |")
    for name in args.backbones.split(","):
        dim, size, speed = images_per_second(name, device, args.precision, args.batch_size, args.seconds)
        print(f"| `{name}` | {dim} | {size} | {speed:.1f} |", flush=True)


if __name__ == "__main__":
    main()
