"""Run a grid of training runs to the end, whatever happens to the sweep or to any one run.

Each run is a ``biasdecay train`` subprocess in its own directory ``OUT/<run name>``, so a crash
or a diverged run never takes the sweep down, and parallel jobs can each own a GPU. The state of
a run is read from its directory alone:

==============  ========================================================  =================
state           what is on disk                                           what a sweep does
==============  ========================================================  =================
finished        summary.json with status "finished"                       skips it
diverged        summary.json with status "diverged" (the paper's "-")     skips it (final)
interrupted     checkpoints, no final summary                             resumes it
pending         nothing usable                                            starts it
==============  ========================================================  =================

A run directory holds one run: before anything starts, the sweep builds and checks every
planned run's configuration and compares it with the ``config.toml`` of any directory it finds.
A bad setting, or a directory made by other settings, is refused with nothing written, so a
result is never skipped into, resumed under or labelled with settings that did not make it.

Killing the sweep at any moment loses at most each run's work since its last checkpoint: its
runs are stopped with it (SIGTERM or SIGINT stop them cleanly; under ``kill -9`` Linux ends them
too), and a run directory still trained by a live process is left alone and reported busy.
Nothing a report reads is ever half-written: summaries and the sweep index are written
atomically, and a run counts as done only through its final summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biasdecay.atomic import FileWriteError, write_text
from biasdecay.errors import BiasDecayError
from biasdecay.train.config import (
    ConfigError,
    TrainConfig,
    config_differences,
    format_differences,
    load_config,
)
from biasdecay.train.process import PARENT_ENV, lock_holder

__all__ = [
    "RunOutcome",
    "RunSpec",
    "SweepError",
    "SweepWriteError",
    "check_devices",
    "check_runs",
    "run_state",
    "sweep",
    "train_command",
]

FINAL_STATES = ("finished", "diverged")
_SHOWN_PROBLEMS = 8  # a refusal lists this many problems, then counts the rest


class SweepError(BiasDecayError, ValueError):
    """A sweep that cannot start as asked; nothing was written."""


class SweepWriteError(FileWriteError):
    """The sweep could not write a run directory, a run's log or its index (a full or read-only
    disk); ``filename`` names what. Nothing finished is lost: the next sweep resumes the rest."""

    def __str__(self) -> str:
        return (
            f"{super().__str__()}; free space there (or give another --out) and run the same "
            "sweep again: finished runs are kept and interrupted ones resume"
        )


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Raise an ``OSError`` met while writing ``path`` as a :class:`SweepWriteError`.

    Only the sweep's own writes go through here; an ``OSError`` from anywhere else (starting a
    process) is not about the disk and keeps its traceback.
    """
    try:
        yield
    except SweepWriteError:
        raise
    except OSError as exc:
        where = exc.filename if exc.filename is not None else path
        raise SweepWriteError(exc.errno, exc.strerror or str(exc), str(where)) from exc


@dataclass(frozen=True)
class RunSpec:
    """One run of a study: a name (its directory), config overrides and labels for reports.

    Attributes:
        name: unique within the study; letters, digits, ``-``, ``_`` and ``.``.
        overrides: ``section.key=value`` items applied over the study's base config.
        labels: what the run stands for in tables, e.g. ``{"batch": 8192, "policy": "β decay"}``.
    """

    name: str
    overrides: tuple[str, ...] = ()
    labels: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise SweepError(
                f"run name {self.name!r} must be non-empty letters, digits, '-', '_' or '.' "
                "(it names the run's directory)"
            )


@dataclass(frozen=True)
class RunOutcome:
    """What became of one run in this sweep."""

    name: str
    # finished, diverged, failed, busy (another live process trains it), stopped (the sweep was
    # stopped), or in a dry run the state it is found in
    state: str
    action: str  # skipped, started, resumed, planned-start, planned-resume
    return_code: int | None = None
    seconds: float = 0.0
    summary: dict[str, Any] | None = None


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None  # missing, or unreadable: not a final state


def run_state(run_dir: str | Path) -> str:
    """``finished``, ``diverged``, ``interrupted`` or ``pending`` (see the module docstring)."""
    run_dir = Path(run_dir)
    summary = _read_summary(run_dir)
    if summary is not None and summary.get("status") in FINAL_STATES:
        return summary["status"]
    if any((run_dir / "checkpoints").glob("step-*.pt")) and (run_dir / "config.toml").is_file():
        return "interrupted"
    return "pending"


