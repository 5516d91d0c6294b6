"""Strict JSON for results: non-finite floats as strings on the way out, floats on the way back.

Strict JSON has no NaN or Infinity, and a diverged run is exactly when they appear. Writing them
as the strings "nan", "inf" and "-inf" keeps every file readable by any JSON parser, and
:func:`restore_nonfinite` turns them back into floats when biasdecay reads its own files.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["restore_nonfinite", "to_json_data"]

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def to_json_data(value: Any, where: str = "value") -> Any:
    """``value`` as plain JSON data that ``json.dumps(..., allow_nan=False)`` accepts.

    Args:
        value: numbers, strings, bools, ``None``, one-element tensors and numpy scalars, enums
            (written as their value), paths (as strings), and lists, tuples and mappings of
            those. Non-finite floats become "nan", "inf" or "-inf"; mapping keys become strings.
        where: the name of ``value`` in error messages; nested places are appended to it
            (``record.layers[2]``).

    Returns:
        The converted data (new lists and dicts; ``value`` is not changed).

    Raises:
        TypeError: a tensor or array with more than one element, or an object of another type;
            the message names its place.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{where}: a tensor of shape {tuple(value.shape)} is not a scalar")
        value = value.item()
    elif hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalars and arrays
        if getattr(value, "size", 1) != 1:
            raise TypeError(f"{where}: an array of shape {value.shape} is not a scalar")
        value = value.item()
    if isinstance(value, enum.Enum):
        return to_json_data(value.value, where)
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {_key(k): to_json_data(v, f"{where}.{_key(k)}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: cannot write a {type(value).__name__} as JSON")


def _key(key: Any) -> str:
    return str(key.value if isinstance(key, enum.Enum) else key)


def restore_nonfinite(value: Any) -> Any:
    """The inverse of :func:`to_json_data` for floats: "nan", "inf", "-inf" become floats again.

    Args:
        value: data parsed from a file :func:`to_json_data` wrote.

    Returns:
        The same data with those three strings, wherever they appear, replaced by floats.
    """
    if isinstance(value, str):
        return _NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: restore_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [restore_nonfinite(v) for v in value]
    return value
