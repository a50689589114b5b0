"""Heads: cached features -> models -> probabilities. Reads features only through features.FeatureCache;
never builds a backbone and never imports fine-tuning.

    from pipeline.heads import HeadConfig, train_linear_heads, select_best, class_probabilities

    config.py    HeadConfig and the models' names, each default once
    rows.py      the split rule applied to the cache: training, validation rows and folds
    table.py     FeatureTable: a split's features in memory or streamed
    models.py    the heads (linear, three-branch), saved models (Classifier, Blend) and their files
    probe.py     L-BFGS logistic regression swept over C
    learners.py  how a head is tuned, refitted and cross-validated
    blend.py     temperature calibration, greedy selection, blends
    train.py     train-head and ensemble: one model per candidate, with its outputs
    select.py    `best`
    status.py    which saved heads are up to date
    predict.py   a saved head on a split's cached features
"""

from features.lazy import lazy_exports

_EXPORTS = {
    "config": ("BEST", "C_GRID", "CONCAT", "ENSEMBLE", "FLIP_SUFFIX", "HEAD_FORMAT", "HeadConfig"),
    "models": ("Blend", "Classifier", "HeadError", "load_model"),
    "predict": ("class_probabilities",),
    "rows": ("Rows", "resolve_rows"),
    "select": ("select_best",),
    "status": ("expected_heads", "heads_dir", "saved_heads", "stale_heads", "staleness"),
    "train": ("TrainResult", "train_concat", "train_ensemble", "train_linear_heads"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__ = lazy_exports(__name__, _EXPORTS)
