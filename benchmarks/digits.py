"""Accuracy and log loss of every model cnnfeat trains, on a split no training or selection saw.

    python benchmarks/digits.py                 # ten digit classes, 400 train, 200 valid, 200 holdout, 80 px
    python benchmarks/digits.py --train 100 --classes 0 1 2 3 4

scikit-learn's handwritten digits as a Kaggle folder, the book's three backbones with seeded random
weights (no download needed; ImageNet weights make far better features), plain and mirrored views.
Every model is trained by the heads' stage as `cnnfeat run` would; `holdout` is a labeled split
that nothing was fitted or chosen on. The yardstick is scikit-learn's LogisticRegression on the
same standardised features with the best C of a decade grid chosen on valid.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from features import BOOK, ExtractConfig, FeatureCache, cache_path, extract
from pipeline.heads import (HeadConfig, class_probabilities, select_best, train_concat, train_ensemble,
                            train_linear_heads)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "data"))
import make_digits  # noqa: E402 - the shipped data script

HOLDOUT = "holdout"


def sklearn_best(cache: FeatureCache, backbone: str) -> tuple[float, float, float]:
    """(C, holdout accuracy, holdout log loss) of scikit-learn's LR with the C that valid prefers."""
    x, y = cache.features("train", backbone), cache.labels("train")
    fits = {c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(x, y)
            for c in (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)}
    c = max(fits, key=lambda c: fits[c].score(cache.features("valid", backbone), cache.labels("valid")))
    x_held, y_held = cache.features(HOLDOUT, backbone), cache.labels(HOLDOUT)
    proba = fits[c].predict_proba(x_held)
    return c, accuracy_score(y_held, proba.argmax(1)), sk_log_loss(y_held, proba, labels=range(proba.shape[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--train", type=int, default=40, help="images per class")
    parser.add_argument("--valid", type=int, default=20)
    parser.add_argument("--holdout", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=80)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cnnfeat-digits-") as scratch:
        root = Path(scratch)
        data = make_digits.write_digits(root / "data", args.classes, args.train, args.valid, 5, size=args.image_size,
                                        n_holdout=args.holdout)
        workdir = root / "work"
        extract(ExtractConfig(data=data, workdir=workdir, weights="random", image_size=args.image_size, views=("hflip",)))
        cfg = HeadConfig(workdir=workdir)
        results = train_linear_heads(cfg) + train_concat(cfg) + [train_ensemble(cfg), select_best(cfg)]
        print(f"\n{len(args.classes)} classes; train {args.train}, valid {args.valid}, holdout {args.holdout} per class; "
              f"{args.image_size} px; random weights; torch {torch.__version__}\n")
        print("| model | valid acc | valid log loss | holdout acc | holdout log loss |\n| --- | ---: | ---: | ---: | ---: |")
        for r in results:
            probs = class_probabilities(workdir, r.name, HOLDOUT, "cpu")
            acc = accuracy_score(probs.labels, probs.proba.argmax(1))
            loss = sk_log_loss(probs.labels, probs.proba, labels=range(len(probs.classes)))
            print(f"| `{r.name}` | {r.metrics['val_accuracy']:.3f} | {r.metrics['val_log_loss']:.3f} | {acc:.3f} | {loss:.3f} |")
        members = ", ".join(f"{name} {weight:.2f}" for name, weight in results[-1].metrics["members"].items())
        print(f"| `best` = {members} | | | | |")
        with FeatureCache(cache_path(workdir)) as cache:
            for backbone in BOOK:
                c, acc, loss = sklearn_best(cache, backbone)
                print(f"| scikit-learn LR, {backbone}, C={c:g} | | | {acc:.3f} | {loss:.3f} |")


if __name__ == "__main__":
    main()
