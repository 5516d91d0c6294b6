"""Correlation statistics: hand-worked cases, agreement with scipy, non-finite pairs, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biasdecay.study.stats import Correlation, correlation


def test_perfect_increasing_line():
    c = correlation([1.0, 2.0, 3.0, 4.0], [3.0, 5.0, 7.0, 9.0])
    assert c.n == 4
    assert c.slope == pytest.approx(2.0)
    assert c.intercept == pytest.approx(1.0)
    assert c.r2 == pytest.approx(1.0)
    assert c.kendall_tau == 1.0
    assert c.spearman_rho == pytest.approx(1.0)


def test_perfect_decreasing_is_minus_one():
    c = correlation([0.5, 1.5, 2.5], [0.9, 0.6, 0.3])
    assert c.slope == pytest.approx(-0.3)
    assert c.r2 == pytest.approx(1.0)
    assert c.kendall_tau == -1.0
    assert c.spearman_rho == pytest.approx(-1.0)


def test_monotone_but_not_linear_ranks_are_perfect():
    c = correlation([1.0, 2.0, 3.0, 4.0], [1.0, 10.0, 100.0, 1000.0])
    assert c.kendall_tau == 1.0
    assert c.spearman_rho == pytest.approx(1.0)
    assert 0.0 < c.r2 < 1.0


def test_ties_worked_by_hand():
    # x = 1 2 2 3, y = 1 3 2 3.
    # Pairs: (0,1) +, (0,2) +, (0,3) +, (1,2) tie in x, (1,3) tie in y, (2,3) +  -> S = 4.
    # n0 = 6, one tied pair in x, one in y: τ-b = 4 / sqrt(5 * 5) = 0.8.
    # Average ranks: x -> 1 2.5 2.5 4, y -> 1 3.5 2 3.5; centred dot 3.75, both sums of
    # squares 4.5: ρ = 5/6.  Line: sxy = 2, sxx = 2, syy = 2.75 -> slope 1, intercept 0.25,
    # R² = 4 / (2 * 2.75) = 8/11.
    c = correlation([1, 2, 2, 3], [1, 3, 2, 3])
    assert c == Correlation(
        n=4,
        slope=pytest.approx(1.0),
        intercept=pytest.approx(0.25),
        r2=pytest.approx(8 / 11),
        kendall_tau=pytest.approx(0.8),
        spearman_rho=pytest.approx(5 / 6),
    )


def test_describe_is_one_line_for_figures():
    c = Correlation(n=9, slope=1.0, intercept=0.0, r2=0.871, kendall_tau=-0.714, spearman_rho=-0.83)
    assert c.describe() == "R² = 0.87, τ = -0.71, ρ = -0.83 (n = 9)"


def test_result_is_frozen():
    c = correlation([1, 2, 3], [1, 3, 2])
    with pytest.raises(AttributeError):
        c.n = 5  # type: ignore[misc]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_matches_scipy(seed, ties):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 60))
    x = rng.normal(size=n)
    y = 0.3 * x + rng.normal(size=n)
    if ties:
        # Coarse rounding gives many ties in both samples; keep at least two distinct values.
        x = np.round(x)
        y = np.round(y * 2) / 2
        x[:2] = [-1.0, 1.0]
        y[:2] = [-0.5, 0.5]
    c = correlation(x.tolist(), y.tolist())
    lin = stats.linregress(x, y)
    assert c.n == n
    assert c.slope == pytest.approx(lin.slope, abs=1e-12)
    assert c.intercept == pytest.approx(lin.intercept, abs=1e-12)
    assert c.r2 == pytest.approx(lin.rvalue**2, abs=1e-12)
    assert c.kendall_tau == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert c.spearman_rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_non_finite_pairs_are_dropped():
    x = [1.0, 2.0, math.nan, 3.0, 4.0, math.inf, 5.0]
    y = [2.0, 4.0, 1.0, 6.0, -math.inf, 3.0, 10.0]
    c = correlation(x, y)
    assert c == correlation([1.0, 2.0, 3.0, 5.0], [2.0, 4.0, 6.0, 10.0])
    assert c.n == 4


def test_accepts_numpy_arrays():
    c = correlation(np.arange(5.0), np.arange(5.0) ** 2)
    assert c.n == 5 and c.kendall_tau == 1.0


@pytest.mark.parametrize(
    ("x", "y", "usable"),
    [
        ([], [], 0),
        ([1.0, 2.0], [3.0, 4.0], 2),
        ([1.0, 2.0, math.nan, 4.0], [1.0, 2.0, 3.0, math.inf], 2),
        ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], 4),
        ([1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5], 4),
    ],
)
def test_too_few_or_constant_pairs_raise(x, y, usable):
    with pytest.raises(ValueError, match=rf"{usable} usable .*at least 3 pairs with varying"):
        correlation(x, y)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="same length"):
        correlation([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="one-dimensional"):
        correlation([[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]])
