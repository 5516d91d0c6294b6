"""Value constraints: the one place where a setting's valid range is checked and described.

Every range check in the library goes through here, so that a value outside its interval is
refused with the same message wherever it is set (a constructor, a config file, ``--set``):
``"<owner>: <name> must be in [0, 1), got 1.5"``. A constraint is a small frozen object with
``check`` (raise), ``problems`` (collect messages, for a config that reports every problem at
once) and ``describe`` (the valid set in words, for help text).

A constraint applies to a value, or element by element to a list or tuple of values (the
message then names ``name[i]``); ``None`` always passes (an optional setting left unset).
"""

from __future__ import annotations

import difflib
import math
import numbers
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from biasdecay.errors import BiasDecayError

__all__ = [
    "Constraint",
    "ConstraintError",
    "NonEmpty",
    "OneOf",
    "Pattern",
    "Range",
    "check_in_range",
    "check_lr",
    "did_you_mean",
    "problems",
]


class ConstraintError(BiasDecayError, ValueError):
    """A value outside its valid set; the message names the setting, the set and the value."""


def did_you_mean(name: object, valid: Iterable[str], template: str = "{!r}") -> str:
    """``"; did you mean X?"`` for the closest valid name, or ``""`` when none is close.

    Args:
      name: what was given.
      valid: the accepted names.
      template: how to show the suggestion (``"{!r}"`` quotes it).

    Returns:
      The suffix to append to an error message.
    """
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {template.format(close[0])}?" if close else ""


class Constraint:
    """Base of the constraints: messages for bad values, a description of good ones, a check."""

    def problem(self, name: str, value: Any) -> str | None:
        """The message for one value (not a sequence), or None when it is valid."""
        raise NotImplementedError

    def describe(self) -> str:
        """The valid set in words, e.g. ``"[0, 1)"`` or ``"one of: a, b"``."""
        raise NotImplementedError

    #: Whether a message about an element of a list names its index (``betas[1]``); a list of
    #: names is reported as the list (``run.measures: unknown value 'x'``).
    indexed = True

    def normalize(self, value: Any) -> Any:
        """A valid value in its stored form (a range gives ``float`` or ``int``)."""
        return value

    def check(self, name: str, value: Any, owner: str | None = None) -> Any:
        """``value`` normalised, after checking it (element-wise for a list or tuple).

        Args:
          name: the argument's name, for the message.
          value: the value to check; None passes.
          owner: prefixed to the message when given (``"LAMB: eps must be ..."``).

        Returns:
          The value (a range gives ``int`` or ``float``; element-wise for a list or tuple).

        Raises:
          ConstraintError: with the first problem found.
        """
        found = problems(self, name, value)
        if found:
            raise ConstraintError(f"{owner}: {found[0]}" if owner else found[0])
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return type(value)(self.normalize(v) for v in value)
        return self.normalize(value)


def _elements(name: str, value: Any, indexed: bool) -> list[tuple[str, Any]]:
    """``(name[i], element)`` for a list or tuple, ``[(name, value)]`` for anything else."""
    if isinstance(value, (list, tuple)):
        return [(f"{name}[{i}]" if indexed else name, v) for i, v in enumerate(value)]
    return [(name, value)]


def problems(constraint: Constraint, name: str, value: Any) -> list[str]:
    """Every message ``constraint`` has for ``value`` (element-wise for lists and tuples).

    Args:
      constraint: the constraint.
      name: the setting's name, e.g. ``optimizer.betas``.
      value: the value; None passes.

    Returns:
      The messages, empty when the value is valid.
    """
    if value is None:
        return []
    found = (constraint.problem(n, v) for n, v in _elements(name, value, constraint.indexed))
    return [text for text in found if text is not None]


@dataclass(frozen=True)
class Range(Constraint):
    """A real (or integer) interval; NaN is never inside, ±inf only where an end admits it.

    Attributes:
      low, high: the interval's ends.
      low_open, high_open: whether an end is excluded (by default the upper one, so that
        ``Range(0)`` is ``[0, inf)``: finite numbers >= 0).
      integer: only integers (bools and floats are refused, not rounded).
    """

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = True
    integer: bool = False

    def describe(self) -> str:
        interval = (
            f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
            f"{')' if self.high_open else ']'}"
        )
        return f"an integer in {interval}" if self.integer else interval

    def _interval(self) -> str:
        return self.describe().removeprefix("an integer in ")

    def problem(self, name: str, value: Any) -> str | None:
        kind = "an integer" if self.integer else "a real number"
        wanted = numbers.Integral if self.integer else numbers.Real
        if isinstance(value, (bool, Tensor)) or not isinstance(value, wanted):
            return f"{name} must be {kind} in {self._interval()}, got {value!r}"
        v = float(value)
        above = v > self.low if self.low_open else v >= self.low
        below = v < self.high if self.high_open else v <= self.high
        if above and below:
            return None
        # The value as it is read: an int given for a real shows as the float it becomes.
        return f"{name} must be in {self._interval()}, got {self.normalize(value)!r}"

    def normalize(self, value: Any) -> int | float:
        return operator.index(value) if self.integer else float(value)


@dataclass(frozen=True)
class OneOf(Constraint):
    """One of a set of names; ``values`` may be a callable read at each check (a registry)."""

    values: Sequence[str] | Callable[[], Iterable[str]]
    indexed = False

    def names(self) -> list[str]:
        """The valid names, in listing order."""
        return list(self.values() if callable(self.values) else self.values)

    def describe(self) -> str:
        return "one of: " + ", ".join(self.names())

    def problem(self, name: str, value: Any) -> str | None:
        valid = self.names()
        if value in valid:
            return None
        return f"{name}: unknown value {value!r}; valid: {', '.join(valid)}" + did_you_mean(
            value, valid
        )


@dataclass(frozen=True)
class Pattern(Constraint):
    """A string matching a regular expression; ``text`` says which values in words."""

    regex: str
    text: str

    def describe(self) -> str:
        return self.text

    def problem(self, name: str, value: Any) -> str | None:
        if isinstance(value, str) and re.fullmatch(self.regex, value):
            return None
        return f"{name}: unknown value {value!r}; valid: {self.text}"


@dataclass(frozen=True)
class NonEmpty(Constraint):
    """A non-empty string; ``text`` says what it is (``"a non-empty path"``)."""

    text: str

    def describe(self) -> str:
        return self.text

    def problem(self, name: str, value: Any) -> str | None:
        return f'{name} must be {self.text}, got ""' if value == "" else None


def check_lr(owner: str, lr: object) -> None:
    """Raise unless ``lr`` is a finite Python number >= 0 (tensor learning rates are not supported).

    Args:
      owner: the optimiser's name, for the message.
      lr: the value to check.

    Raises:
      TypeError: ``lr`` is a tensor or not a number.
      ValueError: ``lr`` is negative or not finite.
    """
    if isinstance(lr, Tensor) or not isinstance(lr, numbers.Real) or isinstance(lr, bool):
        raise TypeError(f"{owner}: lr must be a Python float >= 0, got {type(lr).__name__}")
    Range(0.0).check("lr", lr, owner)


def check_in_range(
    owner: str,
    name: str,
    value: object,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = True,
) -> None:
    """Raise ``ValueError`` naming ``name`` and its valid interval unless ``value`` lies inside it.

    Args:
      owner: the optimiser's name, for the message.
      name: the hyper-parameter's name as the user spells it.
      value: the value to check (a real number; bools are refused).
      low, high: the interval's ends.
      low_open, high_open: whether an end is excluded.
    """
    Range(low, high, low_open, high_open).check(name, value, owner)
