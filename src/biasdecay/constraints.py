"""Value constraints: the one place where a setting's valid range is checked and described.

Every range check in the library goes through here, so that a value outside its interval is
refused with the same message wherever it is set (a constructor, a config file, ``--set``).
"""

from __future__ import annotations

import math
import numbers

from torch import Tensor

__all__ = ["check_in_range", "check_lr"]


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
    if not (0.0 <= float(lr) < math.inf):
        raise ValueError(f"{owner}: lr must be in [0, inf), got {lr}")


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
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: {name} must be a real number in {interval}, got {value!r}")
    v = float(value)
    above = v > low if low_open else v >= low
    below = v < high if high_open else v <= high
    if not (above and below):
        raise ValueError(f"{owner}: {name} must be in {interval}, got {value!r}")
