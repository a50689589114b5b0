"""`cnnfeat extract --backbone all` against the book's loop, each as a whole process, in one interleaved run.

    python benchmarks/extract.py                         # 500 JPEGs of 160x120 resized to 128 px, CPU, defaults
    python benchmarks/extract.py --device cuda --images 8192 --image-size 299 --batch-size 256 --book-workers 16

Both sides load the book's three backbones with ImageNet weights from a torchvision cache (seeded
checkpoints under torchvision's file names in a temporary TORCH_HOME: the real loading path, with
no download) and decode the same JPEGs. Each process reports its start-up (imports), model build
and steady-state images per second apart, so a reader sees where the time goes; the ratio is of
whole-process wall times. "ceiling" is the three models on a synthetic batch already on the
device, timed after a warm-up (model loading and cuDNN's autotuning excluded): what extraction
would reach if decoding and writing cost nothing.

The book's loop: for each model its own pass, PIL decoding and torchvision transforms through a
DataLoader, a contiguous fp32 forward pass, features gathered in Python lists. cnnfeat: each image
decoded once for all three, channels_last, batch norms folded, weights cast once for autocast,
features streamed to HDF5. Variants run --repeats times, interleaved; the best of each counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

BOOK = ("resnet34", "inception", "densenet121")

# The book's way, as its own process. argv: data, size, batch, workers, device.
BOOK_LOOP = """
import json, sys, time
started = time.perf_counter()
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import models, transforms
imported = time.perf_counter()
data, size, batch, workers, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
paths = sorted(__import__("pathlib").Path(data).rglob("*.jpg"))
class Images(Dataset):
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    def __len__(self): return len(paths)
    def __getitem__(self, i): return self.tf(Image.open(paths[i]).convert("RGB"))
nets = [(models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1, "layer4"),
        (models.inception_v3, models.Inception_V3_Weights.IMAGENET1K_V1, "Mixed_7c"),
        (models.densenet121, models.DenseNet121_Weights.IMAGENET1K_V1, "features")]
build = loop = 0.0
steady = []
for builder, weights, layer in nets:
    t = time.perf_counter()
    model = builder(weights=weights).to(device).eval()
    build += time.perf_counter() - t
    captured, features = [], []
    model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.append(o))
    t = time.perf_counter()
    with torch.no_grad():
        for k, images in enumerate(DataLoader(Images(), batch_size=batch, num_workers=workers)):
            model(images.to(device))
            features.append(torch.relu(captured.pop()).mean(dim=(2, 3)).cpu())
            if k == 0:
                first = time.perf_counter()
    end = time.perf_counter()
    loop += end - t
    steady.append((len(paths) - batch) / (end - first))
print(json.dumps({"startup": imported - started, "build": build, "steady": 1 / sum(1 / s for s in steady),
                  "total": time.perf_counter() - started}))
"""

# cnnfeat extract as its own process. argv: ExtractConfig as JSON.
CNNFEAT = """
import json, sys, time
started = time.perf_counter()
from features import ExtractConfig, extract
imported = time.perf_counter()
marks = []
report = extract(ExtractConfig(**json.loads(sys.argv[1])), progress=lambda s, n, total: marks.append((time.perf_counter(), n)))
done = [(t, n) for t, n in marks if n]
steady = sum(n for _, n in done[1:]) / (done[-1][0] - done[0][0])
print(json.dumps({"startup": imported - started, "build": sum(report.build_seconds.values()), "steady": steady,
                  "total": time.perf_counter() - started}))
"""


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    """Photo-like JPEGs of 160x120 (smooth colour fields), two classes."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / "train" / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((160, 120), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def pretrained_cache(home: Path) -> None:
    """Seeded checkpoints under torchvision's file names: the ImageNet loading path, offline."""
    import torchvision

    from features import checkpoint_path, get_backbone

    os.environ["TORCH_HOME"] = str(home)
    for seed, name in enumerate(BOOK):
        spec = get_backbone(name)
        torch.manual_seed(seed)
        kwargs = {"transform_input": True, "init_weights": False} if name == "inception" else {}
        path = checkpoint_path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.get_model(spec.builder, weights=None, **kwargs).state_dict(), path)


def run(code: str, *args: str) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=os.environ)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return {**measured, "wall": time.perf_counter() - started}


def ceiling(size: int, batch_size: int, precision: str, device: torch.device, batches: int = 4) -> float:
    """Images per second of the three models on a synthetic batch on the device, after a warm-up."""
    from features import get_backbone, load_backbone

    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    x8 = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    seconds = 0.0
    for name in BOOK:
        model = load_backbone(get_backbone(name), weights="random")
        model.cast_weights(dtype)
        model = model.to(device, memory_format=torch.channels_last)
        x = model.preprocess(x8)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model(x)  # warm-up: lazy initialisation, cuDNN autotuning
            _sync(device)
            started = time.perf_counter()
            for _ in range(batches):
                model(x).float().cpu()
            _sync(device)
            seconds += time.perf_counter() - started
    return batches * batch_size / seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64, help="both sides' batch (cnnfeat's default)")
    parser.add_argument("--book-workers", type=int, default=1, help="the book's DataLoader workers (cnnfeat picks its own)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--decoders", default=None, help="comma list of --decode values [default: pil,device on CUDA]")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    precisions = args.precisions.split(",")
    decoders = args.decoders.split(",") if args.decoders else (["pil", "device"] if device.type == "cuda" else ["auto"])
    scratch = Path(tempfile.mkdtemp(prefix="cnnfeat-bench-"))
    best: dict[str, dict] = {}
    try:
        pretrained_cache(scratch / "torch_home")
        data = make_folder(scratch / "data", args.images)
        for repeat in range(args.repeats):
            variants = [("book fp32", BOOK_LOOP, [str(data), str(args.image_size), str(args.batch_size),
                                                  str(args.book_workers), args.device])]
            for precision in precisions:
                for decode in decoders:
                    cfg = dict(data=str(data), workdir=str(scratch / f"w-{precision}-{decode}"), image_size=args.image_size,
                               batch_size=args.batch_size, device=args.device, precision=precision, decode=decode)
                    variants.append((f"cnnfeat {precision} {decode}", CNNFEAT, [json.dumps(cfg)]))
            for name, code, argv in variants:
                result = run(code, *argv)
                if name not in best or result["wall"] < best[name]["wall"]:
                    best[name] = result
                shutil.rmtree(scratch / "w", ignore_errors=True)
                for workdir in scratch.glob("w-*"):
                    shutil.rmtree(workdir)
                print(f"repeat {repeat + 1}: {name}: {result['wall']:.1f} s", file=sys.stderr)
        ceilings = {p: ceiling(args.image_size, args.batch_size, p, device) for p in precisions}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()}, {os.cpu_count()} cores"
    print(f"\n{args.images} JPEGs 160x120 -> {args.image_size} px, batch {args.batch_size}, {device.type} ({machine}), "
          f"torch {torch.__version__}, best of {args.repeats}, whole processes")
    print(f"{'':<24} {'wall s':>7} {'start-up s':>10} {'build s':>8} {'steady img/s':>13} {'vs book':>8}")
    book = best["book fp32"]["wall"]
    for name, r in best.items():
        versus = f"{book / r['wall']:7.2f}x"
        print(f"{name:<24} {r['wall']:7.1f} {r['startup']:10.2f} {r['build']:8.2f} {r['steady']:13.1f} {versus:>8}")
    for precision, rate in ceilings.items():
        print(f"ceiling {precision:<16} {'':7} {'':10} {'':8} {rate:13.1f}   (three models on a ready batch)")


if __name__ == "__main__":
    main()
