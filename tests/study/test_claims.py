"""Verdicts: agrees or disagrees only beyond twice the standard error over seeds."""

from __future__ import annotations

import math
import statistics

import pytest

from biasdecay.study.claims import NOISE_FACTOR, compare, compare_to, standard_error, verdict_text
from biasdecay.study.results import Stat


def stat(*values: float) -> Stat:
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std, len(values), values)


def test_the_rule_is_twice_the_standard_error() -> None:
    a, b = stat(1.0, 2.0, 3.0), stat(0.0, 1.0, 2.0)  # std 1 each: SE of the difference √(2/3)
    se = standard_error(a, b)
    assert se == pytest.approx(math.sqrt(2 / 3))
    assert NOISE_FACTOR == 2.0
    assert compare(a, b) == "inconclusive"  # difference 1 < 2·0.816
    far = stat(2.7, 3.7, 4.7)  # difference 2.7 > 1.63
    assert compare(far, b) == "agrees" and compare(b, far) == "disagrees"
    # Just inside and just outside 2 SE.
    edge = 2 * se
    assert compare(stat(*(v + edge * 0.99 for v in b.values)), b) == "inconclusive"
    assert compare(stat(*(v + edge * 1.01 for v in b.values)), b) == "agrees"


def test_one_seed_is_never_a_finding() -> None:
    assert compare(stat(0.9), stat(0.1)) == "inconclusive"
    assert verdict_text("inconclusive", 1) == "inconclusive (1 seed, no noise estimate)"
    assert compare(None, stat(0.1)) == "not tested"
    assert compare(stat(1.0, 1.0), stat(1.0, 1.0)) == "inconclusive"  # equal means


def test_compare_to_a_fixed_value() -> None:
    s = stat(2.9, 3.0, 3.1)  # SE 0.0577
    assert compare_to(s, 2.0) == "agrees"
    assert compare_to(s, 3.05) == "inconclusive"
    assert compare_to(s, 4.0) == "disagrees"
    assert compare_to(stat(5.0), 2.0) == "inconclusive"
    assert compare_to(None, 2.0) == "not tested"
