"""The split rule: the validation split, else the same stratified holdout for every part; folds."""

from __future__ import annotations

import numpy as np
import pytest

from features import DataLayoutError, stratified_folds, stratified_holdout, validation_plan


def test_folds_are_stratified_and_shrink_for_rare_classes():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 7)
    folds, k = stratified_folds(labels, 5, seed=0)
    assert k == 5 and sorted(set(folds)) == list(range(5))
    for fold in range(5):
        assert set(labels[folds == fold]) == {0, 1, 2}
    assert stratified_folds(labels[:13], 5, 0)[1] == 3  # class 1 has only three rows
    assert stratified_folds(np.array([0, 0, 1]), 5, 0)[1] == 0
    again, _ = stratified_folds(labels, 5, seed=0)
    assert np.array_equal(folds, again) and not np.array_equal(folds, stratified_folds(labels, 5, seed=1)[0])


def test_holdout_takes_every_classes_share():
    labels = np.array([0] * 20 + [1] * 10 + [2] * 1)
    held = stratified_holdout(labels, 0.1, seed=0)
    assert held[:20].sum() == 2 and held[20:30].sum() == 1 and not held[30]


def test_the_validation_split_is_used_when_labeled_else_a_holdout_of_train():
    plan = validation_plan({"train": True, "valid": True, "test": False}, "train", "valid", 0.1, 0)
    assert plan.val_split == "valid" and plan.holdout is None and not plan.held_out(np.zeros(10, int)).any()
    plan = validation_plan({"train": True, "test": False}, "train", "valid", 0.2, 3)
    assert plan.val_split == "train" and plan.holdout == 0.2
    assert "20% held out, seed 3" in plan.description and "no 'valid' split" in plan.description
    labels = np.array([0] * 10 + [1] * 10)
    assert np.array_equal(plan.held_out(labels), stratified_holdout(labels, 0.2, 3))


@pytest.mark.parametrize("labeled, match", [
    ({"test": False}, "no labeled train/ split.*'train' does not exist"),
    ({"train": False}, "no labeled train/ split.*'train' has no class folders"),
    ({"train": True, "valid": False}, "'valid' has no labels"),
])
def test_splits_that_cannot_train_or_judge_are_refused(labeled, match):
    with pytest.raises(DataLayoutError, match=match):
        validation_plan(labeled, "train", "valid", 0.1, 0)


def test_a_train_split_too_small_to_hold_out_from_is_refused():
    plan = validation_plan({"train": True}, "train", "valid", 0.1, 0)
    with pytest.raises(DataLayoutError, match="too small"):
        plan.held_out(np.array([0, 1]))


def test_a_validation_split_named_otherwise_than_the_default_must_exist():
    """A typo must not quietly become a holdout; without valid/ the default still falls back to one."""
    with pytest.raises(DataLayoutError, match=r"--val-split 'validation' does not exist \(did you mean 'valid'\?\)"):
        validation_plan({"train": True, "valid": True}, "train", "validation", 0.1, 0)
    assert validation_plan({"train": True, "test": False}, "train", "valid", 0.1, 0).holdout == 0.1
    with pytest.raises(DataLayoutError, match=r"'trian' does not exist \(did you mean 'train'\?\)"):
        validation_plan({"train": True}, "trian", "valid", 0.1, 0)
