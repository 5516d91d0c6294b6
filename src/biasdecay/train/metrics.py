"""A run's metrics log, ``metrics.jsonl``: one JSON object per line, appended as the run goes.

Each line is a record such as ``{"step": 120, "kind": "train", "loss": 0.41, ...}``; the kinds a
run writes are ``train``, ``eval``, ``sharpness``, ``measures`` and ``event``. Non-finite numbers
are the strings "nan", "inf", "-inf" in the file and floats again in :func:`read_metrics`.

Only rank 0 writes: the other ranks build the same writer with ``enabled=False``, which turns
every method into a no-op, so the engine needs no ``if rank == 0`` around each call.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from biasdecay.atomic import write_text
from biasdecay.errors import InputError
from biasdecay.strict_json import restore_nonfinite, to_json_data
from biasdecay.train.tensorboard import TensorBoardMirror

__all__ = ["METRICS_FILE", "MetricsWriter", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Append-only metrics log of a run (``metrics.jsonl``), optionally mirrored to TensorBoard.

    Each :meth:`log` writes one line and flushes it, so a killed run keeps every record it
    logged (the operating system has it; it is not fsynced, which would cost a disk round trip
    per step). Use as a context manager or call :meth:`close`.

    Args:
        run_dir: the run directory (created when missing).
        enabled: ``False`` on non-zero ranks: every method is then a no-op and nothing is created.
        tensorboard: also write each numeric field as the scalar ``kind/field`` at ``step`` under
            ``run_dir/tensorboard``.

    Raises:
        MissingDependencyError: ``tensorboard=True`` without the tensorboard package (an
            ``ImportError`` that says what to install).
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.enabled = enabled
        self._file: io.TextIOWrapper | None = None
        self._tb: TensorBoardMirror | None = None
        self._closed = False
        if not enabled:
            return
        # Fail at start-up, not at the first log call an hour into the run.
        if tensorboard:
            self._tb = TensorBoardMirror(self.run_dir / "tensorboard")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._open()

    @property
    def tensorboard(self) -> bool:
        """Whether records are mirrored to TensorBoard."""
        return self._tb is not None

    def _open(self) -> None:
        # A run killed in the middle of a write can leave a last line without its newline;
        # terminating it keeps the next record on a line of its own.
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                unterminated = f.read(1) != b"\n"
            if unterminated:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write("\n")
        self._file = open(self.path, "a", encoding="utf-8")

    def _check_open(self) -> None:
        if self._closed:
            raise InputError(f"MetricsWriter for {self.run_dir} is closed")

    def log(self, record: Mapping[str, Any]) -> None:
        """Append one record.

        Args:
            record: a flat or nested dict with an int ``"step"`` and a ``"kind"`` string (e.g.
                ``"train"``, ``"eval"``, ``"sharpness"``, ``"event"``). Values may be numbers,
                strings, bools, ``None``, one-element tensors, lists and dicts of those.

        Raises:
            ValueError: ``step`` or ``kind`` is missing or malformed, or the writer is closed.
            TypeError: a value cannot be written as JSON (the field is named).
        """
        if not self.enabled:
            return
        self._check_open()
        step, kind = record.get("step"), record.get("kind")
        if isinstance(step, bool) or not isinstance(step, int):
            raise InputError(f"a metrics record needs an int 'step', got {step!r} in {record!r}")
        if not isinstance(kind, str) or not kind:
            raise InputError(f"a metrics record needs a 'kind' string, got {kind!r} in {record!r}")
        line = json.dumps(to_json_data(record, "record"), allow_nan=False)
        assert self._file is not None
        self._file.write(line + "\n")
        self._file.flush()
        if self._tb is not None:
            self._tb.log(record, kind, step)

    def truncate_after(self, step: int, *, redo: Collection[str] = ()) -> int:
        """Drop the records of steps after ``step`` (called when resuming from that step).

        The steps after the checkpoint are about to be run again; without this they would
        appear twice. Lines that do not parse (a record cut short by a kill) are dropped too.
        The file is rewritten atomically.

        Args:
            step: the step of the checkpoint the run resumes from (-1: drop every record).
            redo: kinds whose records *at* ``step`` go too, because the resumed run makes them
                again (a run resumed at its last step redoes its final ``eval``).

        Returns:
            How many lines were dropped.
        """
        if not self.enabled:
            return 0
        self._check_open()
        assert self._file is not None
        self._file.close()
        kept: list[str] = []
        dropped = 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    dropped += line.strip() != ""
                    continue
                record_step = record.get("step") if isinstance(record, dict) else None
                redone = record_step == step and record.get("kind") in redo
                if isinstance(record_step, int) and (record_step > step or redone):
                    dropped += 1
                else:
                    kept.append(line if line.endswith("\n") else line + "\n")
        write_text(self.path, "".join(kept))
        self._file = open(self.path, "a", encoding="utf-8")
        if self._tb is not None:
            self._tb.restart_at(step + 1)
        return dropped

    def flush(self) -> None:
        """Push buffered TensorBoard events to disk (metrics lines are flushed on every log)."""
        if self.enabled and self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Close the files; further :meth:`log` calls raise. Calling it twice is harmless."""
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_metrics(run_dir: str | Path, *, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``, in order.

    Args:
        run_dir: the run directory (or the ``metrics.jsonl`` file itself).
        kind: keep only records of this kind.

    Returns:
        The records, with the strings "nan", "inf" and "-inf" turned back into floats. A line
        that does not parse (cut short by a kill) is skipped.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / METRICS_FILE
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or (kind is not None and record.get("kind") != kind):
                continue
            records.append(restore_nonfinite(record))
    return records
