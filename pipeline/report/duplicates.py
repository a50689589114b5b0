"""Near-duplicate images from the cached features: the same picture twice in train, or a train image again in test.

    found = find_duplicates(cache, similarity=0.9)      # every split against every split, one backbone
    found.pairs[0]                                      # Pair(path_a, path_b, similarity), most similar first

Each image's pooled feature is centred and PCA-whitened (every principal direction scaled to unit
variance, with a floor of WHITENING_FLOOR times the largest variance so that directions without
variance stay quiet), then compared by cosine similarity. Pooled CNN features are all positive and
dominated by a few directions shared by every image, so raw cosines of distinct images sit close
to 1; whitening spreads them out (Jégou and Chum, ECCV 2012) while a resized, re-encoded copy stays
near 1. The search is exact: blocks of rows against the rows after them, so memory is the feature
matrix plus one block of similarities (BLOCK_BYTES), whatever the number of images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from features import CacheError, FeatureCache, ProgressFn

WHITENING_FLOOR = 1e-3  # of the largest principal variance: copies stay above 0.95, distinct digits below 0.84
BLOCK_BYTES = 64 << 20  # similarities computed at once
MAX_PAIRS = 100_000  # the most similar kept when more pairs pass (a folder of blank images would list millions)
READ_BYTES = 256 << 20  # features read from the cache at once


@dataclass(frozen=True)
class Pair:
    path_a: str  # relative to the data folder ("train/cat/1.jpg"); labeled splits come first in a pair
    split_a: str
    path_b: str
    split_b: str
    similarity: float


@dataclass
class Duplicates:
    backbone: str
    similarity: float  # the threshold
    images: int  # compared, over every split
    pairs: list[Pair] = field(default_factory=list)  # most similar first, at most MAX_PAIRS
    found: int = 0  # pairs over the threshold, kept or not

    def counts(self) -> dict[tuple[str, str], int]:
        """Pairs kept per (split, split): ("train", "test") are leaks, ("train", "train") repeats."""
        counts: dict[tuple[str, str], int] = {}
        for pair in self.pairs:
            counts[pair.split_a, pair.split_b] = counts.get((pair.split_a, pair.split_b), 0) + 1
        return counts


def duplicates_backbone(cache: FeatureCache, name: str = "") -> str | None:
    """The named backbone, or, by default, the one with the fewest feature values among those every split has
    (None if there is none): the search costs rows² × values, and any ImageNet backbone tells copies apart."""
    shared = [b for b in cache.backbones(cache.splits[0]) if all(b in cache.backbones(s) for s in cache.splits)]
    if name and name not in shared:
        raise CacheError(f"backbone {name!r} has no features for every split of {cache.path} (those that do: "
                         f"{', '.join(shared) or 'none'}); choose one of them, or extract it for every split")
    return name or min(shared, key=lambda b: (cache.feature_shape(cache.splits[0], b)[0], b), default=None)


def find_duplicates(cache: FeatureCache, similarity: float, backbone: str = "",
                    progress: ProgressFn | None = None) -> Duplicates | None:
    """Every pair of images, in any splits, whose whitened features have a cosine similarity of at least `similarity`;
    None when no backbone has features for every split."""
    backbone = duplicates_backbone(cache, backbone)
    if backbone is None:
        return None
    splits = sorted(cache.splits, key=lambda s: not cache.is_labeled(s))  # labeled first: a leak reads (train, test)
    owners = [(split, path) for split in splits for path in cache.paths(split)]
    x = _whitened(np.concatenate([_pooled(cache, split, backbone) for split in splits]))
    found = Duplicates(backbone, similarity, len(x))
    kept_i, kept_j, kept_s = [np.empty(0, np.int64)] * 2 + [np.empty(0, np.float32)]
    block = max(1, BLOCK_BYTES // (4 * max(len(x), 1)))
    for start in range(0, len(x), block):
        stop = min(start + block, len(x))
        sims = x[start:stop] @ x[start:].T  # (block, N - start): each row against itself and the rows after it
        rows, cols = np.nonzero(sims >= similarity)
        after = cols > rows  # not itself, and each pair once
        rows, cols = rows[after], cols[after]
        found.found += len(rows)
        kept_i = np.concatenate([kept_i, rows + start])
        kept_j = np.concatenate([kept_j, cols + start])
        kept_s = np.concatenate([kept_s, sims[rows, cols]])
        if len(kept_s) > MAX_PAIRS:
            top = np.argpartition(-kept_s, MAX_PAIRS)[:MAX_PAIRS]
            kept_i, kept_j, kept_s = kept_i[top], kept_j[top], kept_s[top]
        if progress:
            progress("near-duplicates", stop - start, len(x))
    for k in np.argsort(-kept_s, kind="stable"):
        (split_a, path_a), (split_b, path_b) = owners[kept_i[k]], owners[kept_j[k]]
        found.pairs.append(Pair(path_a, split_a, path_b, split_b, round(float(kept_s[k]), 4)))
    return found


def _pooled(cache: FeatureCache, split: str, backbone: str) -> np.ndarray:
    """(N, C) float32: the split's features, a feature map (--pool none) averaged over its positions, read in parts."""
    rows, shape = cache.row_count(split, backbone), cache.feature_shape(split, backbone)
    step = max(1, READ_BYTES // (4 * int(np.prod(shape))))
    parts = [cache.features(split, backbone, slice(start, start + step)) for start in range(0, rows, step)]
    return np.concatenate([p.reshape(len(p), shape[0], -1).mean(2) for p in parts] or [np.zeros((0, shape[0]))],
                          dtype=np.float32)


def _whitened(x: np.ndarray) -> np.ndarray:
    """Rows centred, PCA-whitened with a variance floor and scaled to unit length, in place (float32)."""
    x -= x.mean(0, dtype=np.float64).astype(np.float32)
    covariance = np.zeros((x.shape[1], x.shape[1]))
    step = max(1, (64 << 20) // (8 * max(x.shape[1], 1)))
    for start in range(0, len(x), step):
        part = x[start:start + step].astype(np.float64)
        covariance += part.T @ part
    variance, directions = np.linalg.eigh(covariance / max(len(x), 1))
    floor = WHITENING_FLOOR * variance.max() if variance.max() > 0 else 1.0
    transform = (directions / np.sqrt(np.clip(variance, 0, None) + floor)).astype(np.float32)
    for start in range(0, len(x), step):
        part = x[start:start + step] @ transform
        x[start:start + step] = part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
    return x
