"""Observing a run: metrics lines, an optional TensorBoard mirror, summaries, run info, progress.

Everything a run writes about itself lives in its run directory::

    metrics.jsonl      one JSON object per line: {"step": 120, "kind": "train", "loss": 0.41, ...}
    tensorboard/       the same numbers as scalars "kind/field" (only with tensorboard=True)
    summary.json/.csv  the outcome: status, final accuracy/loss, steps, seconds, ...
    config.toml, environment.json, param_groups.txt   what was run, where, and with which groups

Only rank 0 writes: the other ranks build the same objects with ``enabled=False``, which turns
every method into a no-op, so the engine needs no ``if rank == 0`` around each call.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "METRICS_FILE",
    "MetricsWriter",
    "Progress",
    "environment_info",
    "read_metrics",
    "write_run_info",
    "write_summary",
]

METRICS_FILE = "metrics.jsonl"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for everyone who reads the run
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON data; non-finite floats become the strings "nan", "inf", "-inf".

    Strict JSON has no NaN/Infinity, and a diverged run is exactly when they appear; strings keep
    every line readable by any JSON parser.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{where}: a tensor of shape {tuple(value.shape)} is not a scalar")
        value = value.item()
    elif hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalars and arrays
        if getattr(value, "size", 1) != 1:
            raise TypeError(f"{where}: an array of shape {value.shape} is not a scalar")
        value = value.item()
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
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: cannot write a {type(value).__name__} as JSON")


def _numeric_fields(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """``(name, value)`` of every number in ``record``, nested dicts joined by "/"."""
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
            yield from _numeric_fields(value, f"{name}/")


def _import_summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            "tensorboard=True needs the tensorboard package, which is not installed: "
            "pip install tensorboard (or install biasdecay with the 'tensorboard' extra), "
            "or turn TensorBoard logging off; metrics.jsonl is written either way"
        ) from exc
    return SummaryWriter


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
        ImportError: ``tensorboard=True`` without the tensorboard package (says what to install).
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.enabled = enabled
        self.tensorboard = tensorboard and enabled
        self._file: io.TextIOWrapper | None = None
        self._tb: Any = None
        self._tb_class: type | None = None
        self._purge_step: int | None = None
        self._closed = False
        if not enabled:
            return
        # Fail at start-up, not at the first log call an hour into the run.
        if self.tensorboard:
            self._tb_class = _import_summary_writer()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._open()

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
            raise ValueError(f"MetricsWriter for {self.run_dir} is closed")

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
            raise ValueError(f"a metrics record needs an int 'step', got {step!r} in {record!r}")
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"a metrics record needs a 'kind' string, got {kind!r} in {record!r}")
        line = json.dumps(_jsonable(record, "record"), allow_nan=False)
        assert self._file is not None
        self._file.write(line + "\n")
        self._file.flush()
        if self.tensorboard:
            self._log_tensorboard(record, kind, step)

    def _log_tensorboard(self, record: Mapping[str, Any], kind: str, step: int) -> None:
        if self._tb is None:
            assert self._tb_class is not None
            # purge_step hides the events of the abandoned continuation after a resume.
            self._tb = self._tb_class(
                log_dir=str(self.run_dir / "tensorboard"), purge_step=self._purge_step
            )
        fields = {k: v for k, v in record.items() if k not in ("step", "kind")}
        for name, value in _numeric_fields(fields):
            self._tb.add_scalar(f"{kind}/{name}", value, global_step=step)

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
        atomic_write_text(self.path, "".join(kept))
        self._file = open(self.path, "a", encoding="utf-8")
        self._purge_step = step + 1
        if self._tb is not None:  # reopened on the next log, with the purge step
            self._tb.close()
            self._tb = None
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
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _restore_nonfinite(value: Any) -> Any:
    if isinstance(value, str):
        return _NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _restore_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_nonfinite(v) for v in value]
    return value


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
            records.append(_restore_nonfinite(record))
    return records


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

    Written at the start (``status: "running"``) and at the end, so a crashed run is
    recognisable by a summary that still says "running".

    Args:
        run_dir: the run directory.
        summary: e.g. ``status`` ("finished", "diverged", "running"), final test accuracy/loss,
            ``steps``, ``epochs``, ``seconds``, ``diverged_at``. Non-finite floats are written as
            "nan"/"inf". The CSV has one header row and one value row of the scalar fields
            (nested dicts flattened as ``outer.inner``; lists only in the JSON).
    """
    run_dir = Path(run_dir)
    data = _jsonable(dict(summary), "summary")
    atomic_write_text(run_dir / "summary.json", json.dumps(data, indent=2, allow_nan=False) + "\n")
    flat = _flat_scalars(data)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(flat.keys())
    writer.writerow("" if v is None else v for v in flat.values())
    atomic_write_text(run_dir / "summary.csv", buffer.getvalue())


