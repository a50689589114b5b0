"""The feature cache: one HDF5 file that any HDF5 tool can read, and the only way the pipeline reads features.

Layout of `<workdir>/features.h5` (public; see README):

    /                      attrs: format="cnnfeat-features", format_version, classes (JSON), data_root
    /<split>               attrs: fingerprint (of the split's files), labeled
    /<split>/paths         (N,) UTF-8, relative to the data folder, sorted
    /<split>/identity      (N, 2) int64: each file's size and mtime in ns (format 2; what keeps its row next time)
    /<split>/labels        (N,) int64, -1 for an unlabeled split
    /<split>/skipped       (K,) UTF-8 paths that could not be decoded; /<split>/skipped_reasons and
                           /<split>/skipped_identity (K, 2) beside it
    /<split>/<backbone>    (N, D) float32 (N, C, H, W with pool "none"); attrs: backbone, weights, pool, ...
/<split>/<backbone>@<tag>  the same at weights other than the stock ones (checkpoint.feature_name: resnet18@finetuned-3f2a1b2c)
/<split>/<name>_hflip      the same for the images mirrored left-right (extract --views hflip); attrs: view="hflip"

Format 1 (cnnfeat 0.2) lacks the identities: it is read as it is, and its rows are recomputed once a
split's files change.

Written only whole: extraction stages batches (staging.py) and only a finished run builds a new
cache in a temporary file beside the old one (`features.h5.<random>.tmp`) and renames it over it,
so a kill at any moment leaves the old cache intact and the finished batches on disk for the next
run to resume from.
"""

from __future__ import annotations

import errno
import json
import logging
import resource
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .errors import CacheError
from .files import atomic_output, fsync_path
from .job import extract_hint
from .staging import VALUE_SETTINGS, Staging

log = logging.getLogger(__name__)

FORMAT = "cnnfeat-features"
FORMAT_VERSION = 2  # 2: per-file identities, so unchanged files keep their rows when a split changes
CACHE_NAME = "features.h5"
_STR = h5py.string_dtype("utf-8")


def cache_path(workdir: str | Path) -> Path:
    return Path(workdir) / CACHE_NAME


def dataset_name(backbone: str, view: str = "") -> str:
    """/<split>/<backbone> holds the plain view, /<split>/<backbone>_<view> another (hflip: mirrored)."""
    return f"{backbone}_{view}" if view else backbone


@dataclass
class SplitContent:
    """What the next cache file holds for one split."""

    name: str
    fingerprint: str
    paths: tuple[str, ...]  # every scanned path, decodable or not
    labels: np.ndarray
    labeled: bool
    staged: dict[str, tuple[Staging, dict, tuple[int, ...]]] = field(default_factory=dict)
    # dataset -> (its finished staging, the settings to record, the shape of one feature)
    identities: np.ndarray | None = None  # (N, 2) each file's size and mtime_ns (folder.DataFolder.identities)
    reused: frozenset[str] = frozenset()  # staged datasets whose unchanged files' rows come from the old cache


def commit_cache(path: Path, classes: tuple[str, ...], data_root: str, splits: list[SplitContent]) -> list[str]:
    """Build the new cache beside the old one, from kept datasets and staged batches, then swap it in; one line
    for each dataset or split of the old cache that the new one no longer holds.

    A split whose fingerprint is unchanged keeps the datasets already cached for it (other than the
    ones restaged now). In a changed split, a `reused` dataset takes the rows of unchanged files from
    the old cache, bit for bit, and the staged rows for the others; a dataset that was not staged
    again cannot cover the new files and is dropped, said so. A staged dataset with rows that no batch
    (nor the old cache) covers is refused, so no row is ever a silent zero.
    """
    old = _open_previous(path)
    dropped = []
    try:
        _check_room(path, sum(_bytes_needed(content, old) for content in splits))
        with atomic_output(path) as tmp, h5py.File(tmp, "w") as out:
            out.attrs.update(format=FORMAT, format_version=FORMAT_VERSION,
                             classes=json.dumps(list(classes)), data_root=data_root)
            for content in splits:
                dropped += _write_split(out, old, content)
        fsync_path(path.parent)
        names = {content.name for content in splits}
        dropped += [f"dropped split {split}: its folder is gone from the data folder"
                    for split in (old if old is not None else ()) if split not in names]
    finally:
        if old is not None:
            old.close()
    return dropped


def _bytes_needed(content: SplitContent, old: h5py.File | None) -> int:
    """About what a split takes in the new file: its staged features, kept datasets, paths."""
    rows = len(content.paths)
    staged = sum(rows * 4 * int(np.prod(shape)) for _, _, shape in content.staged.values())
    previous = old.get(content.name) if old is not None else None
    kept = sum(item.id.get_storage_size() for name, item in previous.items()
               if isinstance(item, h5py.Dataset) and name not in content.staged) if previous is not None else 0
    return staged + kept + rows * (len(content.paths[0]) + 24 if rows else 0)


