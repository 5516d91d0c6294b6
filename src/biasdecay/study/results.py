"""Read what a sweep's runs left on disk, and pool seeds of the same setting.

Only final files are read: ``summary.json`` (written atomically, last) decides whether a run
counts, and its measures come from ``metrics.jsonl`` records written before that summary. A run
still in progress or killed reads as not done, never as a partial number.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biasdecay.study.sweep import run_state
from biasdecay.train.metrics import read_metrics

if TYPE_CHECKING:  # the plan is built from the studies, whose tables read results
    from biasdecay.study.plan import PlannedRun, StudyPlan
    from biasdecay.study.settings import Setting
    from biasdecay.train.config import TrainConfig

__all__ = [
    "Aggregate",
    "RunResult",
    "Stat",
    "accuracy",
    "collect",
    "final_train_accuracy",
    "measure_value",
    "plateau_change",
]


@dataclass
class RunResult:
    """One run's final state and numbers, and the configuration that made it."""

    run: PlannedRun
    state: str  # finished, diverged, interrupted, pending
    config: TrainConfig | None = None  # None when the caller gave no configurations
    summary: dict[str, Any] | None = None
    measures: dict[str, Any] | None = None  # the last "measures" record
    tracking: list[dict[str, Any]] = field(default_factory=list)  # "sharpness" records
    train: list[dict[str, Any]] = field(default_factory=list)  # "train" records (loss, accuracy)

    @property
    def accuracy(self) -> float | None:
        if self.state != "finished" or self.summary is None:
            return None
        return self.summary.get("test_accuracy")


def _read_run(run: PlannedRun, out: Path, config: TrainConfig | None) -> RunResult:
    run_dir = out / run.name
    state = run_state(run_dir)
    if state not in ("finished", "diverged"):
        return RunResult(run, state, config)
    summary = json.loads((run_dir / "summary.json").read_text())
    records = read_metrics(run_dir)
    measures = [r for r in records if r.get("kind") == "measures"]
    tracking = [r for r in records if r.get("kind") == "sharpness"]
    train = [r for r in records if r.get("kind") == "train"]
    last = measures[-1] if measures else None
    return RunResult(run, state, config, summary, last, tracking, train)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over the seeds that produced a value."""

    mean: float
    std: float | None  # None with a single value
    n: int
    values: tuple[float, ...] = ()  # one per seed, in seed order


@dataclass
class Aggregate:
    """The runs (one per seed) of one setting."""

    setting: Setting
    results: list[RunResult]

    @property
    def scaled(self):
        return self.results[0].run.scaled

    @property
    def finished(self) -> list[RunResult]:
        return [r for r in self.results if r.state == "finished"]

    @property
    def diverged(self) -> int:
        return sum(r.state == "diverged" for r in self.results)

    @property
    def state(self) -> str:
        """``finished`` (some seed finished), ``diverged`` (every seed diverged) or ``missing``."""
        if self.finished:
            return "finished"
        if self.results and self.diverged == len(self.results):
            return "diverged"
        return "missing"

    def stat(self, value: Callable[[RunResult], float | None]) -> Stat | None:
        """``value`` over the finished seeds (None when no seed has a finite one)."""
        values = [v for r in self.finished if (v := value(r)) is not None and math.isfinite(v)]
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else None
        return Stat(statistics.fmean(values), std, len(values), tuple(values))


def collect(
    plan: StudyPlan, out: str | Path, configs: Mapping[str, TrainConfig] | None = None
) -> dict[str, Aggregate]:
    """Every setting of ``plan`` with its runs' results, keyed by :attr:`Setting.key`.

    Args:
        plan: the study plan.
        out: the sweep directory.
        configs: run name -> the configuration of that run, e.g. from
            :func:`biasdecay.study.sweep.check_runs`, which builds each run's configuration
            and checks it against the ``config.toml`` the run recorded. Each result carries its
            own (:attr:`RunResult.config`), so what a section reads from a run's settings (the
            threshold R of adaptive β decay) is that run's.

    Returns:
        Setting key -> the setting with one result per seed, in plan order.
    """
    out = Path(out)
    configs = configs or {}
    aggregates: dict[str, Aggregate] = {}
    for run in plan.runs:
        key = run.setting.key
        aggregates.setdefault(key, Aggregate(run.setting, []))
        aggregates[key].results.append(_read_run(run, out, configs.get(run.name)))
    return aggregates


def measure_value(name: str, *path: str) -> Callable[[RunResult], float | None]:
    """A reader of ``measures[name][path...]`` for :meth:`Aggregate.stat`."""

    def read(result: RunResult) -> float | None:
        value: Any = (result.measures or {}).get(name)
        for key in path:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    return read


def _window_mean(records: list[dict[str, Any]], key: str, start: float, end: float) -> float | None:
    """Mean of ``key`` over the train records whose step lies in (start·T, end·T]."""
    if not records:
        return None
    last = records[-1]["step"]
    values = [r[key] for r in records if start * last < r["step"] <= end * last and key in r]
    return statistics.fmean(values) if values else None


def plateau_change(result: RunResult) -> float | None:
    """How much train accuracy moved over the last 20% of training, from the run's train records.

    The train records average the mini-batches since the previous record, so one record is
    noisy; the change is the mean over the last tenth of the steps minus the mean over the
    tenth that ends at 80%, the two ends of the last fifth. None when either window is empty.
    """
    early = _window_mean(result.train, "accuracy", 0.7, 0.8)
    late = _window_mean(result.train, "accuracy", 0.9, 1.0)
    return None if early is None or late is None else late - early


def final_train_accuracy(result: RunResult) -> float | None:
    """Train accuracy (training mini-batches as seen, train mode) over the last tenth of steps."""
    return _window_mean(result.train, "accuracy", 0.9, 1.0)


def accuracy(result: RunResult) -> float | None:
    """Test accuracy in [0, 1] (None unless finished)."""
    return result.accuracy
