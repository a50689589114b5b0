"""cnnfeat finetune on real digit scans, on the CPU: what trains, resuming, and the way back into the pipeline."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from click.testing import CliRunner

from features import FeatureCache, extract, feature_names, get_backbone, load_rgb, preprocessing
import pipeline.finetune.train as finetune_train
from pipeline.cli import main
from pipeline.config import PredictConfig
from pipeline.finetune import FinetuneConfig, network_predictions
from pipeline.finetune.config import CLASSIFIER as CLASSIFIER_LAYERS
from pipeline.finetune.data import load_data
from pipeline.finetune.network import chosen_blocks, new_model
from pipeline.finetuned import train as finetune
from pipeline.predict import predict
from pipeline.status import staleness

from .conftest import cosines, extract_config, make_digits

SMALL = {"resnet34": 32, "densenet121": 32, "inception": 80}  # Inception needs 75 px
CLASSIFIER = {"resnet34": "fc", "densenet121": "classifier", "inception": "fc"}
# for the tests of the loop itself (resuming, logging, what chooses the epoch), which hold whatever network trains:
# 1.4 M parameters from random weights, so its resume states are 1.5 MB where ResNet-34's are 85 MB and up
TINY = {"backbone": "shufflenet_v2_x0_5", "weights": "random"}


def config(data: Path, workdir: Path, **overrides) -> FinetuneConfig:
    settings = dict(data=data, workdir=workdir, image_size=32, batch_size=8, workers=0, epochs=1, augment="none")
    return FinetuneConfig(**{**settings, **overrides})


def classifier_inputs(model: torch.nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """What the model's final Linear consumes, captured by a forward pre-hook."""
    seen = []
    handle = model.get_submodule(layer).register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
    with torch.inference_mode():
        model.eval()(images)
    handle.remove()
    return seen[0]


def normalized(paths: list[Path], size: int, mean: tuple, std: tuple) -> torch.Tensor:
    images = torch.stack([load_rgb(p, size) for p in paths]).float() / 255
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize(("backbone", "head"), [("resnet34", "fc"), ("densenet121", "classifier"), ("inception", "fc"),
                                               ("mobilenet_v3_small", "classifier.3"), ("efficientnet_b0", "classifier.1"),
                                               ("convnext_tiny", "classifier.2"), ("vit_b_16", "heads.head")])
def test_the_default_train_layers_is_the_classifier_of_every_model(backbone: str, head: str) -> None:
    """--train-layers' default names each model's own classifier block, whatever the model calls it."""
    assert FinetuneConfig.train_layers == CLASSIFIER_LAYERS
    spec = get_backbone(backbone)
    with torch.device("meta"):  # the architecture only: no weights are made
        model = torchvision.models.get_model(spec.builder, num_classes=3)
    assert chosen_blocks(spec, model, CLASSIFIER_LAYERS) == [head]
    assert chosen_blocks(spec, model, f"{CLASSIFIER_LAYERS},{head}") == [head]


def test_training_lowers_val_loss_and_changes_only_the_named_blocks(digits_folder: Path, tmp_path: Path,
                                                                    torch_home: Path) -> None:
    cfg = config(digits_folder, tmp_path / "w", train_layers="layer4", epochs=2, bn_train=True)
    result = finetune(cfg)
    spec = get_backbone("resnet34")
    saved = torch.load(result.checkpoint, weights_only=True)
    plain = torchvision.models.get_model(spec.builder, num_classes=len(saved["classes"]), **saved["builder_kwargs"])
    plain.load_state_dict(saved["state_dict"])  # the torchvision model's own state, nothing fused or renamed
    before = new_model(spec, "imagenet", 3, cfg.seed).state_dict()
    after = saved["state_dict"]
    frozen = [k for k in before if not k.startswith(("layer4.", "fc."))]
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # BN statistics too
    assert not torch.equal(before["layer4.0.conv1.weight"], after["layer4.0.conv1.weight"])
    assert saved["settings"]["trained_blocks"] == ["layer4", "fc"]
    untrained = _val_loss(new_model(spec, "imagenet", 3, cfg.seed), digits_folder, saved)
    assert result.metrics["val_log_loss"] < untrained
    # the kept epoch is the best on the training rows held out to choose it; validation only reports
    assert result.metrics["holdout_log_loss"] == min(h["holdout_loss"] for h in result.history)
    assert result.metrics["chosen_on"].startswith("a stratified 10% holdout of the training rows of train (3 rows")
    assert result.metrics["n_train"] == 21 and not any("val_loss" in h for h in result.history)
    assert (tmp_path / "w" / "metrics" / "finetuned-resnet34-history.csv").exists()


