"""The workdir's job (features/job.py, the CLI's precedence): a second run needs only --workdir, does only what
changed, and never drops or overwrites results. Tiny: random weights, 64 px, two small backbones."""

from __future__ import annotations

import re
import shlex
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from features import FINETUNED_FORMAT, FeatureCache, FeatureGroup, Job, cache_path, read_job, write_job
from pipeline.cli import main

from .conftest import lock_held_elsewhere, snapshot

SIZE = 64
BACKBONES = ["resnet18", "mobilenet_v3_small"]


def _cli(*args: str | Path) -> "CliRunner.Result":
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _ok(*args: str | Path) -> str:
    result = _cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def _hints(output: str) -> list[str]:
    """The commands an output tells the user to run."""
    return re.findall(r"`(cnnfeat [^`]+)`", output)


def _paste(hint: str) -> str:
    """Run a printed hint exactly as printed."""
    return _ok(*shlex.split(hint)[1:])


@pytest.fixture
def job_run(digits_copy: Path, tmp_path: Path) -> Path:
    """A workdir made by `cnnfeat run --config job.toml` with settings no default has."""
    config = tmp_path / "job.toml"
    config.write_text(f'data = "{digits_copy.name}"\nbackbones = {BACKBONES}\nweights = "random"\n'
                      f'image_size = {SIZE}\nviews = "none"\nc_grid = [0.1, 1.0]\nepochs = 3\nworkers = 0\n'
                      .replace("'", '"'))
    workdir = tmp_path / "work"
    output = _ok("run", "--config", config, "--workdir", workdir)
    assert f"job: recorded in {workdir / 'job.toml'}" in output
    return workdir


def test_a_toml_job_is_redone_by_workdir_alone_and_one_new_image_costs_one(job_run, digits_copy):
    workdir = job_run
    recorded = tomllib.loads((workdir / "job.toml").read_text())
    assert recorded["data"] == str(digits_copy.resolve()) and recorded["views"] == [] and recorded["epochs"] == 3
    assert recorded["features"] == [{"backbones": BACKBONES, "weights": "random", "image_size": SIZE}]
    assert "Nothing to do" in _ok("extract", "--workdir", workdir)
    again = _ok("run", "--workdir", workdir)
    assert "Nothing to do: every stage of the job" in again and "job:" not in again
    before = snapshot(workdir)

    shutil.copy(digits_copy / "test" / "1.jpg", digits_copy / "test" / "new.jpg")
    added = _ok("run", "--workdir", workdir)
    assert "test: resnet18, mobilenet_v3_small: 1 images decoded" in added, added
    after = snapshot(workdir)
    with FeatureCache(cache_path(workdir)) as cache:
        new_row = cache.paths("test").index("test/new.jpg")
    assert before.keys() == after.keys()
    for key, values in before.items():  # every other row of every dataset, bit for bit
        kept = np.delete(after[key], new_row, axis=0) if key[0] == "test" else after[key]
        np.testing.assert_array_equal(kept, values, err_msg=str(key))
    submission = pd.read_csv(workdir / "submission.csv")
    assert "new" in submission.iloc[:, 0].astype(str).tolist() and len(submission) == 7
    assert "do nothing: everything is up to date" in _ok("info", "--workdir", workdir)


def test_a_flag_changes_the_job_in_one_line_and_hints_paste_as_they_are(job_run):
    workdir = job_run
    changed = _ok("train-head", "--workdir", workdir, "--max-iter", "200", "--no-select")
    assert "job: max_iter 500 -> 200; select True -> False" in changed
    assert read_job(workdir).settings["max_iter"] == 200
    assert "job:" not in _ok("train-head", "--workdir", workdir)  # taken from the job now: nothing changes

    job_file = workdir / "job.toml"  # a recorded clip is predict's too; it is not an option given to --images
    job_file.write_text(job_file.read_text().replace("\ndata = ", "\nclip = 0.05\ndata = ", 1))
    _ok("predict", "--workdir", workdir)
    assert pd.read_csv(workdir / "submission.csv").iloc[:, 1:].to_numpy().min() >= 0.05 - 1e-9
    _ok("predict", "--workdir", workdir, "--images", Path(read_job(workdir).settings["data"]) / "test")

    mirrored = _cli("predict", "--workdir", workdir, "--model", "resnet18+hflip")
    assert mirrored.exit_code != 0
    assert f"cnnfeat extract --views hflip --workdir {workdir}" in _hints(mirrored.output)
    typo = job_file.read_text()
    job_file.write_text(typo.replace("\nepochs = ", "\nepoch = ", 1))
    refused = _cli("train-head", "--workdir", workdir)
    assert refused.exit_code == 1 and "unknown setting 'epoch' (did you mean 'epochs'?)" in refused.output  # the workdir's
    job_file.write_text(typo)
    cache_path(workdir).unlink()
    missing = _cli("train-head", "--workdir", workdir)
    assert missing.exit_code != 0 and _hints(missing.output) == [f"cnnfeat extract --workdir {workdir}"]
    pasted = _paste(_hints(missing.output)[0])
    assert "42 images decoded" in pasted  # both backbones at 64 px with random weights: the job, not the defaults
    with FeatureCache(cache_path(workdir)) as cache:
        assert cache.datasets("valid") == sorted(BACKBONES)
        assert cache.settings("valid", "resnet18")["image_size"] == SIZE


