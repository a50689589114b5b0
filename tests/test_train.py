from __future__ import annotations

import csv
import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from features import BOOK, CacheError, ConfigError, DataLayoutError, ExtractConfig, FeatureCache, cache_path, extract
from features import log_loss
from pipeline.config import PredictConfig
from pipeline.heads import (BEST, CONCAT, ENSEMBLE, HeadConfig, class_probabilities, load_model, select_best, train_concat,
                            train_ensemble, train_linear_heads)
from pipeline.outputs import write_summary
from pipeline.predict import predict
from pipeline.status import stale_models

from .conftest import IMAGE_SIZE

DECADE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
QUICK = dict(flip=False, c_grid=(0.01, 1.0))  # for tests of what happens around training, not of its quality


@pytest.fixture(scope="module")
def trained(digits10_cache, tmp_path_factory):
    """Every model: probes (plain, and ResNet-34's +hflip), concat, the ensemble, best; defaults but for a decade grid of C."""
    workdir = tmp_path_factory.mktemp("trained")
    (workdir / "features.h5").symlink_to(cache_path(digits10_cache))
    cfg = HeadConfig(workdir=workdir, c_grid=DECADE_GRID)
    results = train_linear_heads(cfg) + train_concat(cfg) + [train_ensemble(cfg), select_best(cfg)]
    return workdir, {r.name: r for r in results}


@pytest.mark.parametrize("backbone", list(BOOK))
def test_each_probe_chosen_on_folds_does_on_unseen_rows_what_its_folds_promised(trained, backbone):
    """test_probe proves the solver is scikit-learn's and the choice LogisticRegressionCV's; here the estimate holds."""
    metrics = trained[1][backbone].metrics
    assert metrics["val_accuracy"] > 0.85 and abs(metrics["oof_accuracy"] - metrics["val_accuracy"]) < 0.06, metrics


def test_models_of_every_kind_are_trained(trained):
    _, results = trained
    names = set(results)
    assert {*BOOK, "resnet34+hflip", CONCAT, ENSEMBLE, BEST} == names  # mirrored models where every backbone has the view
    assert results[CONCAT].metrics["backbones"] == list(BOOK) and results["resnet34+hflip"].metrics["views"] == ["", "hflip"]


def test_best_never_loses_to_its_best_member_where_it_was_chosen_and_holds_up_on_unseen_rows(trained):
    workdir, results = trained
    best = results[BEST].metrics
    assert best["chosen_on"].startswith("out-of-fold") and abs(sum(best["members"].values()) - 1) < 1e-9
    with FeatureCache(cache_path(workdir)) as cache:
        y_train = torch.from_numpy(cache.labels("train"))
    oof = {}
    for name in results:
        if name != BEST:
            oof[name] = torch.load(workdir / "heads" / f"{name}.pt", weights_only=True)["oof_proba"]
    saved = torch.load(workdir / "heads" / f"{BEST}.pt", weights_only=True)
    members = [(m["weight"], oof[n]) for m, n in zip(saved["members"], best["members"])]
    mixed = sum(w * p for w, p in members)
    assert log_loss(mixed, y_train) <= min(log_loss(p, y_train) for p in oof.values()) + 1e-9
    singles = [r.metrics["val_accuracy"] for name, r in results.items() if name != BEST]
    assert best["val_accuracy"] >= max(singles) - 2 / best["n_val"]  # within two images of the best single one


def test_on_a_split_no_training_saw_best_beats_the_books_ensemble(trained):
    """The issue's measure: holdout/ was extracted with the rest and never used to train or choose."""
    workdir, results = trained
    scores = {}
    for name in results:
        probs = class_probabilities(workdir, name, "holdout")
        proba, labels = torch.from_numpy(probs.proba), torch.from_numpy(probs.labels)
        scores[name] = ((proba.argmax(1) == labels).double().mean().item(), log_loss(proba, labels))
    singles = [acc for name, (acc, _) in scores.items() if name in BOOK]
    assert scores[BEST][0] >= max(singles) - 2 / len(labels), scores
    assert scores[BEST][1] < scores[ENSEMBLE][1], scores


def test_each_model_is_calibrated_on_its_out_of_fold_predictions(trained):
    _, results = trained
    for name, result in results.items():
        m = result.metrics
        assert m["temperature"] > 0 and m["folds"] == 5 and "val_log_loss_uncalibrated" in m, name
    ensemble = results[ENSEMBLE].metrics  # Adam to the best held-out loss: too sure of itself
    assert ensemble["temperature"] > 1 and ensemble["val_log_loss"] < ensemble["val_log_loss_uncalibrated"]


