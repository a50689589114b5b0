"""Stage 1: every image decoded once, fed to every requested frozen backbone, cached in HDF5.

    from features import ExtractConfig, extract
    report = extract(ExtractConfig(data="data/digits", workdir="runs/digits", backbones=("all",)))

Work is planned per (split, backbone): a pair whose cached features match the files and settings
is skipped; the others share one pass over each split's images.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader

from . import __version__
from .backbones import BACKBONES, POOLS, WEIGHTS, BackboneSpec, FrozenBackbone, load_backbone, resolve_backbones, weights_label
from .distributed import torchrun_ranks
from .images import DataFolder, DataLayoutError, DecodedBatch, ImageFiles, Split, collate_decoded, decode_on_device, scan_data_folder
from .store import (
    CacheError,
    FeatureCache,
    SplitContent,
    Staging,
    cache_path,
    commit_cache,
    is_up_to_date,
    workdir_lock,
)

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")
DECODERS = ("auto", "pil", "device")

# progress(split, images just finished, images this split will decode in this run)
ProgressFn = Callable[[str, int, int], None]


@dataclass
class ExtractConfig:
    data: Path
    workdir: Path = Path("cnnfeat-out")
    backbones: tuple[str, ...] = ("all",)
    weights: str = "imagenet"  # "random" (seeded) only for smoke runs; it is recorded in the cache
    pool: str = "avg"  # avg: exactly what each model's classifier consumes
    image_size: int = 299  # the book's one size for all three: Inception-v3's native input
    batch_size: int = 64  # fills a CPU's cores; raise it to 256 on a GPU
    workers: int | None = None  # decoding processes; None: default_workers(device)
    device: str = "auto"
    precision: str = "fp32"  # bf16/fp16 autocast: 2-5x faster forward passes, features within ~1%
    decode: str = "auto"  # "device": JPEGs decoded by torchvision.io where the models run; auto: on a GPU only
    seed: int = 0  # for weights="random"
    force: bool = False  # recompute even what is up to date

    def __post_init__(self) -> None:
        self.data, self.workdir = Path(self.data), Path(self.workdir)
        if isinstance(self.backbones, str):
            self.backbones = (self.backbones,)
        for name, value, allowed in (
            ("weights", self.weights, WEIGHTS),
            ("pool", self.pool, POOLS),
            ("precision", self.precision, tuple(PRECISIONS)),
            ("device", self.device, DEVICES),
            ("decode", self.decode, DECODERS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be 0 or more, not {self.workers}")
        for spec in resolve_backbones(self.backbones):
            if self.image_size < spec.min_image_size:
                raise ValueError(
                    f"image_size {self.image_size} is too small for {spec.name}; it needs at least {spec.min_image_size}"
                )


@dataclass
class ExtractReport:
    cache: Path
    computed: list[tuple[str, str]] = field(default_factory=list)  # (split, backbone)
    up_to_date: list[tuple[str, str]] = field(default_factory=list)
    skipped_files: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    images_per_rank: list[int] = field(default_factory=list)  # images decoded by each torchrun rank (one: a plain run)
    seconds: float = 0.0
    main: bool = True  # False on torchrun ranks other than 0, which leave reporting to rank 0

    @property
    def images_decoded(self) -> int:
        return sum(self.images_per_rank)

    @property
    def images_per_second(self) -> float:
        return self.images_decoded / self.seconds if self.seconds else 0.0


@dataclass
class _Job:
    spec: BackboneSpec
    settings: dict
    staging: Staging
    shape: tuple[int, ...] = ()  # of one stored feature, known once the model is loaded


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU; use --device auto or cpu")
    return torch.device(name)


def default_workers(device: torch.device) -> int:
    """Decoding processes: a GPU needs every core decoding; on a CPU the models need the cores more."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(16, cores) if device.type == "cuda" else max(1, cores // 2)


def feature_settings(spec: BackboneSpec, cfg: ExtractConfig, device: torch.device) -> dict:
    """Provenance recorded on each cached dataset; VALUE_SETTINGS among them decide staleness."""
    return {
        "backbone": spec.name,
        "weights": weights_label(spec, cfg.weights, cfg.seed),
        "weights_file": os.path.basename(spec.weights.url) if cfg.weights == "imagenet" else "",
        "pool": cfg.pool,
        "image_size": cfg.image_size,
        "layer": spec.feature_layer,
        "precision": cfg.precision,
        "decode": "torchvision.io.decode_jpeg" if decodes_on_device(cfg, device) else "PIL",
        "cnnfeat_version": __version__,
        "torch_version": str(torch.__version__),  # TorchVersion is a str subclass h5py cannot store
        "torchvision_version": str(torchvision.__version__),
    }


