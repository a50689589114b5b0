"""Fine-tuning: train a backbone's top blocks (or all of it, from scratch) on the data's classes.

    from pipeline.finetune import FinetuneConfig, finetune
    result = finetune(FinetuneConfig(data="data/dvc", workdir="runs/dvc", backbone="resnet34", train_layers="layer4"))
    torchrun --nproc_per_node=4 -m pipeline finetune --data data/dvc --workdir runs/dvc --train-layers all

The loop is torchvision's reference recipe cut short (`train_one_epoch`, `evaluate`, a checkpoint with
model, optimizer, scheduler and epoch). Each epoch reseeds torch from (seed, epoch), so a run resumed
from its checkpoint takes the same shuffles and augmentations as an uninterrupted one. The result is
<workdir>/finetuned/<backbone>.pt, which `extract --weights` and `predict --model finetuned-<backbone>` read.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from features import (FINETUNED_FORMAT, BackboneSpec, ConfigError, DataLayoutError, Ranks, atomic_output, build_model,
                      default_image_size, default_workers, file_sha256, final_linear, finetuned_path, get_backbone, load_finetuned,
                      open_rgb, preprocessing, resolve_device, scan_data_folder, square_tensor, torchrun_ranks,
                      workdir_lock)

from .blend import accuracy, log_loss, stratified_holdout
from .config import FINETUNED_PREFIX, FinetuneConfig
from .predict import Probabilities
from .status import finetuned_checkpoint, finetuned_dir, metrics_dir
from .train import write_outputs, write_summary

log = logging.getLogger(__name__)

# Called with (what, images done, images in total, running loss or None) as batches finish.
ProgressFn = Callable[[str, int, int, "float | None"], None]
STATE_FORMAT = 1  # bumped when the resume checkpoint changes, so an old one starts over instead of failing


@dataclass
class FinetuneResult:
    checkpoint: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    trained: bool = True  # False when the finished run was already there
    skipped: list[str] = field(default_factory=list)  # files that could not be decoded

    @property
    def name(self) -> str:
        return model_name(self.checkpoint.stem)


def model_name(backbone: str) -> str:
    return FINETUNED_PREFIX + backbone


# ---------------------------------------------------------------- what trains


def blocks(spec: BackboneSpec, model: nn.Module) -> list[str]:
    """The units --train-layers names, bottom to top, the classifier last: the registry's, else the model's
    top-level children with parameters, Sequential containers opened one level."""
    if spec.blocks:
        return list(spec.blocks)
    names = []
    for name, child in model.named_children():
        children = list(child.named_children()) if isinstance(child, nn.Sequential) else [("", child)]
        names += [f"{name}.{sub}" if sub else name for sub, part in children if any(True for _ in part.parameters())]
    return names


def chosen_blocks(spec: BackboneSpec, model: nn.Module, train_layers: str) -> list[str]:
    """The blocks to unfreeze, always with the (new) classifier; `all` is every parameter."""
    available = blocks(spec, model)
    head = _block_of(final_linear(model), available) or available[-1]
    if train_layers.strip() == "all":
        return available
    asked = [n.strip() for n in train_layers.split(",") if n.strip()]
    unknown = [n for n in asked if n not in available]
    if unknown or not asked:
        raise ConfigError(f"--train-layers {train_layers!r}: {spec.name} has no block {', '.join(unknown) or '(none given)'}; "
                          f"use all or a comma list of {', '.join(available)} (bottom to top)")
    return [n for n in available if n in asked or n == head]


def _block_of(parameter: str, names: Sequence[str]) -> str | None:
    return next((b for b in names if parameter == b or parameter.startswith(b + ".")), None)


def builder_kwargs(spec: BackboneSpec) -> dict[str, Any]:
    """What torchvision's builder needs besides num_classes for this architecture; saved in the checkpoint."""
    kwargs = {k: v for k, v in spec.random_kwargs.items() if k != "init_weights"}
    if spec.builder == "inception_v3":
        kwargs["aux_logits"] = False  # the auxiliary classifier only helps from scratch on ImageNet
    return kwargs


