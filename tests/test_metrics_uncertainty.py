"""Standard errors, noise and retention against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lifelong.core.metrics import (
    average_se,
    binomial_se,
    bootstrap_se,
    difference_within_noise,
    mean_and_se,
    retention,
)
from lifelong.errors import LifelongError


def test_binomial_se_is_the_closed_form() -> None:
    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    assert binomial_se(0.8, 25) == pytest.approx(math.sqrt(0.8 * 0.2 / 25))
    assert binomial_se(1.0, 10) == 0.0
    with pytest.raises(LifelongError, match="at least one item"):
        binomial_se(0.5, 0)


def test_bootstrap_se_matches_the_standard_error_of_a_mean() -> None:
    """For a plain mean the bootstrap estimates std/sqrt(n) (population std, as resampling sees it)."""
    values = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    expected = float(np.std(values) / math.sqrt(values.size))
    assert bootstrap_se(values.tolist(), samples=4000) == pytest.approx(expected, rel=0.06)


def test_bootstrap_se_is_zero_for_constant_values_and_fixed_by_its_seed() -> None:
    assert bootstrap_se([2.0] * 30) == 0.0
    values = [0.1, 0.7, 0.3, 0.9, 0.2]
    assert bootstrap_se(values) == bootstrap_se(values)
    assert bootstrap_se(values, seed=1) != bootstrap_se(values, seed=2)


def test_bootstrap_se_of_a_pooled_mean_resamples_items_with_their_weights() -> None:
    """Items of equal weight pool like a plain mean; an item of no weight changes nothing."""
    values = [1.0, 2.0, 3.0, 4.0]
    assert bootstrap_se(values, [5.0] * 4) == pytest.approx(bootstrap_se(values))
    assert bootstrap_se([2.0, 2.0, 50.0], [1.0, 1.0, 0.0]) == 0.0


def test_mean_and_se_picks_binomial_for_accuracies_and_bootstrap_otherwise() -> None:
    assert mean_and_se([1, 0, 1, 1]) == (0.75, pytest.approx(math.sqrt(0.75 * 0.25 / 4)))
    mean, se = mean_and_se([0.5, 1.5, 1.0])
    assert mean == pytest.approx(1.0) and se == pytest.approx(bootstrap_se([0.5, 1.5, 1.0]))
    # A pooled loss: the mean is weighted by the tokens.
    assert mean_and_se([1.0, 4.0], [3, 1])[0] == pytest.approx(7 / 4)


def test_difference_within_noise_uses_two_combined_standard_errors() -> None:
    # 2 * sqrt(0.03^2 + 0.04^2) = 0.1
    assert difference_within_noise(0.70, 0.03, 0.79, 0.04)
    assert not difference_within_noise(0.70, 0.03, 0.81, 0.04)
    assert not difference_within_noise(0.5, 0.0, 0.6, 0.0)
    assert difference_within_noise(0.5, 0.0, 0.5, 0.0)


def test_retention_is_final_over_initial_in_either_direction() -> None:
    assert retention(0.8, 0.6) == pytest.approx(0.75)
    assert retention(2.0, 4.0, higher_is_better=False) == pytest.approx(0.5)  # a loss that doubled
    assert retention(0.0, 0.5) is None


def test_average_se_of_independent_scores() -> None:
    assert average_se([0.03, 0.04]) == pytest.approx(0.05 / 2)
    assert average_se([0.1]) == pytest.approx(0.1)
