"""Reports: one offline HTML page of every model and the chosen model's mistakes, from what training saved.

    from pipeline.report import ReportConfig, build_reports
    build_reports(ReportConfig(workdir="runs/dvc"))          # runs/dvc/reports/index.html and what it shows

    config.py      ReportConfig, each default once
    build.py       build_reports: gathers the content, writes reports/
    mistakes.py    per-class scores, confusions, top losses, likely label errors (cleanlab)
    duplicates.py  near-duplicates and train/test leaks from the cached features
    figures.py     training curves and confusion matrices (matplotlib)
    thumbnails.py  the small images the page shows
    content.py, page.py   what the page shows, and the HTML

Imports no torch: it reads saved probabilities and the feature cache only.
"""

from features.lazy import lazy_exports

_EXPORTS = {
    "build": ("DUPLICATES", "LABEL_ISSUES", "PAGE", "Report", "build_reports", "reports_dir"),
    "config": ("SIMILARITY", "ReportConfig"),
    "content": ("ModelReport",),
    "duplicates": ("Duplicates", "Pair", "find_duplicates"),
    "figures": ("TRAINING_CURVES",),
    "mistakes": ("LabelIssue", "label_issues"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__ = lazy_exports(__name__, _EXPORTS)