def new_model(spec: BackboneSpec, weights: str, n_classes: int, seed: int) -> nn.Module:
    """The architecture with n_classes outputs, its classifier initialised as torchvision does, every other
    weight from `weights` (pretrained, or seeded random)."""
    if spec.source != "torchvision":
        raise ConfigError(f"finetune trains torchvision models; {spec.name} is a {spec.source} model")
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torchvision.models.get_model(spec.builder, weights=None, num_classes=n_classes, **builder_kwargs(spec))
    if weights == "random":
        return model
    head = final_linear(model)
    own = model.state_dict()
    state = {k: v for k, v in build_model(spec, weights, seed).state_dict().items()
             if k in own and _block_of(k, [head]) is None}
    missing = [k for k in own if k not in state and _block_of(k, [head]) is None]
    if missing:
        raise ConfigError(f"the {weights} weights of {spec.name} lack {', '.join(missing[:3])}; they do not fit its "
                          f"torchvision architecture")
    model.load_state_dict(state, strict=False)
    return model


def freeze(model: nn.Module, trained: Sequence[str], every: bool) -> list[tuple[str, list[nn.Parameter]]]:
    """Freeze all but the trained blocks; (block, parameters) top first, for per-block learning rates.
    With `every`, parameters outside any block (a stem) train too, as the lowest group."""
    groups: dict[str, list[nn.Parameter]] = {b: [] for b in reversed(trained)}
    stem: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        block = _block_of(name, trained)
        param.requires_grad_(block is not None or every)
        if block is not None:
            groups[block].append(param)
        elif every:
            stem.append(param)
    found = [(b, ps) for b, ps in groups.items() if ps]
    return found + ([("stem", stem)] if stem else [])


def set_modes(model: nn.Module, trained: Sequence[str], every: bool, bn_train: bool) -> None:
    """model.train(), but BatchNorm in frozen blocks (and, without bn_train, everywhere) keeps its statistics."""
    model.train()
    for name, module in model.named_modules():
        unfrozen = every or _block_of(name, trained) is not None
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not (bn_train and unfrozen):
            module.eval()


# ---------------------------------------------------------------- data


class ImageRows(Dataset):
    """Files of a split as (uint8 image, label, row); an undecodable file gives an empty image, never an error."""

    def __init__(self, root: Path, paths: Sequence[str], labels: np.ndarray, size: int,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.root, self.paths, self.labels, self.size, self.transform = root, list(paths), labels, size, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int, int]:
        try:
            image = square_tensor(open_rgb(self.root / self.paths[row]), self.size)
        except Exception as err:  # noqa: BLE001 - any decoding failure: the file is skipped and named
            log.debug("cannot decode %s: %s", self.paths[row], err)
            return torch.zeros(0, dtype=torch.uint8), int(self.labels[row]), row
        return (self.transform(image) if self.transform else image), int(self.labels[row]), row


