from __future__ import annotations

import numpy as np
import pytest

from pipeline.outputs import Probabilities
from pipeline.report.mistakes import (calibration_error, class_scores, confusion, label_issues, losses, most_confused,
                                      top_losses)


def probs(labels: list[int], proba: list[list[float]], classes=("a", "b", "c")) -> Probabilities:
    return Probabilities([f"f{i}.jpg" for i in range(len(labels))], np.array(labels), np.array(proba, dtype=float),
                         classes)


TOY = probs([0, 0, 1, 1, 2, 2], [[.9, .05, .05], [.2, .7, .1], [.1, .8, .1], [.3, .6, .1], [.1, .1, .8], [.6, .2, .2]])


def test_confusion_and_per_class_scores_by_hand():
    matrix = confusion(TOY)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # row: true, column: predicted
    a, b, c = class_scores(matrix, TOY.classes)
    assert (a.precision, a.recall, a.f1, a.support) == pytest.approx((1 / 2, 1 / 2, 1 / 2, 2))
    assert (b.precision, b.recall, b.f1) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (c.precision, c.recall, c.f1) == pytest.approx((1.0, 1 / 2, 2 / 3))
    never = class_scores(np.array([[2, 0], [1, 0]]), ("x", "y"))[1]  # never predicted, never right: 0, not NaN
    assert (never.precision, never.recall, never.f1) == (0.0, 0.0, 0.0)


def test_most_confused_pairs_largest_first_without_the_diagonal():
    matrix = np.array([[9, 1, 3], [0, 9, 0], [2, 0, 9]])
    assert most_confused(matrix, 5) == [(0, 2, 3), (2, 0, 2), (0, 1, 1)]
    assert most_confused(matrix, 1) == [(0, 2, 3)]


def test_calibration_error_by_hand():
    # all at confidence 0.9 (one bin), 3 of 4 right: |0.75 - 0.9|
    four = probs([0, 0, 0, 1], [[.9, .05, .05]] * 4)
    assert calibration_error(four) == pytest.approx(0.15)
    # two bins: 0.9 (right) and 0.5 (wrong), each half the rows: (0.1 + 0.5) / 2
    two = probs([0, 1], [[.9, .05, .05], [.5, .3, .2]])
    assert calibration_error(two) == pytest.approx(0.3)


def test_top_losses_are_the_least_probable_true_classes():
    assert losses(TOY)[0] == pytest.approx(-np.log(0.9))
    assert top_losses(TOY, 2).tolist() == [1, 5]  # p(true) 0.2 for both: a tie keeps the rows' order
    assert top_losses(TOY, 3, rows=np.array([0, 2, 3])).tolist() == [3, 2, 0]


def test_label_issues_are_the_confidently_contradicted_rows_worst_first():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 60)
    proba = np.full((180, 3), 0.1)
    proba[np.arange(180), labels] = 0.8
    proba += rng.uniform(0, 0.05, proba.shape)
    wrong = [3, 70, 150, 151]  # labeled one class, predicted confidently as another
    for row, other, confidence in zip(wrong, [1, 2, 0, 1], [0.97, 0.9, 0.95, 0.85]):
        proba[row] = (1 - confidence) / 2
        proba[row, other] = confidence
    issues = label_issues(probs(labels.tolist(), (proba / proba.sum(1, keepdims=True)).tolist()))
    assert [i.path for i in issues] == ["f3.jpg", "f150.jpg", "f70.jpg", "f151.jpg"]
    assert [(i.given, i.suggested) for i in issues] == [("a", "b"), ("c", "a"), ("b", "c"), ("c", "b")]
    assert all(i.score < 0.1 for i in issues)
    assert label_issues(probs([0, 1, 1], [[.9, .05, .05]] * 3)) == []  # a class with one row (or none): nothing to estimate
