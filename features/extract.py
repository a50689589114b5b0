"""Stage 1: every image decoded once, fed to every requested frozen backbone, cached in HDF5.

    from features import ExtractConfig, extract
    report = extract(ExtractConfig(data="data/digits", workdir="runs/digits", backbones=("all",)))

Work is planned per (split, dataset), a dataset being a backbone or its mirrored view
(`<backbone>_hflip`): one whose cached features match the files and settings is skipped; the
others share one pass over each split's images, each image decoded once and resized once per
input size in use. Backbones that want the same size and normalisation get one normalised batch.

ImageFeaturizer runs the same pass on images given one by one (files anywhere, or pictures in memory)
for datasets whose settings a cache recorded, keeping the features in memory: what a trained model
reads when it predicts new images.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader

from . import __version__
from .backbones import (FrozenBackbone, default_image_size, load_backbone, normalize, weights_file, weights_from_label,
                        weights_label)
from .config import HFLIP, ExtractConfig, ProgressFn
from .devices import default_workers, resolve_device
from .distributed import torchrun_ranks
from .checkpoint import feature_name, weights_tag
from .errors import CacheError, ConfigError, WeightsUnavailableError
from .folder import DataFolder, Split, scan_data_folder, scan_prepared_folder
from .images import (DecodedBatch, DecodeStream, ImageFiles, ImageSource, collate_decoded, decode_on_device,
                     image_source)
from .registry import BackboneSpec, get_backbone, resolve_backbones
from .files import workdir_lock
from .staging import STAGING_SETTINGS, VALUE_SETTINGS, Staging
from .store import FeatureCache, SplitContent, cache_path, commit_cache, dataset_name, is_up_to_date

log = logging.getLogger(__name__)

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ExtractReport:
    cache: Path
    computed: list[tuple[str, str]] = field(default_factory=list)  # (split, dataset)
    up_to_date: list[tuple[str, str]] = field(default_factory=list)
    skipped_files: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    images_per_rank: list[int] = field(default_factory=list)  # images decoded by each torchrun rank (one: a plain run)
    build_seconds: dict[str, float] = field(default_factory=dict)  # backbone -> seconds to build and load it
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what was replaced or dropped, one line each
    main: bool = True  # False on torchrun ranks other than 0, which leave reporting to rank 0

    @property
    def images_decoded(self) -> int:
        return sum(self.images_per_rank)

    @property
    def images_per_second(self) -> float:
        return self.images_decoded / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class _Target:
    """One backbone as this run uses it: its weights, pooling and precision, and its input size."""

    spec: BackboneSpec
    size: int
    weights: str
    seed: int
    pool: str
    precision: str

    @property
    def name(self) -> str:
        """Its features' name: the backbone's, with the weights' tag where they are not the stock ones."""
        return feature_name(self.spec.name, weights_tag(self.weights))

    @property
    def model_key(self) -> tuple[str, str, int, str, str]:
        """Targets with equal keys share one built model (their sizes differ only in its input)."""
        return self.spec.name, self.weights, self.seed, self.pool, self.precision


@dataclass
class _Job:
    target: _Target
    view: str  # "" or "hflip"
    settings: dict
    staging: Staging | None = None  # where extraction stages its batches; None: features kept in memory
    shape: tuple[int, ...] = ()  # of one stored feature, known once the model is loaded
    name: str = ""  # the dataset's name where it differs from the backbone's (a trained model's recorded name)
    reused: np.ndarray | None = None  # scanned rows whose features (or skipping) the old cache keeps: unchanged files

    @property
    def dataset(self) -> str:
        return self.name or dataset_name(self.target.name, self.view)


DEVICE_DECODER, PIL_DECODER = "torchvision.io.decode_jpeg", "PIL"  # recorded as each dataset's "decode"


def decodes_on_device(cfg: ExtractConfig, device: torch.device) -> bool:
    """nvJPEG on a GPU keeps the CPU cores from being the bottleneck; on a CPU, PIL in the workers is as fast."""
    return cfg.decode == "device" or (cfg.decode == "auto" and device.type == "cuda")


