"""`cnnfeat run`: every stage in order, each skipped when its output is up to date.

    from pipeline.run import run_pipeline
    report = run_pipeline(ExtractConfig(data="data/digits", workdir="runs/digits", views=("hflip",)),
                          HeadConfig(workdir="runs/digits"), PredictConfig(workdir="runs/digits"))

What every stage needs is checked before the first image is decoded, so a job that would fail
at its heads or its submission fails in seconds, not after hours of extraction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from features import (ConfigError, DataLayoutError, ExtractConfig, ExtractReport, ProgressFn, extract, feature_names,
                      scan_prepared_folder, validation_plan, workdir_lock)

from .config import PredictConfig
from .heads import (BEST, HeadConfig, TrainResult, select_best, train_concat, train_ensemble,
                    train_linear_heads)
from .predict import PredictResult, predict

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    extract: ExtractReport
    heads: list[TrainResult] = field(default_factory=list)
    prediction: PredictResult | None = None
    predicted_with: str | None = None

    @property
    def nothing_done(self) -> bool:
        """True when no stage computed, trained or wrote anything: the job was up to date."""
        return (not self.extract.computed and not any(r.trained for r in self.heads)
                and (self.prediction is None or not self.prediction.written))


def check_run(extract_cfgs: Sequence[ExtractConfig], head_cfg: HeadConfig, predict_cfg: PredictConfig) -> bool:
    """Refuse now what would fail after extraction; True when there is an unlabeled split to predict."""
    feature_names(extract_cfgs)
    extract_cfg = extract_cfgs[0]
    folder = scan_prepared_folder(extract_cfg.data, head_cfg.train_split)
    plan = validation_plan({name: split.labeled for name, split in folder.splits.items()}, head_cfg.train_split,
                           head_cfg.val_split, head_cfg.holdout, head_cfg.seed)
    if len(folder.classes) < 2:
        raise DataLayoutError(f"{extract_cfg.data}/{head_cfg.train_split}/ has one class ({folder.classes[0]}); "
                              f"a classifier needs two or more class folders")
    log.info("validation rows: %s", plan.description)
    if predict_cfg.kaggle_binary and len(folder.classes) != 2:
        raise ConfigError(f"--kaggle-binary needs exactly two classes, {extract_cfg.data} has {list(folder.classes)}")
    test = folder.splits.get(predict_cfg.split)
    return test is not None and not test.labeled


def run_pipeline(extract_cfg: ExtractConfig | Sequence[ExtractConfig], head_cfg: HeadConfig, predict_cfg: PredictConfig,
                 progress: ProgressFn | None = None) -> RunReport:
    """Extract (one config, or one per group of backbones with their own weights and size), a probe per
    backbone's features, the combined models, `best`, then predict the unlabeled split."""
    extract_cfgs = [extract_cfg] if isinstance(extract_cfg, ExtractConfig) else list(extract_cfg)
    with workdir_lock(head_cfg.workdir):  # the stages' writers: no other in between
        return _run_stages(extract_cfgs, head_cfg, predict_cfg, progress)


def _run_stages(extract_cfgs: list[ExtractConfig], head_cfg: HeadConfig, predict_cfg: PredictConfig,
                progress: ProgressFn | None) -> RunReport:
    unlabeled = check_run(extract_cfgs, head_cfg, predict_cfg)
    report = RunReport(extract(extract_cfgs, progress))
    if not report.extract.main:  # under torchrun only extraction is shared; rank 0 does the rest
        return report
    backbones = feature_names(extract_cfgs)
    report.heads = train_linear_heads(head_cfg, backbones)
    predicted_with = backbones[0]
    if len(backbones) >= 2:
        if head_cfg.concat:
            report.heads += train_concat(head_cfg, backbones)
        report.heads.append(train_ensemble(head_cfg, backbones))
        predicted_with = report.heads[-1].name
    if head_cfg.select:
        report.heads.append(select_best(head_cfg))
        predicted_with = BEST
    if unlabeled:
        report.predicted_with = predicted_with
        predict_cfg.model = report.predicted_with
        report.prediction = predict(predict_cfg)
    else:
        log.info("no unlabeled split %r: skipping predict", predict_cfg.split)
    return report