def _finetuned_resnet18(path: Path) -> Path:
    """A checkpoint in the format `cnnfeat finetune` writes."""
    import torchvision

    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=3)
    torch.save({"format": FINETUNED_FORMAT, "backbone": "resnet18", "builder_kwargs": {}, "classes": ["0", "1", "2"],
                "state_dict": model.state_dict(), "settings": {},
                "preprocessing": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "image_size": SIZE}}, path)
    return path


def test_fine_tuned_and_random_features_of_one_backbone_live_side_by_side(digits_folder, tmp_path, monkeypatch):
    workdir = tmp_path / "work"
    _ok("extract", "--data", digits_folder, "--workdir", workdir, "--backbone", "resnet18", "--weights", "random",
        "--image-size", SIZE, "--workers", 0)
    single = _cli("ensemble", "--workdir", workdir)  # the hint names a backbone the job lacks, so pasted it adds one
    assert single.exit_code == 1, single.output
    assert _hints(single.output)[0] == f"cnnfeat extract --backbone mobilenet_v3_small --workdir {workdir}"
    checkpoint = _finetuned_resnet18(tmp_path / "resnet18.pt")
    monkeypatch.chdir(tmp_path)  # given relative, recorded absolute: the job finds it from any folder
    added = _ok("extract", "--workdir", workdir, "--backbone", "resnet18", "--weights", "resnet18.pt")
    assert f"job: + resnet18 (weights {checkpoint})" in added and "replacing" not in added
    with FeatureCache(cache_path(workdir)) as cache:
        names = cache.backbones("train")
        tuned = next(n for n in names if n.startswith("resnet18@finetuned-"))
        assert names == sorted(["resnet18", tuned]) and cache.settings("train", "resnet18")["weights"].startswith("random")
    assert [g.weights for g in read_job(workdir).features] == ["random", str(checkpoint)]
    monkeypatch.chdir(digits_folder)
    assert "Nothing to do" in _ok("extract", "--workdir", workdir)  # both groups of the job are up to date
    probes = _ok("train-head", "--workdir", workdir, "--c-grid", "0.1,1", "--folds", 2)
    assert "resnet18 " in probes and tuned in probes and "best" in probes  # best chooses among both
    assert "wrote" in _ok("predict", "--workdir", workdir, "--model", tuned)


def test_ensembles_of_different_backbones_live_side_by_side(digits10_workdir):
    quick = ("--workdir", digits10_workdir, "--epochs", 2, "--no-concat", "--no-select", "--folds", 2)
    _ok("ensemble", "--backbones", "resnet34,inception", *quick)
    _ok("ensemble", "--backbones", "resnet34,densenet121", *quick)
    _ok("ensemble", *quick)
    heads = sorted(p.stem for p in (digits10_workdir / "heads").glob("*.pt"))
    assert heads == ["ensemble", "ensemble@resnet34,densenet121", "ensemble@resnet34,inception"]
    again = _ok("ensemble", "--backbones", "resnet34,inception", *quick)
    assert "(up to date)" in again  # the other ensembles did not replace it


def test_the_job_file_round_trips_and_merges_groups(tmp_path):
    job = Job({"data": "/d", "views": ["hflip"], "c_grid": [0.1, 1.0], "flip": True},
              [FeatureGroup(("resnet18", "mobilenet_v3_small"), "random", 64)])
    bigger, changes = job.with_group(FeatureGroup(("resnet18",), "imagenet", 96))
    assert changes == ["resnet18 (weights random, image size 64) -> resnet18 (weights imagenet, image size 96)"]
    assert bigger.features == [FeatureGroup(("resnet18",), "imagenet", 96), FeatureGroup(("mobilenet_v3_small",), "random", 64)]
    write_job(tmp_path, bigger)
    assert read_job(tmp_path) == bigger
    (tmp_path / "job.toml").write_text("data = [")
    for command in ("extract", "run", "train-head", "predict", "info"):  # a problem in the workdir: 1, as for `info`
        result = _cli(command, "--workdir", tmp_path)
        assert result.exit_code == 1 and "job.toml cannot be read" in result.output, command


def test_info_during_another_extraction_says_it_is_running(digits_folder, tmp_path):
    workdir = tmp_path / "work"
    write_job(workdir, Job({"data": str(digits_folder)}, [FeatureGroup(("resnet18",), "random", SIZE)]))
    staged = workdir / ".staging" / "train" / "resnet18-0123456789abcdef"
    staged.mkdir(parents=True)
    np.savez(staged / "0000000000-0000000004.npz", rows=np.arange(4))
    with lock_held_elsewhere(workdir):
        output = _ok("info", "--workdir", workdir)
    assert "running: another cnnfeat process" in output and "extracting train: resnet18 4 of 24 images staged" in output
    assert "no feature cache" not in output
