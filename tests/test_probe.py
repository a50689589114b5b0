from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from features import FeatureCache, cache_path, stratified_folds
from pipeline.heads.blend import view_proba
from pipeline.heads.config import UNTUNED_C
from pipeline.heads.probe import fit_logistic, logits_of, sweep


@pytest.fixture(scope="module")
def resnet_features(digits10_cache):
    with FeatureCache(cache_path(digits10_cache)) as cache:
        scaler = StandardScaler().fit(cache.features("train", "resnet34"))
        return ([torch.from_numpy(scaler.transform(cache.features(s, "resnet34"))).double() for s in ("train", "valid")],
                [torch.from_numpy(cache.labels(s)) for s in ("train", "valid")])


def _objective(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, c: float) -> float:
    """scikit-learn's objective over n: mean cross-entropy + ||W||^2 / (2 C n)."""
    return float(torch.nn.functional.cross_entropy(x @ weight.T + bias, y) + weight.pow(2).sum() / (2 * c * len(y)))


@pytest.mark.parametrize("classes", [10, 2])
def test_the_solver_finds_scikit_learns_solution(resnet_features, classes):
    """Multinomial: the same C. Two classes: scikit-learn fits one weight vector w = w1 - w0, whose
    penalty ||w||^2 is twice that of the two-class softmax at its optimum (w1 = -w0), so its C is ours doubled."""
    (x_train, x_val), (y_train, y_val) = resnet_features
    keep = y_train < classes
    x, y = x_train[keep], y_train[keep]
    for c in (1e-2, 1.0):
        weight, bias = fit_logistic([x], y, classes, c)
        reference = LogisticRegression(C=c if classes > 2 else 2 * c, max_iter=10_000, tol=1e-10).fit(x.numpy(), y.numpy())
        coef, intercept = torch.from_numpy(reference.coef_), torch.from_numpy(reference.intercept_)
        if classes == 2:
            coef, intercept = torch.cat([-coef / 2, coef / 2]), torch.cat([-intercept / 2, intercept / 2])
        assert _objective(x, y, weight, bias, c) <= _objective(x, y, coef, intercept, c) * (1 + 1e-4)
        ours = view_proba(logits_of([x_val], weight, bias)).numpy()
        np.testing.assert_allclose(ours, reference.predict_proba(x_val.numpy()), atol=1e-2)


def test_the_sweep_chooses_c_on_out_of_fold_predictions_then_fits_every_training_row(resnet_features):
    (x_train, _), (y_train, _) = resnet_features
    folds, k = stratified_folds(y_train.numpy(), 3, seed=0)
    grid = (1e-4, 1e-2, 1.0, 100.0)
    fit = sweep([x_train], y_train, 10, grid, torch.from_numpy(folds), k)
    assert [row["C"] for row in fit.table] == list(grid) and sum(row["chosen"] for row in fit.table) == 1
    chosen = next(row for row in fit.table if row["chosen"])
    assert chosen["C"] == fit.c == max(fit.table, key=lambda r: (r["oof_accuracy"], -r["oof_loss"]))["C"]
    for fold in range(k):  # each row's out-of-fold logits: from the model fitted at C without the row's fold
        held = torch.from_numpy(folds == fold)
        weight, bias = fit_logistic([x_train[~held]], y_train[~held], 10, fit.c)
        np.testing.assert_allclose(view_proba(fit.oof)[held], view_proba(logits_of([x_train[held]], weight, bias)), atol=1e-2)
    weight, bias = fit_logistic([x_train], y_train, 10, fit.c)
    # the same optimum from another start, to L-BFGS's own tolerances (the folds' float32 start differs by thread count)
    assert _objective(x_train, y_train, fit.weight, fit.bias, fit.c) <= _objective(x_train, y_train, weight, bias, fit.c) * (1 + 1e-5)


def test_without_folds_nothing_chooses_c(resnet_features):
    (x_train, _), (y_train, _) = resnet_features
    fit = sweep([x_train], y_train, 10, (1e-2, 100.0), torch.zeros(len(y_train), dtype=torch.long), 0)
    assert fit.c == UNTUNED_C and fit.oof is None


def test_views_are_extra_rows_for_training():
    """Two views of each image are two rows each, as for scikit-learn: the same rows twice weigh as C doubled."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, dtype=torch.float64, generator=generator)
    y = (x[:, 0] + 0.5 * torch.randn(40, dtype=torch.float64, generator=generator) > 0).long()
    twice = fit_logistic([x, x], y, 2, 0.5)
    torch.testing.assert_close(twice[0], fit_logistic([x], y, 2, 1.0)[0], rtol=1e-4, atol=1e-6)
