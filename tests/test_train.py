from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from features import BACKBONES, CacheError, ExtractConfig, FeatureCache, cache_path, extract
from pipeline.train import HeadConfig, stale_heads, train_ensemble, train_linear_heads

from .conftest import IMAGE_SIZE


@pytest.fixture(scope="module")
def trained(digits10_cache, tmp_path_factory):
    """Every linear head and the ensemble, trained once with the defaults."""
    workdir = tmp_path_factory.mktemp("trained")
    (workdir / "features.h5").symlink_to(cache_path(digits10_cache))
    cfg = HeadConfig(workdir=workdir)
    return workdir, train_linear_heads(cfg), train_ensemble(cfg)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_linear_head_is_within_a_point_of_logistic_regression(trained, backbone):
    workdir, heads, _ = trained
    head = next(r for r in heads if r.name == backbone)
    with FeatureCache(cache_path(workdir)) as cache:
        baseline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        baseline.fit(cache.features("train", backbone), cache.labels("train"))
        reference = baseline.score(cache.features("valid", backbone), cache.labels("valid"))
    assert head.metrics["val_accuracy"] >= reference - 0.01, (head.metrics["val_accuracy"], reference)


def test_ensemble_is_not_worse_than_the_best_single_head(trained):
    _, heads, ensemble = trained
    best = max(r.metrics["val_accuracy"] for r in heads)
    noise = 2 / ensemble.metrics["n_val"] * 2  # two images either way out of 200
    assert ensemble.metrics["val_accuracy"] >= best - noise
    assert set(ensemble.metrics["single_heads"]) == set(BACKBONES)


def test_training_writes_checkpoint_metrics_and_history(trained):
    workdir, heads, ensemble = trained
    for result in [*heads, ensemble]:
        metrics = json.loads((workdir / "metrics" / f"{result.name}.json").read_text())
        for key in ("val_accuracy", "val_log_loss", "train_accuracy", "train_log_loss", "best_epoch", "epochs",
                    "n_train", "n_val", "classes"):
            assert key in metrics, key
        assert metrics["n_train"] == 400 and metrics["n_val"] == 200 and metrics["classes"] == [str(d) for d in range(10)]
        history = pd.read_csv(workdir / "metrics" / f"{result.name}-history.csv")
        assert list(history.columns) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
        assert len(history) == metrics["epochs"]
        best = history.loc[history.val_loss.idxmin()]
        assert best.epoch == metrics["best_epoch"] and best.val_accuracy == pytest.approx(metrics["val_accuracy"])
        checkpoint = torch.load(workdir / "heads" / f"{result.name}.pt", weights_only=True)
        assert checkpoint["meta"]["classes"] == metrics["classes"]
    ensemble_dims = torch.load(workdir / "heads" / "ensemble.pt", weights_only=True)["feature_dims"]
    assert ensemble_dims == {name: spec.feature_dim for name, spec in BACKBONES.items()}


def test_seeded_training_repeats_and_up_to_date_heads_are_reused(digits10_workdir):
    cfg = HeadConfig(workdir=digits10_workdir, epochs=5)
    (first,) = train_linear_heads(cfg, ["resnet"])
    (again,) = train_linear_heads(cfg, ["resnet34"])
    assert first.trained and not again.trained and again.metrics == first.metrics
    (forced,) = train_linear_heads(HeadConfig(workdir=digits10_workdir, epochs=5, force=True), ["resnet34"])
    assert forced.trained and forced.history == first.history
    (changed,) = train_linear_heads(HeadConfig(workdir=digits10_workdir, epochs=5, lr=1e-2), ["resnet34"])
    assert changed.trained


def test_heads_saved_by_an_older_cnnfeat_are_retrained_once(digits10_workdir):
    cfg = HeadConfig(workdir=digits10_workdir, epochs=3)
    train_linear_heads(cfg, ["resnet34"])
    path = digits10_workdir / "heads" / "resnet34.pt"
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["meta"]["head_format"], checkpoint["meta"]["kind"], checkpoint["meta"]["params"]
    checkpoint["meta"]["inputs_key"] = "a key made without head_format"
    torch.save(checkpoint, path)
    with FeatureCache(cache_path(digits10_workdir)) as cache:
        assert ("resnet34", "saved by an older cnnfeat") in stale_heads(cache, digits10_workdir, set())
    (retrained,) = train_linear_heads(cfg, ["resnet34"])
    assert retrained.trained and retrained.metrics["val_split"] == "valid"
    (again,) = train_linear_heads(cfg, ["resnet34"])
    assert not again.trained


def test_ensemble_of_two_chosen_backbones(digits10_workdir):
    result = train_ensemble(HeadConfig(workdir=digits10_workdir, epochs=3), ["resnet34,densenet"])
    assert result.metrics["backbones"] == ["resnet34", "densenet121"]


def test_errors_say_what_to_run(digits10_workdir, tmp_path):
    with pytest.raises(CacheError, match="no feature cache.*cnnfeat extract"):
        train_linear_heads(HeadConfig(workdir=tmp_path / "empty"))
    with pytest.raises(CacheError, match="split 'dev' is not in"):
        train_linear_heads(HeadConfig(workdir=digits10_workdir, val_split="dev"))
    with pytest.raises(CacheError, match="split 'test' has no labels"):
        train_linear_heads(HeadConfig(workdir=digits10_workdir, val_split="test"), ["resnet34"])
    with pytest.raises(CacheError, match="needs two or more backbones"):
        train_ensemble(HeadConfig(workdir=digits10_workdir), ["resnet34"])
    with pytest.raises(ValueError, match="unknown backbone"):
        train_linear_heads(HeadConfig(workdir=digits10_workdir), ["vgg"])
    with pytest.raises(ValueError, match="must differ"):
        HeadConfig(val_split="train")


def test_heads_on_bf16_features_are_as_accurate_as_on_fp32(trained, digits10_cache, tmp_path):
    workdir = tmp_path / "bf16"
    extract(ExtractConfig(data=digits10_cache.parent / "data", workdir=workdir, weights="random",
                          image_size=IMAGE_SIZE, batch_size=32, precision="bf16"))
    _, fp32_heads, _ = trained
    fp32 = {r.name: r.metrics["val_accuracy"] for r in fp32_heads}
    bf16 = {r.name: r.metrics["val_accuracy"] for r in train_linear_heads(HeadConfig(workdir=workdir))}
    assert bf16.keys() == fp32.keys()
    for name in fp32:  # within two images of 200
        assert bf16[name] >= fp32[name] - 0.01, (name, bf16[name], fp32[name])