def conv_precision(precision: str, device: torch.device) -> str:
    """What convolutions really compute in: on CUDA, torch runs fp32 convolutions in TF32 by default."""
    # CUDA: torch.backends.cudnn.allow_tf32 defaults to True (documented under "TensorFloat-32")
    if precision == "fp32" and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return precision


# What the configs of one extraction may differ in: each group of backbones has its weights and size
PER_GROUP = ("backbones", "weights", "image_size")


def _targets(configs: Sequence[ExtractConfig]) -> list[_Target]:
    """Each backbone of each config with the size it runs at: its image_size, else its own default. Where two
    would make features of one name, the later config's wins."""
    shared = [{k: v for k, v in vars(cfg).items() if k not in PER_GROUP} for cfg in configs]
    if any(other != shared[0] for other in shared[1:]):
        differ = sorted(k for other in shared[1:] for k in other if other[k] != shared[0][k])
        raise ConfigError(f"the feature groups of one extraction differ in {', '.join(differ)}; only their "
                          f"{', '.join(PER_GROUP)} may differ")
    targets = {}
    for cfg in configs:
        for spec in resolve_backbones(cfg.backbones):
            target = _Target(spec, cfg.image_size or default_image_size(spec, cfg.weights), cfg.weights, cfg.seed,
                             cfg.pool, cfg.precision)
            targets[target.name] = target
    return list(targets.values())


def feature_names(configs: ExtractConfig | Sequence[ExtractConfig]) -> list[str]:
    """The names extraction gives these configs' plain-view features (the backbone, @ its weights' tag where they are
    not the stock ones): what the heads are trained on."""
    return [target.name for target in _targets([configs] if isinstance(configs, ExtractConfig) else configs)]


def feature_settings(target: _Target, view: str, device: torch.device, on_device: bool) -> dict:
    """Provenance recorded on each cached dataset; store.VALUE_SETTINGS among them decide staleness."""
    spec = target.spec
    return {
        "backbone": spec.name,
        "weights": weights_label(spec, target.weights, target.seed),
        "weights_file": weights_file(spec, target.weights),
        "pool": target.pool,
        "image_size": target.size,
        "precision": target.precision,
        "orientation": "exif",  # images are turned upright as their EXIF orientation says
        "view": view,
        "decode": DEVICE_DECODER if on_device else PIL_DECODER,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,  # CUDA: the GPU's name
        "conv_precision": conv_precision(target.precision, device),
        "cnnfeat_version": __version__,
        "torch_version": str(torch.__version__),  # TorchVersion is a str subclass h5py cannot store
        "torchvision_version": str(torchvision.__version__),
    }


def extract(cfg: ExtractConfig | Sequence[ExtractConfig], progress: ProgressFn | None = None) -> ExtractReport:
    """Bring the cache up to date with the data folder for the requested backbones: one config, or one per
    group of backbones with their own weights and image size (a job's [[features]]), in one pass.

    Under torchrun every rank calls this; they share the work and rank 0 writes the cache.
    """
    started = time.perf_counter()
    configs = [cfg] if isinstance(cfg, ExtractConfig) else list(cfg)
    targets, cfg = _targets(configs), configs[0]
    path = cache_path(cfg.workdir)
    with torchrun_ranks(resolve_device(cfg.device)) as ranks, ExitStack() as held:
        device = ranks.device(resolve_device(cfg.device))
        ranks.share(lambda: held.enter_context(workdir_lock(cfg.workdir)))
        plan = ranks.share(lambda: _plan(scan_prepared_folder(cfg.data), targets, cfg, device, path))
        report = ExtractReport(cache=path, up_to_date=plan.up_to_date, notes=plan.notes, main=ranks.main)
        running = [job for split, split_jobs in plan.jobs.items() for job in split_jobs
                   if not job.shape or any(job.dataset in needed for _, _, needed in plan.batches[split])]
        decoded, models = 0, {}
        if running:  # a job that keeps every row (files only removed) needs no model: the cache has its shape
            models, shapes = _load_models({job.target.model_key: job.target for job in running}, device,
                                          report.build_seconds)
            for job in running:
                job.shape, job.settings["layer"] = shapes[job.target.model_key], models[job.target.model_key].layer
        for split_name, split_jobs in plan.jobs.items():
            if plan.batches[split_name]:
                batches = ranks.mine(plan.batches[split_name])
                decoded += _run_split(plan.folder.root, plan.folder.splits[split_name], split_jobs, batches,
                                      models, cfg, device, progress if ranks.main else None)
            report.computed += [(split_name, job.dataset) for job in split_jobs]
        report.images_per_rank = ranks.gather(decoded)  # also waits for every rank's last batch
        report.skipped_files, dropped = ranks.share(lambda: _commit(plan, path))
        report.notes += dropped
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class _Plan:
    folder: DataFolder
    jobs: dict[str, list[_Job]]  # split -> the datasets to compute for it
    batches: dict[str, list[tuple[int, int, tuple[str, ...]]]]  # split -> (start, stop, datasets that need it)
    up_to_date: list[tuple[str, str]]
    notes: list[str] = field(default_factory=list)  # datasets replaced by features of other settings