def train_command(
    run: RunSpec, run_dir: Path, base_config: str | Path | None, *, resume: bool
) -> list[str]:
    """The ``biasdecay train`` command line that starts or resumes ``run``."""
    command = [sys.executable, "-m", "biasdecay", "train", "--no-progress"]
    if resume:
        return [*command, "--resume", str(run_dir)]
    if base_config is not None:
        command += ["--config", str(base_config)]
    for item in run.overrides:
        command += ["--set", item]
    return [*command, "--set", f"run.out={json.dumps(str(run_dir))}"]


def _write_index(out: Path, outcomes: dict[str, RunOutcome], runs: Sequence[RunSpec]) -> None:
    """``OUT/sweep.json``: every run's labels and latest state, written atomically."""
    index = {
        "runs": [
            {
                "name": r.name,
                "labels": r.labels,
                "overrides": list(r.overrides),
                "state": outcomes[r.name].state if r.name in outcomes else run_state(out / r.name),
            }
            for r in runs
        ]
    }
    write_text(out / "sweep.json", json.dumps(index, indent=2) + "\n")


def _refuse(what: str, problems: list[str], fix: str) -> SweepError:
    shown = problems[:_SHOWN_PROBLEMS]
    more = len(problems) - len(shown)
    lines = "\n  ".join(shown) + (f"\n  ... and {more} more" if more else "")
    return SweepError(f"{what}; nothing was started or written:\n  {lines}\n{fix}")


def _planned_config(run: RunSpec, run_dir: Path, base_config: str | Path | None) -> TrainConfig:
    """The full configuration ``biasdecay train`` would give ``run`` (checked)."""
    overrides = [*run.overrides, f"run.out={json.dumps(str(run_dir))}"]
    return load_config(base_config, overrides)


def check_runs(
    runs: Sequence[RunSpec],
    out: str | Path,
    base_config: str | Path | None = None,
    *,
    require_config: bool = True,
) -> dict[str, TrainConfig]:
    """Build and check every run's configuration, and match it to any directory already there.

    Args:
        runs: the planned runs.
        out: the sweep directory.
        base_config: TOML file the overrides apply to (None: the built-in defaults).
        require_config: refuse a directory holding a result but no ``config.toml`` (a report
            of fabricated run files passes False).

    Returns:
        Run name -> its full configuration.

    Raises:
        SweepError: a run's settings are invalid (the message is ``biasdecay train``'s, with its
            "did you mean"), or a run directory holds a run made by other settings, or one
            whose settings cannot be read. Every problem is listed.
    """
    out = Path(out)
    configs: dict[str, TrainConfig] = {}
    invalid: dict[str, list[str]] = {}  # message -> the runs it applies to
    for run in runs:
        try:
            configs[run.name] = _planned_config(run, out / run.name, base_config)
        except ConfigError as err:
            invalid.setdefault(str(err), []).append(run.name)
    if invalid:
        problems = [
            f"{names[0]}{f' (and {len(names) - 1} more runs)' if len(names) > 1 else ''}: {msg}"
            for msg, names in invalid.items()
        ]
        raise _refuse(
            "the sweep's settings are invalid",
            problems,
            "fix the --set item (or the grid file) named above",
        )
    mismatched = []
    for run in runs:
        run_dir = out / run.name
        recorded = run_dir / "config.toml"
        if not recorded.is_file():
            ended = (run_dir / "summary.json").is_file() or (run_dir / "model.pt").is_file()
            if ended and require_config:
                mismatched.append(
                    f"{run_dir}: holds a result but no config.toml, so what made it cannot "
                    "be checked"
                )
            continue
        try:
            made_by = load_config(recorded, [f"run.out={json.dumps(str(run_dir))}"])
        except ConfigError as err:
            mismatched.append(f"{run_dir}: its config.toml does not load ({err})")
            continue
        differences = config_differences(made_by, configs[run.name])
        if differences:
            mismatched.append(f"{run_dir}: {format_differences(differences, 'on disk', 'planned')}")
    if mismatched:
        raise _refuse(
            f"{len(mismatched)} run director{'y holds' if len(mismatched) == 1 else 'ies hold'} "
            "a run made by other settings than this sweep plans",
            mismatched,
            "A run directory holds one run: use another --out for these settings, or delete "
            "the directories named above to train them again",
        )
    return configs


