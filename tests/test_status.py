from __future__ import annotations

import shutil

import h5py
import pytest

from features import FeatureCache, cache_path
from pipeline.heads import HeadConfig, select_best, train_linear_heads
from pipeline.heads.status import inputs_key, key_inputs, staleness
from pipeline.status import stale_models


@pytest.fixture
def workdir(reference, tmp_path):
    """The reference cache (three digits, 24 training rows) with a resnet34 probe and `best`."""
    shutil.copy(cache_path(reference), tmp_path / "features.h5")
    cfg = HeadConfig(workdir=tmp_path, c_grid=(1.0,), folds=3)
    train_linear_heads(cfg, ["resnet34"])
    select_best(cfg)
    return tmp_path


def test_a_key_covers_only_the_settings_its_kind_uses(workdir):
    with FeatureCache(cache_path(workdir)) as cache:
        linear, ensemble = (key_inputs(cache, HeadConfig(), kind, ["resnet34"], [""]) for kind in ("linear", "ensemble"))
        assert "c_grid" in linear["settings"] and "hidden" not in linear["settings"] and "lr" not in linear["settings"]
        assert "hidden" in ensemble["settings"] and "c_grid" not in ensemble["settings"]
        assert "holdout" not in linear["settings"]  # there is a valid split: the share is not used
        assert "holdout" in key_inputs(cache, HeadConfig(val_split="dev"), "linear", ["resnet34"], [""])["settings"]
        assert inputs_key(cache, linear) != inputs_key(cache, {**linear, "backbones": ["inception"]})


def test_what_makes_a_model_stale(workdir):
    with FeatureCache(cache_path(workdir)) as cache:
        assert staleness(cache, workdir, "resnet34") == "" and staleness(cache, workdir, "best") == ""
        assert staleness(cache, workdir, "inception") == "not trained yet"
        assert staleness(cache, workdir, "resnet34", {("train", "resnet34")}) == "its features will be extracted again"
    with h5py.File(cache_path(workdir), "r+") as f:
        f["valid/resnet34"].attrs["image_size"] = 99
    with FeatureCache(cache_path(workdir)) as cache:
        assert staleness(cache, workdir, "resnet34") == "its features or the split files changed"
        assert staleness(cache, workdir, "best") == "its member resnet34 changed"
        (workdir / "heads" / "resnet34.pt").write_bytes(b"damaged")
        assert staleness(cache, workdir, "resnet34") == "its file is damaged or unreadable"
        assert ("resnet34", "its file is damaged or unreadable") in stale_models(cache, workdir, set())


def test_staleness_is_told_without_torch(workdir):
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "from features import FeatureCache, cache_path\nfrom pipeline.status import stale_models\n"
            f"with FeatureCache(cache_path({str(workdir)!r})) as c: print(stale_models(c, {str(workdir)!r}, set()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "('inception', 'not trained yet')" in done.stdout and "'resnet34'" not in done.stdout
