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

from features import (ConfigError, DataLayoutError, ExtractConfig, ExtractReport, ProgressFn, extract,
                      resolve_backbones, scan_prepared_folder, validation_plan, writes_workdir)

from .config import PredictConfig
from .heads import (BEST, ENSEMBLE, HeadConfig, TrainResult, select_best, train_concat, train_ensemble,
                    train_linear_heads)
from .predict import PredictResult, predict

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    extract: ExtractReport
    heads: list[TrainResult] = field(default_factory=list)
    prediction: PredictResult | None = None
    predicted_with: str | None = None


def check_run(extract_cfg: ExtractConfig, head_cfg: HeadConfig, predict_cfg: PredictConfig) -> bool:
    """Refuse now what would fail after extraction; True when there is an unlabeled split to predict."""
    resolve_backbones(extract_cfg.backbones)
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


@writes_workdir
def run_pipeline(extract_cfg: ExtractConfig, head_cfg: HeadConfig, predict_cfg: PredictConfig,
                 progress: ProgressFn | None = None) -> RunReport:
    """Extract, a probe per backbone, the combined models, `best`, then predict the unlabeled split."""
    unlabeled = check_run(extract_cfg, head_cfg, predict_cfg)
    report = RunReport(extract(extract_cfg, progress))
    if not report.extract.main:  # under torchrun only extraction is shared; rank 0 does the rest
        return report
    backbones = [spec.name for spec in resolve_backbones(extract_cfg.backbones)]
    report.heads = train_linear_heads(head_cfg, backbones)
    if len(backbones) >= 2:
        if head_cfg.concat:
            report.heads += train_concat(head_cfg, backbones)
        report.heads.append(train_ensemble(head_cfg, backbones))
    if head_cfg.select:
        report.heads.append(select_best(head_cfg))
    if unlabeled:
        report.predicted_with = BEST if head_cfg.select else ENSEMBLE if len(backbones) >= 2 else backbones[0]
        predict_cfg.model = report.predicted_with
        report.prediction = predict(predict_cfg)
    else:
        log.info("no unlabeled split %r: skipping predict", predict_cfg.split)
    return report