def _plan(folder: DataFolder, targets: list[_Target], cfg: ExtractConfig, device: torch.device, path: Path) -> _Plan:
    try:
        cache = FeatureCache(path) if path.exists() else None
    except CacheError as err:
        log.warning("%s; rebuilding it from scratch", err)
        cache = None
    plan = _Plan(folder, {}, {}, [])
    Staging.remove_splits_other_than(cfg.workdir, set(folder.splits))
    try:
        for split in folder.splits:
            fingerprint = folder.fingerprint(split)
            cached = cache is not None and split in cache.splits
            # files unchanged since the split was cached keep their rows: only the others are decoded
            reusable = (cache.reusable_rows(split, folder.splits[split].paths, folder.identities(split))
                        if cached and not cfg.force and cache.fingerprint(split) != fingerprint else None)
            plan.jobs[split] = []
            for target in targets:
                for view in ("", *cfg.views):
                    settings = feature_settings(target, view, device, decodes_on_device(cfg, device))
                    name = dataset_name(target.name, view)
                    if not cfg.force and is_up_to_date(cache, split, fingerprint, name, settings):
                        plan.up_to_date.append((split, name))
                        continue
                    staging = Staging(cfg.workdir, split, name, Staging.key(settings, fingerprint))
                    staging.remove_other_versions()  # batches of older files or settings: never used again
                    job = _Job(target, view, settings, staging)
                    recorded = cache.settings(split, name) if cached and name in cache.datasets(split) else None
                    if recorded is not None and all(recorded.get(k) == settings[k] for k in STAGING_SETTINGS):
                        if reusable is not None:
                            job.reused, job.shape = reusable, cache.feature_shape(split, name)
                            job.settings["layer"] = recorded.get("layer", "")
                    elif recorded is not None:
                        differ = [f"{k} {recorded.get(k)} -> {settings[k]}" for k in STAGING_SETTINGS
                                  if recorded.get(k) != settings[k]]
                        plan.notes.append(f"replacing {split}/{name} ({', '.join(differ)})")
                    plan.jobs[split].append(job)
            plan.batches[split] = _missing_batches(len(folder.splits[split].paths), plan.jobs[split], cfg.batch_size)
    finally:
        if cache is not None:
            cache.close()
    return plan


