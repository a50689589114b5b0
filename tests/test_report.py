from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sklearn.metrics import recall_score

from features import FeatureCache, cache_path
from pipeline.cli import main
from pipeline.predict import class_probabilities
from pipeline.report import TRAINING_CURVES, build_reports, reports_dir
from pipeline.train import HeadConfig, train_ensemble, train_linear_heads

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained_workdir(digits10_cache, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("report")
    (workdir / "features.h5").symlink_to(cache_path(digits10_cache))
    cfg = HeadConfig(workdir=workdir, epochs=8)
    train_linear_heads(cfg, ["resnet34", "densenet121"])
    train_ensemble(cfg, ["resnet34", "densenet121"])
    return workdir


def test_reports_are_pictures_and_numbers_that_agree_with_training(trained_workdir):
    rows = build_reports(trained_workdir)
    assert [r.model for r in rows] == ["densenet121", "ensemble", "resnet34"]
    folder = reports_dir(trained_workdir)
    for name in [TRAINING_CURVES] + [f"confusion_{r.model}.png" for r in rows]:
        assert (folder / name).read_bytes().startswith(PNG), name
    for r in rows:
        metrics = json.loads((trained_workdir / "metrics" / f"{r.model}.json").read_text())
        assert r.accuracy == pytest.approx(metrics["val_accuracy"]) and r.split == "valid"
        assert r.log_loss == pytest.approx(metrics["val_log_loss"], rel=1e-4)
        probs = class_probabilities(trained_workdir, r.model, "valid")
        expected = recall_score(probs.labels, probs.proba.argmax(1), average=None)
        assert list(r.recall.values()) == pytest.approx(list(expected))
    with FeatureCache(cache_path(trained_workdir)) as cache:
        assert list(rows[0].recall) == list(cache.classes)
    assert not list(folder.glob("*.tmp"))


def test_report_command_prints_the_comparison(trained_workdir, tmp_path):
    result = CliRunner().invoke(main, ["report", "--workdir", str(trained_workdir)])
    assert result.exit_code == 0, result.output
    assert "recall per class" in result.output and "ensemble" in result.output
    empty = CliRunner().invoke(main, ["report", "--workdir", str(tmp_path)])
    assert empty.exit_code == 1 and "cnnfeat train-head" in empty.output