def decodes_on_device(cfg: ExtractConfig, device: torch.device) -> bool:
    """nvJPEG on a GPU keeps the CPU cores from being the bottleneck; on a CPU, PIL in the workers is as fast."""
    return cfg.decode == "device" or (cfg.decode == "auto" and device.type == "cuda")


def extract(cfg: ExtractConfig, progress: ProgressFn | None = None) -> ExtractReport:
    """Bring the cache up to date with the data folder for the requested backbones.

    Under torchrun every rank calls this; they share the work and rank 0 writes the cache.
    """
    started = time.perf_counter()
    specs = resolve_backbones(cfg.backbones)
    path = cache_path(cfg.workdir)
    with torchrun_ranks(resolve_device(cfg.device)) as ranks, ExitStack() as held:
        device = ranks.device(resolve_device(cfg.device))
        ranks.share(lambda: held.enter_context(workdir_lock(cfg.workdir)))
        plan = ranks.share(lambda: _plan(scan_data_folder(cfg.data), specs, cfg, device, path))
        report = ExtractReport(cache=path, up_to_date=plan.up_to_date, main=ranks.main)
        jobs = [job for split_jobs in plan.jobs.values() for job in split_jobs]
        decoded = 0
        if jobs:
            models = _load_models({job.spec.name: job.spec for job in jobs}, cfg, device)
            for job in jobs:
                job.shape = models[job.spec.name].feature_shape(cfg.image_size)
            for split_name, split_jobs in plan.jobs.items():
                if split_jobs:
                    split = plan.folder.splits[split_name]
                    batches = ranks.mine(plan.batches[split_name])
                    decoded += _run_split(plan.folder.root, split, split_jobs, batches, models, cfg, device,
                                          progress if ranks.main else None)
                    report.computed += [(split_name, job.spec.name) for job in split_jobs]
        report.images_per_rank = ranks.gather(decoded)  # also waits for every rank's last batch
        report.skipped_files = ranks.share(lambda: _commit(plan, path))
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class _Plan:
    folder: DataFolder
    jobs: dict[str, list[_Job]]  # split -> the backbones to compute for it
    batches: dict[str, list[tuple[int, int, tuple[str, ...]]]]  # split -> (start, stop, backbones that need it)
    up_to_date: list[tuple[str, str]]


def _plan(folder: DataFolder, specs: list[BackboneSpec], cfg: ExtractConfig, device: torch.device, path: Path) -> _Plan:
    try:
        cache = FeatureCache(path) if path.exists() else None
    except CacheError as err:
        log.warning("%s; rebuilding it from scratch", err)
        cache = None
    plan = _Plan(folder, {}, {}, [])
    try:
        for split in folder.splits:
            fingerprint = folder.fingerprint(split)
            plan.jobs[split] = []
            for spec in specs:
                settings = feature_settings(spec, cfg, device)
                if not cfg.force and is_up_to_date(cache, split, fingerprint, spec.name, settings):
                    plan.up_to_date.append((split, spec.name))
                else:
                    staging = Staging(cfg.workdir, split, spec.name, Staging.key(settings, fingerprint))
                    plan.jobs[split].append(_Job(spec, settings, staging))
            plan.batches[split] = _missing_batches(len(folder.splits[split].paths), plan.jobs[split], cfg.batch_size)
    finally:
        if cache is not None:
            cache.close()
    return plan


def _missing_batches(rows: int, jobs: list[_Job], batch_size: int) -> list[tuple[int, int, tuple[str, ...]]]:
    """Batches over the rows some backbone has not staged yet, cut from each gap's start.

    An uninterrupted run's batches start at 0, batch_size, ...; a resumed run at the same batch size
    cuts the same ones, so it computes the same features, bit for bit.
    """
    done = {job.spec.name: job.staging.done_rows(rows) for job in jobs}
    needed = ~np.logical_and.reduce(list(done.values())) if done else np.zeros(rows, dtype=bool)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], needed.astype(np.int8), [0]))))
    batches = []
    for gap_start, gap_stop in zip(edges[::2].tolist(), edges[1::2].tolist()):
        for start in range(gap_start, gap_stop, batch_size):
            stop = min(start + batch_size, gap_stop)
            batches.append((start, stop, tuple(name for name, rows in done.items() if not rows[start:stop].all())))
    if batches and not needed.all():
        log.info("resuming: %d of %d images are already staged", int((~needed).sum()), rows)
    return batches


def _commit(plan: _Plan, path: Path) -> dict[str, list[tuple[str, str]]]:
    """Merge the staged batches (every rank's) into a new features.h5; the skipped files per split."""
    folder, jobs = plan.folder, plan.jobs
    if any(jobs.values()) or not _cache_matches_folder(path, folder):
        contents = [
            SplitContent(name, folder.fingerprint(name), split.paths, split.labels,
                         {job.spec.name: (job.staging, job.settings, job.shape) for job in jobs[name]})
            for name, split in folder.splits.items()
        ]
        commit_cache(path, folder.classes, str(folder.root.resolve()), contents)
        for split_jobs in jobs.values():
            for job in split_jobs:
                job.staging.remove_all_versions()
    with FeatureCache(path) as cache:
        return {split: cache.skipped(split) for split in cache.splits if cache.skipped(split)}


