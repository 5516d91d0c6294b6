"""A study at a preset, with seeds: the concrete runs a sweep trains and a report reads.

The plan is written to ``OUT/study.json`` when a sweep starts, so ``biasdecay report OUT`` knows
what was asked for (study, preset, seeds, extra overrides) without being told again, and a
second sweep into the same directory cannot silently mix presets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from biasdecay.atomic import write_text
from biasdecay.study.presets import Preset, ScaledRun, get_preset, total_steps
from biasdecay.study.specs import Setting, Study, get_study
from biasdecay.study.sweep import RunSpec, SweepError
from biasdecay.train.config import check_override

__all__ = ["PlannedRun", "StudyPlan", "check_plan", "load_plan", "make_plan", "save_plan"]

PLAN_FILE = "study.json"


@dataclass(frozen=True)
class PlannedRun:
    """One run of a plan: the paper's setting, its scaled form, the seed and the sweep's spec."""

    setting: Setting
    scaled: ScaledRun
    seed: int
    spec: RunSpec

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class StudyPlan:
    """Everything a sweep runs and a report reads for one study at one preset."""

    study: Study
    preset: Preset
    seeds: int
    data_roots: dict[str, str] = field(default_factory=dict)
    extra: tuple[str, ...] = ()
    runs: tuple[PlannedRun, ...] = ()
    skipped: tuple[Setting, ...] = ()  # settings whose data set has no stand-in at this preset
    first_seed: int = 0  # seeds are first_seed .. first_seed + seeds - 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study.name,
            "preset": self.preset.name,
            "seeds": self.seeds,
            "first_seed": self.first_seed,
            "data_roots": self.data_roots,
            "extra": list(self.extra),
        }


def _overrides(
    setting: Setting,
    scaled: ScaledRun,
    preset: Preset,
    study: Study,
    seed: int,
    data_root: str | None,
) -> list[str]:
    """``section.key=value`` items that turn the built-in defaults into this run."""
    full = scaled.train_size == preset.full_size.get(scaled.dataset)
    items = [
        f"model.name={setting.model}",
        f"model.width={scaled.width}",
        "model.ghost_batch_size=32",
        f"data.name={scaled.dataset}",
        f"data.root={json.dumps(data_root) if data_root else 'none'}",
        f"data.augment={scaled.augment or 'none'}",
        f"data.train_samples={'none' if full else scaled.train_size}",
        f"optimizer.name={setting.optimizer}",
        f"optimizer.lr={setting.peak_lr!r}",
        f"optimizer.weight_decay={setting.weight_decay!r}",
        f"optimizer.layer_adaptation={setting.layer_adaptation}",
        f"policy.name={setting.policy}",
        f"schedule.name={setting.schedule}",
        f"run.epochs={scaled.epochs!r}",
        f"run.batch_size={scaled.batch}",
        f"run.micro_batch_size={scaled.micro_batch if scaled.micro_batch else 'none'}",
        f"run.seed={seed}",
    ]
    if setting.coefficient is not None:
        items.append(f"policy.{setting.coefficient_field}={setting.coefficient!r}")
    if setting.schedule == "cosine":
        items.append(f"schedule.warmup_epochs={scaled.warmup_epochs!r}")
    steps = total_steps(scaled)
    items.append(f"run.log_every={max(1, steps // 50)}")
    items.append(f"run.eval_every={max(1, int(scaled.epochs // preset.budget.eval_points))}")
    if study.track:
        items.append(f"run.track_every={max(1, steps // preset.budget.track_records)}")
    if study.measures:
        items += [
            f"run.measures={json.dumps(list(study.measures))}",
            f"run.measure_epochs=[{math.ceil(scaled.epochs)}]",
            f"run.measure_samples={preset.budget.samples}",
            f"run.measure_matvecs={preset.budget.matvecs}",
            f"run.measure_lanczos_iters={preset.budget.lanczos_iters}",
        ]
    return items


def make_plan(
    study: str | Study,
    preset: str | Preset,
    *,
    seeds: int = 1,
    first_seed: int = 0,
    data_roots: Mapping[str, str] | None = None,
    extra: Sequence[str] = (),
) -> StudyPlan:
    """The runs of ``study`` at ``preset``, each repeated over ``seeds`` seeds.

    Args:
        study: a study name or object.
        preset: a preset name or object.
        seeds: runs per setting (seeds ``first_seed`` .. ``first_seed + seeds - 1``); reports
            show mean ± std.
        first_seed: the first seed (another value replicates a study on fresh seeds).
        data_roots: data set name -> directory, for data sets without a default location.
        extra: ``section.key=value`` overrides applied to every run after the plan's own
            (e.g. ``run.compile=true``).

    Returns:
        The plan.

    Raises:
        RegistryError: an unknown study or preset (the message lists the valid names).
        SweepError: ``seeds < 1`` or ``first_seed < 0``.
        ConfigError: an ``extra`` override that is malformed, unknown or out of range.
    """
    study = get_study(study) if isinstance(study, str) else study
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if seeds < 1:
        raise SweepError(f"seeds must be >= 1 (runs per setting), got {seeds}")
    if first_seed < 0:
        raise SweepError(f"the first seed must be >= 0, got {first_seed}")
    data_roots = dict(data_roots or {})
    epochs = _extra_epochs(extra)
    runs, skipped = [], []
    for setting in study.settings:
        scaled = preset.scale(setting)
        if scaled is None:
            skipped.append(setting)
            continue
        if epochs is not None:  # measures, logging and tracking follow the new length
            scaled = replace(
                scaled, epochs=epochs, warmup_epochs=scaled.warmup_epochs * epochs / scaled.epochs
            )
        for seed in range(first_seed, first_seed + seeds):
            overrides = _overrides(
                setting, scaled, preset, study, seed, data_roots.get(scaled.dataset)
            )
            labels = {
                "setting": asdict(setting),
                "seed": seed,
                "scaled": asdict(scaled),
            }
            spec = RunSpec(f"{setting.key}-s{seed}", (*overrides, *extra), labels)
            runs.append(PlannedRun(setting, scaled, seed, spec))
    return StudyPlan(
        study, preset, seeds, data_roots, tuple(extra), tuple(runs), tuple(skipped), first_seed
    )


def _extra_epochs(extra: Sequence[str]) -> float | None:
    """The epochs an extra ``run.epochs=N`` override sets (the last one wins), else None.

    Every override is checked here, as ``biasdecay train`` checks it, so a bad one is refused
    before a plan is made of it.

    Raises:
        ConfigError: a malformed, unknown or out-of-range override.
    """
    epochs = None
    for item in extra:
        key, value = check_override(item)
        if key == "run.epochs":
            epochs = value
    return epochs


def check_plan(plan: StudyPlan, out: str | Path) -> None:
    """Refuse, writing nothing, when ``OUT`` already holds another study, preset or first seed.

    Args:
        plan: the plan about to be swept.
        out: the sweep directory.

    Raises:
        SweepError: ``OUT`` holds a sweep of another study, preset or first seed, or an
            unreadable ``study.json``.
    """
    out = Path(out)
    if (out / PLAN_FILE).is_file():
        old = _read_plan_file(out)
        for key in ("study", "preset", "first_seed"):
            if old.get(key, 0 if key == "first_seed" else None) != plan.to_dict()[key]:
                raise SweepError(
                    f"{out} holds a sweep of {key} {old.get(key)!r}, not "
                    f"{plan.to_dict()[key]!r}: one directory holds one study; choose another "
                    "--out"
                )


def save_plan(plan: StudyPlan, out: str | Path) -> None:
    """Write ``OUT/study.json`` (after :func:`check_plan`).

    Raises:
        SweepError: ``OUT`` holds a sweep of another study, preset or first seed.
        FileWriteError: ``study.json`` could not be written.
    """
    check_plan(plan, out)
    write_text(Path(out) / PLAN_FILE, json.dumps(plan.to_dict(), indent=2) + "\n")


def _read_plan_file(out: str | Path) -> dict[str, Any]:
    """The contents of ``OUT/study.json``, checked to be a plan.

    Raises:
        SweepError: ``out`` is not a study sweep directory (no ``study.json``, or ``out`` is not a
            directory), or its ``study.json`` cannot be read or is not a plan.
    """
    path = Path(out) / PLAN_FILE
    rewrite = "delete it and run the same sweep again, which rewrites it"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise SweepError(
            f"{out} is not a study sweep directory: {PLAN_FILE} is missing. Run "
            f"`biasdecay sweep STUDY --preset P --out {out}` first"
        ) from None
    except OSError as err:
        raise SweepError(f"{path} cannot be read ({err.strerror or err})") from None
    except ValueError as err:  # not JSON, or not UTF-8
        raise SweepError(f"{path} is not valid JSON ({err}); {rewrite}") from None
    if not isinstance(data, dict) or not {"study", "preset"} <= set(data):
        raise SweepError(f"{path} is not a study plan (no study and preset); {rewrite}")
    return data


def load_plan(out: str | Path) -> StudyPlan:
    """The plan of the sweep in ``OUT`` (from ``OUT/study.json``).

    Args:
        out: the sweep directory.

    Returns:
        The plan, as :func:`make_plan` makes it from what ``study.json`` recorded.

    Raises:
        SweepError: no ``study.json`` (not a study sweep directory), or an unreadable one.
        RegistryError: ``study.json`` names a study or preset that does not exist.
    """
    data = _read_plan_file(out)
    try:
        seeds, first_seed = int(data.get("seeds", 1)), int(data.get("first_seed", 0))
    except (TypeError, ValueError):
        raise SweepError(
            f"{Path(out) / PLAN_FILE}: seeds and first_seed must be whole numbers, got "
            f"{data.get('seeds')!r} and {data.get('first_seed')!r}"
        ) from None
    return make_plan(
        data["study"],
        data["preset"],
        seeds=seeds,
        first_seed=first_seed,
        data_roots=data.get("data_roots") or {},
        extra=tuple(data.get("extra") or ()),
    )
