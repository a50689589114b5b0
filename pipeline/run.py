"""`cnnfeat run`: every stage in order as one batch job, each skipped when its output is up to date.

    from pipeline.run import run_pipeline
    report = run_pipeline(ExtractConfig(data="data/digits", workdir="runs/digits"),
                          HeadConfig(workdir="runs/digits"), PredictConfig(workdir="runs/digits"))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from features import ExtractConfig, ExtractReport, FeatureCache, cache_path, extract
from features.extract import ProgressFn

from .predict import PredictConfig, PredictResult, predict
from .train import ENSEMBLE, HeadConfig, TrainResult, cached_backbones, train_ensemble, train_linear_heads

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    extract: ExtractReport
    heads: list[TrainResult] = field(default_factory=list)
    prediction: PredictResult | None = None
    predicted_with: str | None = None


def run_pipeline(extract_cfg: ExtractConfig, head_cfg: HeadConfig, predict_cfg: PredictConfig,
                 progress: ProgressFn | None = None) -> RunReport:
    """Extract all backbones, a linear head each, the ensemble, then predict if there is an unlabeled split."""
    report = RunReport(extract(extract_cfg, progress))
    if not report.extract.main:  # under torchrun only extraction is shared; rank 0 does the rest
        return report
    report.heads = train_linear_heads(head_cfg)
    with FeatureCache(cache_path(head_cfg.workdir)) as cache:
        backbones = cached_backbones(cache, head_cfg)
        unlabeled = predict_cfg.split in cache.splits and not cache.is_labeled(predict_cfg.split)
    if len(backbones) >= 2:
        report.heads.append(train_ensemble(head_cfg))
    if unlabeled:
        report.predicted_with = ENSEMBLE if len(backbones) >= 2 else backbones[0]
        predict_cfg.model = report.predicted_with
        report.prediction = predict(predict_cfg)
    else:
        log.info("no unlabeled split %r: skipping predict", predict_cfg.split)
    return report
