from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from features import FeatureCache, cache_path, write_job as real_write_job
from features.files import LOCK_NAME
from pipeline.cli import main
from pipeline.cli import common as common_module
from pipeline.cli.common import EXIT_BUSY, EXIT_INTERNAL
from pipeline.heads import learners as learners_module
from pipeline.heads import train as heads_train_module

from .conftest import IMAGE_SIZE, lock_held_elsewhere, save_checkpoint

SMOKE = ("--weights", "random", "--image-size", str(IMAGE_SIZE), "--workers", "0")
QUICK_HEADS = ("--c-grid", "0.01,1", "--epochs", "5")


def _run(*args: str) -> "CliRunner.Result":
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_extract_then_info_then_nothing_to_do(digits_folder, tmp_path):
    workdir = str(tmp_path / "work")
    common = ("--data", str(digits_folder), "--workdir", workdir, *SMOKE)
    first = _run("extract", "--backbone", "inception", *common)
    assert first.exit_code == 0, first.output
    assert "Extracted" in first.output and "train: inception" in first.output and "models built in inception" in first.output
    second = _run("extract", "--backbone", "inception_v3", *common)
    assert second.exit_code == 0 and "Nothing to do" in second.output
    info = _run("info", "--workdir", workdir)
    assert info.exit_code == 0
    assert "classes: 0, 1, 2" in info.output
    assert "train: 24 images, labeled, 0 skipped" in info.output and "test: 6 images, unlabeled" in info.output
    assert "inception" in info.output and "weights=random:seed=0" in info.output and "layer=Mixed_7c" in info.output
    # the job's own backbone, not the book's three: inception's probe and best are what a run would add
    assert "features: inception (weights random, image size 80)" in info.output
    assert "train inception: not trained yet" in info.output and "resnet34" not in info.output


def test_info_verify_reads_every_byte(digits_folder, tmp_path):
    workdir = tmp_path / "work"
    assert _run("extract", "--data", str(digits_folder), "--workdir", str(workdir), "--backbone", "resnet34", *SMOKE).exit_code == 0
    assert "every dataset reads back" in _run("info", "--workdir", str(workdir), "--verify").output
    import h5py

    with h5py.File(workdir / "features.h5") as f:
        offset = f["train/resnet34"].id.get_chunk_info(0).byte_offset
    data = bytearray((workdir / "features.h5").read_bytes())
    data[offset + 16 : offset + 48] = bytes(range(1, 33))
    (workdir / "features.h5").write_bytes(bytes(data))
    plain = _run("info", "--workdir", str(workdir))
    assert plain.exit_code == 0 and "damaged" not in plain.output  # without --verify only metadata is read
    verified = _run("info", "--workdir", str(workdir), "--verify")
    assert verified.exit_code == 1 and "train/resnet34" in verified.output and "cnnfeat extract --force" in verified.output


def test_offline_extract_exits_non_zero_with_the_file_to_fetch(empty_torch_home, digits_folder, tmp_path):
    result = _run("extract", "--data", str(digits_folder), "--workdir", str(tmp_path / "w"), "--backbone", "resnet")
    assert result.exit_code == 1
    assert "resnet34-b627a593.pth" in result.output and str(Path(empty_torch_home) / "hub" / "checkpoints") in result.output
    assert not (tmp_path / "w").exists()  # nothing written, not even a lock file


def test_user_errors_are_one_line_not_a_traceback(tmp_path):
    result = _run("info", "--workdir", str(tmp_path))
    assert result.exit_code == 1 and "no feature cache" in result.output and "Traceback" not in result.output
    (tmp_path / "data").mkdir()
    result = _run("extract", "--data", str(tmp_path / "data"), "--workdir", str(tmp_path / "w"), "--weights", "random")
    assert result.exit_code == 1 and "no images found" in result.output
    result = _run("extract", "--data", str(tmp_path), "--backbone", "vgg17")
    assert result.exit_code == 1 and "unknown backbone 'vgg17'" in result.output
    assert _run("extract", "--data", str(tmp_path / "nowhere")).exit_code == 2  # click's usage error


