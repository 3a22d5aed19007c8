"""Split R-hat and ESS against references that do not use the code under test: a hand-computed
Gelman–Rubin value, iid chains (R-hat 1, ESS = number of draws), chains with shifted means or
scales (R-hat well above 1), and AR(1) chains, whose ESS has the closed form N(1 − ρ)/(1 + ρ)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kexue.text.diagnostics import ess, split_rhat


def ar1(rho: float, chains: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """x_t = ρ x_{t−1} + ε_t, started from the stationary N(0, 1/(1 − ρ²)), (chains, n)."""
    x = np.empty((chains, n))
    x[:, 0] = rng.standard_normal(chains) / math.sqrt(1 - rho ** 2)
    noise = rng.standard_normal((chains, n))
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + noise[:, t]
    return x


def test_split_rhat_by_hand():
    """Halves [1 2] [3 4] [5 6] [7 8]: W = 1/2, B/N = var(1.5, 3.5, 5.5, 7.5) = 20/3, N = 2:
    R = sqrt(((N − 1)/N · W + B/N) / W)."""
    expected = math.sqrt((0.5 * 0.5 + 20 / 3) / 0.5)
    draws = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], float)
    assert math.isclose(split_rhat(draws, rank=False), expected, rel_tol=1e-12)
    # an odd chain drops its middle draw
    odd = np.array([[1, 2, 99, 3, 4], [5, 6, -99, 7, 8]], float)
    assert math.isclose(split_rhat(odd, rank=False), expected, rel_tol=1e-12)


def test_iid_chains_have_rhat_one_and_ess_the_number_of_draws():
    draws = np.random.default_rng(0).standard_normal((4, 2000))
    for rank in (True, False):
        assert abs(split_rhat(draws, rank=rank) - 1.0) < 0.005
        assert abs(ess(draws, rank=rank) / draws.size - 1.0) < 0.1


def test_disagreeing_chains_have_rhat_above_one():
    rng = np.random.default_rng(1)
    shifted = rng.standard_normal((4, 500)) + np.array([0.0, 0.0, 0.0, 1.0])[:, None]
    assert split_rhat(shifted) > 1.05 and split_rhat(shifted, rank=False) > 1.05
    # same means, one chain three times as wide: only the folded (rank) R-hat sees it
    scaled = rng.standard_normal((4, 500)) * np.array([1.0, 1.0, 1.0, 3.0])[:, None]
    assert split_rhat(scaled) > 1.05 and split_rhat(scaled, rank=False) < 1.01
    # a trend inside one chain: its halves disagree
    trend = rng.standard_normal((1, 1000)) + np.linspace(0, 3, 1000)
    assert split_rhat(trend) > 1.1


@pytest.mark.parametrize("rho, tolerance", [(0.5, 0.1), (0.9, 0.2)])
def test_ar1_ess_matches_the_closed_form(rho, tolerance):
    draws = ar1(rho, 4, 5000, np.random.default_rng(2))
    expected = draws.size * (1 - rho) / (1 + rho)
    for rank in (True, False):
        assert abs(ess(draws, rank=rank) / expected - 1.0) < tolerance


def test_bad_draws_are_named():
    with pytest.raises(ValueError, match="at least 4 draws"):
        split_rhat(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        ess(np.array([[0.0, 1.0, np.nan, 2.0, 3.0]]))
    with pytest.raises(ValueError, match="shape"):
        split_rhat(np.zeros((2, 3, 4)))
    assert math.isnan(split_rhat(np.ones((2, 10)))) and math.isnan(ess(np.ones((2, 10))))
