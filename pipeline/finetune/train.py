"""Fine-tuning: train a backbone's top blocks (or all of it, from scratch) on the data's classes.

    from pipeline.finetune import FinetuneConfig, finetune
    result = finetune(FinetuneConfig(data="data/dvc", workdir="runs/dvc", backbone="resnet34", train_layers="layer4"))
    torchrun --nproc_per_node=4 -m pipeline finetune --data data/dvc --workdir runs/dvc --train-layers all

The loop is torchvision's reference recipe cut short (`train_one_epoch`, `evaluate`, a checkpoint with
model, optimizer, scheduler and epoch). Each epoch reseeds torch from (seed, epoch), so a run resumed
from its checkpoint takes the same shuffles and augmentations as an uninterrupted one. The epoch is
chosen (early stopping, the kept weights) on a stratified holdout of the training rows; the validation
rows are evaluated once, after training, so the numbers reported on them did not choose anything.
Under torchrun every rank joins every training step, evaluations are sharded across the ranks and
gathered, and rank 0 decides when to stop. The result is
<workdir>/finetuned/<backbone>.pt (features.checkpoint's format), which `extract --weights` and
`predict --model finetuned-<backbone>` read. Depends on features only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from features import (BackboneSpec, ConfigError, FinetunedCheckpoint, ProgressFn, Ranks, accuracy, atomic_output,
                      class_prior, default_image_size, default_workers, file_sha256, final_linear, finetuned_path, get_backbone,
                      log_loss, normalize, plain_settings, preprocessing, read_torch_file, resolve_device,
                      save_finetuned, torchrun_ranks, workdir_lock, WeightsUnavailableError)

from .config import FinetuneConfig, checkpoint_file, finetuned_dir, model_name
from .data import FinetuneData, ImageRows, collate, load_data
from .network import builder_kwargs, chosen_blocks, freeze, new_model, set_modes

log = logging.getLogger(__name__)

STATE_FORMAT = 4  # bumped when the resume checkpoint changes, so an old one starts over instead of failing
Normalizer = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, 3, H, W) on any device -> the network's input
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}  # --precision -> autocast dtype; fp32 runs without
Shard = tuple[torch.Tensor, torch.Tensor, list[int]]  # one rank's evaluation: probabilities, rows, failed rows


@dataclass
class FinetuneResult:
    checkpoint: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    trained: bool = True  # False when the finished run was already there
    skipped: list[str] = field(default_factory=list)  # files that could not be decoded
    classes: tuple[str, ...] = ()
    validation: dict[str, Any] = field(default_factory=dict)  # paths, labels, proba (tensors) of the validation rows

    @property
    def name(self) -> str:
        return model_name(self.checkpoint.stem)


def normalizer(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, channels_last: bool) -> Normalizer:
    """The weights' normalisation (features.normalize, as extraction does it), in the memory layout asked for."""
    mean_t, std_t = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (mean, std))

    def apply(images: torch.Tensor) -> torch.Tensor:
        x = normalize(images.to(device, non_blocking=True), mean_t, std_t)
        return x if channels_last else x.contiguous()

    return apply


@dataclass
class _Run:
    """Everything one training step needs."""

    model: nn.Module  # DDP-wrapped under torchrun
    normalize: Normalizer
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    cfg: FinetuneConfig
    trained: list[str]
    every: bool  # --train-layers all: the stem outside any block trains too
    bn_train: bool
    ranks: Ranks
    skipped: set[str] = field(default_factory=set)


