from __future__ import annotations

import json
import subprocess
import sys

import h5py
import pytest
from click.testing import CliRunner
from sklearn.metrics import recall_score

from features import FeatureCache, cache_path
from pipeline.cli import main
from pipeline.heads import HeadConfig, class_probabilities, select_best, train_ensemble, train_linear_heads
from pipeline.report import TRAINING_CURVES, build_reports, reports_dir

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained_workdir(digits10_cache, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("report")
    (workdir / "features.h5").symlink_to(cache_path(digits10_cache))
    cfg = HeadConfig(workdir=workdir, epochs=8, c_grid=(0.01, 1.0), flip=False)
    train_linear_heads(cfg, ["resnet34", "densenet121"])
    train_ensemble(cfg, ["resnet34", "densenet121"])
    select_best(cfg)
    return workdir


def test_reports_are_pictures_and_numbers_that_agree_with_training(trained_workdir):
    report = build_reports(trained_workdir)
    rows = report.models
    assert [r.model for r in rows] == ["densenet121", "resnet34", "ensemble", "best"] and not report.skipped
    folder = reports_dir(trained_workdir)
    for name in [TRAINING_CURVES] + [f"confusion_{r.model}.png" for r in rows]:
        assert (folder / name).read_bytes().startswith(PNG), name
    for r in rows:
        metrics = json.loads((trained_workdir / "metrics" / f"{r.model}.json").read_text())
        assert r.accuracy == pytest.approx(metrics["val_accuracy"]) and r.split == "valid"
        assert r.log_loss == pytest.approx(metrics["val_log_loss"], rel=1e-6)
        probs = class_probabilities(trained_workdir, r.model, "valid")
        expected = recall_score(probs.labels, probs.proba.argmax(1), average=None)
        assert list(r.recall.values()) == pytest.approx(list(expected))
    assert rows[0].chosen.startswith("C=") and rows[2].chosen.startswith("epoch") and "densenet121" in rows[3].chosen
    with FeatureCache(cache_path(trained_workdir)) as cache:
        assert list(rows[0].recall) == list(cache.classes)
    assert not list(folder.glob("*.tmp"))


def test_reports_load_no_torch(trained_workdir):
    # torch is installed, so asked whether it was imported: blocking it (sys.modules['torch'] = None) breaks scipy,
    # which cleanlab and scikit-learn load, as it probes for torch arrays
    code = (f"import sys\nfrom pipeline.report import build_reports\nreport = build_reports({str(trained_workdir)!r})\n"
            "print(len(report.models), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "4 False", done.stderr


def test_report_command_prints_the_comparison(trained_workdir, tmp_path):
    result = CliRunner().invoke(main, ["report", "--workdir", str(trained_workdir)])
    assert result.exit_code == 0, result.output
    assert "recall per class" in result.output and "ensemble" in result.output
    empty = CliRunner().invoke(main, ["report", "--workdir", str(tmp_path)])
    assert empty.exit_code == 1 and "cnnfeat train-head" in empty.output


def test_a_stale_model_is_left_out_with_a_note(digits10_workdir):
    cfg = HeadConfig(workdir=digits10_workdir, epochs=3, c_grid=(0.01, 1.0), flip=False, select=False)
    train_linear_heads(cfg, ["resnet34", "densenet121"])
    train_ensemble(cfg, ["resnet34", "densenet121"])
    with h5py.File(cache_path(digits10_workdir), "r+") as f:  # as if resnet34 were extracted again with --pool max
        for split in ("train", "valid"):
            f[f"{split}/resnet34"].attrs["pool"] = "max"
    result = CliRunner().invoke(main, ["train-head", "--workdir", str(digits10_workdir), "--backbone", "resnet34",
                                       "--c-grid", "0.01,1", "--no-flip", "--no-select"])
    assert result.exit_code == 0, result.output  # its own work succeeded: the stale ensemble does not fail it
    assert "report leaves out ensemble: its features or the split files changed" in result.output
    report = build_reports(digits10_workdir)
    assert [r.model for r in report.models] == ["densenet121", "resnet34"]