def _check_room(path: Path, needed: int) -> None:
    """Refuse before writing: HDF5 does not fail cleanly when the disk fills in the middle of a file."""
    room = shutil.disk_usage(path.parent).free
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)  # a per-process file size limit counts as a full disk
    if limit != resource.RLIM_INFINITY:
        room = min(room, limit)
    needed = int(needed * 1.05) + (1 << 20)  # chunk index, checksums, attributes
    if needed > room:
        raise OSError(errno.ENOSPC, f"the new feature cache needs about {needed / 2**20:.1f} MiB and only {room / 2**20:.1f} MiB "
                                    f"can be written there", str(path.parent))


def _open_previous(path: Path) -> h5py.File | None:
    """The cache being replaced, whose up-to-date datasets are kept; a damaged one keeps nothing."""
    if not path.exists():
        return None
    try:
        return h5py.File(path, "r")
    except OSError as err:
        log.warning("%s is unreadable (%s); building a new one", path, err)
        return None


def _write_split(out: h5py.File, old: h5py.File | None, content: SplitContent) -> list[str]:
    previous = old.get(content.name) if old is not None else None
    same_files = previous is not None and previous.attrs.get("fingerprint") == content.fingerprint
    old_row, old_failures = (_reusable(previous, content.paths, content.identities) if previous is not None
                             else (np.full(len(content.paths), -1), {}))
    failures = _agreed_failures(content, previous if same_files else None, old_failures)
    keep = np.array([row not in failures for row in range(len(content.paths))], dtype=bool)
    group = out.create_group(content.name)
    group.attrs.update(fingerprint=content.fingerprint, labeled=content.labeled)
    group.create_dataset("paths", data=np.array(content.paths, dtype=object)[keep], dtype=_STR)
    group.create_dataset("labels", data=content.labels[keep], **_checksummed(int(keep.sum()), 8))
    failed = sorted(failures)
    group.create_dataset("skipped", data=[content.paths[r] for r in failed], dtype=_STR)
    group.create_dataset("skipped_reasons", data=[failures[r] for r in failed], dtype=_STR)
    if content.identities is not None:
        group.create_dataset("identity", data=content.identities[keep], dtype=np.int64)
        group.create_dataset("skipped_identity", data=content.identities[failed].reshape(-1, 2), dtype=np.int64)
    dropped = []
    for name, item in (previous.items() if previous is not None else ()):
        if _is_features(item) and name not in content.staged:
            if same_files:
                out.copy(item, group, name=name)
            else:
                dropped.append(f"dropped {content.name}/{name}: the split's files changed and it was not extracted "
                               f"again (extract it with the same --workdir to have it back)")
    new_row = np.cumsum(keep) - 1  # scanned row -> row in the cache
    for name, (staging, settings, shape) in content.staged.items():
        rows = int(keep.sum())
        dataset = group.create_dataset(name, shape=(rows, *shape), dtype=np.float32,
                                       **_checksummed(rows, 4 * int(np.prod(shape)), shape))
        dataset.attrs.update(settings)
        covered = np.zeros(len(content.paths), dtype=bool)
        for chunk in staging.chunks():
            covered[chunk["rows"]] = covered[chunk["failed_rows"]] = True
            if len(chunk["rows"]):
                dataset[new_row[chunk["rows"]]] = chunk["features"]
        if name in content.reused:  # last: a batch that also held unchanged files never changes their bytes
            covered |= _copy_rows(previous[name], dataset, old_row, new_row)
            covered[list(old_failures)] = True
        if not covered.all():  # HDF5 would fill them with zeros: never commit that
            raise CacheError(
                f"split {content.name}, {name}: rows {_ranges(np.flatnonzero(~covered))} of {len(covered)} were never "
                f"staged in {staging.folder} (under torchrun every rank must write to one shared workdir); "
                f"run the same command again to compute them"
            )
    return dropped


def _reusable(previous: h5py.Group, paths: tuple[str, ...],
              identities: np.ndarray | None) -> tuple[np.ndarray, dict[int, str]]:
    """(the old row of each scanned file whose path, size and mtime are unchanged, else -1; {scanned row: why it
    could not be decoded} for unchanged files the old cache skipped). A format 1 cache has no identities: nothing."""
    old_row = np.full(len(paths), -1, dtype=np.int64)
    if identities is None or "identity" not in previous or not len(paths):
        return old_row, {}
    scanned = np.array(paths, dtype=str)
    cached = np.array(_as_str(previous["paths"][()]), dtype=str)
    if len(cached):
        order = np.argsort(cached)  # paths are stored sorted; sorting again costs nothing and assumes nothing
        at = order[np.minimum(np.searchsorted(cached[order], scanned), len(cached) - 1)]
        same = (cached[at] == scanned) & (previous["identity"][()][at] == identities).all(axis=1)
        old_row[same] = at[same]
    skipped = {(p, *ident): reason for p, reason, ident in zip(_as_str(previous["skipped"][()]),
                                                               _as_str(previous["skipped_reasons"][()]),
                                                               previous["skipped_identity"][()].tolist())}
    failures = {}
    if skipped:
        for i, (path, ident) in enumerate(zip(paths, identities.tolist())):
            if (key := (path, *ident)) in skipped:
                failures[i] = skipped[key]
    return old_row, failures