def check_devices(devices: Sequence[str], jobs: int) -> list[str]:
    """Validate ``--devices``: one CUDA device per job slot, each one that exists.

    Args:
        devices: the entries, e.g. ``["0", "1"]`` (indices) or GPU/MIG UUIDs.
        jobs: runs at a time.

    Returns:
        The entries, stripped.

    Raises:
        SweepError: fewer entries than jobs, an entry that is not a device index or UUID, an
            index this machine lacks, or no CUDA GPU at all.
    """
    entries = [d.strip() for d in devices]
    if len(entries) < jobs:
        raise SweepError(f"{jobs} jobs need {jobs} devices, got {entries}: give one per job")
    bad = [d for d in entries if not (d.isdigit() or d.startswith(("GPU-", "MIG-")))]
    if bad:
        raise SweepError(
            f"--devices: {', '.join(map(repr, bad))} is not a CUDA device; give GPU indices "
            "(e.g. 0,1) or UUIDs (GPU-..., MIG-...) as nvidia-smi -L lists them"
        )
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise SweepError(
            "--devices names CUDA GPUs, but torch sees none on this machine; leave --devices "
            "out to run on what is here"
        )
    missing = [d for d in entries if d.isdigit() and int(d) >= count]
    if missing:
        raise SweepError(f"--devices: no GPU {', '.join(missing)}; this machine has {count}")
    return entries


def check_out(out: Path) -> None:
    """Refuse an ``out`` that is a file, or that cannot be created or written, up front."""
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out} is a file; give a directory (it holds one run per entry)")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SweepError(f"--out {out}: {existing} is a file, so {out} cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SweepError(
            f"--out {out}: {existing} is not writable; give a directory you can write to"
        )


# A trainer killed a moment ago may hold its lock for a few milliseconds more (the kernel frees
# it once the process has exited): wait this long before calling its directory busy.
_BUSY_GRACE_SECONDS = 3.0


def _holder_after_grace(run_dir: Path) -> int | None:
    deadline = time.monotonic() + _BUSY_GRACE_SECONDS
    holder = lock_holder(run_dir)
    while holder is not None and time.monotonic() < deadline:
        time.sleep(0.05)
        holder = lock_holder(run_dir)
    return holder


