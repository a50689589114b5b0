from __future__ import annotations

import json

import pytest
import torch

from pipeline.heads.models import (Blend, Classifier, EnsembleHead, HeadError, LinearHead, Standardize, build_head,
                                   load_model, save_model)


def test_standardize_uses_the_given_statistics_and_keeps_constant_features_finite():
    scaler = Standardize(3)
    scaler.set_stats(torch.tensor([1.0, 2.0, 5.0]), torch.tensor([2.0, 0.5, 0.0]))
    assert scaler(torch.tensor([[3.0, 2.5, 5.0]])).tolist() == [[1.0, 1.0, 0.0]]


def test_standardize_flattens_feature_maps():
    assert Standardize(2 * 2 * 2)(torch.ones(4, 2, 2, 2)).shape == (4, 8)


def test_a_linear_head_on_several_backbones_sees_them_side_by_side():
    head = LinearHead({"a": 2, "b": 3}, n_classes=4)
    head.set_stats({"a": (torch.ones(2), torch.full((2,), 2.0)), "b": (torch.zeros(3), torch.ones(3))})
    inputs = {"a": torch.randn(5, 2), "b": torch.randn(5, 3)}
    design = head.design(inputs)
    torch.testing.assert_close(design, torch.cat([(inputs["a"] - 1) / 2, inputs["b"]], dim=1))
    torch.testing.assert_close(head(inputs), head.fc(design))


def test_ensemble_is_the_sum_of_branches_then_a_linear_layer():
    head = EnsembleHead({"a": 2, "b": 3}, n_classes=2, hidden=4, dropout=0.5).eval()
    inputs = {"a": torch.randn(5, 2), "b": torch.randn(5, 3)}
    hidden = head.branches["a"](inputs["a"]) + head.branches["b"](inputs["b"])
    torch.testing.assert_close(head(inputs), head.fc(hidden))
    assert head.branches["b"].in_features == 3 and head.fc.in_features == 4


def test_head_kinds_and_their_errors():
    assert isinstance(build_head("linear", {"resnet34": 512}, 3), LinearHead)
    assert build_head("linear", {"resnet34": 512}, 3)({"resnet34": torch.randn(2, 512)}).shape == (2, 3)
    with pytest.raises(HeadError, match="two or more"):
        EnsembleHead({"a": 2}, 2)
    with pytest.raises(HeadError, match="unknown head kind"):
        build_head("svm", {"a": 2}, 2)


def test_saved_models_load_without_unpickling_code_and_predict_the_same(tmp_path):
    ensemble = Classifier("ensemble", build_head("ensemble", {"a": 4, "b": 6}, 3, hidden=8, dropout=0.2),
                          {"hidden": 8, "dropout": 0.2}, ("", "hflip"), 1.7)
    ensemble.head.scalers["a"].set_stats(torch.arange(4.0), torch.full((4,), 2.0))
    linear = Classifier("linear", build_head("linear", {"a": 4}, 3), {}, ("",), 0.8)
    blend = Blend([(0.25, ensemble), (0.75, linear)], temperature=1.1)
    for name, model in (("e", ensemble), ("best", blend)):
        save_model(tmp_path / f"{name}.pt", model, {"classes": ["x", "y", "z"], "kind": model.kind, "inputs_key": "k"},
                   {"val_proba": torch.ones(2, 3) / 3})
    raw = torch.load(tmp_path / "e.pt", weights_only=True)
    assert raw["kind"] == "ensemble" and raw["feature_dims"] == {"a": 4, "b": 6} and raw["views"] == ["", "hflip"]
    loaded, meta, saved = load_model(tmp_path / "e.pt")
    assert meta["classes"] == ["x", "y", "z"] and loaded.temperature == 1.7 and loaded.views == ("", "hflip")
    assert torch.equal(saved["val_proba"], torch.ones(2, 3) / 3)
    inputs = {"a": torch.randn(3, 4), "b": torch.randn(3, 6)}
    torch.testing.assert_close(loaded.head(inputs), ensemble.head.eval()(inputs))
    best, _, _ = load_model(tmp_path / "best.pt")
    assert [w for w, _ in best.members] == [0.25, 0.75] and best.temperature == 1.1
    torch.testing.assert_close(best.members[1][1].head({"a": inputs["a"]}), linear.head.eval()({"a": inputs["a"]}))
    sidecar = json.loads((tmp_path / "best.json").read_text())
    assert sidecar["inputs_key"] == "k" and len(sidecar["sha256"]) == 64
    assert not list(tmp_path.glob("*.tmp"))


def test_broken_missing_or_outdated_model_files_are_clear_errors(tmp_path):
    with pytest.raises(HeadError, match="no trained model.*cnnfeat train-head"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(HeadError, match="not a loadable cnnfeat model"):
        load_model(tmp_path / "bad.pt")
    torch.save({"format": 2, "kind": "linear"}, tmp_path / "old.pt")
    with pytest.raises(HeadError, match="format 2.*retrain"):
        load_model(tmp_path / "old.pt")
