"""Constraints: one message format for every range check, element-wise on lists, help text."""

from __future__ import annotations

import math

import pytest
import torch

from biasdecay.constraints import (
    ConstraintError,
    NonEmpty,
    OneOf,
    Pattern,
    Range,
    check_in_range,
    check_lr,
    did_you_mean,
    problems,
)
from biasdecay.errors import BiasDecayError


@pytest.mark.parametrize(
    ("constraint", "inside", "outside"),
    [
        (Range(0.0), [0.0, 1, 1e300], [-1e-12, math.inf, math.nan]),
        (Range(0.0, low_open=True), [1e-300], [0.0, -1.0, math.inf]),
        (Range(0.0, 1.0), [0.0, 0.999], [1.0, -0.1]),
        (Range(0.0, 1.0, high_open=False), [1.0], [1.0001]),
        (Range(0.0, high_open=False), [math.inf], [-1.0, math.nan]),
        (Range(1, integer=True), [1, 10**12], [0, 1.0, 2.5, True]),
    ],
)
def test_range_admits_exactly_its_interval(constraint, inside, outside) -> None:
    assert all(constraint.problem("x", v) is None for v in inside)
    assert all(constraint.problem("x", v) is not None for v in outside)


def test_messages_name_the_setting_the_interval_and_the_value() -> None:
    assert Range(0.0, 1.0).problem("momentum", 1) == "momentum must be in [0, 1), got 1.0"
    assert Range(0.0).problem("eps", "a") == "eps must be a real number in [0, inf), got 'a'"
    assert Range(1, integer=True).problem("n", 0.5) == "n must be an integer in [1, inf), got 0.5"
    with pytest.raises(ConstraintError, match=r"^LAMB: eps must be in \(0, inf\), got -1.0$"):
        Range(0.0, low_open=True).check("eps", -1, owner="LAMB")


def test_errors_are_library_input_errors() -> None:
    with pytest.raises(BiasDecayError):
        Range(0.0).check("x", -1.0)
    assert issubclass(ConstraintError, ValueError)


def test_check_normalises_and_passes_none() -> None:
    assert Range(0.0).check("x", 2) == 2.0 and isinstance(Range(0.0).check("x", 2), float)
    assert Range(0, integer=True).check("n", 3) == 3
    assert Range(0.0).check("x", None) is None
    assert Range(0.0, 1.0).check("betas", (0, 0.5)) == (0.0, 0.5)


def test_sequences_are_checked_element_by_element() -> None:
    assert problems(Range(0.0, 1.0), "betas", (0.9, 1.5)) == ["betas[1] must be in [0, 1), got 1.5"]
    names = OneOf(["a", "b"])
    assert problems(names, "measures", ["a", "c"]) == ["measures: unknown value 'c'; valid: a, b"]
    assert problems(Range(0.0), "x", None) == []


def test_names_patterns_and_paths() -> None:
    assert "did you mean 'beta'?" in OneOf(["beta", "gamma"]).problem("policy", "betta")
    assert OneOf(lambda: ["late"]).problem("x", "late") is None  # read at each check
    device = Pattern(r"cpu|cuda(:\d+)?", "cpu, cuda, cuda:N")
    assert device.problem("run.device", "cuda:1") is None
    assert (
        device.problem("run.device", "gpu")
        == "run.device: unknown value 'gpu'; valid: cpu, cuda, cuda:N"
    )
    assert NonEmpty("a path").problem("run.out", "") == 'run.out must be a path, got ""'


def test_describe_says_the_valid_set() -> None:
    assert Range(0.0, 1.0, high_open=False).describe() == "[0, 1]"
    assert Range(1, integer=True).describe() == "an integer in [1, inf)"
    assert OneOf(["a", "b"]).describe() == "one of: a, b"


def test_did_you_mean() -> None:
    assert did_you_mean("lamd", ["lamb", "lars"]) == "; did you mean 'lamb'?"
    assert did_you_mean("zzz", ["lamb"]) == ""
    assert did_you_mean(3, ["lamb"]) == ""


def test_optimiser_checks_keep_their_messages() -> None:
    with pytest.raises(ValueError, match=r"^LAMB: eps must be in \[0, inf\), got -1.0$"):
        check_in_range("LAMB", "eps", -1, 0.0)
    with pytest.raises(ValueError, match=r"max_grad_norm must be in \(0, inf\), got 0.0"):
        check_in_range("LAMB", "max_grad_norm", 0.0, 0.0, low_open=True)
    with pytest.raises(ValueError, match=r"betas\[0\] must be a real number in \[0, 1\)"):
        check_in_range("LAMB", "betas[0]", "x", 0.0, 1.0)
    check_in_range("X", "t", math.inf, 0.0, high_open=False)
    with pytest.raises(TypeError, match="lr must be a Python float"):
        check_lr("LARS", torch.tensor(0.1))
    with pytest.raises(ValueError, match=r"LARS: lr must be in \[0, inf\), got -1.0"):
        check_lr("LARS", -1.0)
