from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from features import CacheError, ConfigError, FeatureCache, cache_path, extract
from pipeline.config import PredictConfig
from pipeline.heads import HeadConfig, HeadError, class_probabilities, load_model, train_ensemble, train_linear_heads
from pipeline.outputs import Probabilities, clip_probabilities, submission_frame
import pipeline.predict as predict_module
from pipeline.predict import predict

from .conftest import extract_config

QUICK = dict(c_grid=(0.01, 1.0), select=False)


def _probs(ids: list[str], proba: list[list[float]], classes=("cat", "dog")) -> Probabilities:
    return Probabilities([f"test/{i}.jpg" for i in ids], np.full(len(ids), -1), np.array(proba), tuple(classes))


def test_ids_sort_numerically_and_rows_sum_to_one():
    frame = submission_frame(_probs(["10", "2", "1"], [[0.1, 0.9], [0.6, 0.4], [0.3, 0.7]]))
    assert frame.id.tolist() == ["1", "2", "10"]
    assert list(frame.columns) == ["id", "cat", "dog"]
    assert frame.dog.tolist() == [0.7, 0.4, 0.9]
    np.testing.assert_allclose(frame[["cat", "dog"]].sum(axis=1), 1)


def test_non_numeric_ids_keep_path_order():
    frame = submission_frame(_probs(["b", "a10", "a2"], [[1, 0], [0, 1], [0.5, 0.5]]))
    assert frame.id.tolist() == ["b", "a10", "a2"]


def test_kaggle_binary_is_the_second_class_clipped():
    frame = submission_frame(_probs(["1", "2"], [[0.999, 0.001], [0.2, 0.8]]), kaggle_binary=True, clip=0.02)
    assert list(frame.columns) == ["id", "label"]
    assert frame.label.tolist() == pytest.approx([0.02, 0.8])
    with pytest.raises(ValueError, match="exactly two classes"):
        submission_frame(_probs(["1"], [[0.2, 0.3, 0.5]], classes=("a", "b", "c")), kaggle_binary=True)


@st.composite
def _rows_and_clip(draw: st.DrawFn) -> tuple[np.ndarray, float]:
    """A few probability rows of 2 to 10 classes (zeros, ones, near-ties among them) and a clip in (0, 1/K]."""
    n_classes = draw(st.integers(2, 10))
    cells = st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0, 0.5, 1e-12]))
    rows = np.array(draw(st.lists(st.lists(cells, min_size=n_classes, max_size=n_classes), min_size=1, max_size=5)))
    assume((rows.sum(axis=1) > 1e-6).all())
    clip = draw(st.floats(0, 1 / n_classes, exclude_min=True))
    return rows / rows.sum(axis=1, keepdims=True), clip


@settings(max_examples=100, deadline=None, database=None)
@given(_rows_and_clip())
def test_clipping_keeps_every_value_within_bounds_rows_summing_to_one_and_the_order(rows_and_clip):
    proba, clip = rows_and_clip
    clipped = clip_probabilities(proba, clip)
    assert (clipped >= clip).all() and (clipped <= 1 - clip).all()
    np.testing.assert_allclose(clipped.sum(axis=1), 1, rtol=0, atol=1e-12)
    for row, before in zip(clipped, proba):
        assert (np.diff(row[np.argsort(before, kind="stable")]) >= 0).all()  # a larger probability stays no smaller
        top, second = np.sort(before)[::-1][:2]
        if top - second > 1e-9 and clip < 1 / len(row) - 1e-9:  # a unique top the bounds cannot tie
            assert np.argmax(row) == np.argmax(before) and np.sort(row)[-2] < row.max()
    np.testing.assert_allclose(clip_probabilities(clipped, clip), clipped, rtol=0, atol=1e-12)  # valid rows stay


def test_clipping_three_classes_keeps_the_smallest_at_the_clip_and_refuses_a_clip_over_one_over_k():
    frame = submission_frame(_probs(["1", "2"], [[0.999, 0.0005, 0.0005], [0.2, 0.3, 0.5]], classes=("a", "b", "c")),
                             clip=0.02)  # clipping then renormalising wrote 0.0196 here
    values = frame[["a", "b", "c"]].to_numpy()
    assert values.min() >= 0.02 and values.max() <= 0.98
    np.testing.assert_allclose(values, [[0.96, 0.02, 0.02], [0.2, 0.3, 0.5]], rtol=0, atol=1e-12)
    np.testing.assert_allclose(clip_probabilities(np.array([[1.0, 0, 0]]), 1 / 3), 1 / 3)
    with pytest.raises(ConfigError, match=r"--clip 0\.34 cannot hold with 3 classes.*largest --clip .* 1/3 = 0\.333333"):
        submission_frame(_probs(["1"], [[0.2, 0.3, 0.5]], classes=("a", "b", "c")), clip=0.34)


def test_predict_writes_a_submission_and_scores_labeled_splits(digits10_workdir):
    train_linear_heads(HeadConfig(workdir=digits10_workdir, **QUICK), ["resnet34"])
    result = predict(PredictConfig(workdir=digits10_workdir, model="resnet34"))
    frame = pd.read_csv(digits10_workdir / "submission.csv", dtype={"id": str})
    assert result.written and result.rows == 20 and len(frame) == 20 and not result.fallback
    assert frame.id.tolist() == [str(i) for i in range(1, 21)]
    assert list(frame.columns) == ["id", *[str(d) for d in range(10)]]
    np.testing.assert_allclose(frame.iloc[:, 1:].sum(axis=1), 1, rtol=1e-9)
    assert result.accuracy is None
    assert not predict(PredictConfig(workdir=digits10_workdir, model="resnet34")).written
    scored = predict(PredictConfig(workdir=digits10_workdir, model="resnet34", split="holdout",
                                   output=digits10_workdir / "holdout.csv"))
    assert scored.accuracy > 0.8 and scored.log_loss > 0


