from __future__ import annotations

from pathlib import Path

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
