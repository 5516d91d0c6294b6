"""What a table cell shows: how its value is read from a run and how ours and the paper's print.

A :class:`Quantity` pairs a reader of one run's result (see :mod:`biasdecay.study.results`)
with the formats of our number and of the paper's. Our accuracies are fractions in [0, 1], the
paper's are percent as printed, so the two formats differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from biasdecay.study.results import RunResult, accuracy, measure_value

__all__ = [
    "ACCURACY",
    "LOG_LAMBDA",
    "LOG_TRACE",
    "Quantity",
    "connectivity_row",
    "fixed",
    "log_of",
    "paper_percent",
    "percent",
    "sci",
]

Reader = Callable[[RunResult], "float | None"]


def percent(value: float) -> str:
    """An accuracy in [0, 1] as percent: ``0.9512`` -> ``95.12%``."""
    return f"{100 * value:.2f}%"


def paper_percent(value: float) -> str:
    """The paper's accuracy, already in percent: ``95.12`` -> ``95.12%``."""
    return f"{value:.2f}%"


def sci(value: float) -> str:
    """Scientific notation as the paper's Table 2 prints it: ``2.74e-01``."""
    return f"{value:.2e}"


def fixed(value: float) -> str:
    """Two decimals, as the paper's Table 1 prints logs: ``6.28``."""
    return f"{value:.2f}"


def log_of(read: Reader) -> Reader:
    """A reader of the natural log of ``read``'s value (None unless that value is positive)."""

    def read_log(result: RunResult) -> float | None:
        value = read(result)
        return math.log(value) if value is not None and value > 0 else None

    return read_log


@dataclass(frozen=True)
class Quantity:
    """What a cell shows.

    Attributes:
        read: one run's value (None when the run has none).
        ours: the format of our mean, standard deviation and per-seed values.
        paper: the format of the paper's value (its "-" prints as ``-``).
        per_seed: list every seed's value after the mean ± std (the cells verdicts rest on).
        points: the value is an accuracy in [0, 1]; differences print in percentage points.
    """

    read: Reader
    ours: Callable[[float], str]
    paper: Callable[[float], str]
    per_seed: bool = False
    points: bool = False

    def paper_text(self, value: float | None) -> str:
        """The paper's value as printed, ``-`` where the paper has none (training failed)."""
        return "-" if value is None else self.paper(value)


ACCURACY = Quantity(accuracy, percent, paper_percent, per_seed=True, points=True)
LOG_TRACE = Quantity(log_of(measure_value("hessian-trace", "value")), fixed, fixed)
LOG_LAMBDA = Quantity(log_of(measure_value("hessian-max", "value")), fixed, fixed)


def connectivity_row(row: str) -> Quantity:
    """Per-sample C of one of Table 2's substructures (``Conv``, ``γ``, ..., ``Total``)."""
    return Quantity(measure_value("connectivity", "table2", row), sci, sci)
