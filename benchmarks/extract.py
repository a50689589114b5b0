"""Cost per image and fixed cost of `cnnfeat extract --backbone all` against the book's loop, and what
share of the models' own forward pass cnnfeat reaches; whole processes, one interleaved run.

    python benchmarks/extract.py                  # 120 and 920 JPEGs of 160x120 resized to 128 px, CPU
    python benchmarks/extract.py --device cuda --images 1024,8192 --image-size 299 --batch-size 256 --book-workers 16

Why two job sizes: a process's wall time is a fixed cost (importing torch, building the models, the
first batch, scanning the folder, committing the cache) plus a cost per image times the images. One
size cannot tell them apart, so a ratio of whole-process times mixes a start-up gain with a per-image
gain and changes with the job size. Each side here runs at two sizes (--images) on the same JPEGs;
the line through its two wall times has the cost per image as its slope, what a 25,000-image job
lives on, and the fixed cost as its intercept (with more than two sizes, the least-squares line).

The sides, each a fresh process: the book's loop (for each model its own pass, PIL and torchvision
transforms through a DataLoader, a contiguous fp32 forward, features gathered in Python lists) and
`cnnfeat extract` at each --precisions (and --decoders), as `python -m pipeline` from the source tree
of the `features` this script imports (so the ceiling below measures the same code; from a checkout
that is not the installed one, run with PYTHONPATH=. ).
Both load the book's three backbones with "ImageNet" weights from a torchvision cache: seeded
checkpoints under torchvision's file names in a temporary TORCH_HOME, the real loading path with no
download. A round runs every side at every size, the book first at each size; of --repeats rounds
the fastest wall time of each (side, size) counts, so a slow spell of a shared machine hits all sides
and is mostly dropped.

The ceiling, measured in this process after each round: cnnfeat's own ImageFeaturizer built from the
settings that a side's cache recorded, so its models are prepared exactly as extraction prepares
them (cut at the feature, batch norms folded, channels_last, weights cast for autocast), runs the
extraction step (normalisation and the three models) on --batch-size uint8 images already on the
device, with torch's threads as the processes have them; the fastest of --ceiling-batches batches
after a warm-up, best over rounds. "of ceiling" = ceiling ms per image / cnnfeat's ms per image:
100 % would mean decoding, batching and writing the cache cost the forward nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

import features
from features import FeatureCache, ImageFeaturizer, cache_path, checkpoint_path, get_backbone
from features.extract import DTYPES

BOOK = ("resnet34", "inception", "densenet121")
SOURCE = Path(features.__file__).resolve().parents[1]  # `python -m pipeline` there: the cnnfeat this process measures

# The book's way, as its own process. argv: data, size, batch, workers, device.
BOOK_LOOP = """
import sys
from pathlib import Path
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import models, transforms
data, size, batch, workers, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
paths = sorted(Path(data).rglob("*.jpg"))
class Images(Dataset):
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    def __len__(self): return len(paths)
    def __getitem__(self, i): return self.tf(Image.open(paths[i]).convert("RGB"))
nets = [(models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1, "layer4"),
        (models.inception_v3, models.Inception_V3_Weights.IMAGENET1K_V1, "Mixed_7c"),
        (models.densenet121, models.DenseNet121_Weights.IMAGENET1K_V1, "features")]
for builder, weights, layer in nets:
    model = builder(weights=weights).to(device).eval()
    captured, features = [], []
    model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        for images in DataLoader(Images(), batch_size=batch, num_workers=workers):
            model(images.to(device))
            features.append(torch.relu(captured.pop()).mean(dim=(2, 3)).cpu())
"""


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    """Photo-like JPEGs of 160x120 (smooth colour fields), two classes; the same seed gives the same first images."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / "train" / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((160, 120), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def pretrained_cache(home: Path) -> None:
    """Seeded checkpoints under torchvision's file names: the ImageNet loading path, offline."""
    os.environ["TORCH_HOME"] = str(home)
    for seed, name in enumerate(BOOK):
        spec = get_backbone(name)
        torch.manual_seed(seed)
        kwargs = {"transform_input": True, "init_weights": False} if name == "inception" else {}
        path = checkpoint_path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.get_model(spec.builder, weights=None, **kwargs).state_dict(), path)


