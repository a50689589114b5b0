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
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader

from . import __version__
from .backbones import POOLS, WEIGHTS, BackboneSpec, FrozenBackbone, load_backbone, resolve_backbones, weights_label
from .images import DataFolder, ImageFiles, Split, collate_decoded, scan_data_folder
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
    images_decoded: int = 0
    seconds: float = 0.0

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


def feature_settings(spec: BackboneSpec, cfg: ExtractConfig) -> dict:
    """Provenance recorded on each cached dataset; VALUE_SETTINGS among them decide staleness."""
    return {
        "backbone": spec.name,
        "weights": weights_label(spec, cfg.weights, cfg.seed),
        "weights_file": os.path.basename(spec.weights.url) if cfg.weights == "imagenet" else "",
        "pool": cfg.pool,
        "image_size": cfg.image_size,
        "layer": spec.feature_layer,
        "precision": cfg.precision,
        "cnnfeat_version": __version__,
        "torch_version": str(torch.__version__),  # TorchVersion is a str subclass h5py cannot store
        "torchvision_version": str(torchvision.__version__),
    }


def extract(cfg: ExtractConfig, progress: ProgressFn | None = None) -> ExtractReport:
    """Bring the cache up to date with the data folder for the requested backbones."""
    started = time.perf_counter()
    specs = resolve_backbones(cfg.backbones)
    device = resolve_device(cfg.device)
    folder = scan_data_folder(cfg.data)
    path = cache_path(cfg.workdir)
    report = ExtractReport(cache=path)
    with workdir_lock(cfg.workdir):
        jobs = _plan(folder, specs, cfg, path, report)
        if any(jobs.values()):
            models = _load_models({job.spec.name: job.spec for split_jobs in jobs.values() for job in split_jobs}, cfg, device)
            for job in (job for split_jobs in jobs.values() for job in split_jobs):
                job.shape = models[job.spec.name].feature_shape(cfg.image_size)
            for split_name, split_jobs in jobs.items():
                if split_jobs:
                    report.images_decoded += _run_split(folder, folder.splits[split_name], split_jobs, models, cfg, device, progress)
                    report.computed += [(split_name, job.spec.name) for job in split_jobs]
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
        report.skipped_files = {split: cache.skipped(split) for split in cache.splits if cache.skipped(split)}
    report.seconds = time.perf_counter() - started
    return report


def _plan(folder: DataFolder, specs: list[BackboneSpec], cfg: ExtractConfig, path: Path, report: ExtractReport) -> dict[str, list[_Job]]:
    try:
        cache = FeatureCache(path) if path.exists() else None
    except CacheError as err:
        log.warning("%s; rebuilding it from scratch", err)
        cache = None
    jobs: dict[str, list[_Job]] = {}
    try:
        for split in folder.splits:
            fingerprint = folder.fingerprint(split)
            jobs[split] = []
            for spec in specs:
                settings = feature_settings(spec, cfg)
                if not cfg.force and is_up_to_date(cache, split, fingerprint, spec.name, settings):
                    report.up_to_date.append((split, spec.name))
                else:
                    staging = Staging(cfg.workdir, split, spec.name, Staging.key(settings, fingerprint))
                    jobs[split].append(_Job(spec, settings, staging))
    finally:
        if cache is not None:
            cache.close()
    return jobs


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


def _run_split(folder: DataFolder, split: Split, jobs: list[_Job], models: dict[str, FrozenBackbone],
               cfg: ExtractConfig, device: torch.device, progress: ProgressFn | None) -> int:
    """One pass over the split's images; each batch goes to every backbone that still needs it."""
    done = {job.spec.name: job.staging.done_until() for job in jobs}
    first = min(done.values())
    if first:
        log.info("%s: resuming at image %d of %d", split.name, first, len(split.paths))
    images = ImageFiles(folder.root, split.paths, range(first, len(split.paths)), cfg.image_size)
    workers = default_workers(device) if cfg.workers is None else cfg.workers
    loader = DataLoader(
        images,
        batch_size=cfg.batch_size,
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
    start = first
    with torch.inference_mode(), autocast:
        for batch in loader:
            stop = start + len(batch.rows) + len(batch.failed_rows)
            for row, reason in zip(batch.failed_rows, batch.failed_reasons):
                log.warning("skipping %s: cannot decode it (%s)", folder.root / split.paths[row], reason)
            pixels = batch.images.to(device, non_blocking=True)
            for job in jobs:
                if done[job.spec.name] >= stop:
                    continue
                features = models[job.spec.name](pixels).float().cpu().numpy() if len(batch.rows) else np.empty((0,))
                job.staging.save(start, stop, batch.rows.numpy(), features, batch.failed_rows, batch.failed_reasons)
            if progress is not None:
                progress(split.name, stop - start, len(images))
            start = stop
    return len(images)