def test_a_bug_is_an_internal_error_with_its_traceback(digits10_workdir, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug inside fit")

    monkeypatch.setattr(learners_module, "sweep", broken)
    result = CliRunner().invoke(main, ["-v", "train-head", "--workdir", str(digits10_workdir), "--backbone", "resnet34"])
    assert result.exit_code == EXIT_INTERNAL
    assert "internal error" in result.output and "Traceback" in result.output and "a bug inside fit" in result.output


def test_a_disk_problem_while_training_is_worded_for_training(digits10_workdir, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(digits10_workdir / "heads"))

    monkeypatch.setattr(heads_train_module, "save_model", read_only)
    result = _run("train-head", "--workdir", str(digits10_workdir), "--backbone", "resnet34", "--c-grid", "1")
    assert result.exit_code == 1 and "Read-only file system" in result.output
    assert "nothing half-written was kept" in result.output and "batches" not in result.output


def test_a_busy_workdir_has_its_own_exit_status(digits_folder, tmp_path):
    with lock_held_elsewhere(tmp_path / "work"):
        result = _run("extract", "--data", str(digits_folder), "--workdir", str(tmp_path / "work"), *SMOKE)
    assert result.exit_code == EXIT_BUSY == 3 and "another cnnfeat process" in result.output


def test_extract_records_its_job_while_it_still_holds_the_workdir(digits_folder, tmp_path, monkeypatch):
    """Released before job.toml was written, another command could take the workdir in between."""
    locked_while_written = []

    def write_job(workdir, job):
        locked_while_written.append((Path(workdir) / LOCK_NAME).exists())
        real_write_job(workdir, job)

    monkeypatch.setattr(common_module, "write_job", write_job)
    result = _run("extract", "--data", str(digits_folder), "--workdir", str(tmp_path / "work"), "--backbone", "resnet34",
                  *SMOKE)
    assert result.exit_code == 0 and locked_while_written == [True], result.output


def test_run_does_every_stage_then_nothing_and_info_tells_what_the_next_run_would_redo(digits_copy, tmp_path):
    workdir = tmp_path / "work"
    args = ("run", "--data", str(digits_copy), "--workdir", str(workdir), *SMOKE, *QUICK_HEADS)
    first = _run(*args)
    assert first.exit_code == 0, first.output
    for name in ("resnet34", "inception+hflip", "densenet121", "concat", "concat+hflip", "ensemble", "best"):
        assert (workdir / "heads" / f"{name}.pt").exists() and name in first.output, name
    assert "best on test: wrote" in first.output
    submission = (workdir / "submission.csv").read_text().splitlines()
    assert submission[0] == "id,0,1,2" and len(submission) == 7
    second = _run(*args)
    assert second.exit_code == 0
    assert "Nothing to do" in second.output and second.output.count("(up to date)") == 10
    assert "report: " in first.output and "report: " not in second.output  # nothing retrained, the page current
    assert "best on test: up to date" in second.output
    assert "do nothing: everything is up to date" in _run("info", "--workdir", str(workdir)).output

    shutil.copy(next((digits_copy / "train" / "0").iterdir()), digits_copy / "train" / "0" / "new.jpg")
    (workdir / "heads" / "inception.pt").unlink()
    (workdir / "heads" / "resnet34.pt").write_bytes(b"garbage")  # a damaged head is something to retrain, not a crash
    info = _run("info", "--workdir", str(workdir))
    assert info.exit_code == 0, info.output
    for name in ("resnet34", "inception", "densenet121", "resnet34_hflip"):
        assert f"extract train/{name}: files added, removed or changed" in info.output
        assert f"extract valid/{name}" not in info.output
    assert "train inception: not trained yet" in info.output
    assert "train resnet34: its file is damaged or unreadable" in info.output
    assert "train densenet121: its features will be extracted again" in info.output and "train ensemble: its features" in info.output

    assert _run("extract", "--data", str(tmp_path / "nowhere")).exit_code == 2  # click's usage error


def test_run_with_modern_backbones_from_an_offline_cache(digits_folder, tmp_path, monkeypatch):
    """Any mix of backbones through every stage, with pretrained checkpoints already in the cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for seed, name in enumerate(("convnext_tiny", "regnet_y_400mf")):
        save_checkpoint(name, seed)
    workdir = tmp_path / "work"
    result = _run("run", "--data", str(digits_folder), "--workdir", str(workdir), "--backbones", "convnext_tiny,regnet_y_400mf",
                  "--image-size", "64", "--workers", "0", "--views", "none", *QUICK_HEADS)
    assert result.exit_code == 0, result.output
    for name in ("convnext_tiny", "regnet_y_400mf", "concat", "ensemble", "best"):
        assert (workdir / "heads" / f"{name}.pt").exists(), name
    with FeatureCache(cache_path(workdir)) as cache:
        assert cache.feature_shape("train", "convnext_tiny") == (768,) and cache.feature_shape("train", "regnet_y_400mf") == (440,)
        assert cache.settings("train", "convnext_tiny")["weights"] == "imagenet:ConvNeXt_Tiny_Weights.IMAGENET1K_V1"
    assert len((workdir / "submission.csv").read_text().splitlines()) == 7


def test_run_refuses_before_extracting_what_a_later_stage_cannot_use(digits_copy, tmp_path):
    shutil.rmtree(digits_copy / "train")
    started = time.perf_counter()
    result = _run("run", "--data", str(digits_copy), "--workdir", str(tmp_path / "work"), *SMOKE)
    assert result.exit_code == 1 and "no labeled train/ split" in result.output
    assert not (tmp_path / "work").exists() and time.perf_counter() - started < 10
    binary = _run("run", "--data", str(digits_copy.parent / "data"), "--workdir", str(tmp_path / "w2"), *SMOKE, "--kaggle-binary")
    assert binary.exit_code == 1 and not (tmp_path / "w2").exists()


def test_prepare_without_validation_then_run_holds_out_a_share_of_train(digits_folder, tmp_path):
    raw = tmp_path / "raw"
    (raw / "train").mkdir(parents=True)
    for i, image in enumerate(sorted((digits_folder / "train").rglob("*.jpg"))):
        shutil.copy(image, raw / "train" / f"{image.parent.name}.{i}.jpg")
    prepared = _run("prepare", "--train", str(raw / "train"), "--out", str(tmp_path / "data"), "--label-from-name",
                    "--val-fraction", "0")
    assert prepared.exit_code == 0 and "next: cnnfeat run --data" in prepared.output
    result = _run("run", "--data", str(tmp_path / "data"), "--workdir", str(tmp_path / "work"), *SMOKE, *QUICK_HEADS,
                  "--backbones", "resnet34", "--views", "none")
    assert result.exit_code == 0, result.output
    metrics = pd.read_json(tmp_path / "work" / "metrics" / "resnet34.json", typ="series")
    assert "held out" in metrics["val_split"] and metrics["n_val"] == 3


def test_run_reads_a_toml_config_relative_to_itself_and_the_command_line_wins(digits_folder, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(digits_folder, project / "images")
    config = project / "job.toml"
    config.write_text(f'data = "images"\nworkdir = "runs/job"\nweights = "random"\nimage-size = {IMAGE_SIZE}\n'
                      f'workers = 0\nepochs = 50\nc-grid = [0.01, 1.0]\nkaggle_binary = false\nbackbones = ["resnet34"]\n'
                      f'views = "none"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        result = _run("run", "--config", str(config), "--epochs", "2")
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    assert (project / "runs" / "job" / "features.h5").exists() and not (elsewhere / "runs").exists()
    heads = torch.load(project / "runs" / "job" / "heads" / "resnet34.pt", weights_only=True)
    assert heads["meta"]["config"]["epochs"] == 2 and tuple(heads["meta"]["config"]["c_grid"]) == (0.01, 1.0)
    config.write_text('data = "x"\nlearning_rate = 3\n')
    bad = _run("run", "--config", str(config))
    assert bad.exit_code == 2 and "unknown setting 'learning_rate'" in bad.output


def test_stage_commands_and_their_errors(digits_copy, tmp_path):
    (digits_copy / "test" / "zz.jpg").write_bytes(b"not an image")
    workdir = str(tmp_path / "work")
    missing = _run("train-head", "--workdir", workdir)
    assert missing.exit_code == 1 and "cnnfeat extract" in missing.output
    extracted = _run("extract", "--data", str(digits_copy), "--workdir", workdir, *SMOKE, "--backbone", "resnet34,densenet")
    assert extracted.exit_code == 0, extracted.output
    absent = _run("train-head", "--workdir", workdir, "--backbone", "inception")
    assert absent.exit_code == 1 and "cnnfeat extract --backbone inception" in absent.output
    heads = _run("train-head", "--workdir", workdir, "--c-grid", "0.1,1", "--folds", "3")
    assert heads.exit_code == 0 and "resnet34" in heads.output and "densenet121" in heads.output and "best" in heads.output
    saved = torch.load(tmp_path / "work" / "heads" / "resnet34.pt", weights_only=True)
    assert tuple(saved["meta"]["config"]["c_grid"]) == (0.1, 1.0) and saved["meta"]["config"]["folds"] == 3
    ensemble = _run("ensemble", "--workdir", workdir, "--epochs", "3", "--batch-size", "7", "--c-grid", "1")
    assert ensemble.exit_code == 0 and "ensemble" in ensemble.output and "concat" in ensemble.output
    assert torch.load(tmp_path / "work" / "heads" / "ensemble.pt", weights_only=True)["meta"]["config"]["batch_size"] == 7
    binary = _run("predict", "--workdir", workdir, "--kaggle-binary")
    assert binary.exit_code == 1 and "exactly two classes" in binary.output
    predicted = _run("predict", "--workdir", workdir)
    assert predicted.exit_code == 0 and "best on test: wrote" in predicted.output and "7 rows, 1 of them undecodable" in predicted.output
    assert "test/zz.jpg" in predicted.output
    valid = _run("predict", "--workdir", workdir, "--model", "resnet", "--split", "valid", "--output", str(tmp_path / "v.csv"))
    assert valid.exit_code == 0 and "accuracy" in valid.output and (tmp_path / "v.csv").exists()


def test_extract_help_names_every_kind_of_weights():
    help_text = " ".join(_run("extract", "--help").output.split())
    for kind in ("imagenet", "IMAGENET1K_V2", "path/to/<backbone>.pt", "random"):
        assert kind in help_text, kind


def test_version_help_info_and_prepare_start_without_torch(digits_folder, tmp_path):
    """They import no torch, torchvision, scikit-learn or matplotlib: those imports are made to fail here."""
    workdir = tmp_path / "work"
    assert _run("extract", "--data", str(digits_folder), "--workdir", str(workdir), "--backbone", "resnet34", *SMOKE).exit_code == 0
    raw = tmp_path / "raw"
    raw.mkdir()
    for i, image in enumerate(sorted((digits_folder / "train").rglob("*.jpg"))):
        shutil.copy(image, raw / f"{image.parent.name}.{i}.jpg")
    blocked = "import sys\nfor m in ('torch', 'torchvision', 'sklearn', 'matplotlib', 'pandas'): sys.modules[m] = None\n"
    runs = {
        "--version": ["--version"], "--help": ["--help"], "info": ["info", "--workdir", str(workdir)],
        "prepare": ["prepare", "--train", str(raw), "--out", str(tmp_path / "prepared"), "--label-from-name",
                    "--val-fraction", "0.25"],
    }
    for name, args in runs.items():
        code = blocked + f"from pipeline.cli import main\nmain({args!r}, prog_name='cnnfeat')"
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, (name, done.stdout, done.stderr)
        assert time.perf_counter() - started < 5, name
    assert "cnnfeat, version" in subprocess.run([sys.executable, "-m", "pipeline", "--version"], capture_output=True,
                                                text=True).stdout


def test_backbones_lists_torchvision_models():
    result = _run("backbones")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[1].split()[:3] == ["resnet34", "512", "299"] and any(line.startswith("convnext_tiny ") for line in lines)
    assert not any(line.startswith("squeezenet1_0") for line in lines) and "timm:" in result.output
