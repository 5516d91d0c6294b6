"""Claims of the paper, tested against our numbers: what we measured and whether it agrees.

A comparison between two settings is only called a disagreement when the difference is larger
than its noise: with several seeds, the standard error of the difference of the means; with one
seed there is no noise estimate, and the verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from biasdecay.study.results import Stat

__all__ = ["Claim", "compare", "verdict_text"]


@dataclass(frozen=True)
class Claim:
    """One line of the report: the paper's claim, what we measured, and the verdict."""

    claim: str
    measured: str
    verdict: str  # "agrees", "disagrees", "inconclusive", "not tested"

    def markdown(self) -> str:
        return f"- **{self.verdict}**: {self.claim} Measured: {self.measured}"


def compare(a: Stat | None, b: Stat | None) -> str:
    """Whether ``a > b``: ``agrees``, ``disagrees``, ``inconclusive`` or ``not tested``.

    ``inconclusive`` when the means are equal, or both have several seeds and |a - b| is within
    one standard error of the difference; ``not tested`` when either is missing (run not done,
    or diverged).
    """
    if a is None or b is None:
        return "not tested"
    diff = a.mean - b.mean
    if diff == 0:
        return "inconclusive"
    if a.std is not None and b.std is not None:
        se = math.sqrt(a.std**2 / a.n + b.std**2 / b.n)
        if abs(diff) <= se:
            return "inconclusive"
    return "agrees" if diff > 0 else "disagrees"


def verdict_text(verdict: str, seeds: int) -> str:
    """The verdict with its basis, e.g. ``agrees (1 seed, no noise estimate)``."""
    if verdict == "not tested" or seeds > 1:
        return verdict
    return f"{verdict} (1 seed, no noise estimate)"
