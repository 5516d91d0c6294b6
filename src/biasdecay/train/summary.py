"""A run's outcome: ``summary.json`` and ``summary.csv``, rewritten atomically as the run goes.

Written at the start (``status: "running"``) and at the end, so a crashed run is recognisable by
a summary that still says "running", and a sweep or report reading it never sees half a file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from biasdecay.atomic import write_json, write_text
from biasdecay.strict_json import to_json_data

__all__ = ["write_summary"]


def _flat_scalars(summary: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalar fields of ``summary`` (nested dicts joined by "."); lists are left out."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flat_scalars(value, f"{name}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = value
    return flat


def write_summary(run_dir: str | Path, summary: Mapping[str, Any]) -> None:
    """Write the outcome of a run as ``summary.json`` and ``summary.csv`` (both atomically).

    Args:
        run_dir: the run directory.
        summary: e.g. ``status`` ("finished", "diverged", "running"), final test accuracy/loss,
            ``steps``, ``epochs``, ``seconds``, ``diverged_at``. Non-finite floats are written as
            "nan"/"inf". The CSV has one header row and one value row of the scalar fields
            (nested dicts flattened as ``outer.inner``; lists only in the JSON).

    Raises:
        TypeError: a value cannot be written as JSON (its field is named).
        FileWriteError: a file could not be written (e.g. a full disk).
    """
    run_dir = Path(run_dir)
    data = to_json_data(dict(summary), "summary")
    write_json(run_dir / "summary.json", data)
    flat = _flat_scalars(data)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(flat.keys())
    writer.writerow("" if v is None else v for v in flat.values())
    write_text(run_dir / "summary.csv", buffer.getvalue())
