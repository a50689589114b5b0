"""Images per second of each tested backbone's frozen forward pass, for README's "how to pick" table.

    python benchmarks/backbones.py                            # CPU, fp32, batch 16, each at its default size
    python benchmarks/backbones.py --device cuda --precision bf16 --batch-size 256

Each model is cnnfeat's own FrozenBackbone (channels_last, batch norms folded, the forward stopped
at the feature) with random weights, which run exactly as fast as pretrained ones, on a synthetic
batch already on the device, timed after a warm-up: the ceiling extraction can reach with that
model, decoding and writing left out. The feature size is what the cache stores per image.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from features import default_image_size, get_backbone, load_backbone
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed per model, after one warm-up batch")
    parser.add_argument("--backbones", default=",".join(TESTED))
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"{args.device}, {args.precision}, batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"| backbone | feature | size | images/s |\n| --- | ---: | ---: | ---: |")
    for name in args.backbones.split(","):
        dim, size, speed = images_per_second(name, device, args.precision, args.batch_size, args.seconds)
        print(f"| `{name}` | {dim} | {size} | {speed:.1f} |", flush=True)


if __name__ == "__main__":
    main()
