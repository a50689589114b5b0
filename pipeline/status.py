"""Which of the workdir's models are up to date: heads by their inputs key, fine-tuned networks by their checkpoint.

    stale_models(cache, workdir, changing)      # (model, why) that the next `cnnfeat run` would train again

Imports no torch: `cnnfeat info` and the reports use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from features import FeatureCache

from . import finetuned
from .heads.status import stale_heads, staleness as head_staleness
from .outputs import trained_models


def staleness(cache: FeatureCache, workdir: Path, model: str) -> str:
    """'' when the model is up to date, else why it would be trained again."""
    if finetuned.is_finetuned(model):
        return finetuned.staleness(workdir, model)
    return head_staleness(cache, workdir, model)


def stale_models(cache: FeatureCache, workdir: Path, changing: set[tuple[str, str]],
                 expected: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """(model, why) for every model the next run would train again, `changing` being the (split, dataset)
    features it will extract first; `expected`: the heads the job makes (None: the book's)."""
    networks = [(name, finetuned.staleness(workdir, name)) for name in trained_models(workdir)
                if finetuned.is_finetuned(name)]
    heads = stale_heads(cache, workdir, changing) if expected is None else stale_heads(cache, workdir, changing, expected)
    return heads + [(name, why) for name, why in networks if why]
