"""How well the report's likely label errors find labels flipped on purpose, against cleanlab on scikit-learn's LR.

    python benchmarks/label_errors.py                          # ten digit classes, 120 train + 30 valid each, 3 seeds
    python benchmarks/label_errors.py --train 60 --seeds 0

scikit-learn's handwritten digits as a Kaggle folder; 5 % of the training files are moved into
another class's folder (seeded), so their label is wrong. Then what `cnnfeat run --weights random`
does (the book's three backbones, plain and mirrored views, every head, `best`) and `cnnfeat report`.
The report's list (reports/label_issues.csv: cleanlab's label quality scores on best's out-of-fold
probabilities, cut at cleanlab's calibrated estimate of the number of issues) is compared with
cleanlab's own find_label_issues (defaults) on scikit-learn LogisticRegression out-of-fold
probabilities (5 folds, standardised, C=1) of the same features: every backbone's, side by side.
The row between them is find_label_issues on best's out-of-fold probabilities: what the cut-off adds.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from cleanlab.filter import find_label_issues
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from features import ExtractConfig, FeatureCache, cache_path, extract
from pipeline.heads import HeadConfig, select_best, train_concat, train_ensemble, train_linear_heads
from pipeline.outputs import OUT_OF_FOLD, read_predictions
from pipeline.report import LABEL_ISSUES, build_reports, reports_dir

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "data"))
import make_digits  # noqa: E402 - the shipped data script

FLIPPED = 0.05


def flip_labels(data: Path, share: float, seed: int) -> set[str]:
    """Move that share of train/<class>/ files into another class's folder; their new paths."""
    rng = np.random.default_rng(seed)
    files = sorted((data / "train").glob("*/*.jpg"))
    classes = sorted(p.name for p in (data / "train").iterdir())
    moved = set()
    for path in rng.choice(files, size=round(share * len(files)), replace=False):
        wrong = rng.choice([c for c in classes if c != path.parent.name])
        target = data / "train" / wrong / path.name
        path.rename(target)
        moved.add(target.relative_to(data).as_posix())
    return moved


def scores(found: set[str], flipped: set[str]) -> tuple[float, float, int]:
    hits = len(found & flipped)
    return hits / max(len(found), 1), hits / len(flipped), len(found)


def baseline(workdir: Path) -> set[str]:
    """cleanlab's find_label_issues on scikit-learn LR out-of-fold probabilities of every backbone's features."""
    with FeatureCache(cache_path(workdir)) as cache:
        x = np.concatenate([cache.features("train", b) for b in cache.backbones("train")], axis=1)
        y, paths = cache.labels("train"), cache.paths("train")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    proba = cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0), method="predict_proba")
    return {paths[i] for i in np.flatnonzero(find_label_issues(y, proba, n_jobs=1))}


def run_once(root: Path, args: argparse.Namespace, seed: int) -> dict[str, tuple[float, float, int]]:
    data = make_digits.write_digits(root / "data", list(range(10)), args.train, args.valid, 5, size=args.image_size,
                                    seed=seed)
    flipped = flip_labels(data, FLIPPED, seed)
    workdir = root / "work"
    extract(ExtractConfig(data=data, workdir=workdir, weights="random", image_size=args.image_size, views=("hflip",)))
    cfg = HeadConfig(workdir=workdir, seed=seed)
    train_linear_heads(cfg), train_concat(cfg), train_ensemble(cfg), select_best(cfg)
    build_reports(workdir)
    with open(reports_dir(workdir) / LABEL_ISSUES, newline="") as handle:
        ours = {row["path"] for row in csv.DictReader(handle)}
    oof = read_predictions(workdir, "best", OUT_OF_FOLD)
    default = {oof.paths[i] for i in np.flatnonzero(find_label_issues(oof.labels, oof.proba, n_jobs=1))}
    return {"cnnfeat report (best's out-of-fold, cleanlab ranking + calibrated count)": scores(ours, flipped),
            "find_label_issues on best's out-of-fold": scores(default, flipped),
            "find_label_issues on scikit-learn LR out-of-fold": scores(baseline(workdir), flipped)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=120, help="images per class")
    parser.add_argument("--valid", type=int, default=30, help="images per class")
    parser.add_argument("--image-size", type=int, default=80)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="cnnfeat-labels-") as scratch:
            results.append(run_once(Path(scratch), args, seed))
        print(f"seed {seed}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    flipped = round(FLIPPED * 10 * args.train)
    print(f"\n10 classes, {args.train} train per class ({flipped} labels flipped), {args.valid} valid; "
          f"{args.image_size} px, random weights; seeds {args.seeds}\n")
    print("| label-error list | " + " | ".join(f"seed {s}: precision / recall (listed)" for s in args.seeds)
          + " | mean precision / recall |\n|---|" + "---:|" * (len(args.seeds) + 1))
    for name in results[0]:
        cells = [f"{r[name][0]:.3f} / {r[name][1]:.3f} ({r[name][2]})" for r in results]
        mean = np.mean([r[name][:2] for r in results], axis=0)
        print(f"| {name} | " + " | ".join(cells) + f" | {mean[0]:.3f} / {mean[1]:.3f} |")


if __name__ == "__main__":
    main()