class _Children:
    """The sweep's live training processes, so a signal to the sweep can stop them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self.stopping = False

    def start(self, command: list[str], env: dict[str, str], output: Any) -> subprocess.Popen:
        with self._lock:
            if self.stopping:
                raise _Stopped
            proc = subprocess.Popen(command, env=env, stdout=output, stderr=output)
            self._procs.add(proc)
        return proc

    def done(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop_all(self, signum: int) -> None:
        with self._lock:
            self.stopping = True
            for proc in self._procs:
                if proc.poll() is None:
                    proc.send_signal(signum)


class _Stopped(Exception):
    """The sweep is stopping: start no further run."""


def sweep(
    runs: Sequence[RunSpec],
    out: str | Path,
    *,
    base_config: str | Path | None = None,
    jobs: int = 1,
    devices: Sequence[str] | None = None,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    env: dict[str, str] | None = None,
    before_start: Callable[[], None] | None = None,
) -> list[RunOutcome]:
    """Bring every run of ``runs`` to a final state under ``out``.

    Everything is checked before anything is written (:func:`check_runs`, :func:`check_devices`,
    the ``out`` path). SIGTERM or SIGINT to the sweep stops its runs (each resumable from its
    last checkpoint) and starts no new one; their outcomes say ``stopped``.

    Args:
        runs: the study's runs (unique names).
        out: the sweep directory; run ``r`` lives in ``out/r.name``.
        base_config: TOML file the overrides apply to (None: the built-in defaults).
        jobs: runs at a time (>= 1).
        devices: one CUDA device per job slot, exported as ``CUDA_VISIBLE_DEVICES`` (e.g.
            ["0", "1"] to put one run on each of two GPUs); None leaves the environment as is.
        dry_run: print what would run, run and write nothing (the checks still apply).
        log: one line per run as it starts and ends.
        env: environment for the runs (default: this process's).
        before_start: called once everything is checked, before the first write (a study
            writes its plan there); not called in a dry run.

    Returns:
        One :class:`RunOutcome` per run, in ``runs`` order.

    Raises:
        SweepError: repeated run names, ``jobs < 1``, bad devices, an unusable ``out``, invalid
            settings or a run directory made by other settings; nothing was written.
        SweepWriteError: a run directory, a run's ``train.log`` or ``sweep.json`` could not be
            written (a full or read-only disk); the sweep's live runs are stopped, resumable.
    """
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SweepError(f"run names must be unique; repeated: {', '.join(duplicates)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise SweepError(f"jobs must be an integer >= 1 (runs at a time), got {jobs!r}")
    if devices is not None:
        devices = check_devices(devices, jobs)
    out = Path(out)
    check_out(out)
    check_runs(runs, out, base_config)
    if not dry_run:  # a dry run leaves no trace
        if before_start is not None:
            before_start()
        with _writing(out):
            out.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, RunOutcome] = {}
    total = len(runs)
    children = _Children()

    def one(position: int, run: RunSpec, slot: int) -> RunOutcome:
        run_dir = out / run.name
        prefix = f"[{position}/{total}] {run.name}"
        holder = _holder_after_grace(run_dir)
        if holder is not None:
            log(
                f"{prefix}: busy, process {holder} is training it; skipped (run the sweep "
                "again once it ends)"
            )
            return RunOutcome(run.name, "busy", "skipped")
        state = run_state(run_dir)
        if state in FINAL_STATES:
            log(f"{prefix}: {state}, skipped")
            return RunOutcome(run.name, state, "skipped", summary=_read_summary(run_dir))
        resume = state == "interrupted"
        command = train_command(run, run_dir, base_config, resume=resume)
        if dry_run:
            action = "planned-resume" if resume else "planned-start"
            log(f"{prefix}: would {'resume' if resume else 'start'}: {' '.join(command)}")
            return RunOutcome(run.name, state, action)
        run_env = dict(env if env is not None else os.environ)
        run_env[PARENT_ENV] = str(os.getpid())  # the run ends if the sweep is killed
        if devices is not None:
            run_env["CUDA_VISIBLE_DEVICES"] = devices[slot]
        if jobs > 1 and "OMP_NUM_THREADS" not in run_env:  # share the CPU between the jobs
            run_env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
        action = "resumed" if resume else "started"
        if children.stopping:
            return RunOutcome(run.name, state, "not started")
        log(f"{prefix}: {'resuming' if resume else 'starting'}")
        log_path = run_dir / "train.log"
        with _writing(log_path):
            run_dir.mkdir(parents=True, exist_ok=True)
            output = open(log_path, "a")  # closed by the `with` below, once the run ends
        start = time.perf_counter()
        with output:
            try:
                proc = children.start(command, run_env, output)
            except _Stopped:
                return RunOutcome(run.name, state, "not started")
            try:
                code = proc.wait()
            finally:
                children.done(proc)
        seconds = time.perf_counter() - start
        final = run_state(run_dir)
        summary = _read_summary(run_dir)
        if final in FINAL_STATES:
            accuracy = (summary or {}).get("test_accuracy")
            shown = f", test accuracy {accuracy:.2%}" if isinstance(accuracy, float) else ""
            log(f"{prefix}: {final} in {seconds:.0f} s{shown}")
        elif children.stopping:
            final = "stopped"
            log(f"{prefix}: stopped after {seconds:.0f} s; the next sweep resumes it")
        else:  # crashed, or killed: resumable next time
            final = "failed"
            log(f"{prefix}: FAILED (exit {code}); see {run_dir / 'train.log'}")
        return RunOutcome(run.name, final, action, code, seconds, summary)

    def on_signal(signum: int, _frame: object) -> None:
        if not children.stopping:
            log(f"sweep: {signal.Signals(signum).name}: stopping the runs (each resumable)")
        children.stop_all(signal.SIGTERM)

    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {}
    if not dry_run and threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, on_signal) for s in handled}
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        free = list(range(jobs))  # job slots; slot i runs on devices[i]
        pending = list(enumerate(runs, start=1))
        running: dict[Any, int] = {}
        while pending or running:
            while pending and free:
                position, run = pending.pop(0)
                slot = free.pop(0)
                running[pool.submit(one, position, run, slot)] = slot
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            done = next(iter(finished))
            free.append(running.pop(done))
            outcome = done.result()
            outcomes[outcome.name] = outcome
            if not dry_run:
                with _writing(out / "sweep.json"):
                    _write_index(out, outcomes, runs)
    except BaseException:
        # A run that cannot be written (a full disk) ends the sweep now, not once every other
        # live run has trained to its end: they stop as on SIGTERM, each resumable.
        children.stop_all(signal.SIGTERM)
        raise
    finally:
        pool.shutdown(wait=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return [outcomes[r.name] for r in runs]
