"""The optional TensorBoard mirror of a run's metrics: each number as the scalar ``kind/field``.

``metrics.jsonl`` is the record of a run; TensorBoard only shows it. The package is imported when
the mirror is made, so a missing tensorboard fails at start-up, not an hour into the run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from biasdecay.extras import import_extra

__all__ = ["TensorBoardMirror"]


def _import_summary_writer() -> type:
    module = import_extra(
        "torch.utils.tensorboard",
        "tensorboard",
        "tensorboard=True",
        package="tensorboard",
        note="; or turn TensorBoard logging off: metrics.jsonl is written either way",
    )
    return module.SummaryWriter


def numeric_fields(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """``(name, value)`` of every number in ``record``, nested mappings joined by "/".

    Args:
        record: a metrics record (without its ``step`` and ``kind``).
        prefix: prepended to every name.

    Returns:
        An iterator over the numeric fields; bools, strings and lists are left out.
    """
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        elif hasattr(value, "item") and getattr(value, "size", None) == 1:  # numpy scalars
            value = value.item()
        if isinstance(value, bool):
            continue  # flags are not curves
        if isinstance(value, (int, float)):
            yield name, float(value)
        elif isinstance(value, Mapping):
            yield from numeric_fields(value, f"{name}/")


class TensorBoardMirror:
    """Writes metrics records as TensorBoard scalars under ``log_dir``.

    The event file is opened at the first record, so a resumed run can first say from which step
    on its earlier events are void (:meth:`restart_at`).

    Args:
        log_dir: the directory of the event files (``RUN_DIR/tensorboard``).

    Raises:
        MissingDependencyError: the tensorboard package is missing (an ``ImportError`` whose
            message says what to install).
    """

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)
        self._writer_class = _import_summary_writer()
        self._writer: Any = None
        self._purge_step: int | None = None

    def log(self, record: Mapping[str, Any], kind: str, step: int) -> None:
        """Add every numeric field of ``record`` but ``step`` and ``kind`` as ``kind/field``."""
        if self._writer is None:
            # purge_step hides the events of the abandoned continuation after a resume.
            self._writer = self._writer_class(
                log_dir=str(self.log_dir), purge_step=self._purge_step
            )
        fields = {k: v for k, v in record.items() if k not in ("step", "kind")}
        for name, value in numeric_fields(fields):
            self._writer.add_scalar(f"{kind}/{name}", value, global_step=step)

    def restart_at(self, step: int) -> None:
        """Hide the events from ``step`` on: they are about to be written again."""
        self._purge_step = step
        self.close()  # reopened at the next record, with the purge step

    def flush(self) -> None:
        """Push buffered events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Close the event file; a later :meth:`log` opens a new one."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
