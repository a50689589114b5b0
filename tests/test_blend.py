from __future__ import annotations

import pytest
import torch

from features import log_loss
from pipeline.heads.blend import blend_proba, fit_temperature, greedy_selection, view_proba


def _overconfident(n: int = 600, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of a model right 80 % of the time but ten times too sure of itself; and the labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    guess = torch.where(torch.rand(n, generator=generator) < 0.8, labels, torch.randint(0, classes, (n,), generator=generator))
    logits = torch.randn(n, classes, generator=generator) + 2.0 * torch.nn.functional.one_hot(guess, classes)
    return logits * 10, labels, guess


def test_a_temperature_fitted_on_held_out_rows_lowers_their_log_loss_and_keeps_accuracy():
    logits, labels, _ = _overconfident()
    fit_rows, held_rows = slice(0, 300), slice(300, 600)
    t = fit_temperature([logits[fit_rows]], labels[fit_rows])
    assert t > 3  # ten times too sure: it must be cooled a lot
    before, after = view_proba([logits[held_rows]]), view_proba([logits[held_rows]], t)
    assert log_loss(after, labels[held_rows]) < 0.6 * log_loss(before, labels[held_rows])
    assert torch.equal(before.argmax(1), after.argmax(1))


@pytest.mark.parametrize("margin", [2.0, 30.0])
def test_rows_all_predicted_right_leave_the_chance_of_a_mistake_the_rule_of_one_gives(margin):
    """n rows without a mistake cannot show an error rate below about 1/n: no sharpening to certainty
    (margin 2), and a model already certain of everything is softened to that (margin 30)."""
    n = 30
    labels = torch.arange(n) % 3
    noise = 0.3 * torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    logits = margin * torch.nn.functional.one_hot(labels, 3).double() + noise
    t = fit_temperature([logits], labels)
    doubt = 1 - view_proba([logits], t).max(1).values.mean()
    assert 0.25 / (n + 1) < doubt < 2 / (n + 1), (t, doubt)
    assert (t < 1) if margin == 2.0 else (t > 1)


def test_views_are_averaged_as_probabilities():
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    torch.testing.assert_close(view_proba([a, b]), torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    torch.testing.assert_close(view_proba([a], 2.0), torch.softmax(a.double() / 2, 1))


def test_greedy_selection_never_loses_to_its_best_member_and_can_mix():
    logits, labels, _ = _overconfident(seed=1)
    good = view_proba([logits], 12.0)
    noisy = view_proba([logits + 8 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))], 12.0)
    other = view_proba([torch.randn(logits.shape, generator=torch.Generator().manual_seed(3))])
    weights = greedy_selection({"good": good, "noisy": noisy, "other": other}, labels)
    assert abs(sum(weights.values()) - 1) < 1e-12 and "good" in weights
    mixed = blend_proba([{"good": good, "noisy": noisy, "other": other}[n] for n in weights], list(weights.values()))
    assert log_loss(mixed, labels) <= min(log_loss(p, labels) for p in (good, noisy, other)) + 1e-12
    assert greedy_selection({"only": good}, labels) == {"only": 1.0}


def test_blend_temperature_sharpens_or_softens():
    p = torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    assert blend_proba([p], [1.0])[0, 0] == torch.tensor(0.6, dtype=torch.float64)
    assert blend_proba([p], [1.0], 0.5)[0, 0] > 0.6 > blend_proba([p], [1.0], 2.0)[0, 0]