def test_training_writes_checkpoint_metrics_history_predictions_and_summary(trained):
    workdir, results = trained
    for name, result in results.items():
        metrics = json.loads((workdir / "metrics" / f"{name}.json").read_text())
        for key in ("val_accuracy", "val_log_loss", "val_log_loss_uncalibrated", "temperature", "n_train", "n_val",
                    "classes", "val_split"):
            assert key in metrics, (name, key)
        assert metrics["n_train"] == 400 and metrics["n_val"] == 200 and metrics["classes"] == [str(d) for d in range(10)]
        valid = list(csv.reader((workdir / "metrics" / f"{name}-valid.csv").read_text().splitlines()))
        assert valid[0] == ["path", "label", *metrics["classes"]] and len(valid) == 201
        checkpoint = torch.load(workdir / "heads" / f"{name}.pt", weights_only=True)
        assert checkpoint["meta"]["classes"] == metrics["classes"]
    probe = json.loads((workdir / "metrics" / "resnet34.json").read_text())
    history = list(csv.DictReader((workdir / "metrics" / "resnet34-history.csv").read_text().splitlines()))
    assert [float(r["C"]) for r in history] == list(DECADE_GRID) and probe["chosen"]["C"] in DECADE_GRID
    assert [float(r["C"]) for r in history if r["chosen"] == "True"] == [probe["chosen"]["C"]]
    assert probe["chosen_on"] == "out-of-fold predictions on the training rows (5 folds)"
    ensemble_history = list(csv.DictReader((workdir / "metrics" / "ensemble-history.csv").read_text().splitlines()))
    assert int(ensemble_history[-1]["epoch"]) >= results[ENSEMBLE].metrics["chosen"]["epochs"]
    assert [int(r["epoch"]) for r in ensemble_history if r["chosen"] == "True"] == [results[ENSEMBLE].metrics["chosen"]["epochs"]]
    assert {"train_loss", "fold_loss", "fold_accuracy"} <= set(ensemble_history[0])
    dims = torch.load(workdir / "heads" / "ensemble.pt", weights_only=True)["feature_dims"]
    with FeatureCache(cache_path(workdir)) as cache:
        assert dims == {name: cache.feature_shape("train", name)[0] for name in BOOK}  # the stored widths
    write_summary(workdir)
    summary = list(csv.DictReader((workdir / "metrics" / "summary.csv").read_text().splitlines()))
    assert list(summary[0]) == ["model", "kind", "val_accuracy", "val_log_loss", "val_log_loss_uncalibrated",
                                "temperature", "oof_log_loss", "chosen", "weight"]
    assert {r["model"] for r in summary} == set(results)
    assert next(r for r in summary if r["model"] == BEST)["chosen"] == "True"


def test_the_default_grid_is_half_decades_from_1e_4_to_1e2():
    grid = HeadConfig().c_grid
    assert len(grid) == 13 and grid[0] == 1e-4 and grid[-1] == 100 and grid[2] == 1e-3


def test_the_validation_labels_choose_nothing_they_only_report(digits10_cache, tmp_path):
    """Permuting the validation labels changes no trained weight, chosen C or epoch, temperature or member of
    `best`: only the validation numbers, which are therefore an honest estimate."""
    runs = []
    for permute in (False, True):
        workdir = tmp_path / f"permuted-{permute}"
        workdir.mkdir()
        shutil.copy(cache_path(digits10_cache), workdir / "features.h5")
        if permute:
            with h5py.File(workdir / "features.h5", "r+") as f:
                f["valid/labels"][...] = np.random.default_rng(0).permutation(f["valid/labels"][()])
        cfg = HeadConfig(workdir=workdir, flip=False, c_grid=(0.01, 1.0, 100.0), epochs=15, patience=3, folds=3)
        two = ["resnet34", "densenet121"]
        results = train_linear_heads(cfg, two) + train_concat(cfg, two) + [train_ensemble(cfg, two), select_best(cfg)]
        runs.append(({r.name: r.metrics for r in results}, workdir))
    (plain, plain_dir), (permuted, permuted_dir) = runs
    # two of the cache's three backbones: the combined models are named by what they combine
    assert plain.keys() == permuted.keys() == {"resnet34", "densenet121", f"{CONCAT}@resnet34,densenet121",
                                               f"{ENSEMBLE}@resnet34,densenet121", BEST}
    for name in plain:
        for key in ("chosen", "temperature", "members", "oof_log_loss"):
            assert plain[name].get(key) == permuted[name].get(key), (name, key)
        if name != BEST:
            weights = [load_model(d / "heads" / f"{name}.pt")[0].head.state_dict() for d in (plain_dir, permuted_dir)]
            assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), name
    assert all(plain[n]["val_accuracy"] > permuted[n]["val_accuracy"] + 0.3 for n in plain)