def pending_extraction(cache: FeatureCache) -> list[tuple[str, str, str]]:
    """(split, backbone, why) that `cnnfeat run` with the cache's own settings would compute again."""
    try:
        folder = scan_data_folder(Path(cache.data_root))
    except (DataLayoutError, OSError) as err:
        return [("*", "*", f"the data folder cannot be read ({err}); the next run needs --data")]
    pending = [(split, "*", "split gone from the data folder: dropped") for split in cache.splits if split not in folder.splits]
    for split in folder.splits:
        if split not in cache.splits:
            why = "new split"
        elif cache.fingerprint(split) != folder.fingerprint(split):
            why = "files added, removed or changed"
        else:
            why = ""
        cached = cache.backbones(split) if split in cache.splits else []
        pending += [(split, name, why or "not extracted yet") for name in BACKBONES if why or name not in cached]
    return pending


def _cache_matches_folder(path: Path, folder: DataFolder) -> bool:
    try:
        with FeatureCache(path) as cache:
            return cache.splits == sorted(folder.splits) and all(
                cache.fingerprint(s) == folder.fingerprint(s) for s in folder.splits
            )
    except CacheError:
        return False


def _load_models(specs: dict[str, BackboneSpec], cfg: ExtractConfig, device: torch.device) -> dict[str, FrozenBackbone]:
    """All weights load before any image is decoded, so a missing file fails in seconds."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
    return {
        spec.name: load_backbone(spec, weights=cfg.weights, pool=cfg.pool, seed=cfg.seed)
        .to(device, memory_format=torch.channels_last)
        for spec in specs.values()
    }


def _run_split(root: Path, split: Split, jobs: list[_Job], batches: Sequence[tuple[int, int, tuple[str, ...]]],
               models: dict[str, FrozenBackbone], cfg: ExtractConfig, device: torch.device,
               progress: ProgressFn | None) -> int:
    """One pass over the given batches of a split; each batch goes to every backbone that needs it."""
    on_device = decodes_on_device(cfg, device)
    images = ImageFiles(root, split.paths, cfg.image_size, jpeg_bytes=on_device)
    workers = default_workers(device) if cfg.workers is None else cfg.workers
    loader = DataLoader(
        images,
        batch_sampler=[range(start, stop) for start, stop, _ in batches],
        num_workers=workers,
        collate_fn=collate_decoded,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    autocast = (
        torch.autocast(device.type, dtype=PRECISIONS[cfg.precision])
        if PRECISIONS[cfg.precision] is not None
        else nullcontext()
    )
    total = sum(stop - start for start, stop, _ in batches)
    if progress is not None:
        progress(split.name, 0, total)  # the split starts now: its rate counts from here
    with torch.inference_mode(), autocast, StagingWriter() as writer:
        for (start, stop, needed), batch in zip(batches, loader):
            if on_device:
                batch = decode_on_device(batch, root, split.paths, cfg.image_size, device)
            for row, reason in zip(batch.failed_rows, batch.failed_reasons):
                log.warning("skipping %s: cannot decode it (%s)", root / split.paths[row], reason)
            pixels = batch.images.to(device, non_blocking=True)
            for job in jobs:
                if job.spec.name in needed:
                    features = models[job.spec.name](pixels) if len(batch.rows) else None
                    writer.save(job.staging, start, stop, batch, features)
            if progress is not None:
                progress(split.name, stop - start, total)
    return total


class StagingWriter:
    """Stages batches from a background thread, so the device never waits on the disk.

    A few batches may be in flight; leaving the block (also by Ctrl-C) waits for them, so every
    batch computed is kept, and re-raises a write error.
    """

    def __init__(self, in_flight: int = 4) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnfeat-writer")
        self.pending: deque[Future] = deque()
        self.in_flight = in_flight

    def __enter__(self) -> "StagingWriter":
        return self

    def save(self, staging: Staging, start: int, stop: int, batch: DecodedBatch, features: torch.Tensor | None) -> None:
        while len(self.pending) >= self.in_flight:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(_stage, staging, start, stop, batch, features))

    def __exit__(self, *exc: object) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True)


def _stage(staging: Staging, start: int, stop: int, batch: DecodedBatch, features: torch.Tensor | None) -> None:
    values = features.float().cpu().numpy() if features is not None else np.empty((0,), dtype=np.float32)
    staging.save(start, stop, batch.rows.numpy(), values, batch.failed_rows, batch.failed_reasons)