def test_validation_labels_choose_nothing(tmp_path: Path) -> None:
    """Every validation label changed: the same weights, epochs and history; only the reported numbers move."""
    data = make_digits.write_digits(tmp_path / "data", [0, 1, 2], 4, 2, 0, size=32)
    permuted = Path(shutil.copytree(data, tmp_path / "permuted"))
    for old, new in (("0", "x"), ("1", "0"), ("2", "1"), ("x", "2")):  # 0 -> 2, 1 -> 0, 2 -> 1
        (permuted / "valid" / old).rename(permuted / "valid" / new)
    runs = [finetune(config(folder, tmp_path / f"w-{folder.name}", **TINY, epochs=2, patience=1, lr=3e-3))
            for folder in (data, permuted)]
    weights = [torch.load(r.checkpoint, weights_only=True)["state_dict"] for r in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert _timeless(runs[0].history) == _timeless(runs[1].history)
    assert runs[0].metrics["chosen"] == runs[1].metrics["chosen"]
    by_file = [{Path(p).name: row for p, row in zip(r.validation["paths"], r.validation["proba"].tolist())} for r in runs]
    assert by_file[0] == by_file[1]  # the same network on the same images
    assert runs[0].metrics["val_log_loss"] != runs[1].metrics["val_log_loss"]


def _timeless(history: list[dict]) -> list[dict]:
    """The history but its speeds: every number that depends on the data, the settings and the seed alone."""
    return [{k: v for k, v in row.items() if k != "images_per_second"} for row in history]


def test_a_class_with_one_training_row_trains_every_epoch_and_keeps_the_last(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    data = make_digits.write_digits(tmp_path / "data", [0, 1, 2], 1, 1, 0, size=32)
    result = finetune(config(data, tmp_path / "w", **TINY, epochs=3, patience=1))
    assert "classes 0, 1, 2: a single training row" in caplog.text
    assert [h["chosen"] for h in result.history] == [False, False, True] and result.metrics["chosen"] == {"epochs": 3}
    assert result.metrics["chosen_on"].startswith("nothing") and "holdout_loss" not in result.history[0]


def test_validation_numbers_are_the_saved_networks_in_fp32(digits_folder: Path, tmp_path: Path) -> None:
    """Trained under bf16 autocast, reported as `predict` computes the saved network: in fp32."""
    result = finetune(config(digits_folder, tmp_path / "w", **TINY, precision="bf16"))
    found = network_predictions(result.checkpoint, "valid", digits_folder, device="cpu", workers=0)
    assert found.paths == result.validation["paths"]
    np.testing.assert_allclose(result.validation["proba"].numpy(), found.proba, rtol=0, atol=1e-6)


def test_a_diverging_run_stops_naming_the_epoch_and_what_to_change(digits_folder: Path, tmp_path: Path,
                                                                   torch_home: Path) -> None:
    done = CliRunner().invoke(main, ["finetune", "--data", str(digits_folder), "--workdir", str(tmp_path / "w"),
                                     "--image-size", "32", "--workers", "0", "--batch-size", "4", "--epochs", "2",
                                     "--augment", "none", "--train-layers", "layer4", "--lr", "1e6"])
    assert done.exit_code == 1, done.output
    assert "training diverged in epoch 1" in done.output and "try 100000" in done.output


def _val_loss(model: torch.nn.Module, data: Path, saved: dict) -> float:
    paths = sorted((data / "valid").glob("*/*.*"))
    labels = torch.tensor([saved["classes"].index(p.parent.name) for p in paths])
    prep = saved["preprocessing"]
    with torch.inference_mode():
        logits = model.eval()(normalized(paths, prep["image_size"], prep["mean"], prep["std"]))
    return torch.nn.functional.cross_entropy(logits, labels).item()


def test_batches_of_one_image_train_from_scratch_where_the_maps_shrink_to_1x1(tmp_path: Path) -> None:
    """At 32 px the last maps are 1x1, where one image has no batch statistics: torch's BatchNorm raised (exit 70).
    A batch of one uses the running statistics; larger batches of the same run still train them."""
    data = make_digits.write_digits(tmp_path / "data", [0, 1, 2], 6, 2, 0, size=32)  # 15 rows left beside the holdout
    result = finetune(config(data, tmp_path / "w", **TINY, train_layers="all", batch_size=2))  # the last batch: one
    network = torch.load(result.checkpoint, weights_only=True)["state_dict"]
    means = [v for k, v in network.items() if k.endswith("running_mean")]
    assert means and all(m.abs().sum() > 0 for m in means)  # every BatchNorm's statistics moved from their zeros
    assert result.history[0]["train_loss"] > 0


def test_resume_after_a_kill_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    digits_folder = make_digits.write_digits(tmp_path / "data", [0, 1, 2], 4, 2, 0, size=32)
    # every block, each its own learning rate, and BatchNorm statistics that train (random weights): all must resume
    cfg = dict(**TINY, train_layers="all", epochs=2, augment="crop", batch_size=3)
    whole = finetune(config(digits_folder, tmp_path / "whole", **cfg))

    def kill_in_epoch_2(what: str, done: int, total: int, loss: float | None) -> None:
        if what.startswith("epoch 2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(config(digits_folder, tmp_path / "killed", **cfg), progress=kill_in_epoch_2)
    assert (tmp_path / "killed" / "finetuned" / f"{TINY['backbone']}.state.pt").exists()
    resumed = finetune(config(digits_folder, tmp_path / "killed", **cfg))
    expected = torch.load(whole.checkpoint, weights_only=True)["state_dict"]
    got = torch.load(resumed.checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert _timeless(resumed.history) == _timeless(whole.history)


def test_an_epoch_is_logged_once_resume_keeps_it_and_broken_files_are_neither_counted_nor_forgotten(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while epoch 2's resume state is written: epoch 2 was never claimed. Killed after it, before the
    network is saved: the resume trains nothing, so the broken training file it skipped must come from the state."""
    data = make_digits.write_digits(tmp_path / "data", [0, 1, 2], 4, 2, 0, size=32)
    (data / "train" / "0" / "zz-broken.png").write_bytes(b"not an image")  # a training row under seed 0, not held out
    cfg = config(data, tmp_path / "w", **TINY, epochs=2)
    train_paths = load_data(cfg, 32).train.paths
    assert "train/0/zz-broken.png" in train_paths
    caplog.set_level(logging.INFO, logger="pipeline.finetune.train")
    write_state = finetune_train._write_state

    def killed_writing_epoch_2(path: Path, state: dict) -> None:
        if len(state["history"]) == 2 and not state["finished"]:
            raise KeyboardInterrupt
        write_state(path, state)

    monkeypatch.setattr(finetune_train, "_write_state", killed_writing_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg)
    assert "epoch 1: " in caplog.text and "epoch 2: " not in caplog.text
    monkeypatch.setattr(finetune_train, "_write_state", write_state)

    def killed_saving(*args, **kwargs) -> None:
        raise KeyboardInterrupt

    save_network = finetune_train._save_network
    monkeypatch.setattr(finetune_train, "_save_network", killed_saving)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg)
    assert "resuming after epoch 1 of 2" in caplog.text and "epoch 2: " in caplog.text
    monkeypatch.setattr(finetune_train, "_save_network", save_network)
    caplog.clear()
    result = finetune(cfg)
    assert "resuming after epoch 2 of 2" in caplog.text and "epoch 2: " not in caplog.text  # nothing trained again
    assert result.skipped == ["train/0/zz-broken.png"]
    assert result.metrics["n_train"] == len(train_paths) - 1
    again = finetune(cfg)  # up to date: the finished state says which files were skipped
    assert not again.trained and again.skipped == ["train/0/zz-broken.png"]


@pytest.mark.parametrize("backbone", list(SMALL))
def test_each_book_backbone_trains_extracts_and_predicts(backbone: str, tmp_path: Path, torch_home: Path) -> None:
    digits_copy = make_digits.write_digits(tmp_path / "data", [0, 1, 2], 4, 2, 3, size=SMALL[backbone])
    (digits_copy / "test" / "zz-broken.png").write_bytes(b"not an image")
    workdir = tmp_path / "w"
    cfg = config(digits_copy, workdir, backbone=backbone, image_size=SMALL[backbone],
                 train_layers=get_backbone(backbone).blocks[-2])
    result = finetune(cfg)
    assert result.trained and result.metrics["trained_blocks"][-1] == CLASSIFIER[backbone]
    assert not finetune(cfg).trained  # finished: the same command does nothing again

    # extract --weights: the features are what the fine-tuned classifier consumes
    tuned = extract_config(digits_copy, workdir, backbones=(backbone,), weights=str(result.checkpoint),
                           image_size=SMALL[backbone])
    extract(tuned)
    name = get_backbone(backbone).name
    with FeatureCache(workdir / "features.h5") as cache:  # <backbone>@finetuned-<hash>: beside ImageNet's, never in place
        features, paths = cache.features("valid", feature_names(tuned)[0]), cache.paths("valid")
    prep = preprocessing(get_backbone(backbone), str(result.checkpoint))
    model = new_model(get_backbone(backbone), "random", 3, 0)
    model.load_state_dict(torch.load(result.checkpoint, weights_only=True)["state_dict"])
    expected = classifier_inputs(model, CLASSIFIER[backbone],
                                 normalized([digits_copy / p for p in paths], SMALL[backbone], prep.mean, prep.std))
    # equal up to the rounding of extraction's folded batch norms (large with random "pretrained" weights)
    assert features.shape == expected.shape and cosines(features, expected.numpy()).min() > 0.9999

    # predict: a row per test file, the broken one with the class frequencies
    out = predict(PredictConfig(workdir=workdir, model=f"finetuned-{name}", tta=True))
    frame = pd.read_csv(out.path, dtype={"id": str})
    assert len(frame) == len(list((digits_copy / "test").iterdir())) and out.fallback == ["test/zz-broken.png"]
    assert np.allclose(frame[["0", "1", "2"]].sum(axis=1), 1)
    assert frame.set_index("id").loc["zz-broken"].tolist() == pytest.approx([1 / 3] * 3)


def test_from_scratch_all_layers_beats_a_linear_head_on_frozen_random_features(tmp_path: Path) -> None:
    """The same loop, split, seed and budget: training every layer against training only the new classifier."""
    # 12 rows a class and 3 epochs: the smallest budget measured to keep a wide margin (log loss 0.67 against 1.22,
    # accuracy 25 of 32 against 19); each epoch writes a 135 MB resume state, most of this test's time
    data = make_digits.write_digits(tmp_path / "data", [0, 1, 2, 3], 12, 8, 0, size=32)
    runs = {layers: finetune(config(data, tmp_path / layers, backbone="resnet18", weights="random", train_layers=layers,
                                    epochs=3, lr=3e-3))
            for layers in ("all", "fc")}
    tuned, linear = runs["all"].metrics, runs["fc"].metrics
    assert tuned["val_log_loss"] < linear["val_log_loss"] and tuned["val_accuracy"] > linear["val_accuracy"], \
        (tuned, linear)


def test_cli_finetune_then_predict(digits_folder: Path, tmp_path: Path, torch_home: Path) -> None:
    workdir = tmp_path / "w"
    common = ["--data", str(digits_folder), "--workdir", str(workdir), "--image-size", "32", "--workers", "0"]
    bad = CliRunner().invoke(main, ["finetune", *common, "--train-layers", "layer9"])
    assert bad.exit_code == 1 and "layer1, layer2, layer3, layer4, fc" in bad.output
    done = CliRunner().invoke(main, ["finetune", *common, "--epochs", "2", "--batch-size", "8"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert "finetuned-resnet34" in done.output and (workdir / "reports" / "training_curves.png").exists()
    assert "finetuned-resnet34" in (workdir / "metrics" / "summary.csv").read_text()
    assert staleness(None, workdir, "finetuned-resnet34") == ""  # current while its checkpoint is there
    predicted = CliRunner().invoke(main, ["predict", "--model", "finetuned-resnet", "--workdir", str(workdir), "--tta"],
                                   catch_exceptions=False)
    assert predicted.exit_code == 0, predicted.output
    assert len(pd.read_csv(workdir / "submission.csv")) == len(list((digits_folder / "test").iterdir()))


def test_torchrun_with_two_ranks_trains_one_checkpoint(tmp_path: Path) -> None:
    """Batches of one image and a broken training file: one rank's batch is empty while the other's is not, and
    both still step together (a rank that skipped the step would leave the other waiting in DDP's all-reduce).
    The tiny network: DDP's stepping holds for any, and each rank builds its own from random weights."""
    data = make_digits.write_digits(tmp_path / "data", [0, 1, 2], 4, 2, 0, size=32)
    (data / "train" / "0" / "zz-broken.png").write_bytes(b"not an image")  # a training row under seed 0, not held out
    workdir = tmp_path / "w"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pipeline",
               "finetune", "--data", str(data), "--workdir", str(workdir), "--backbone", TINY["backbone"],
               "--weights", TINY["weights"], "--image-size", "32", "--batch-size", "1", "--no-bn-train", "--epochs", "1",
               "--train-layers", "all", "--workers", "0", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("best epoch 1") == 1  # rank 0 alone writes and reports
    assert "1 file(s) could not be decoded and were skipped: train/0/zz-broken.png" in done.stderr  # any rank's
    saved = torch.load(workdir / "finetuned" / f"{TINY['backbone']}.pt", weights_only=True)
    assert saved["classes"] == ["0", "1", "2"] and not (workdir / ".lock").exists()