def _git_commit(cwd: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of ``cwd`` (default: the working directory), or ``None``."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def environment_info(device: str | torch.device, world_size: int) -> dict[str, Any]:
    """Where and with what a run ran, for ``environment.json``.

    Args:
        device: the device the run trains on (this rank's).
        world_size: the number of processes.

    Returns:
        ``time`` (ISO 8601, UTC), ``hostname``, ``python``, ``platform``, ``torch``, ``cuda`` and
        ``cudnn`` (versions, ``None`` without them), ``device``, ``device_name`` (the GPU's name,
        ``None`` otherwise), ``torch_threads``, ``world_size`` and ``git_commit`` (of the working
        directory, ``None`` when it is not a git checkout or git is missing).
    """
    device = torch.device(device)
    device_name = None
    if device.type == "cuda" and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(device)
    cudnn = None
    if torch.backends.cudnn.is_available():
        cudnn = torch.backends.cudnn.version()
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "device": str(device),
        "device_name": device_name,
        # CPU timings depend on it as much as on the processor.
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
        "git_commit": _git_commit(),
    }


def write_run_info(
    run_dir: str | Path, *, config_toml: str, environment: Mapping[str, Any], groups_summary: str
) -> None:
    """Record what a run is: ``config.toml``, ``environment.json``, ``param_groups.txt``.

    Args:
        run_dir: the run directory (created when missing).
        config_toml: the resolved configuration, as TOML text (it re-runs the experiment).
        environment: usually :func:`environment_info`.
        groups_summary: the decay policy's assignment table (which parameter decays how).
    """
    run_dir = Path(run_dir)

    def ended(text: str) -> str:
        return text if text.endswith("\n") else text + "\n"

    atomic_write_text(run_dir / "config.toml", ended(config_toml))
    atomic_write_text(
        run_dir / "environment.json",
        json.dumps(_jsonable(dict(environment), "environment"), indent=2, allow_nan=False) + "\n",
    )
    atomic_write_text(run_dir / "param_groups.txt", ended(groups_summary))


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _format_value(value: Any) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Training progress: a tqdm bar in a terminal, periodic one-line messages otherwise.

    A bar redrawn with carriage returns turns a log file (batch jobs, ``torchrun`` output) into
    one huge line, so without a terminal the progress goes through ``log`` every ``log_every``
    steps instead, e.g. ``train 300/1000 (30%) | loss 0.4123 | 12.5 steps/s | eta 56.0s``.

    Args:
        total_steps: the step the run ends at.
        enabled: ``False`` on non-zero ranks: nothing is shown.
        initial: the step a resumed run starts from.
        desc: the label in front of the bar or message.
        log_every: steps between messages without a terminal; by default about 20 per run.
        log: where messages go without a terminal (default: a line on stderr).
        tty: force the bar (``True``) or the messages (``False``); by default the bar is shown
            when stderr is a terminal.
    """

    def __init__(
        self,
        total_steps: int,
        *,
        enabled: bool,
        initial: int = 0,
        desc: str = "train",
        log_every: int | None = None,
        log: Callable[[str], None] | None = None,
        tty: bool | None = None,
    ):
        if total_steps < 0 or initial < 0:
            raise ValueError(f"total_steps and initial must be >= 0, got {total_steps}, {initial}")
        if log_every is not None and log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.total = total_steps
        self.n = initial
        self.enabled = enabled
        self.desc = desc
        self.log_every = log_every or max(1, math.ceil(total_steps / 20))
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._initial = initial
        self._start = time.perf_counter()
        self._postfix: dict[str, Any] = {}
        self._last_logged = initial
        self._bar: Any = None
        if tty is None:
            tty = sys.stderr is not None and sys.stderr.isatty()
        if enabled and tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps,
                initial=initial,
                desc=desc,
                dynamic_ncols=True,
                file=sys.stderr,
                unit="step",
            )

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` steps; ``postfix`` values (loss, accuracy, lr, ...) are shown beside.

        Without a terminal, a message is logged whenever a multiple of ``log_every`` is passed
        and at the last step; it shows the latest postfix values.
        """
        if not self.enabled:
            return
        previous = self.n
        self.n += n
        if postfix:
            self._postfix.update(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(
                    {k: _format_value(v) for k, v in self._postfix.items()}, refresh=False
                )
            self._bar.update(n)
            return
        crossed = self.n // self.log_every > previous // self.log_every
        if crossed or (self.n >= self.total > previous):
            self._log_line()

    def _log_line(self) -> None:
        elapsed = time.perf_counter() - self._start
        done = self.n - self._initial
        rate = done / elapsed if elapsed > 0 else math.inf
        parts = [f"{self.desc} {self.n}/{self.total}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts += [f"{k} {_format_value(v)}" for k, v in self._postfix.items()]
        if done > 0:
            parts.append(f"{rate:.3g} steps/s")
            if self.n < self.total:
                parts.append(f"eta {_format_seconds((self.total - self.n) / rate)}")
            else:
                parts.append(f"took {_format_seconds(elapsed)}")
        self._log(" | ".join(parts))
        self._last_logged = self.n

    def write(self, msg: str) -> None:
        """Print a message without breaking the bar (events: evaluation, divergence, ...)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(msg, file=sys.stderr)
        else:
            self._log(msg)

    def close(self) -> None:
        """Close the bar; without a terminal, log the final step unless it was just logged."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.n != self._last_logged:
            self._log_line()
        self.enabled = False  # closing twice, or updating after, does nothing

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
