from __future__ import annotations

import pytest
import torch

from pipeline.heads import EnsembleHead, LinearHead, Standardize, build_head, load_head, predict_proba, save_head


def test_standardize_uses_the_given_statistics_and_keeps_constant_features_finite():
    scaler = Standardize(3)
    scaler.set_stats(torch.tensor([1.0, 2.0, 5.0]), torch.tensor([2.0, 0.5, 0.0]))
    out = scaler(torch.tensor([[3.0, 2.5, 5.0]]))
    assert out.tolist() == [[1.0, 1.0, 0.0]]


def test_standardize_flattens_feature_maps():
    scaler = Standardize(2 * 2 * 2)
    assert scaler(torch.ones(4, 2, 2, 2)).shape == (4, 8)


def test_ensemble_is_the_sum_of_branches_then_a_linear_layer():
    head = EnsembleHead({"a": 2, "b": 3}, n_classes=2, hidden=4, dropout=0.5).eval()
    inputs = {"a": torch.randn(5, 2), "b": torch.randn(5, 3)}
    hidden = head.branches["a"](inputs["a"]) + head.branches["b"](inputs["b"])
    torch.testing.assert_close(head(inputs), head.fc(hidden))
    assert head.branches["b"].in_features == 3 and head.fc.in_features == 4


def test_head_shapes_and_kinds():
    assert isinstance(build_head("linear", {"resnet34": 512}, 3), LinearHead)
    assert build_head("linear", {"resnet34": 512}, 3)({"resnet34": torch.randn(2, 512)}).shape == (2, 3)
    with pytest.raises(ValueError, match="one backbone"):
        LinearHead({"a": 2, "b": 2}, 2)
    with pytest.raises(ValueError, match="two or more"):
        EnsembleHead({"a": 2}, 2)
    with pytest.raises(ValueError, match="unknown head kind"):
        build_head("svm", {"a": 2}, 2)


def test_saved_head_loads_without_unpickling_code(tmp_path):
    head = build_head("ensemble", {"a": 4, "b": 6}, 3, hidden=8, dropout=0.2)
    head.scalers["a"].set_stats(torch.arange(4.0), torch.full((4,), 2.0))
    save_head(tmp_path / "h.pt", head, "ensemble", {"hidden": 8, "dropout": 0.2}, {"classes": ["x", "y", "z"]})
    raw = torch.load(tmp_path / "h.pt", weights_only=True)
    assert raw["kind"] == "ensemble" and raw["feature_dims"] == {"a": 4, "b": 6}
    loaded, meta = load_head(tmp_path / "h.pt")
    assert meta == {"classes": ["x", "y", "z"]}
    inputs = {"a": torch.randn(3, 4), "b": torch.randn(3, 6)}
    torch.testing.assert_close(loaded(inputs), head.eval()(inputs))
    assert not (tmp_path / "h.pt.tmp").exists()


def test_broken_or_missing_head_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-head"):
        load_head(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a loadable cnnfeat head"):
        load_head(tmp_path / "bad.pt")


def test_probabilities_sum_to_one():
    head = build_head("linear", {"a": 3}, 4)
    batches = [({"a": torch.randn(5, 3)}, None), ({"a": torch.randn(2, 3)}, None)]
    proba = predict_proba(head, batches, torch.device("cpu"))
    assert proba.shape == (7, 4)
    assert abs(proba.sum(1) - 1).max() < 1e-12