def _missing_batches(rows: int, jobs: list[_Job], batch_size: int) -> list[tuple[int, int, tuple[str, ...]]]:
    """Batches over the rows some dataset has not staged yet, cut from each gap's start.

    An uninterrupted run's batches start at 0, batch_size, ...; a resumed run at the same batch size
    cuts the same ones, so it computes the same features, bit for bit.
    """
    done = {job.dataset: job.staging.done_rows(rows) | (job.reused if job.reused is not None else False)
            for job in jobs}
    needed = ~np.logical_and.reduce(list(done.values())) if done else np.zeros(rows, dtype=bool)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], needed.astype(np.int8), [0]))))
    batches = []
    for gap_start, gap_stop in zip(edges[::2].tolist(), edges[1::2].tolist()):
        for start in range(gap_start, gap_stop, batch_size):
            stop = min(start + batch_size, gap_stop)
            batches.append((start, stop, tuple(name for name, rows in done.items() if not rows[start:stop].all())))
    if batches and not needed.all():
        log.info("%d of %d images are already cached or staged", int((~needed).sum()), rows)
    return batches


def _commit(plan: _Plan, path: Path) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """Merge the staged batches (every rank's) and the unchanged files' rows into a new features.h5; the skipped
    files per split, and what the new cache no longer holds."""
    folder, jobs = plan.folder, plan.jobs
    dropped = []
    if any(jobs.values()) or not _cache_matches_folder(path, folder):
        contents = [
            SplitContent(name, folder.fingerprint(name), split.paths, split.labels, split.labeled,
                         {job.dataset: (job.staging, job.settings, job.shape) for job in jobs[name]},
                         folder.identities(name), frozenset(job.dataset for job in jobs[name] if job.reused is not None))
            for name, split in folder.splits.items()
        ]
        dropped = commit_cache(path, folder.classes, str(folder.root.resolve()), contents)
        for split_jobs in jobs.values():
            for job in split_jobs:
                job.staging.remove_all_versions()
    with FeatureCache(path) as cache:
        return {split: cache.skipped(split) for split in cache.splits if cache.skipped(split)}, dropped


def _cache_matches_folder(path: Path, folder: DataFolder) -> bool:
    try:
        with FeatureCache(path) as cache:
            return cache.splits == sorted(folder.splits) and all(
                cache.fingerprint(s) == folder.fingerprint(s) for s in folder.splits
            )
    except CacheError:
        return False


