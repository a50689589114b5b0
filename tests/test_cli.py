from __future__ import annotations

import shutil
from pathlib import Path

import torch
from click.testing import CliRunner

from pipeline.cli import main

from .conftest import IMAGE_SIZE


def _run(*args: str) -> "CliRunner.Result":
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_extract_then_info_then_nothing_to_do(digits_folder, tmp_path):
    workdir = str(tmp_path / "work")
    common = ("--data", str(digits_folder), "--workdir", workdir, "--weights", "random",
              "--image-size", str(IMAGE_SIZE), "--workers", "0")
    first = _run("extract", "--backbone", "inception", *common)
    assert first.exit_code == 0, first.output
    assert "Extracted" in first.output and "train: inception" in first.output
    second = _run("extract", "--backbone", "inception_v3", *common)
    assert second.exit_code == 0 and "Nothing to do" in second.output
    info = _run("info", "--workdir", workdir)
    assert info.exit_code == 0
    assert "classes: 0, 1, 2" in info.output
    assert "train: 24 images, labeled, 0 skipped" in info.output and "test: 6 images, unlabeled" in info.output
    assert "inception" in info.output and "weights=random:seed=0" in info.output
    assert "extract train/resnet34: not extracted yet" in info.output and "train ensemble: not trained yet" in info.output


def test_info_tells_what_the_next_run_would_redo(digits_copy, tmp_path):
    workdir = tmp_path / "work"
    done = _run("run", "--data", str(digits_copy), "--workdir", str(workdir), "--weights", "random",
                "--image-size", str(IMAGE_SIZE), "--workers", "0", "--epochs", "3")
    assert done.exit_code == 0, done.output
    assert "do nothing: everything is up to date" in _run("info", "--workdir", str(workdir)).output
    shutil.copy(digits_copy / "train" / "0" / next((digits_copy / "train" / "0").iterdir()).name,
                digits_copy / "train" / "0" / "new.jpg")
    (workdir / "heads" / "inception.pt").unlink()
    info = _run("info", "--workdir", str(workdir)).output
    for name in ("resnet34", "inception", "densenet121"):
        assert f"extract train/{name}: files added, removed or changed" in info
        assert f"extract valid/{name}" not in info
    assert "train inception: not trained yet" in info
    assert "train resnet34: its features will be extracted again" in info and "train ensemble: its features" in info


def test_offline_extract_exits_non_zero_with_the_file_to_fetch(empty_torch_home, digits_folder, tmp_path):
    result = _run("extract", "--data", str(digits_folder), "--workdir", str(tmp_path / "w"), "--backbone", "resnet")
    assert result.exit_code == 1
    assert "resnet34-b627a593.pth" in result.output and str(Path(empty_torch_home) / "hub" / "checkpoints") in result.output
    assert not (tmp_path / "w" / "features.h5").exists()


def test_user_errors_are_one_line_not_a_traceback(tmp_path):
    result = _run("info", "--workdir", str(tmp_path))
    assert result.exit_code == 1 and "no feature cache" in result.output and "Traceback" not in result.output
    (tmp_path / "data").mkdir()
    result = _run("extract", "--data", str(tmp_path / "data"), "--workdir", str(tmp_path / "w"), "--weights", "random")
    assert result.exit_code == 1 and "no images found" in result.output
    result = _run("extract", "--data", str(tmp_path), "--backbone", "vgg")
    assert result.exit_code == 1 and "unknown backbone 'vgg'" in result.output


def test_run_does_every_stage_then_nothing(digits_folder, tmp_path):
    workdir = tmp_path / "work"
    args = ("run", "--data", str(digits_folder), "--workdir", str(workdir), "--weights", "random",
            "--image-size", str(IMAGE_SIZE), "--workers", "0", "--epochs", "5")
    first = _run(*args)
    assert first.exit_code == 0, first.output
    for name in ("resnet34", "inception", "densenet121", "ensemble"):
        assert (workdir / "heads" / f"{name}.pt").exists() and name in first.output
    assert "ensemble on test: wrote" in first.output
    submission = (workdir / "submission.csv").read_text().splitlines()
    assert submission[0] == "id,0,1,2" and len(submission) == 7
    second = _run(*args)
    assert second.exit_code == 0
    assert "Nothing to do" in second.output and second.output.count("(up to date)") == 4
    assert "reports:" in first.output and "reports:" not in second.output  # nothing retrained, reports current
    assert "ensemble on test: up to date" in second.output


def test_run_reads_a_toml_config_and_the_command_line_wins(digits_folder, tmp_path):
    config = tmp_path / "job.toml"
    config.write_text(
        f'data = "{digits_folder}"\nworkdir = "{tmp_path / "work"}"\nweights = "random"\n'
        f'image-size = {IMAGE_SIZE}\nworkers = 0\nepochs = 50\nkaggle_binary = false\n'
    )
    result = _run("run", "--config", str(config), "--epochs", "2")
    assert result.exit_code == 0, result.output
    metrics = (tmp_path / "work" / "metrics" / "resnet34.json").read_text()
    assert '"epochs": 2' in metrics
    config.write_text('data = "x"\nlearning_rate = 3\n')
    bad = _run("run", "--config", str(config))
    assert bad.exit_code != 0 and "unknown setting 'learning_rate'" in bad.output


def test_stage_commands_and_their_errors(digits_folder, tmp_path):
    workdir = str(tmp_path / "work")
    missing = _run("train-head", "--workdir", workdir)
    assert missing.exit_code == 1 and "cnnfeat extract" in missing.output
    extracted = _run("extract", "--data", str(digits_folder), "--workdir", workdir, "--weights", "random",
                     "--image-size", str(IMAGE_SIZE), "--workers", "0", "--backbone", "resnet34,densenet")
    assert extracted.exit_code == 0, extracted.output
    absent = _run("train-head", "--workdir", workdir, "--backbone", "inception")
    assert absent.exit_code == 1 and "cnnfeat extract --backbone inception" in absent.output
    heads = _run("train-head", "--workdir", workdir, "--epochs", "3", "--batch-size", "7")
    assert heads.exit_code == 0 and "resnet34" in heads.output and "densenet121" in heads.output
    saved = torch.load(tmp_path / "work" / "heads" / "resnet34.pt", weights_only=True)
    assert saved["meta"]["config"]["batch_size"] == 7
    no_ensemble = _run("predict", "--workdir", workdir)
    assert no_ensemble.exit_code == 1 and "no trained head" in no_ensemble.output
    ensemble = _run("ensemble", "--workdir", workdir, "--epochs", "3")
    assert ensemble.exit_code == 0 and "ensemble" in ensemble.output
    binary = _run("predict", "--workdir", workdir, "--kaggle-binary")
    assert binary.exit_code == 1 and "exactly two classes" in binary.output
    predicted = _run("predict", "--workdir", workdir, "--model", "resnet", "--split", "valid", "--output",
                     str(tmp_path / "valid.csv"))
    assert predicted.exit_code == 0 and "accuracy" in predicted.output and (tmp_path / "valid.csv").exists()