def collate(items: list[tuple[torch.Tensor, int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """(images, labels, rows) of the decoded items, and the rows that failed."""
    good = [item for item in items if item[0].numel()]
    failed = [row for image, _, row in items if not image.numel()]
    if not good:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), failed
    return (torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), torch.tensor([g[2] for g in good]),
            failed)


def augmentation(kind: str, size: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Training-split augmentation on uint8 tensors (torchvision.transforms.v2)."""
    if kind == "none":
        return None
    # scale from 0.25, not torchvision's ImageNet 0.08: small datasets and small images lose too much at 8 %
    steps: list[Any] = [v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    if kind == "trivial":
        steps.append(v2.TrivialAugmentWide())
    return v2.Compose(steps)


@dataclass
class _Data:
    root: Path
    classes: tuple[str, ...]
    train: ImageRows
    val: ImageRows
    val_description: str
    key: str  # changes with the files of both parts


def _load_data(cfg: FinetuneConfig, size: int) -> _Data:
    folder = scan_data_folder(cfg.data)
    split = folder.splits.get(cfg.train_split)
    if split is None or not split.labeled:
        raise DataLayoutError(f"{cfg.data} has no labeled split {cfg.train_split!r} to fine-tune on; "
                              f"splits: {', '.join(folder.splits) or 'none'}")
    train_paths, train_labels = np.array(split.paths, dtype=object), split.labels
    if cfg.val_split in folder.splits and folder.splits[cfg.val_split].labeled:
        val = folder.splits[cfg.val_split]
        val_paths, val_labels, described = np.array(val.paths, dtype=object), val.labels, cfg.val_split
        key = folder.fingerprint(cfg.train_split) + folder.fingerprint(cfg.val_split)
    else:  # the heads' rule: a stratified share of train, drawn with the seed
        held = stratified_holdout(train_labels, cfg.holdout, cfg.seed)
        val_paths, val_labels = train_paths[held], train_labels[held]
        train_paths, train_labels = train_paths[~held], train_labels[~held]
        described = f"{cfg.holdout:.0%} of {cfg.train_split} (seed {cfg.seed})"
        key = folder.fingerprint(cfg.train_split) + described
    return _Data(folder.root, folder.classes,
                 ImageRows(folder.root, list(train_paths), train_labels, size, augmentation(cfg.augment, size)),
                 ImageRows(folder.root, list(val_paths), val_labels, size), described, key)


# ---------------------------------------------------------------- the loop


class _Normalize(nn.Module):
    """uint8 (N, 3, H, W) -> the weights' normalised float input, on the device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std


@dataclass
class _Run:
    """Everything one training step needs."""

    model: nn.Module  # DDP-wrapped under torchrun
    normalize: _Normalize
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    cfg: FinetuneConfig
    trained: list[str]
    every: bool  # --train-layers all: the stem outside any block trains too
    bn_train: bool
    skipped: set[str] = field(default_factory=set)


def _autocast(run: _Run) -> Any:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.cfg.precision)
    return torch.autocast(run.device.type, dtype=dtype, enabled=dtype is not None)


def _inputs(run: _Run, images: torch.Tensor) -> torch.Tensor:
    x = run.normalize(images.to(run.device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if run.cfg.channels_last else x


def _note_failed(run: _Run, dataset: ImageRows, failed: list[int]) -> None:
    for row in failed:
        if dataset.paths[row] not in run.skipped:
            log.warning("skipping %s: it cannot be decoded", dataset.paths[row])
            run.skipped.add(dataset.paths[row])


def train_one_epoch(run: _Run, loader: DataLoader, progress: ProgressFn | None, what: str) -> dict[str, float]:
    """One pass over the training split; optimizer steps every `accumulate` batches."""
    module = run.model.module if hasattr(run.model, "module") else run.model
    set_modes(module, run.trained, run.every, run.bn_train)
    total_loss = correct = seen = 0.0
    steps = len(loader)
    run.optimizer.zero_grad(set_to_none=True)
    for i, (images, labels, _, failed) in enumerate(loader):
        _note_failed(run, loader.dataset, failed)
        if len(labels):
            labels = labels.to(run.device, non_blocking=True)
            with _autocast(run):
                logits = run.model(_inputs(run, images))
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=run.cfg.label_smoothing)
            run.scaler.scale(loss / run.cfg.accumulate).backward()
            total_loss += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
        if (i + 1) % run.cfg.accumulate == 0 or i + 1 == steps:
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
            run.scheduler.step()
        if progress is not None:
            progress(what, len(labels) + len(failed), len(loader.sampler), total_loss / max(seen, 1))  # this rank's images
    return {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


@torch.inference_mode()
def evaluate(model: nn.Module, normalize: _Normalize, loader: DataLoader, device: torch.device,
             tta: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(probabilities float64, rows, failed rows) over a loader; with tta the mirror's probabilities averaged in."""
    model.eval()
    probas, rows, failed_rows = [], [], []
    for images, _, batch_rows, failed in loader:
        failed_rows += failed
        if not len(batch_rows):
            continue
        x = normalize(images.to(device))
        proba = model(x).double().softmax(1)
        if tta:
            proba = (proba + model(x.flip(-1)).double().softmax(1)) / 2
        probas.append(proba.cpu())
        rows.append(batch_rows)
    n_classes = model.get_submodule(final_linear(model)).out_features
    empty = torch.zeros(0, n_classes, dtype=torch.float64)
    return (torch.cat(probas) if probas else empty), (torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)), \
        failed_rows


def _validate(run: _Run, loader: DataLoader) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    module = run.model.module if hasattr(run.model, "module") else run.model
    with _autocast(run):
        proba, rows, failed = evaluate(module, run.normalize, loader, run.device)
    _note_failed(run, loader.dataset, failed)
    labels = torch.from_numpy(loader.dataset.labels[rows.numpy()])
    return {"val_loss": log_loss(proba, labels), "val_accuracy": accuracy(proba, labels)}, proba, rows


def _optimizer(cfg: FinetuneConfig, groups: list[tuple[str, list[nn.Parameter]]]) -> torch.optim.Optimizer:
    """One parameter group per block, each block's lr lr_decay times the one above it."""
    params = [{"params": ps, "lr": cfg.lr * cfg.lr_decay ** depth, "name": name} for depth, (name, ps) in enumerate(groups)]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(cfg: FinetuneConfig, optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle" and steps >= 3:  # its warm-up needs a step or more, and one after it
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                   total_steps=steps, pct_start=min(max(cfg.warmup, 1.5 / steps), 0.5))
    warm = max(1, round(cfg.warmup * steps))

    def factor(step: int) -> float:  # linear warm-up, then cosine to 0
        return (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _settings(cfg: FinetuneConfig) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}


def _run_key(cfg: FinetuneConfig, data: _Data, size: int) -> str:
    """Changes with every setting that shapes the result (not device, workers or force) and with the files."""
    settings = {k: v for k, v in _settings(cfg).items() if k not in ("device", "workers", "force", "workdir", "data")}
    weights = cfg.weights
    if (path := finetuned_path(weights)) is not None:
        weights = file_sha256(path)
    blob = json.dumps([settings, weights, size, data.key, data.classes], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _loader(dataset: ImageRows, cfg: FinetuneConfig, device: torch.device, shuffle: bool, sampler: Any = None,
            generator: torch.Generator | None = None) -> DataLoader:
    workers = default_workers(device) if cfg.workers is None else cfg.workers
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda", generator=generator,
                      persistent_workers=False)


def finetune(cfg: FinetuneConfig, progress: ProgressFn | None = None) -> FinetuneResult:
    """Train, resuming from the workdir's checkpoint of the same run; write the fine-tuned checkpoint and metrics."""
    spec = get_backbone(cfg.backbone)
    size = cfg.image_size or default_image_size(spec, cfg.weights)
    data = _load_data(cfg, size)
    device = resolve_device(cfg.device)
    with torchrun_ranks(device) as ranks:
        device = ranks.device(device)
        if ranks.main:
            with workdir_lock(cfg.workdir):
                return _finetune(cfg, spec, size, data, device, ranks, progress)
        return _finetune(cfg, spec, size, data, device, ranks, None)


def _finetune(cfg: FinetuneConfig, spec: BackboneSpec, size: int, data: _Data, device: torch.device, ranks: Ranks,
              progress: ProgressFn | None) -> FinetuneResult:
    out = finetuned_dir(cfg.workdir) / f"{spec.name}.pt"
    state_path = finetuned_dir(cfg.workdir) / f"{spec.name}.state.pt"
    key = _run_key(cfg, data, size)
    state = _read_state(state_path, key) if not cfg.force else None
    metrics_file = metrics_dir(cfg.workdir) / f"{model_name(spec.name)}.json"
    if state is not None and state["finished"]:
        if out.exists() and metrics_file.exists():
            log.info("%s: up to date (%s)", model_name(spec.name), out)
            return FinetuneResult(out, json.loads(metrics_file.read_text()), state["history"], trained=False)
        state = None  # finished, but its outputs were removed since: train again
    model = new_model(spec, cfg.weights, len(data.classes), cfg.seed)
    trained = chosen_blocks(spec, model, cfg.train_layers)
    every = cfg.train_layers.strip() == "all"
    groups = freeze(model, trained, every)
    bn_train = cfg.bn_train if cfg.bn_train is not None else cfg.weights == "random"
    prep = preprocessing(spec, cfg.weights)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(cfg, groups)
    steps_per_epoch = math.ceil(math.ceil(len(data.train) / (cfg.batch_size * ranks.world_size)) / cfg.accumulate)
    scheduler = _scheduler(cfg, optimizer, steps_per_epoch * cfg.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16" and device.type == "cuda")
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "val_loss": math.inf, "state": None}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, best = state["history"], state["best"]
        log.info("%s: resuming after epoch %d of %d", model_name(spec.name), len(history), cfg.epochs)
    wrapped = model
    if ranks.world_size > 1:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    run = _Run(wrapped, _Normalize(prep.mean, prep.std).to(device), optimizer, scheduler, scaler, device, cfg, trained,
               every, bn_train)
    sampler = None
    if ranks.world_size > 1:
        sampler = torch.utils.data.DistributedSampler(data.train, ranks.world_size, ranks.rank, seed=cfg.seed)
    val_loader = _loader(data.val, cfg, device, shuffle=False)
    stopped = len(history) - best["epoch"] >= cfg.patience
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        if stopped:
            break
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # this epoch's shuffle, augmentation and dropout
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        start = time.perf_counter()
        row = {"epoch": epoch, **train_one_epoch(run, _loader(data.train, cfg, device, True, sampler, generator),
                                                 progress, f"epoch {epoch}/{cfg.epochs}")}
        row["images_per_second"] = len(data.train) / (time.perf_counter() - start)
        metrics, _, _ = _validate(run, val_loader)
        row.update(metrics, lr=optimizer.param_groups[0]["lr"])
        history.append(row)
        if row["val_loss"] < best["val_loss"]:
            best = {"epoch": epoch, "val_loss": row["val_loss"], "state": copy.deepcopy(model.state_dict())}
        stopped = epoch - best["epoch"] >= cfg.patience
        log.info("epoch %d: train loss %.4f, val loss %.4f, val accuracy %.4f", epoch, row["train_loss"],
                 row["val_loss"], row["val_accuracy"])
        if ranks.main:
            _write_state(state_path, {"format": STATE_FORMAT, "key": key, "finished": False, "model": model.state_dict(),
                                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                      "scaler": scaler.state_dict(), "history": history, "best": best})
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    metrics, proba, rows = _validate(run, val_loader)
    result = FinetuneResult(out, {}, history, skipped=sorted(run.skipped))
    if ranks.main:
        result.metrics = _write_results(cfg, spec, size, data, model, prep, trained, bn_train, best["epoch"], history,
                                        proba, rows)
        _write_state(state_path, {"format": STATE_FORMAT, "key": key, "finished": True, "history": history})
    return result


def _read_state(path: Path, key: str) -> dict[str, Any] | None:
    """The resume checkpoint if it belongs to this very run, else None (a different run starts over)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged checkpoint: start over, say so
        log.warning("cannot read %s (%s); starting over", path, err)
        return None
    if state.get("format") != STATE_FORMAT or state.get("key") != key:
        log.info("%s belongs to a run with other settings or files; starting over", path)
        return None
    return state


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def _write_results(cfg: FinetuneConfig, spec: BackboneSpec, size: int, data: _Data, model: nn.Module, prep: Any,
                   trained: list[str], bn_train: bool, best_epoch: int, history: list[dict], proba: torch.Tensor,
                   rows: torch.Tensor) -> dict[str, Any]:
    name = model_name(spec.name)
    labels = torch.from_numpy(data.val.labels[rows.numpy()])
    train_labels = data.train.labels
    kept = history[best_epoch - 1] if best_epoch else {}
    metrics = {
        "model": name, "kind": "finetuned", "backbones": [spec.name], "views": [], "val_split": data.val_description,
        "n_train": len(data.train), "n_val": len(labels), "val_accuracy": accuracy(proba, labels),
        "val_log_loss": log_loss(proba, labels), "val_log_loss_uncalibrated": None, "temperature": 1.0,
        "train_accuracy": kept.get("train_accuracy"), "train_log_loss": kept.get("train_loss"),
        "chosen": {"epochs": best_epoch}, "trained_blocks": trained, "classes": list(data.classes),
    }
    checkpoint = {
        "format": FINETUNED_FORMAT, "backbone": spec.name, "builder_kwargs": builder_kwargs(spec),
        "classes": list(data.classes), "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "settings": {**_settings(cfg), "data": str(cfg.data.resolve()), "image_size": size, "bn_train": bn_train, "trained_blocks": trained},
        "preprocessing": {"mean": list(prep.mean), "std": list(prep.std), "image_size": size},
        "class_prior": (np.bincount(train_labels, minlength=len(data.classes)) / max(len(train_labels), 1)).tolist(),
        "metrics": metrics,
    }
    out = finetuned_dir(cfg.workdir) / f"{spec.name}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        torch.save(checkpoint, tmp)
    paths = [data.val.paths[r] for r in rows.tolist()]
    write_outputs(cfg.workdir, name, metrics, history, paths, labels, proba, data.classes)
    write_summary(cfg.workdir)
    return metrics


# ---------------------------------------------------------------- predicting


def _checkpoint_of(workdir: Path, model: str) -> tuple[BackboneSpec, Path]:
    backbone = model[len(FINETUNED_PREFIX):]
    path = finetuned_checkpoint(workdir, model)
    if not path.exists():
        raise ConfigError(f"no fine-tuned {backbone or 'network'} in {finetuned_dir(workdir)}; run `cnnfeat finetune "
                          f"--backbone {backbone or '<name>'} --workdir {workdir}` first")
    return get_backbone(backbone), path


def finetuned_data(workdir: Path, model: str, data: Path | None = None) -> Path:
    """The data folder to predict from: the one given, else the one the network was trained on."""
    spec, path = _checkpoint_of(workdir, model)
    return Path(data) if data is not None else Path(load_finetuned(path, spec)["settings"]["data"])


def finetuned_probabilities(workdir: Path, model: str, split: str, device: str = "auto", data: Path | None = None,
                            tta: bool = False, batch_size: int = 64, workers: int | None = None) -> Probabilities:
    """The fine-tuned network on every file of a split, decoded as in training; undecodable files get the
    training split's class frequencies."""
    spec, path = _checkpoint_of(workdir, model)
    saved = load_finetuned(path, spec)
    folder = scan_data_folder(data or saved["settings"]["data"])
    if split not in folder.splits:
        raise DataLayoutError(f"{folder.root} has no split {split!r}; splits: {', '.join(folder.splits)}")
    if folder.splits[split].labeled and folder.classes != tuple(saved["classes"]):
        raise DataLayoutError(f"{folder.root} has classes {list(folder.classes)}, the model {saved['classes']}")
    target = resolve_device(device)
    network = build_model(spec, str(path)).to(target)
    prep = saved["preprocessing"]
    rows = folder.splits[split]
    dataset = ImageRows(folder.root, rows.paths, rows.labels, int(prep["image_size"]))
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate,
                        num_workers=default_workers(target) if workers is None else workers)
    proba, done, failed = evaluate(network, _Normalize(prep["mean"], prep["std"]).to(target), loader, target, tta)
    full = np.tile(np.asarray(saved["class_prior"], dtype=np.float64), (len(rows.paths), 1))
    full[done.numpy()] = proba.numpy()
    fallback = [rows.paths[r] for r in sorted(failed)]
    for name in fallback:
        log.warning("%s cannot be decoded: it gets the class frequencies", name)
    return Probabilities(list(rows.paths), rows.labels.copy(), full, tuple(saved["classes"]), fallback)