def test_refit_trains_the_chosen_configuration_on_train_and_validation_rows(digits10_workdir):
    cfg = HeadConfig(workdir=digits10_workdir, **QUICK)
    (plain,) = train_linear_heads(cfg, ["resnet34"])
    (refit,) = train_linear_heads(HeadConfig(workdir=digits10_workdir, **QUICK, refit=True), ["resnet34"])
    assert refit.trained and refit.metrics["n_refit"] == 600 and refit.metrics["chosen"] == plain.metrics["chosen"]
    assert refit.metrics["val_accuracy"] == plain.metrics["val_accuracy"]  # reported from before the refit
    head = torch.load(digits10_workdir / "heads" / "resnet34.pt", weights_only=True)["state_dict"]
    with FeatureCache(cache_path(digits10_workdir)) as cache:
        both = np.concatenate([cache.features("train", "resnet34"), cache.features("valid", "resnet34")])
    torch.testing.assert_close(head["scalers.resnet34.mean"], torch.from_numpy(both.mean(0)), rtol=1e-4, atol=1e-5)


def test_without_a_validation_split_a_stratified_share_of_train_is_held_out(digits10_workdir):
    with h5py.File(cache_path(digits10_workdir), "r+") as f:
        del f["valid"]  # a download without valid/
    (result,) = train_linear_heads(HeadConfig(workdir=digits10_workdir, **QUICK), ["resnet34"])
    metrics = result.metrics
    assert metrics["n_val"] == 40 and metrics["n_train"] == 360 and "held out" in metrics["val_split"]
    assert "no 'valid' split" in metrics["val_split"]


def test_a_head_is_retrained_only_when_a_setting_it_uses_changes(digits10_workdir):
    cfg = HeadConfig(workdir=digits10_workdir, **QUICK, epochs=5)
    (probe,) = train_linear_heads(cfg, ["resnet34"])
    ensemble = train_ensemble(cfg, ["resnet34", "densenet121"])
    assert probe.trained and ensemble.trained
    changed = HeadConfig(workdir=digits10_workdir, **QUICK, epochs=5, hidden=64, lr=1e-2, dropout=0.2)
    assert not train_linear_heads(changed, ["resnet34"])[0].trained  # the probe uses none of those
    assert train_ensemble(changed, ["resnet34", "densenet121"]).trained
    regridded = HeadConfig(workdir=digits10_workdir, flip=False, epochs=5, hidden=64, lr=1e-2, dropout=0.2, c_grid=(0.1, 1.0))
    assert train_linear_heads(regridded, ["resnet34"])[0].trained
    assert not train_ensemble(regridded, ["resnet34", "densenet121"]).trained


def test_seeded_training_repeats_and_up_to_date_models_are_reused(digits10_workdir):
    cfg = HeadConfig(workdir=digits10_workdir, **QUICK)
    (first,) = train_linear_heads(cfg, ["resnet"])
    (again,) = train_linear_heads(cfg, ["resnet34"])
    assert first.trained and not again.trained and again.metrics == first.metrics
    (forced,) = train_linear_heads(HeadConfig(workdir=digits10_workdir, **QUICK, force=True), ["resnet34"])
    assert forced.trained and forced.history == first.history and forced.metrics == first.metrics


def test_models_saved_by_an_older_cnnfeat_are_retrained_once(digits10_workdir):
    cfg = HeadConfig(workdir=digits10_workdir, **QUICK)
    train_linear_heads(cfg, ["resnet34"])
    sidecar = digits10_workdir / "heads" / "resnet34.json"
    data = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**data, "format": 2}))
    with FeatureCache(cache_path(digits10_workdir)) as cache:
        assert ("resnet34", "saved by an older cnnfeat") in stale_models(cache, digits10_workdir, set())
    (retrained,) = train_linear_heads(cfg, ["resnet34"])
    assert retrained.trained and not train_linear_heads(cfg, ["resnet34"])[0].trained


