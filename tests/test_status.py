from __future__ import annotations

import shutil

import h5py
import pytest

from features import FeatureCache, cache_path
from pipeline.heads import C_GRID, HeadConfig, class_probabilities, select_best, train_linear_heads
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


def test_a_key_covers_the_solver_and_only_the_settings_it_uses(workdir, monkeypatch):
    with FeatureCache(cache_path(workdir)) as cache:
        linear, ensemble = (key_inputs(cache, HeadConfig(), kind, ["resnet34"], [""]) for kind in ("linear", "ensemble"))
        assert linear["solver"] == "lbfgs" and ensemble["solver"] == "adam"
        assert "c_grid" in linear["settings"] and "hidden" not in linear["settings"] and "lr" not in linear["settings"]
        assert {"hidden", "lr", "patience"} <= set(ensemble["settings"]) and "c_grid" not in ensemble["settings"]
        assert "holdout" not in linear["settings"]  # there is a valid split: the share is not used
        assert "holdout" in key_inputs(cache, HeadConfig(val_split="dev"), "linear", ["resnet34"], [""])["settings"]
        assert inputs_key(cache, linear) != inputs_key(cache, {**linear, "backbones": ["inception"]})
        # one representation of the grid: however it is written, the same key
        same = key_inputs(cache, HeadConfig(c_grid=[str(c) for c in reversed(C_GRID)]), "linear", ["resnet34"], [""])
        assert inputs_key(cache, same) == inputs_key(cache, linear)
        monkeypatch.setattr("pipeline.heads.status.default_memory_budget", lambda: 0)  # features that must stream
        streamed = key_inputs(cache, HeadConfig(), "linear", ["resnet34"], [""])
        assert streamed["solver"] == "adam" and {"lr", "epochs", "batch_size", "patience", "weight_decay"} <= set(streamed["settings"])
        lower = key_inputs(cache, HeadConfig(lr=1e-4), "linear", ["resnet34"], [""])
        assert inputs_key(cache, lower) != inputs_key(cache, streamed)


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


def test_features_of_another_origin_retrain_the_model_and_are_named_when_it_is_applied(workdir, caplog):
    with h5py.File(cache_path(workdir), "r+") as f:
        trained_on = f["valid/resnet34"].attrs["decode"]
        f["valid/resnet34"].attrs["decode"] = f["test/resnet34"].attrs["decode"] = "nvjpeg"
    with FeatureCache(cache_path(workdir)) as cache:
        assert staleness(cache, workdir, "resnet34") == "its features or the split files changed"
    class_probabilities(workdir, "resnet34", "test")
    assert f"test/resnet34 features made with another decode nvjpeg (trained on {trained_on})" in caplog.text
