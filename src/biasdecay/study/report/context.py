"""What every report section reads: the plan, the runs' results, and where plots go.

:class:`Context` is the one place a section looks results up: a setting's runs, our data set
standing in for the paper's, what the measures saw, and the settings the runs were made with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biasdecay.study.claims import Claim
from biasdecay.study.plan import StudyPlan
from biasdecay.study.results import Aggregate, RunResult
from biasdecay.study.settings import PAPER_DATA, Setting, batch_text

__all__ = ["PLOTS_DIR", "Context", "Section", "threshold", "threshold_text"]

PLOTS_DIR = "plots"  # a report's figures, in the sweep directory

_DATA_TITLES = {
    "fashion-mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "imagenet": "ImageNet",
    "mnist5k": "MNIST-5k",
    "digits": "digits",
    "synthetic": "synthetic",
}


@dataclass
class Section:
    """A titled block of markdown with the claims it tests."""

    title: str
    blocks: list[str] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)


@dataclass
class Context:
    """What every section reads: the plan, the runs' results, where plots go."""

    plan: StudyPlan
    out: Path
    aggregates: dict[str, Aggregate]
    plot_notes: list[str] = field(default_factory=list)

    @property
    def seeds(self) -> int:
        """Seeds per setting."""
        return self.plan.seeds

    def aggregate(self, setting: Setting) -> Aggregate | None:
        """The runs of ``setting`` (compared by value); None when the study does not train it."""
        return self.aggregates.get(setting.key)

    def find(self, **attrs: Any) -> Aggregate | None:
        """The first setting of the study whose fields equal ``attrs``."""
        for agg in self.aggregates.values():
            if all(getattr(agg.setting, k) == v for k, v in attrs.items()):
                return agg
        return None

    def datasets(self) -> list[str]:
        """The paper data sets this study's runs stand for, in study order."""
        return list(dict.fromkeys(a.setting.dataset for a in self.aggregates.values()))

    def ours(self, dataset: str) -> str:
        """Our data set standing in for the paper's, with the preset, e.g. 'Fashion-MNIST (cpu)'."""
        agg = self.find(dataset=dataset)
        name = agg.scaled.dataset if agg else "?"
        return f"{_DATA_TITLES.get(name, name)} ({self.plan.preset.name})"

    def measured_on(self) -> str:
        """What the runs' full measures saw, from their records, e.g. '256 training images'.

        Runs written before measures recorded their split measured the test split's first
        images; they read as such.
        """
        seen = set()
        for agg in self.aggregates.values():
            for result in agg.finished:
                record = result.measures or {}
                split = record.get("split", "test")
                samples = record.get("samples", self.plan.preset.budget.samples)
                seen.add((split, samples))
        if not seen:
            return "no finished run's measures"
        words = {"train": "training images (a fixed un-augmented subset)", "test": "test images"}
        return " / ".join(f"{n} {words.get(split, split)}" for split, n in sorted(seen))

    def fields(self, setting: Setting) -> dict[str, str]:
        """The template fields of a table cell on ``setting`` (see ``study.table_spec``)."""
        agg = self.aggregate(setting)
        return {
            "ours": self.ours(setting.dataset),
            "paper_data": PAPER_DATA[setting.dataset].title,
            "batch": batch_text(setting.batch),
            "our_batch": str(agg.scaled.batch) if agg else "?",
            "measured_on": self.measured_on(),
        }

    def plot(self, draw: Callable[..., Path], name: str, *args: Any, **kwargs: Any) -> str | None:
        """Draw a PNG under ``OUT/plots``; the markdown image link, or None if plotting failed."""
        try:
            path = draw(*args, path=self.out / PLOTS_DIR / name, **kwargs)
        except ImportError as err:
            note = f"plots skipped: {err}"
            if note not in self.plot_notes:
                self.plot_notes.append(note)
            return None
        except ValueError as err:  # e.g. too few points for a panel
            self.plot_notes.append(f"{name}: not drawn ({err})")
            return None
        return f"![{name}](plots/{path.name})"


def threshold(result: RunResult) -> float | None:
    """The threshold R of adaptive β decay the run was made with (None: its config is unknown)."""
    return None if result.config is None else result.config.policy.threshold


def threshold_text(results: Iterable[RunResult]) -> str:
    """``R = 0.1`` when the runs share one threshold; otherwise it says that they do not.

    Args:
        results: the runs a sentence speaks of.

    Returns:
        ``R = 0.1``; ``R, which these runs do not share (0.1 in run-a, 0.3 in run-b)`` when the
        runs were made with different thresholds; ``R (not recorded)`` when no run's
        configuration is known.
    """
    by_run = {r.run.name: threshold(r) for r in results}
    values = set(by_run.values())
    if len(values) <= 1:
        value = next(iter(values), None)
        return "R (not recorded)" if value is None else f"R = {value:g}"
    shown = ", ".join(
        f"{'unknown' if v is None else f'{v:g}'} in {name}" for name, v in by_run.items()
    )
    return f"R, which these runs do not share ({shown})"
