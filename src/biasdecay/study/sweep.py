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

Killing the sweep at any moment loses at most each run's work since its last checkpoint.
Nothing a report reads is ever half-written: summaries and the sweep index are written
atomically, and a run counts as done only through its final summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biasdecay.train.tracking import atomic_write_text

__all__ = ["RunSpec", "RunOutcome", "run_state", "sweep", "train_command"]

FINAL_STATES = ("finished", "diverged")


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
            raise ValueError(
                f"run name {self.name!r} must be non-empty letters, digits, '-', '_' or '.' "
                "(it names the run's directory)"
            )


@dataclass(frozen=True)
class RunOutcome:
    """What became of one run in this sweep."""

    name: str
    state: str  # finished, diverged, failed, interrupted (dry run: the planned action)
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
    atomic_write_text(out / "sweep.json", json.dumps(index, indent=2) + "\n")


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
) -> list[RunOutcome]:
    """Bring every run of ``runs`` to a final state under ``out``.

    Args:
        runs: the study's runs (unique names).
        out: the sweep directory; run ``r`` lives in ``out/r.name``.
        base_config: TOML file the overrides apply to (None: the built-in defaults).
        jobs: runs at a time.
        devices: one entry per job slot, exported as ``CUDA_VISIBLE_DEVICES`` (e.g. ["0", "1"]
            to put one run on each of two GPUs); None leaves the environment as it is.
        dry_run: print what would run, run nothing.
        log: one line per run as it starts and ends.
        env: environment for the runs (default: this process's).

    Returns:
        One :class:`RunOutcome` per run, in ``runs`` order.
    """
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"run names must be unique; repeated: {', '.join(duplicates)}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if devices is not None and len(devices) < jobs:
        raise ValueError(f"{jobs} jobs need {jobs} devices, got {list(devices)}")
    out = Path(out)
    if not dry_run:  # a dry run leaves no trace
        out.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, RunOutcome] = {}
    total = len(runs)

    def one(position: int, run: RunSpec, slot: int) -> RunOutcome:
        run_dir = out / run.name
        state = run_state(run_dir)
        prefix = f"[{position}/{total}] {run.name}"
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
        if devices is not None:
            run_env["CUDA_VISIBLE_DEVICES"] = devices[slot]
        if jobs > 1 and "OMP_NUM_THREADS" not in run_env:  # share the CPU between the jobs
            run_env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
        log(f"{prefix}: {'resuming' if resume else 'starting'}")
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(run_dir / "train.log", "a") as output:
            code = subprocess.run(command, env=run_env, stdout=output, stderr=output).returncode
        seconds = time.perf_counter() - start
        final = run_state(run_dir)
        summary = _read_summary(run_dir)
        if final not in FINAL_STATES:  # crashed, or killed: resumable next time
            final = "failed"
            log(f"{prefix}: FAILED (exit {code}); see {run_dir / 'train.log'}")
        else:
            accuracy = (summary or {}).get("test_accuracy")
            shown = f", test accuracy {accuracy:.2%}" if isinstance(accuracy, float) else ""
            log(f"{prefix}: {final} in {seconds:.0f} s{shown}")
        action = "resumed" if resume else "started"
        return RunOutcome(run.name, final, action, code, seconds, summary)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
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
                _write_index(out, outcomes, runs)
    return [outcomes[r.name] for r in runs]
