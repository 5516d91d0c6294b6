"""How well a sharpness measure predicts generalisation: linear fit, R², Kendall τ and Spearman ρ.

The paper's Figure 1 and its correlation tables relate a sharpness measure (usually its log) to
test accuracy over a set of runs. :func:`correlation` gives the three numbers those tables
report -- the coefficient of determination of the least-squares line, Kendall's τ-b and
Spearman's ρ -- in plain numpy, so the library never needs scipy. Ties are handled the way
scipy handles them (τ-b's tie correction, average ranks for ρ), and the tests check the results
against scipy to 1e-12.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Correlation", "correlation"]


@dataclass(frozen=True)
class Correlation:
    """Agreement between two paired samples ``x`` (e.g. log sharpness) and ``y`` (e.g. accuracy).

    Attributes:
        n: number of pairs used (pairs with a non-finite value are left out).
        slope: slope of the least-squares line ``y = slope * x + intercept``.
        intercept: intercept of that line.
        r2: coefficient of determination of that line (Pearson's r squared), in [0, 1].
        kendall_tau: Kendall's τ-b, corrected for ties, in [-1, 1].
        spearman_rho: Spearman's ρ, the Pearson correlation of average ranks, in [-1, 1].
    """

    n: int
    slope: float
    intercept: float
    r2: float
    kendall_tau: float
    spearman_rho: float

    def describe(self) -> str:
        """One line for a figure or a log, e.g. ``"R² = 0.87, τ = -0.71, ρ = -0.83 (n = 9)"``.

        Returns:
            The three statistics to two decimals and the number of pairs.
        """
        return (
            f"R² = {self.r2:.2f}, τ = {self.kendall_tau:.2f}, "
            f"ρ = {self.spearman_rho:.2f} (n = {self.n})"
        )


def correlation(x: Sequence[float], y: Sequence[float]) -> Correlation:
    """Least-squares line, R², Kendall τ-b and Spearman ρ of paired samples.

    Pairs where either value is NaN or infinite are dropped first: a diverged run or an
    overflowing measure should cost one point, not the whole statistic.

    Args:
        x: the explanatory values, e.g. the log of a sharpness measure per run.
        y: the explained values, same length as ``x``, e.g. test accuracy per run.

    Returns:
        The fitted line and the three agreement statistics over the usable pairs.

    Raises:
        ValueError: if ``x`` and ``y`` are not one-dimensional sequences of the same length, or
            if fewer than 3 usable pairs remain, or if ``x`` or ``y`` is constant over them.
    """
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    if xa.ndim != 1 or ya.ndim != 1 or xa.shape != ya.shape:
        raise ValueError(
            f"x and y must be one-dimensional sequences of the same length, "
            f"got shapes {xa.shape} and {ya.shape}"
        )
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    n = int(xa.size)
    if n < 3 or np.all(xa == xa[0]) or np.all(ya == ya[0]):
        what = "" if n < 3 else ", but x or y is constant over them"
        raise ValueError(
            f"correlation has {n} usable (finite) pair(s){what}; "
            "at least 3 pairs with varying x and y values are needed"
        )

    xc = xa - xa.mean()
    yc = ya - ya.mean()
    sxx = float(xc @ xc)
    syy = float(yc @ yc)
    sxy = float(xc @ yc)
    if not (0.0 < sxx < math.inf and 0.0 < syy < math.inf):
        # Distinct values whose spread underflows or overflows in float64 cannot be fitted.
        raise ValueError(
            f"correlation cannot fit {n} pairs: the spread of x or y is not representable "
            f"(sum of squares {sxx:g}, {syy:g}); rescale the values"
        )
    slope = sxy / sxx
    intercept = float(ya.mean() - slope * xa.mean())
    # Rounding can push |r| a hair past 1 for perfectly collinear data; R² must stay in [0, 1].
    r = min(1.0, max(-1.0, sxy / math.sqrt(sxx * syy)))

    return Correlation(
        n=n,
        slope=slope,
        intercept=intercept,
        r2=r * r,
        kendall_tau=_kendall_tau_b(xa, ya),
        spearman_rho=_pearson(_average_ranks(xa), _average_ranks(ya)),
    )


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ac = a - a.mean()
    bc = b - b.mean()
    r = float(ac @ bc) / math.sqrt(float(ac @ ac) * float(bc @ bc))
    return min(1.0, max(-1.0, r))


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    # A group of `c` ties after `start` smaller values spans ranks start+1 .. start+c.
    start = np.cumsum(counts) - counts
    return (start + (counts + 1) / 2.0)[inverse.reshape(-1)]


def _tied_pairs(a: np.ndarray) -> int:
    _, counts = np.unique(a, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def _kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """τ-b = (concordant − discordant) / sqrt((n0 − ties_x)(n0 − ties_y)).

    Counted pair by pair in integers, one row at a time so memory stays O(n): the samples
    here are runs of a study (tens to thousands), where O(n²) time is immaterial and exact
    counts avoid any doubt about rounding.
    """
    n = x.size
    score = 0
    for i in range(n - 1):
        sx = np.sign(x[i + 1 :] - x[i])
        sy = np.sign(y[i + 1 :] - y[i])
        score += int((sx * sy).sum())
    n0 = n * (n - 1) // 2
    return score / math.sqrt((n0 - _tied_pairs(x)) * (n0 - _tied_pairs(y)))