def test_an_up_to_date_submission_is_not_predicted_again_and_reports_the_same(digits10_workdir, monkeypatch):
    train_linear_heads(HeadConfig(workdir=digits10_workdir, c_grid=(1.0,), folds=2, max_iter=50, flip=False), ["resnet34"])
    cfg = PredictConfig(workdir=digits10_workdir, model="resnet34", split="holdout")
    first = predict(cfg)

    def no_forward_pass(*args, **kwargs):
        raise AssertionError("an up-to-date submission computed its probabilities again")

    monkeypatch.setattr(predict_module, "probabilities", no_forward_pass)
    again = predict(cfg)
    assert first.written and not again.written
    assert (again.rows, again.fallback, again.accuracy, again.log_loss) == (first.rows, [], first.accuracy, first.log_loss)
    assert first.rows == 200 and first.accuracy is not None and first.log_loss is not None
    with pytest.raises(AssertionError, match="computed its probabilities again"):
        predict(PredictConfig(workdir=digits10_workdir, model="resnet34", split="holdout", clip=0.01))  # a new key


def test_a_mirrored_model_predicts_the_mean_of_both_views_at_its_temperature(digits10_workdir):
    (_, flipped) = train_linear_heads(HeadConfig(workdir=digits10_workdir, **QUICK), ["resnet34"])
    assert flipped.name == "resnet34+hflip"
    model, _, _ = load_model(digits10_workdir / "heads" / "resnet34+hflip.pt")
    with FeatureCache(cache_path(digits10_workdir)) as cache, torch.inference_mode():
        views = [model.head({"resnet34": torch.from_numpy(cache.features("holdout", name))}) for name in
                 ("resnet34", "resnet34_hflip")]
    expected = torch.stack([torch.softmax(v.double() / model.temperature, 1) for v in views]).mean(0)
    got = class_probabilities(digits10_workdir, "resnet34+hflip", "holdout").proba
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, atol=1e-9)


def test_every_file_gets_a_row_and_an_undecodable_one_the_class_frequencies(digits_copy, tmp_path):
    (digits_copy / "test" / "16.jpg").write_bytes(b"garbage, not a JPEG")
    workdir = tmp_path / "work"
    extract(extract_config(digits_copy, workdir, backbones=("resnet34",)))
    train_linear_heads(HeadConfig(workdir=workdir, **QUICK), ["resnet34"])
    result = predict(PredictConfig(workdir=workdir, model="resnet34"))
    frame = pd.read_csv(workdir / "submission.csv", dtype={"id": str})
    assert result.rows == 7 == len(frame) and result.fallback == ["test/16.jpg"]
    assert frame.id.tolist()[-1] == "16"
    np.testing.assert_allclose(frame.iloc[-1, 1:].to_numpy(float), [1 / 3] * 3)  # 8 training images of each class
    predict(PredictConfig(workdir=workdir, model="resnet34", kaggle_binary=False, output=tmp_path / "again.csv", clip=0.01))
    assert len(pd.read_csv(tmp_path / "again.csv")) == 7


def test_a_missing_model_or_split_is_named_with_what_there_is(digits10_workdir):
    train_linear_heads(HeadConfig(workdir=digits10_workdir, c_grid=(1.0,), folds=2, max_iter=50, flip=False), ["resnet34"])
    with pytest.raises(HeadError, match=r"'Resnet34': there is no such model .* \(did you mean 'resnet34'\?\).*"
                                        r"Models there: resnet34$"):
        predict(PredictConfig(workdir=digits10_workdir, model="Resnet34"))
    with pytest.raises(HeadError, match=r"cnnfeat train-head .*--backbone resnet34.*--views hflip"):
        predict(PredictConfig(workdir=digits10_workdir, model="resnet34+hflip"))
    with pytest.raises(HeadError, match=r"`cnnfeat train-head .*` or `cnnfeat ensemble"):
        predict(PredictConfig(workdir=digits10_workdir, model="best"))
    with pytest.raises(CacheError, match=r"has no split 'nosplit' \(it has holdout, test, train, valid\).*--split"):
        predict(PredictConfig(workdir=digits10_workdir, model="resnet34", split="nosplit"))
    assert not (digits10_workdir / "submission.csv").exists()


def test_model_and_cache_must_agree(digits10_workdir):
    train_ensemble(HeadConfig(workdir=digits10_workdir, epochs=2, **QUICK))
    with pytest.raises(HeadError, match="cnnfeat train-head"):
        predict(PredictConfig(workdir=digits10_workdir, model="inception"))
    with h5py.File(cache_path(digits10_workdir), "r+") as f:
        f["test/densenet121"].attrs["pool"] = "max"
    with pytest.raises(CacheError, match="other pool"):
        predict(PredictConfig(workdir=digits10_workdir, model="ensemble"))
    with h5py.File(cache_path(digits10_workdir), "r+") as f:
        f["test/densenet121"].attrs["pool"] = "avg"
        f.attrs["classes"] = '["a", "b"]'
    with pytest.raises(CacheError, match="trained on classes"):
        predict(PredictConfig(workdir=digits10_workdir, model="ensemble"))
    assert not (digits10_workdir / "submission.csv").exists()
