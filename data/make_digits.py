"""Write a small Kaggle-style image folder from scikit-learn's handwritten digits (real scans, 8x8).

    python data/make_digits.py                     # -> data/digits/{train,valid}/<digit>/*.jpg, test/*.jpg
    python data/make_digits.py --out /tmp/d --classes 0 1 2 3 --train 40 --valid 20 --test 20 --size 80

Digits are upscaled to --size so the backbones see a normal-looking picture; Inception needs 75 px.
Test images are named 1.jpg, 2.jpg, ... like Kaggle's Dogs vs Cats test set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits(out: Path, classes: list[int], n_train: int, n_valid: int, n_test: int,
                 size: int = 96, seed: int = 0, n_holdout: int = 0) -> Path:
    """Per class n_train + n_valid (+ n_holdout, in a labeled holdout/ split) labeled images, and n_test
    unlabeled ones drawn across the classes; no scan is in two splits."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    test_pool = []
    for digit in classes:
        rows = rng.permutation(np.flatnonzero(digits.target == digit))
        edges = np.cumsum([0, n_train, n_valid, n_holdout])
        for split, chosen in zip(("train", "valid", "holdout"), np.split(rows, edges[1:])):
            if split == "holdout" and not n_holdout:
                break
            folder = out / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for row in chosen:
                _save(digits.images[row], folder / f"{digit}_{row:04d}.jpg", size)
        test_pool += list(rows[edges[-1] :])
    (out / "test").mkdir(parents=True, exist_ok=True)
    for number, row in enumerate(rng.choice(test_pool, size=n_test, replace=False), start=1):
        _save(digits.images[row], out / "test" / f"{number}.jpg", size)
    return out


def _save(image: np.ndarray, path: Path, size: int) -> None:
    gray = Image.fromarray((255 - image * 255 / 16).astype(np.uint8), "L")  # dark ink on white paper
    gray.resize((size, size), Image.BICUBIC).convert("RGB").save(path, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "digits")
    parser.add_argument("--classes", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=10, help="images per class")
    parser.add_argument("--valid", type=int, default=5, help="images per class")
    parser.add_argument("--test", type=int, default=15, help="images in all")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_digits(args.out, args.classes, args.train, args.valid, args.test, args.size, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
