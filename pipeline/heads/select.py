"""`best`: the selection among every up-to-date model, on the out-of-fold predictions of the training rows.

    from pipeline.heads import HeadConfig, select_best
    result = select_best(HeadConfig(workdir="runs/digits"))    # heads/best.pt: a calibrated blend
"""

from __future__ import annotations

import torch

from features import EPS, FeatureCache, accuracy, log_loss, writes_workdir

from ..outputs import Probabilities, write_model_outputs, write_summary
from .blend import blend_proba, fit_temperature, greedy_selection
from .config import BEST, HeadConfig
from .models import Blend, Classifier, HeadError, load_model, save_model
from .rows import Rows, resolve_rows
from .status import heads_dir, inputs_key, key_inputs, read_sidecar, saved_heads, staleness
from .train import TrainResult, model_meta, open_cache, up_to_date


@writes_workdir
def select_best(cfg: HeadConfig) -> TrainResult:
    """`best`: Caruana's greedy selection over every up-to-date model's calibrated out-of-fold predictions.

    Never worse than its best member on those rows; its validation numbers come from rows no step of
    the selection (nor of its members' training) saw. Without folds (a class with a single training
    row) no rows can choose, so every model is blended with equal weight, and the metrics say so.
    """
    with open_cache(cfg) as cache:
        rows = resolve_rows(cache, cfg)
        members = _selectable(cache, cfg, rows)
        if not members:
            raise HeadError(f"no up-to-date model to choose from in {heads_dir(cfg.workdir)}; "
                            f"run `cnnfeat train-head --workdir {cfg.workdir}` (or `cnnfeat run --workdir {cfg.workdir}`) first")
        keys = {name: sidecar["inputs_key"] for name, (_, _, sidecar) in members.items()}
        inputs = key_inputs(cache, cfg, "selection", [], [])
        key = inputs_key(cache, inputs, keys)
        if not cfg.force and (metrics := up_to_date(cfg.workdir, BEST, key)) is not None:
            return TrainResult(BEST, metrics, trained=False)
        y_train = torch.from_numpy(cache.labels(rows.train_split)[rows.train])
        y_val = torch.from_numpy(cache.labels(rows.val_split)[rows.val])
        oof = {name: saved["oof_proba"] for name, (_, saved, _) in members.items()}
        if all(p is not None for p in oof.values()):
            weights, evidence = greedy_selection(oof, y_train), "out-of-fold predictions on the training rows"
            mixed_oof = blend_proba([oof[n] for n in weights], list(weights.values()))
            temperature = fit_temperature([mixed_oof.clamp_min(EPS).log()], y_train) if cfg.calibrate else 1.0
            train_paths = cache.paths(rows.train_split)
            oof_proba = blend_proba([oof[n] for n in weights], list(weights.values()), temperature)
            out_of_fold = Probabilities([train_paths[r] for r in rows.train], y_train.numpy(), oof_proba.numpy(),
                                        cache.classes)
        else:  # no rows no model saw, so nothing may choose: every model, equally weighted
            weights = {name: 1 / len(members) for name in members}
            evidence, temperature = "nothing: too few training rows per class for folds, so an equal blend", 1.0
            out_of_fold = None
        blend = Blend([(w, members[n][0]) for n, w in weights.items()], temperature)
        val_proba = blend_proba([members[n][1]["val_proba"] for n in weights], list(weights.values()), temperature)
        raw_val = blend_proba([members[n][1]["val_proba"] for n in weights], list(weights.values()))
        metrics = {
            "model": BEST, "kind": "selection", "members": weights, "chosen_on": evidence,
            "val_split": rows.description, "n_train": len(y_train), "n_val": len(y_val),
            "val_accuracy": accuracy(val_proba, y_val), "val_log_loss": log_loss(val_proba, y_val),
            "val_log_loss_uncalibrated": log_loss(raw_val, y_val), "temperature": temperature,
            "candidates": {n: members[n][1]["meta"]["metrics"]["oof_log_loss"] for n in members},
            "folds": rows.n_folds, "refit": cfg.refit, "classes": list(cache.classes),
        }
        backbones = tuple(dict.fromkeys(b for n in weights for b in members[n][1]["meta"]["backbones"]))
        meta = model_meta(cache, cfg, BEST, "selection", backbones, (), inputs, key, rows, metrics, members=keys)
        meta["feature_settings"] = {k: v for n in weights for k, v in members[n][1]["meta"]["feature_settings"].items()}
        save_model(heads_dir(cfg.workdir) / f"{BEST}.pt", blend, meta, {"val_proba": val_proba})
        split_paths = cache.paths(rows.val_split)
        validation = Probabilities([split_paths[r] for r in rows.val], y_val.numpy(), val_proba.numpy(), cache.classes)
        write_model_outputs(cfg.workdir, BEST, metrics, [], validation, out_of_fold)
    write_summary(cfg.workdir)
    return TrainResult(BEST, metrics, trained=True)


def _selectable(cache: FeatureCache, cfg: HeadConfig, rows: Rows) -> dict[str, tuple[Classifier, dict, dict]]:
    """Every saved model other than `best` that is up to date and has out-of-fold predictions on these rows."""
    found = {}
    for name in saved_heads(cfg.workdir):
        if name == BEST or staleness(cache, cfg.workdir, name):
            continue
        model, meta, saved = load_model(heads_dir(cfg.workdir) / f"{name}.pt")
        if saved.get("oof_key") == rows.key() and isinstance(model, Classifier):
            found[name] = (model, saved, read_sidecar(cfg.workdir, name))
    return found
