"""Is the cache still the data folder's? Stages that read features ask before they use them.

A split's fingerprint covers its paths, labels, sizes and modification times; when the data
folder the cache was made from is reachable and a split's fingerprint differs, its features are
stale and nothing may be trained on or predicted from them. Imports no torch (`cnnfeat info`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from .errors import CacheError, DataLayoutError, did_you_mean
from .folder import DataFolder, scan_data_folder
from .job import extract_hint
from .registry import BOOK
from .store import FeatureCache

log = logging.getLogger(__name__)


def check_fresh(cache: FeatureCache, splits: Iterable[str]) -> None:
    """Raise a CacheError naming the command to run when a split's files changed since extraction, or when the
    cache has no such split at all."""
    root, splits = Path(cache.data_root), list(splits)
    for split in splits:
        if split not in cache.splits:
            raise CacheError(f"{cache.path} has no split {split!r}{did_you_mean(split, cache.splits)} (it has "
                             f"{', '.join(cache.splits)}); name one of those with --split, or if {root / split}/ was added since, "
                             f"run `{extract_hint(cache.path.parent, root)}` first")
    if not root.is_dir():
        log.debug("data folder %s is not reachable; trusting the cache as it is", root)
        return
    try:
        folder = scan_data_folder(root)
    except DataLayoutError as err:
        raise CacheError(f"the data folder the cache was made from no longer reads as a data folder ({err}); "
                         f"fix it, then run `{extract_hint(cache.path.parent, root)}`") from err
    for split in splits:
        why = _staleness(cache, folder, split)
        if why:
            raise CacheError(
                f"the features of split {split!r} in {cache.path} are stale: {why} since they were extracted; "
                f"run `{extract_hint(cache.path.parent, root)}` (or `cnnfeat run --workdir {cache.path.parent}`) first"
            )


def _staleness(cache: FeatureCache, folder: DataFolder, split: str) -> str:
    """'' when the split is as cached, else what changed, as precisely as the cache can tell."""
    if split not in folder.splits:
        return f"{split}/ is gone from {folder.root}"
    if split not in cache.splits or cache.fingerprint(split) == folder.fingerprint(split):
        return ""
    cached = set(cache.paths(split)) | {path for path, _ in cache.skipped(split)}
    now = set(folder.splits[split].paths)
    added, removed = sorted(now - cached), sorted(cached - now)
    parts = [f"{len(names)} file(s) {verb} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
             for verb, names in (("added", added), ("removed", removed)) if names]
    return "; ".join(parts) or "files were rewritten, touched or relabeled"


def pending_extraction(cache: FeatureCache, backbones: Iterable[str] = tuple(BOOK)) -> list[tuple[str, str, str]]:
    """(split, dataset, why) that `cnnfeat run` with the cache's own settings would compute again; `backbones`:
    the datasets the job wants (a workdir's job.toml names them), besides those cached."""
    try:
        folder = scan_data_folder(Path(cache.data_root))
    except (DataLayoutError, OSError) as err:
        return [("*", "*", f"the data folder cannot be read ({err}); the next run needs --data")]
    pending = [(split, "*", "split gone from the data folder: dropped") for split in cache.splits if split not in folder.splits]
    for split in folder.splits:
        if split not in cache.splits:
            why = "new split"
        else:
            why = _staleness(cache, folder, split) and "files added, removed or changed"
        cached = cache.datasets(split) if split in cache.splits else []
        wanted = dict.fromkeys([*backbones, *cached])
        pending += [(split, name, why or "not extracted yet") for name in wanted if why or name not in cached]
    return pending