COPY_ROWS = 4096  # rows copied per read, so a large dataset is never held in memory whole


def _copy_rows(source: h5py.Dataset, target: h5py.Dataset, old_row: np.ndarray, new_row: np.ndarray) -> np.ndarray:
    """Copy the unchanged files' rows from the old dataset, run by run of consecutive rows (their bytes as they
    were); which scanned rows that covered."""
    scanned = np.flatnonzero(old_row >= 0)
    if len(scanned):
        src, dst = old_row[scanned], new_row[scanned]
        breaks = np.flatnonzero((np.diff(src) != 1) | (np.diff(dst) != 1)) + 1
        for run_src, run_dst in zip(np.split(src, breaks), np.split(dst, breaks)):
            for start in range(0, len(run_src), COPY_ROWS):
                a, b = int(run_src[start]), int(run_src[min(start + COPY_ROWS, len(run_src)) - 1]) + 1
                d = int(run_dst[start])
                target[d:d + b - a] = source[a:b]
    return old_row >= 0


def _ranges(rows: np.ndarray) -> str:
    """[0, 1, 2, 7] -> '0-2, 7'."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    parts = [f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in np.split(rows, breaks)]
    return ", ".join(parts[:10]) + (", ..." if len(parts) > 10 else "")


def _checksummed(rows: int, row_bytes: int, shape: tuple[int, ...] = ()) -> dict:
    """Fletcher-32 checksums per chunk of about 1 MiB: a damaged file fails to read instead of giving wrong numbers."""
    if rows == 0:
        return {}
    return {"chunks": (max(1, min(rows, (1 << 20) // row_bytes)), *shape), "fletcher32": True}


def _agreed_failures(content: SplitContent, previous: h5py.Group | None, old_failures: dict[int, str]) -> dict[int, str]:
    """Every dataset of a split must have skipped the same files, or rows would misalign. `previous`: the split as
    cached when its files are unchanged; a reused dataset skipped the unchanged files the old cache skipped."""
    seen: list[tuple[str, dict[int, str]]] = []
    if previous is not None:
        row_of = {p: i for i, p in enumerate(content.paths)}
        skipped = zip(_as_str(previous["skipped"][()]), _as_str(previous["skipped_reasons"][()]))
        seen.append(("cache", {row_of[p]: reason for p, reason in skipped}))
    seen += [(name, {**staging.failures(), **(old_failures if name in content.reused else {})})
             for name, (staging, _, _) in content.staged.items()]
    if not seen:
        return {}
    first_name, first = seen[0]
    for name, failures in seen[1:]:
        if set(failures) != set(first):
            raise CacheError(
                f"split {content.name}: {name} skipped other files than {first_name} "
                f"({sorted(set(failures) ^ set(first))[:5]} differ); rerun extract with --force"
            )
    return first


def _as_str(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class FeatureCache:
    """Read-only view of a features.h5 file: the only way pipeline/ reads features."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._settings: dict[tuple[str, str], dict] = {}
        if not self.path.exists():
            raise CacheError(
                f"no feature cache at {self.path}; run `{extract_hint(self.path.parent)}` first"
            )
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise CacheError(
                f"{self.path} is not a readable HDF5 file ({err}); delete it and run `{extract_hint(self.path.parent)}`"
            ) from err
        if self._file.attrs.get("format") != FORMAT:
            self._file.close()
            raise CacheError(f"{self.path} is not a cnnfeat feature cache; delete it and run "
                             f"`{extract_hint(self.path.parent)}`")
        if int(self._file.attrs.get("format_version", -1)) > FORMAT_VERSION:
            self._file.close()
            raise CacheError(f"{self.path} was written by a newer cnnfeat (format {self._file.attrs['format_version']})")

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(json.loads(self._file.attrs["classes"]))

    @property
    def data_root(self) -> str:
        return str(self._file.attrs["data_root"])

    @property
    def splits(self) -> list[str]:
        return sorted(self._file)

    def _group(self, split: str) -> h5py.Group:
        if split not in self._file:
            raise CacheError(
                f"split {split!r} is not in {self.path} (it has {', '.join(self.splits) or 'none'}); "
                f"check the split folder name, or if it was added to the data folder since, run "
                f"`{extract_hint(self.path.parent, self.data_root)}`"
            )
        return self._file[split]

    def fingerprint(self, split: str) -> str:
        return str(self._group(split).attrs["fingerprint"])

    def reusable_rows(self, split: str, paths: tuple[str, ...], identities: np.ndarray) -> np.ndarray:
        """Which of these scanned files (path, size, mtime) are unchanged since the split was cached, their rows (or
        their skipping) to be kept as they are: what an incremental extraction need not decode again."""
        old_row, failures = _reusable(self._group(split), paths, identities)
        reusable = old_row >= 0
        reusable[list(failures)] = True
        return reusable

    def is_labeled(self, split: str) -> bool:
        return bool(self._group(split).attrs["labeled"])

    def datasets(self, split: str) -> list[str]:
        """Every feature dataset of the split: each backbone, and its mirrored view where extracted."""
        return sorted(name for name, item in self._group(split).items() if _is_features(item))

    def backbones(self, split: str) -> list[str]:
        """The backbones with (plain-view) features for the split."""
        group = self._group(split)
        return [name for name in self.datasets(split) if not group[name].attrs.get("view", "")]

    def _dataset(self, split: str, name: str) -> h5py.Dataset:
        group = self._group(split)
        if name not in group or not _is_features(group[name]):
            backbone, _, view = name.rpartition("_") if name.endswith("_hflip") else (name, "", "")
            raise CacheError(
                f"backbone {name!r} has no features for split {split!r} in {self.path} "
                f"(cached: {', '.join(self.datasets(split)) or 'none'}); "
                f"run `{extract_hint(self.path.parent, self.data_root, backbone, view)}`"
            )
        return group[name]

    def _read(self, dataset: h5py.Dataset, rows: slice = slice(None)) -> np.ndarray:
        """Read, turning HDF5's checksum and I/O errors into what to do about them."""
        try:
            return dataset[rows]
        except (OSError, KeyError) as err:
            raise CacheError(
                f"{self.path} is damaged: cannot read {dataset.name} ({err}); rebuild it with "
                f"`{extract_hint(self.path.parent, self.data_root, force=True)}`"
            ) from err

    def paths(self, split: str) -> list[str]:
        return _as_str(self._read(self._group(split)["paths"]))

    def labels(self, split: str) -> np.ndarray:
        return self._read(self._group(split)["labels"])

    def skipped(self, split: str) -> list[tuple[str, str]]:
        group = self._group(split)
        return list(zip(_as_str(self._read(group["skipped"])), _as_str(self._read(group["skipped_reasons"]))))

    def settings(self, split: str, backbone: str) -> dict:
        """A dataset's recorded settings (a copy). Read from the file once: the file is opened read-only and
        HDF5 attributes cost a millisecond a dataset, which staleness checks of many models repeat."""
        key = (split, backbone)
        if key not in self._settings:
            self._settings[key] = {k: (v.item() if isinstance(v, np.generic) else v)
                                   for k, v in self._dataset(split, backbone).attrs.items()}
        return dict(self._settings[key])

    def feature_shape(self, split: str, backbone: str) -> tuple[int, ...]:
        return tuple(self._dataset(split, backbone).shape[1:])

    def check_features(self, split: str, backbone: str) -> None:
        """Raise the CacheError that says which command to run if these features are missing."""
        self._dataset(split, backbone)

    def row_count(self, split: str, backbone: str) -> int:
        return int(self._dataset(split, backbone).shape[0])

    def features(self, split: str, backbone: str, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """The rows asked for (all by default, or ascending row numbers) in the order of paths(split)."""
        return self._read(self._dataset(split, backbone), rows)

    def verify(self) -> list[str]:
        """Read every byte of every dataset, checking its checksums; one line per damaged dataset."""
        damaged = []
        for split in self.splits:
            for name, item in self._group(split).items():
                if not isinstance(item, h5py.Dataset):
                    continue
                step = max(1, (64 << 20) // max(1, item.dtype.itemsize * int(np.prod(item.shape[1:]))))
                try:
                    for start in range(0, len(item), step):
                        self._read(item, slice(start, start + step))
                except CacheError as err:
                    damaged.append(str(err))
        return damaged


def is_up_to_date(cache: FeatureCache | None, split: str, fingerprint: str, dataset: str, settings: dict) -> bool:
    """True when the cache already holds this dataset's features for these exact files and settings."""
    if cache is None or split not in cache.splits or cache.fingerprint(split) != fingerprint:
        return False
    if dataset not in cache.datasets(split):
        return False
    recorded = cache.settings(split, dataset)
    return all(recorded.get(k) == settings[k] for k in VALUE_SETTINGS)


def _is_features(item: h5py.HLObject) -> bool:
    return isinstance(item, h5py.Dataset) and "backbone" in item.attrs