def _autocast(device: torch.device, precision: str) -> Any:
    dtype = AUTOCAST.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _unwrapped(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _note_failed(run: _Run, dataset: ImageRows, failed: list[int]) -> None:
    for row in failed:
        if dataset.paths[row] not in run.skipped:
            log.warning("skipping %s: it cannot be decoded", dataset.paths[row])
            run.skipped.add(dataset.paths[row])


def train_one_epoch(run: _Run, loader: DataLoader, progress: ProgressFn | None, what: str) -> dict[str, float]:
    """One pass over the training split; optimizer steps every `accumulate` batches. The loss and accuracy are
    every rank's images together. A batch none of whose files decode still runs forward and backward, with zero
    loss: under DDP every rank must join each step's gradient all-reduce, or the ranks fall out of step and hang."""
    total_loss = correct = seen = 0.0
    batch_statistics = None  # whether BatchNorm takes each batch's statistics, as set_modes last left it
    steps = len(loader)
    size = loader.dataset.size
    run.optimizer.zero_grad(set_to_none=True)
    for i, (images, labels, _, failed) in enumerate(loader):
        _note_failed(run, loader.dataset, failed)
        if not len(labels):
            images = torch.zeros(0, 3, size, size, dtype=torch.uint8)  # collate's (0, 3, 1, 1) is too small for a stem
        labels = labels.to(run.device, non_blocking=True)
        # a single image has no batch statistics once its maps shrink to 1x1 (small images trained from scratch):
        # BatchNorm uses its running statistics for a batch of one, as frozen BatchNorm always does. The modes are
        # set only when that changes: walking every module costs milliseconds a batch (3 ms for DenseNet-121)
        wanted = run.bn_train and len(labels) > 1
        if wanted != batch_statistics:
            set_modes(_unwrapped(run.model), run.trained, run.every, wanted)
            batch_statistics = wanted
        with _autocast(run.device, run.cfg.precision):
            logits = run.model(run.normalize(images))
            summed = F.cross_entropy(logits.float(), labels, label_smoothing=run.cfg.label_smoothing, reduction="sum")
        run.scaler.scale(summed / max(len(labels), 1) / run.cfg.accumulate).backward()
        total_loss += summed.item()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        if (i + 1) % run.cfg.accumulate == 0 or i + 1 == steps:
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
            run.scheduler.step()
        if progress is not None:
            progress(what, len(labels) + len(failed), len(loader.sampler), total_loss / max(seen, 1))  # this rank's images
    total_loss, correct, seen = (sum(values) for values in zip(*run.ranks.gather((total_loss, correct, seen))))
    return {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


@torch.inference_mode()
def evaluate(model: nn.Module, inputs: Normalizer, loader: DataLoader, device: torch.device, tta: bool = False,
             precision: str = "fp32") -> Shard:
    """(probabilities float64, rows, failed rows) over a loader; with tta the mirror's probabilities averaged in.
    The forward runs in `precision`; the probabilities come from its logits cast up, outside autocast."""
    model.eval()

    def proba_of(x: torch.Tensor) -> torch.Tensor:
        with _autocast(device, precision):
            logits = model(x)
        return logits.double().softmax(1)

    probas, rows, failed_rows = [], [], []
    for images, _, batch_rows, failed in loader:
        failed_rows += failed
        if not len(batch_rows):
            continue
        x = inputs(images)
        proba = proba_of(x)
        if tta:
            proba = (proba + proba_of(x.flip(-1))) / 2
        probas.append(proba.cpu())
        rows.append(batch_rows)
    n_classes = model.get_submodule(final_linear(model)).out_features
    empty = torch.zeros(0, n_classes, dtype=torch.float64)
    return (torch.cat(probas) if probas else empty), (torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)), \
        failed_rows


def merge_shards(shards: list[Shard]) -> Shard:
    """Every rank's evaluation as one, in row order: what a single process evaluating every row gives."""
    rows = torch.cat([r for _, r, _ in shards])
    order = rows.argsort()
    return torch.cat([p for p, _, _ in shards])[order], rows[order], sorted(f for _, _, failed in shards for f in failed)


def _evaluate_rows(run: _Run, dataset: ImageRows, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, rows) of every row of dataset, on every rank: each rank evaluates every world_size-th row
    and the shares are gathered."""
    loader = _loader(dataset, run.cfg, run.device, shuffle=False, sampler=run.ranks.mine(range(len(dataset))))
    shard = evaluate(_unwrapped(run.model), run.normalize, loader, run.device, precision=precision)
    proba, rows, failed = merge_shards(run.ranks.gather(shard))
    _note_failed(run, dataset, failed)
    return proba, rows


def _holdout_metrics(run: _Run, holdout: ImageRows) -> dict[str, float]:
    """The numbers that choose the epoch, on the training rows held out for it."""
    proba, rows = _evaluate_rows(run, holdout, run.cfg.precision)
    labels = torch.from_numpy(holdout.labels[rows.numpy()])
    return {"holdout_loss": log_loss(proba, labels), "holdout_accuracy": accuracy(proba, labels)}


def _same_buffers(model: nn.Module, ranks: Ranks) -> None:
    """Rank 0's BatchNorm statistics on every rank. DDP sends them at the start of each forward, so after an
    epoch's last step each rank holds its own batch's update; the kept and evaluated network is rank 0's."""
    if ranks.world_size > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def _require_finite(loss: float, what: str, epoch: int, cfg: FinetuneConfig) -> None:
    """A NaN or infinite loss ends the run with the likely causes, before it leaves no epoch worth keeping."""
    if math.isfinite(loss):
        return
    overflow = f", or {cfg.precision} overflowed (try --precision fp32)" if cfg.precision != "fp32" else ""
    raise ConfigError(f"training diverged in epoch {epoch}: the {what} loss is {loss}. The learning rate is likely "
                      f"too high (--lr {cfg.lr:g}: try {cfg.lr / 10:g}){overflow}")


def _verdict(loss: float | None, best: dict[str, Any], epoch: int, patience: int) -> tuple[bool, bool]:
    """(this epoch is the best yet, stop after it); without a holdout loss every epoch is kept over the last."""
    if loss is None:
        return True, False
    improved = loss < best["loss"]
    return improved, epoch - (epoch if improved else best["epoch"]) >= patience


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


def _run_key(cfg: FinetuneConfig, data: FinetuneData, size: int) -> str:
    """Changes with every setting that shapes the result (not device, workers or force) and with the files."""
    ignored = ("device", "workers", "force", "workdir", "data")
    settings = {k: v for k, v in plain_settings(cfg).items() if k not in ignored}
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
    data = load_data(cfg, size)
    device = resolve_device(cfg.device)
    with torchrun_ranks(device) as ranks:
        device = ranks.device(device)
        if ranks.main:
            with workdir_lock(cfg.workdir):
                return _finetune(cfg, spec, size, data, device, ranks, progress)
        return _finetune(cfg, spec, size, data, device, ranks, None)


def _finetune(cfg: FinetuneConfig, spec: BackboneSpec, size: int, data: FinetuneData, device: torch.device, ranks: Ranks,
              progress: ProgressFn | None) -> FinetuneResult:
    out = checkpoint_file(cfg.workdir, spec.name)
    state_path = finetuned_dir(cfg.workdir) / f"{spec.name}.state.pt"
    key = _run_key(cfg, data, size)
    state = _read_state(state_path, key) if not cfg.force else None
    if state is not None and state["finished"]:
        if out.exists():
            log.info("%s: up to date (%s)", model_name(spec.name), out)
            return FinetuneResult(out, state["metrics"], state["history"], trained=False, skipped=state["skipped"],
                                  classes=data.classes, validation=state["validation"])
        state = None  # finished, but its checkpoint was removed since: train again
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
    best: dict[str, Any] = {"epoch": 0, "loss": math.inf, "state": None}  # the kept epoch, its holdout loss, weights
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
    run = _Run(wrapped, normalizer(prep.mean, prep.std, device, cfg.channels_last), optimizer, scheduler, scaler, device, cfg, trained,
               every, bn_train, ranks, set(state["skipped"]) if state is not None else set())
    sampler = None
    if ranks.world_size > 1:
        sampler = torch.utils.data.DistributedSampler(data.train, ranks.world_size, ranks.rank, seed=cfg.seed)
    choosing = data.choice is not None  # else every epoch trains and the last is kept
    stopped = choosing and len(history) - best["epoch"] >= cfg.patience
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
        _require_finite(row["train_loss"], "training", epoch, cfg)
        _same_buffers(model, ranks)
        if choosing:
            row.update(_holdout_metrics(run, data.choice))
            _require_finite(row["holdout_loss"], "holdout", epoch, cfg)
        row["lr"] = optimizer.param_groups[0]["lr"]
        history.append(row)
        # rank 0's verdict on every rank: they stop together even if their numbers differed in the last bit
        improved, stopped = ranks.share(lambda: _verdict(row.get("holdout_loss"), best, epoch, cfg.patience))
        if improved:
            best = {"epoch": epoch, "loss": row.get("holdout_loss"),
                    "state": copy.deepcopy(model.state_dict()) if choosing else None}
        # every rank's undecodable files: a resume after the last epoch trains nothing, so could not find them again
        run.skipped = set().union(*ranks.gather(run.skipped))
        if ranks.main:
            _write_state(state_path, {"format": STATE_FORMAT, "key": key, "finished": False, "model": model.state_dict(),
                                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                      "scaler": scaler.state_dict(), "history": history, "best": best,
                                      "skipped": sorted(run.skipped)})
            # logged once it is on disk: an epoch said to be finished is one a resume does not train again
            log.info("epoch %d: %s", epoch, ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in row.items()
                                                       if k.endswith(("loss", "accuracy"))))
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    for row in history:
        row["chosen"] = row["epoch"] == best["epoch"]
    # once, in fp32 as `predict` computes it: the numbers are the saved network's, whatever --precision trained
    proba, rows = _evaluate_rows(run, data.val, "fp32")
    # plain tensors and lists: the resume checkpoint keeps them, and loads with weights_only=True
    validation = {"paths": [data.val.paths[r] for r in rows.tolist()],
                  "labels": torch.from_numpy(data.val.labels[rows.numpy()]), "proba": proba}
    skipped = sorted(run.skipped)  # every rank's: gathered each epoch, and the evaluations merge every rank's failures
    result = FinetuneResult(out, {}, history, skipped=skipped, classes=data.classes, validation=validation)
    if ranks.main:
        result.metrics = _save_network(cfg, spec, size, data, model, prep, trained, bn_train, best["epoch"], history,
                                       validation, skipped)
        _write_state(state_path, {"format": STATE_FORMAT, "key": key, "finished": True, "history": history,
                                  "metrics": result.metrics, "validation": validation, "skipped": skipped})
    return result


