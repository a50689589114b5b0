"""pipeline.inference and `predict --images`: a trained model on images outside its data folder gives what
`predict --split` gives for the same files (1e-4 in probability, the same labels), for every kind of model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from features import ConfigError, MissingInputError, open_rgb
from pipeline import load_predictor
from pipeline.cli import main
from pipeline.heads import class_probabilities, load_model

MODELS = ("resnet34", "inception", "densenet121", "resnet34+hflip", "concat", "ensemble", "best")


@pytest.fixture(scope="module")
def new_images(trained_digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test split's files copied outside the data folder, in a nested layout."""
    folder = tmp_path_factory.mktemp("new") / "photos"
    for path in (Path(str(trained_digits.parent / "data" / "test"))).iterdir():
        target = folder / ("nested" if path.stem.isdigit() and int(path.stem) % 2 else "") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return folder


def _reference(workdir: Path, model: str) -> dict[str, np.ndarray]:
    """{file name: probabilities} from the cached pipeline's predict --split test."""
    probs = class_probabilities(workdir, model, "test", "cpu")
    return {Path(p).name: row for p, row in zip(probs.paths, probs.proba)}


def _by_name(frame: pd.DataFrame, classes: list[str]) -> dict[str, np.ndarray]:
    return {Path(p).name: row for p, row in zip(frame["path"], frame[classes].to_numpy(float))}


def _assert_parity(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-4, rtol=0, err_msg=name)
        assert got[name].argmax() == expected[name].argmax(), name


@pytest.mark.parametrize("model", MODELS)
def test_the_api_on_files_anywhere_agrees_with_the_cached_split(trained_digits, new_images, model):
    predictor = load_predictor(trained_digits, model, device="cpu")
    out = predictor.predict(new_images, workers=0)
    classes = list(predictor.classes)
    assert list(out.frame.columns) == ["path", *classes, "label"]
    assert len(out.frame) == 9 and out.fallback == [str(new_images / "broken.jpg")]
    np.testing.assert_allclose(out.proba, out.frame[classes].to_numpy(float))
    assert (out.frame["label"] == [classes[i] for i in out.proba.argmax(1)]).all()
    _assert_parity(_by_name(out.frame, classes), _reference(trained_digits, model))


def test_the_model_reads_only_its_own_features(trained_digits):
    predictor = load_predictor(trained_digits, "resnet34+hflip", device="cpu")
    assert sorted(job.dataset for job in predictor.featurizer.jobs) == ["resnet34", "resnet34_hflip"]
    _, meta, _ = load_model(trained_digits / "heads" / "best.pt")
    best = load_predictor(trained_digits, "best", device="cpu")
    assert {job.dataset for job in best.featurizer.jobs} <= set(meta["feature_settings"])


def test_pictures_in_memory_give_what_their_files_give(trained_digits, new_images):
    predictor = load_predictor(trained_digits, "best", device="cpu")
    files = sorted(p for p in new_images.rglob("*") if p.suffix in (".jpg", ".png") and p.name != "broken.jpg")
    by_path = predictor.predict(files, workers=0).proba
    by_pil = predictor.predict([Image.open(p) for p in files], workers=0)  # EXIF and grayscale handled as for files
    np.testing.assert_allclose(by_pil.proba, by_path, atol=1e-6)
    pictures = [open_rgb(p) for p in files if p.name not in ("rotated.jpg", "gray.png")]  # one size: one batch
    batch = torch.stack([torch.from_numpy(np.asarray(p).copy()).permute(2, 0, 1) for p in pictures])
    by_tensor = predictor.predict(batch, workers=0)
    np.testing.assert_allclose(by_tensor.proba, by_path[[f.name not in ("rotated.jpg", "gray.png") for f in files]],
                               atol=1e-6)
    assert by_tensor.frame["path"].tolist() == [f"<image {i}>" for i in range(len(pictures))]
    with pytest.raises(ConfigError, match=r"uint8 \(N, 3, H, W\)"):
        predictor.predict(batch.float())
    with pytest.raises(MissingInputError, match="do not exist"):
        predictor.predict(["no/such/file.jpg"])


def test_predict_images_on_the_command_line(trained_digits, new_images, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two files\n{new_images / 'rotated.jpg'}\n\n{new_images / 'gray.png'}\n")
    output = tmp_path / "out.csv"
    result = CliRunner().invoke(main, ["predict", "--workdir", str(trained_digits), "--model", "best", "--device", "cpu",
                                       "--output", str(output), "--images", str(new_images), str(listing)])
    assert result.exit_code == 0, result.output
    assert "best on images: wrote" in result.output and "1 of them undecodable" in result.output
    frame = pd.read_csv(output, dtype={"label": str})
    assert len(frame) == 9 and frame["path"].is_unique  # the listed files are already in the folder: once each
    _assert_parity(_by_name(frame, ["0", "1", "2"]), _reference(trained_digits, "best"))
    assert not (trained_digits / "predictions.csv").exists()
    refused = CliRunner().invoke(main, ["predict", "--workdir", str(trained_digits), "--split", "valid",
                                        "--images", str(new_images)])
    assert refused.exit_code == 2 and "--split" in refused.output
