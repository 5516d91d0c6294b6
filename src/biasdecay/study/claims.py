"""Claims of the paper, tested against our numbers: what we measured and whether it agrees.

A comparison between two settings is called agrees or disagrees only when the difference of the
means is more than twice its standard error over seeds (:data:`NOISE_FACTOR`, the
``noise_factor`` tolerance); otherwise it is inconclusive. With one seed there is no noise
estimate, so no comparison is ever more than inconclusive, and the verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from biasdecay.study.results import Stat
from biasdecay.study.tolerances import TOLERANCES

__all__ = [
    "NOISE_FACTOR",
    "Claim",
    "compare",
    "compare_to",
    "count_verdict",
    "exceeds",
    "shifted",
    "standard_error",
    "verdict_text",
]


@dataclass(frozen=True)
class Claim:
    """One line of the report: the paper's claim, what we measured, and the verdict."""

    claim: str
    measured: str
    verdict: str  # "agrees", "disagrees", "inconclusive", "not tested"

    def markdown(self) -> str:
        return f"- **{self.verdict}**: {self.claim} Measured: {self.measured}"


#: A difference counts only beyond this many standard errors of the difference of the means
#: (:attr:`~biasdecay.study.tolerances.Tolerances.noise_factor`).
NOISE_FACTOR = TOLERANCES.noise_factor


def standard_error(a: Stat, b: Stat) -> float | None:
    """The standard error of ``a.mean - b.mean`` over seeds; None without several seeds of each."""
    if a.std is None or b.std is None:
        return None
    return math.sqrt(a.std**2 / a.n + b.std**2 / b.n)


def compare(a: Stat | None, b: Stat | None) -> str:
    """Whether ``a > b``: ``agrees``, ``disagrees``, ``inconclusive`` or ``not tested``.

    ``agrees`` / ``disagrees`` only when both have several seeds and |a - b| is more than
    :data:`NOISE_FACTOR` standard errors of the difference; ``inconclusive`` otherwise (equal
    means, a difference within the noise, or a single seed with no noise estimate); ``not
    tested`` when either is missing (run not done, or diverged).
    """
    if a is None or b is None:
        return "not tested"
    diff = a.mean - b.mean
    se = standard_error(a, b)
    if se is None or diff == 0 or abs(diff) <= NOISE_FACTOR * se:
        return "inconclusive"
    return "agrees" if diff > 0 else "disagrees"


def compare_to(stat: Stat | None, value: float) -> str:
    """Whether ``stat``'s mean is above a fixed ``value``, beyond :data:`NOISE_FACTOR` SE.

    The standard error is the seeds' std/√n; one seed is ``inconclusive``.
    """
    if stat is None:
        return "not tested"
    diff = stat.mean - value
    if stat.std is None or diff == 0 or abs(diff) <= NOISE_FACTOR * stat.std / math.sqrt(stat.n):
        return "inconclusive"
    return "agrees" if diff > 0 else "disagrees"


def verdict_text(verdict: str, seeds: int) -> str:
    """The verdict with its basis, e.g. ``inconclusive (1 seed, no noise estimate)``."""
    if verdict == "not tested" or seeds > 1:
        return verdict
    return f"{verdict} (1 seed, no noise estimate)"


def count_verdict(agreed: int, disagreed: int, needed: int) -> str:
    """A claim about several comparisons: ``agrees`` when at least ``needed`` of them agree,
    ``disagrees`` when at least ``needed`` disagree, ``inconclusive`` otherwise."""
    if agreed >= needed:
        return "agrees"
    if disagreed >= needed:
        return "disagrees"
    return "inconclusive"


def shifted(stat: Stat | None, delta: float) -> Stat | None:
    """``stat`` with ``delta`` added to its mean and to each seed's value."""
    if stat is None:
        return None
    return Stat(stat.mean + delta, stat.std, stat.n, tuple(v + delta for v in stat.values))


def exceeds(
    text: str,
    high: Stat | None,
    low: Stat | None,
    measured: str,
    seeds: int,
    *,
    points: bool = False,
    margin: float = 0.0,
) -> Claim:
    """The claim ``text`` that ``high > low``, tested by :func:`compare`.

    Args:
        text: the claim.
        high, low: the two values over seeds (None: not available).
        measured: what was measured; the difference and its standard error are appended.
        seeds: seeds per setting, for :func:`verdict_text`.
        points: ``high`` and ``low`` are accuracies in [0, 1]; the difference is shown in
            percentage points.
        margin: added to ``high`` before comparing ("within half a point or above"). The plain
            difference is then not appended: it is not what the verdict compares.

    Returns:
        The claim with its verdict.
    """
    if margin:
        verdict = compare(shifted(high, margin), low)
        return Claim(text, measured, verdict_text(verdict, seeds))
    return Claim(
        text,
        measured + _difference_text(high, low, points),
        verdict_text(compare(high, low), seeds),
    )


def _difference_text(a: Stat | None, b: Stat | None, points: bool) -> str:
    if a is None or b is None:
        return ""
    scale, unit = (100.0, " points") if points else (1.0, "")
    diff = scale * (a.mean - b.mean)
    se = standard_error(a, b)
    if se is None:
        return f"; difference {diff:+.3g}{unit}, no standard error (1 seed)"
    return (
        f"; difference {diff:+.3g} ± {scale * se:.2g}{unit} (1 SE; a verdict needs > "
        f"{NOISE_FACTOR:g} SE)"
    )