def _read_state(path: Path, key: str) -> dict[str, Any] | None:
    """The resume checkpoint if it belongs to this very run, else None (a different run starts over)."""
    if not path.exists():
        return None
    try:
        state = read_torch_file(path, "a resume checkpoint", WeightsUnavailableError, "starting over", STATE_FORMAT)
    except WeightsUnavailableError as err:  # damaged, or an older cnnfeat's: start over, say so
        log.warning("%s", err)
        return None
    if state.get("key") != key:
        log.info("%s belongs to a run with other settings or files; starting over", path)
        return None
    return state


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def _save_network(cfg: FinetuneConfig, spec: BackboneSpec, size: int, data: FinetuneData, model: nn.Module, prep: Any,
                  trained: list[str], bn_train: bool, best_epoch: int, history: list[dict],
                  validation: dict[str, Any], skipped: list[str]) -> dict[str, Any]:
    """Write finetuned/<backbone>.pt; its metrics on the validation rows, and the kept epoch's on the rows that
    chose it. n_train counts the training files that decoded, as the heads count theirs."""
    proba, labels = validation["proba"], validation["labels"]
    kept = history[best_epoch - 1] if best_epoch else {}
    metrics = {
        "model": model_name(spec.name), "kind": "finetuned", "backbones": [spec.name], "views": [],
        "val_split": data.val_description, "n_train": len(set(data.train.paths) - set(skipped)), "n_val": len(labels),
        "val_accuracy": accuracy(proba, labels), "val_log_loss": log_loss(proba, labels),
        "val_log_loss_uncalibrated": None, "temperature": 1.0,
        "train_accuracy": kept.get("train_accuracy"), "train_log_loss": kept.get("train_loss"),
        "chosen": {"epochs": best_epoch}, "chosen_on": data.choice_description,
        "holdout_log_loss": kept.get("holdout_loss"), "trained_blocks": trained, "classes": list(data.classes),
    }
    save_finetuned(checkpoint_file(cfg.workdir, spec.name), FinetunedCheckpoint(
        backbone=spec.name, builder_kwargs=builder_kwargs(spec), classes=list(data.classes),
        state_dict={k: v.cpu() for k, v in model.state_dict().items()},
        settings={**plain_settings(cfg), "data": str(cfg.data.resolve()), "image_size": size, "bn_train": bn_train,
                  "trained_blocks": trained},
        preprocessing={"mean": list(prep.mean), "std": list(prep.std), "image_size": size},
        class_prior=class_prior(data.train.labels, len(data.classes)), metrics=metrics))
    return metrics
