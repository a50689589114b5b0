"""Training images per second: `cnnfeat finetune` against a plain book-style loop, on the same images.

    python benchmarks/finetune.py                                  # this CPU: resnet34, layer4, 128 px, 256 images
    python benchmarks/finetune.py --device cuda --images 2048 --precision bf16 --channels-last

The book-style loop is torchvision's ImageFolder with Resize/ToTensor/Normalize, fp32, contiguous
memory, no AMP, every BatchNorm in train mode, Adam on the unfrozen parameters. cnnfeat's is
`pipeline.finetune.finetune` for one epoch (its own decoding, frozen BatchNorm in frozen blocks, the
precision and memory layout asked for); its rate is its history's images_per_second. Both skip
validation time: the book's loop is timed over its training pass only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from make_digits import write_digits  # noqa: E402 - the shipped data's generator

from features import default_workers, resolve_device  # noqa: E402
from pipeline.finetune import FinetuneConfig, finetune  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def book_loop(data: Path, size: int, batch_size: int, device: torch.device, workers: int) -> float:
    """Images per second of one training epoch, written as the book's chapter would."""
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    dataset = torchvision.datasets.ImageFolder(data / "train", tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    torch.manual_seed(0)
    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, len(dataset.classes))
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(("layer4", "fc"))
    model.to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256, help="training images (digit scans, 10 classes)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="cnnfeat's side")
    parser.add_argument("--channels-last", action="store_true", help="cnnfeat's side")
    args = parser.parse_args()
    device = resolve_device(args.device)
    workers = default_workers(device)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_digits(Path(tmp) / "data", list(range(10)), -(-args.images // 10), 2, 0, size=96)
        book = book_loop(data, args.image_size, args.batch_size, device, workers)
        cfg = FinetuneConfig(data=data, workdir=Path(tmp) / "work", weights="random", train_layers="layer4", epochs=1,
                             batch_size=args.batch_size, image_size=args.image_size, device=args.device,
                             precision=args.precision, channels_last=args.channels_last, augment="none", workers=workers)
        ours = finetune(cfg).history[0]["images_per_second"]
    print(f"device {device}, resnet34 layer4+fc, {args.image_size} px, batch {args.batch_size}, "
          f"{-(-args.images // 10) * 10} images, {workers} loader workers")
    print(f"book-style loop (fp32, contiguous, no AMP): {book:8.1f} img/s")
    print(f"cnnfeat finetune ({args.precision}{', channels_last' if args.channels_last else ''}): {ours:8.1f} img/s")
    print(f"ratio cnnfeat / book: {ours / book:.2f}")


if __name__ == "__main__":
    main()