def test_a_probe_too_big_for_float64_is_solved_in_float32_as_accurately(digits10_workdir, monkeypatch):
    cfg = HeadConfig(workdir=digits10_workdir, **QUICK, force=True)
    (float64,) = train_linear_heads(cfg, ["resnet34"])
    # as for Dogs vs Cats' concat probe: its 25,000 training rows are too many for float64, its validation rows not
    monkeypatch.setattr("pipeline.heads.learners.probe_dtype", lambda views: torch.float32 if len(views[0]) > 200 else torch.float64)
    (float32,) = train_linear_heads(cfg, ["resnet34"])
    assert float32.metrics["chosen"] == float64.metrics["chosen"]
    assert abs(float32.metrics["val_accuracy"] - float64.metrics["val_accuracy"]) <= 1 / float64.metrics["n_val"]


def test_a_probe_too_big_for_memory_trains_by_minibatches(digits10_workdir, monkeypatch):
    for module in ("status", "table"):  # the solver's choice, and the tables that then stream
        monkeypatch.setattr(f"pipeline.heads.{module}.default_memory_budget", lambda: 0)
    (result,) = train_linear_heads(HeadConfig(workdir=digits10_workdir, flip=False, epochs=30), ["resnet34"])
    assert "epochs" in result.metrics["chosen"] and result.metrics["val_accuracy"] > 0.5
    assert result.metrics["chosen_on"] == "early stopping on one of 5 folds of the training rows"
    sidecar = json.loads((digits10_workdir / "heads" / "resnet34.json").read_text())
    assert sidecar["key_inputs"]["solver"] == "adam" and "lr" in sidecar["key_inputs"]["settings"]


def test_errors_say_what_to_run(digits10_workdir, tmp_path):
    with pytest.raises(CacheError, match="no feature cache.*cnnfeat extract"):
        train_linear_heads(HeadConfig(workdir=tmp_path / "empty"))
    with pytest.raises(DataLayoutError, match="split 'test' has no labels"):  # the split rule's (features.splits)
        train_linear_heads(HeadConfig(workdir=digits10_workdir, val_split="test"), ["resnet34"])
    with pytest.raises(CacheError, match="needs two or more backbones"):
        train_ensemble(HeadConfig(workdir=digits10_workdir), ["resnet34"])
    with pytest.raises(ConfigError, match="unknown backbone"):
        train_linear_heads(HeadConfig(workdir=digits10_workdir), ["vgg"])
    with pytest.raises(ConfigError, match="must differ"):
        HeadConfig(val_split="train")


def test_features_of_changed_files_are_refused_with_the_command_to_run(digits_copy, tmp_path):
    data = digits_copy  # 42 images: what is refused is a file, whatever the number of its neighbours
    workdir = tmp_path / "work"
    extract(ExtractConfig(data=data, workdir=workdir, backbones=("resnet34",), weights="random", image_size=IMAGE_SIZE,
                          batch_size=64))
    train_linear_heads(HeadConfig(workdir=workdir, **QUICK, select=False))
    shutil.copy(next((data / "train" / "2").iterdir()), data / "train" / "2" / "2_9999.jpg")
    with pytest.raises(CacheError, match=r"split 'train'.*stale: 1 file\(s\) added \(train/2/2_9999.jpg\).*cnnfeat extract"):
        train_linear_heads(HeadConfig(workdir=workdir))
    (data / "test" / "1.jpg").unlink()
    with pytest.raises(CacheError, match=r"'test'.*stale: 1 file\(s\) removed"):
        predict(PredictConfig(workdir=workdir, model="resnet34"))


def test_heads_on_bf16_features_are_as_accurate_as_on_fp32(digits10_cache, tmp_path):
    data = tmp_path / "data"  # two classes of the ten: bf16 convolutions are slow on a CPU without bf16 units
    for split in ("train", "valid"):
        for digit in "01":
            shutil.copytree(digits10_cache.parent / "data" / split / digit, data / split / digit)
    accuracy = {}
    for precision in ("fp32", "bf16"):
        workdir = tmp_path / precision
        extract(ExtractConfig(data=data, workdir=workdir, backbones=("resnet34",), weights="random",
                              image_size=IMAGE_SIZE, batch_size=64, precision=precision))
        (result,) = train_linear_heads(HeadConfig(workdir=workdir, select=False), ["resnet34"])
        accuracy[precision] = result.metrics["val_accuracy"]
    assert accuracy["bf16"] >= accuracy["fp32"] - 1 / 40, accuracy  # one image of 40