def wall_seconds(argv: list[str]) -> float:
    """Wall time of one whole process, start-up included."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=os.environ, cwd=SOURCE)
    if done.returncode:
        raise RuntimeError(f"{shlex.join(argv)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def recorded_featurizer(workdir: Path, device: str) -> ImageFeaturizer:
    """cnnfeat's own models, prepared as the run that made this workdir's cache prepared them."""
    with FeatureCache(cache_path(workdir)) as cache:
        split = cache.splits[0]
        recorded = {name: cache.settings(split, name) for name in cache.datasets(split)}
    return ImageFeaturizer(recorded, device=device)


def forward_ms_per_image(featurizer: ImageFeaturizer, precision: str, batch_size: int, batches: int) -> float:
    """Milliseconds per image of extraction's step alone (normalisation and every model) on uint8 batches
    already on the device: the fastest of `batches`, after a warm-up batch (lazy initialisation, autotuning)."""
    device, dtype = featurizer.device, DTYPES[precision]
    images = {size: torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
              for size in featurizer.sizes}
    seconds = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for _ in range(1 + batches):
            started = time.perf_counter()
            featurizer.forward(images)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
    return 1000 * min(seconds[1:]) / batch_size


def image_counts(text: str) -> list[int]:
    """--images: two sizes at least, or no line can be drawn through the wall times."""
    counts = sorted({int(n) for n in text.split(",")})
    if len(counts) < 2 or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"need two or more different positive image counts, got {text!r}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=image_counts, default=[120, 920], help="job sizes, comma list [120,920]")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64, help="every side's batch (cnnfeat's default)")
    parser.add_argument("--book-workers", type=int, default=1, help="the book's DataLoader workers (cnnfeat picks its own)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--decoders", default=None, help="comma list of --decode values [default: pil,device on CUDA]")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; the fastest of each (side, size) counts")
    parser.add_argument("--ceiling-batches", type=int, default=4, help="timed forward batches per round and precision")
    args = parser.parse_args()
    precisions = args.precisions.split(",")
    on_gpu = torch.device(args.device).type == "cuda"
    decoders = args.decoders.split(",") if args.decoders else (["pil", "device"] if on_gpu else ["auto"])
    book = "book fp32"
    sides = {book: [sys.executable, "-c", BOOK_LOOP]}  # side -> its command, less data (and workdir)
    precision_of = {}
    for precision in precisions:
        for decode in decoders:
            side = f"cnnfeat {precision} {decode}"
            sides[side] = [sys.executable, "-m", "pipeline", "extract", "--backbone", "all",
                           "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
                           "--device", args.device, "--precision", precision, "--decode", decode]
            precision_of[side] = precision

    scratch = Path(tempfile.mkdtemp(prefix="cnnfeat-bench-"))
    walls: dict[tuple[str, int], float] = {}  # (side, images) -> fastest wall seconds
    ceiling: dict[str, float] = {}  # precision -> fastest forward-only ms per image
    try:
        pretrained_cache(scratch / "torch_home")
        folders = {n: make_folder(scratch / f"data-{n}", n) for n in args.images}
        for repeat in range(args.repeats):
            for n, data in folders.items():
                for side, command in sides.items():
                    workdir = scratch / "work" / side.replace(" ", "-")
                    shutil.rmtree(workdir, ignore_errors=True)
                    if side == book:
                        argv = [*command, str(data), str(args.image_size), str(args.batch_size),
                                str(args.book_workers), args.device]
                    else:
                        argv = [*command, "--data", str(data), "--workdir", str(workdir)]
                    seconds = wall_seconds(argv)
                    walls[side, n] = min(seconds, walls.get((side, n), float("inf")))
                    print(f"round {repeat + 1}: {side}, {n} images: {seconds:.1f} s", file=sys.stderr)
            for precision in precisions:
                side = next(s for s, p in precision_of.items() if p == precision)
                featurizer = recorded_featurizer(scratch / "work" / side.replace(" ", "-"), args.device)
                ms = forward_ms_per_image(featurizer, precision, args.batch_size, args.ceiling_batches)
                ceiling[precision] = min(ms, ceiling.get(precision, float("inf")))
                print(f"round {repeat + 1}: forward only {precision}: {ms:.1f} ms per image", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    lines = {side: np.polyfit(args.images, [walls[side, n] for n in args.images], 1) for side in sides}
    per_image = {side: 1000 * slope for side, (slope, _) in lines.items()}  # ms per image
    machine = (torch.cuda.get_device_name(args.device) if on_gpu
               else f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    print(f"\ncommand: {shlex.join(['python', *sys.argv])}")
    print(f"{' and '.join(map(str, args.images))} JPEGs 160x120 -> {args.image_size} px, the book's three, "
          f"batch {args.batch_size}, {args.device} ({machine}), torch {torch.__version__}; whole processes, "
          f"fastest of {args.repeats} rounds; per image and fixed cost from the line through the sizes' wall times")
    walls_head = "".join(f"{f'wall s @{n}':>13}" for n in args.images)
    print(f"{'side':<22} {'ms/image':>9} {'vs book':>8} {'fixed s':>8} {'of ceiling':>11}{walls_head}")
    for side, (_, fixed) in lines.items():
        share = f"{ceiling[precision_of[side]] / per_image[side]:.0%}" if side in precision_of else ""
        walls_row = "".join(f"{walls[side, n]:13.1f}" for n in args.images)
        print(f"{side:<22} {per_image[side]:9.1f} {per_image[book] / per_image[side]:7.2f}x {fixed:8.1f} "
              f"{share:>11}{walls_row}")
    for precision, ms in ceiling.items():
        print(f"{f'forward only {precision}':<22} {ms:9.1f} {per_image[book] / ms:7.2f}x "
              f"  (cnnfeat's models on batches already in memory)")


if __name__ == "__main__":
    main()