def _load_models(targets: dict[tuple, _Target], device: torch.device,
                 build_seconds: dict[str, float]) -> tuple[dict[tuple, FrozenBackbone], dict[tuple, tuple[int, ...]]]:
    """Every model loads, and proves it takes its image size, before any image is decoded: missing
    weights or a size a model refuses fail in seconds, every missing file named at once."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    models, shapes, missing = {}, {}, []
    for key, target in targets.items():
        started = time.perf_counter()
        try:
            backbone = load_backbone(target.spec, weights=target.weights, pool=target.pool, seed=target.seed)
        except WeightsUnavailableError as err:
            missing.append(err)
            continue
        shapes[key] = backbone.feature_shape(target.size)
        backbone.cast_weights(DTYPES[target.precision])
        models[key] = backbone.to(device, memory_format=torch.channels_last)
        build_seconds[target.spec.name] = time.perf_counter() - started
    if missing:
        raise WeightsUnavailableError.joined(missing)
    return models, shapes


def _run_split(root: Path, split: Split, jobs: list[_Job], batches: Sequence[tuple[int, int, tuple[str, ...]]],
               models: dict[tuple, FrozenBackbone], cfg: ExtractConfig, device: torch.device,
               progress: ProgressFn | None) -> int:
    """One pass over the given batches of a split; each batch goes to every dataset that needs it."""
    with StagingWriter() as writer:
        def stage(start: int, stop: int, needed: tuple[str, ...], batch: DecodedBatch,
                  features: dict[str, torch.Tensor]) -> None:
            for job in jobs:
                if job.dataset in needed:
                    writer.save(job.staging, start, stop, batch, features.get(job.dataset))

        return _pass(root, split.paths, split.name, jobs, batches, models, cfg.precision, decodes_on_device(cfg, device),
                     cfg.workers, device, progress, stage)


BatchSink = Callable[[int, int, tuple[str, ...], DecodedBatch, dict[str, torch.Tensor]], None]


def _pass(root: Path, paths: Sequence[ImageSource], what: str, jobs: list[_Job],
          batches: Sequence[tuple[int, int, tuple[str, ...]]], models: dict[tuple, FrozenBackbone], precision: str,
          on_device: bool, workers: int | None, device: torch.device, progress: ProgressFn | None,
          sink: BatchSink) -> int:
    """Decode the batches' images (PIL in the workers, or JPEGs on the device), run the datasets that need
    each batch, and hand sink (start, stop, needed, the decoded batch, {dataset: features})."""
    sizes = sorted({job.target.size for job in jobs})
    images = ImageFiles(root, paths, sizes, jpeg_bytes=on_device)
    workers = default_workers(device, on_device) if workers is None else workers
    loader = DataLoader(
        images,
        batch_sampler=[range(start, stop) for start, stop, _ in batches],
        num_workers=workers,
        collate_fn=collate_decoded,
        pin_memory=device.type == "cuda",  # CUDA: page-locked batches, so .to(non_blocking=True) overlaps compute
        prefetch_factor=(2 if on_device else 4) if workers else None,  # batches of bytes are quick to read
    )
    dtype = DTYPES[precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    # CUDA: cudnn.benchmark autotunes once per input shape; a short last batch padded to the full
    # size reuses the tuned kernels (documented in torch.backends.cudnn); a CPU would only do more work
    pad_to = max((stop - start for start, stop, _ in batches), default=0) if device.type == "cuda" else 0
    stream = DecodeStream(device)
    total = sum(stop - start for start, stop, _ in batches)
    if progress is not None:
        progress(what, 0, total)  # the split starts now: its rate counts from here
    with torch.inference_mode(), autocast:
        for (start, stop, needed), batch in zip(batches, loader):
            if on_device:
                batch = decode_on_device(batch, root, paths, sizes, device, stream)
            for row, reason in zip(batch.failed_rows, batch.failed_reasons):
                log.warning("skipping %s: cannot decode it (%s)", _describe(root, paths[row]), reason)
            features = (forward_features(batch.images, [job for job in jobs if job.dataset in needed], models, device,
                                         pad_to) if len(batch.rows) else {})
            sink(start, stop, needed, batch, features)
            if progress is not None:
                progress(what, stop - start, total)
    return total


def _describe(root: Path, item: ImageSource) -> str:
    return str(image_source(root, item)) if isinstance(item, (str, Path)) else f"a {type(item).__name__}"


def forward_features(images: dict[int, torch.Tensor], jobs: Sequence[_Job], models: dict[tuple, FrozenBackbone],
                     device: torch.device, pad_to: int = 0) -> dict[str, torch.Tensor]:
    """Each job's features of one batch of uint8 images (by size); images normalised once per (size, mean,
    std, view). Extraction's step, and the traced forward of an exported model."""
    inputs: dict[tuple, torch.Tensor] = {}
    features = {}
    for job in jobs:
        backbone = models[job.target.model_key]
        key = (job.target.size, backbone.prep.mean, backbone.prep.std, job.view)
        if key not in inputs:
            pixels = images[job.target.size].to(device, non_blocking=True)
            x = normalize(pixels.flip(-1) if job.view == HFLIP else pixels, backbone.mean, backbone.std)
            inputs[key] = pad_rows(x, pad_to)
        rows = images[job.target.size].shape[0]  # not len(): a traced batch size stays symbolic
        features[job.dataset] = backbone(inputs[key])[:rows]
    return features


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x with zero rows appended up to `rows` (unchanged if it has as many already)."""
    if rows <= x.shape[0]:
        return x
    return torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))]).contiguous(memory_format=torch.channels_last)


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


@dataclass
class ImageFeatures:
    """Features of images given one by one, in memory: what a trained model reads to predict them."""

    features: dict[str, np.ndarray]  # dataset -> (len(rows), ...) float32
    rows: np.ndarray  # positions (in the images given) of the decoded images, ascending
    failed: dict[int, str]  # position -> why that image could not be decoded


class ImageFeaturizer:
    """The features a cache recorded, made again for any images: no data folder, nothing written.

        featurizer = ImageFeaturizer({"resnet34": settings, "resnet34_hflip": flipped_settings}, device="cpu")
        found = featurizer(["new/a.jpg", pil_image])      # found.features["resnet34"]: (2, 512)

    Each dataset's recorded settings (FeatureCache.settings, or what a trained model kept of them) give
    its backbone, weights, pooling, size, precision, view and decoder; the datasets' models are built
    once, and each must record exactly the settings it was given (its VALUE_SETTINGS), so features
    made here are extraction's. `checkpoints`: fine-tuned files that recorded weights may name.
    `precision` overrides the recorded one (an exported model computes in fp32).
    """

    def __init__(self, datasets: Mapping[str, Mapping[str, Any]], device: str = "auto",
                 checkpoints: Sequence[Path] = (), precision: str | None = None) -> None:
        self.device = resolve_device(device)
        self.jobs: list[_Job] = []
        self.decoders: dict[str, bool] = {}  # dataset -> whether its JPEGs are decoded on the device
        for name, recorded in datasets.items():
            spec = get_backbone(str(recorded["backbone"]))
            weights, seed = weights_from_label(spec, str(recorded["weights"]), checkpoints)
            target = _Target(spec, int(recorded["image_size"]), weights, seed, str(recorded["pool"]),
                             precision or str(recorded["precision"]))
            view, on_device = str(recorded.get("view", "")), recorded.get("decode") == DEVICE_DECODER
            made = feature_settings(replace(target, precision=str(recorded["precision"])), view,
                                    self.device, on_device)
            differ = sorted(k for k in VALUE_SETTINGS if k in recorded and made[k] != recorded[k])
            if differ:
                raise CacheError(f"{name}: features recorded with {', '.join(f'{k}={recorded[k]!r}' for k in differ)} "
                                 f"cannot be made again here (this cnnfeat makes {', '.join(repr(made[k]) for k in differ)})")
            self.jobs.append(_Job(target, view, dict(recorded), name=name))
            self.decoders[name] = on_device
        self.models, shapes = _load_models({job.target.model_key: job.target for job in self.jobs}, self.device, {})
        for job in self.jobs:
            job.shape = shapes[job.target.model_key]

    @property
    def sizes(self) -> list[int]:
        """The image sizes the datasets take, ascending."""
        return sorted({job.target.size for job in self.jobs})

    def __call__(self, images: Sequence[ImageSource], batch_size: int = 64, workers: int | None = None,
                 progress: ProgressFn | None = None, what: str = "images") -> ImageFeatures:
        """Features of every image that decodes; the others named with their reason. Paths are taken as
        they are (relative to the working folder), pictures in memory as open_rgb takes them."""
        n = len(images)
        features = {job.dataset: np.zeros((n, *job.shape), dtype=np.float32) for job in self.jobs}
        failed: dict[int, str] = {}
        batches = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
        groups: dict[tuple[str, bool], list[_Job]] = {}
        for job in self.jobs:  # one pass per precision and decoder (one in practice)
            groups.setdefault((job.target.precision, self.decoders[job.dataset]), []).append(job)
        for (precision, on_device), jobs in groups.items():
            needed = tuple(job.dataset for job in jobs)

            def keep(start: int, stop: int, _: tuple[str, ...], batch: DecodedBatch,
                     found: dict[str, torch.Tensor]) -> None:
                rows = batch.rows.numpy()
                for name, values in found.items():
                    features[name][rows] = values.float().cpu().numpy()
                failed.update(zip(batch.failed_rows, batch.failed_reasons))

            _pass(Path(), images, what, jobs, [(start, stop, needed) for start, stop in batches], self.models,
                  precision, on_device, workers, self.device, progress, keep)
        rows = np.array([row for row in range(n) if row not in failed], dtype=np.int64)
        return ImageFeatures({name: values[rows] for name, values in features.items()}, rows, dict(sorted(failed.items())))

    def forward(self, images: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{dataset: features} of a batch already resized to each of `sizes` (uint8, on the device): the
        step an exported model traces."""
        return forward_features(images, self.jobs, self.models, self.device)
