"""Readers of the runs' tracking records (``kind: sharpness``, one per tracked step).

Each record holds, per normalisation layer, ‖β_l‖, ‖γ_l‖, C_m(β_l), C_m(γ_l) and the ratio
r_l = C(β_l)/C(γ_l) of the parameters before that step's update, and the decisions of adaptive
β decay (``beta_decayed``). The readers turn them into one number per run for
:meth:`~biasdecay.study.results.Aggregate.stat`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from biasdecay.study.report.context import Context
from biasdecay.study.results import Aggregate, RunResult
from biasdecay.study.settings import batch_text

__all__ = [
    "CurveGrid",
    "beta_at_first_move",
    "beta_growth",
    "beta_growth_factor",
    "beta_moved",
    "curve_plot",
    "decayed_share",
    "first_move_steps",
    "largest_ratio",
    "layer_sum_at",
    "policy_label",
    "setting_label",
]

#: Curves for :func:`biasdecay.study.plots.curve_grid`: row -> column -> series -> (x, y).
CurveGrid = dict[str, dict[str, dict[str, list[tuple[float, float]]]]]


def curve_plot(ctx: Context, grid: CurveGrid, name: str, **options: Any) -> str | None:
    """``grid`` drawn as ``OUT/plots/STUDY_NAME.png`` once its first row has a curve.

    Args:
        ctx: the study's runs (and where plots go).
        grid: the curves.
        name: the file name's suffix, after the study's name.
        **options: :func:`biasdecay.study.plots.curve_grid`'s keyword arguments.

    Returns:
        The markdown image link; None when there is nothing to draw or drawing failed.
    """
    from biasdecay.study.plots import curve_grid  # matplotlib is optional

    if not any(next(iter(grid.values())).values()):
        return None
    return ctx.plot(curve_grid, f"{ctx.plan.study.name}_{name}.png", grid, **options)


def layer_sum_at(step: int | None, key: str) -> Callable[[RunResult], float | None]:
    """A reader of Σ_l ``key`` at the tracking record of ``step`` (None: the last record)."""

    def read(result: RunResult) -> float | None:
        records = [r for r in result.tracking if step is None or r["step"] == step]
        if not records:
            return None
        return float(sum(v[key] for v in records[-1]["layers"].values()))

    return read


def beta_moved(result: RunResult) -> tuple[int, float] | None:
    """(step, Σ‖β_l‖) of the first tracking record in which β has left zero.

    β starts at zero, and the paper's schedule starts at η_init = 0, so the first update moves
    nothing: the baseline of β's growth is the first record where Σ‖β_l‖ > 0.
    """
    for record in result.tracking:
        total = float(sum(v["beta_norm"] for v in record["layers"].values()))
        if total > 0:
            return record["step"], total
    return None


def beta_at_first_move(result: RunResult) -> float | None:
    """Σ‖β_l‖ at the first record where β has left zero."""
    moved = beta_moved(result)
    return None if moved is None else moved[1]


def beta_growth(result: RunResult) -> float | None:
    """log10 of Σ‖β_l‖ at the last record over Σ‖β_l‖ at the first record where β moved."""
    moved = beta_moved(result)
    last = layer_sum_at(None, "beta_norm")(result)
    if moved is None or last is None or last <= 0 or moved[0] == result.tracking[-1]["step"]:
        return None
    return math.log10(last / moved[1])


def beta_growth_factor(result: RunResult) -> float | None:
    """Σ‖β_l‖ at the end over its value when β first moved."""
    growth = beta_growth(result)
    return None if growth is None else 10**growth


def first_move_steps(agg: Aggregate) -> str:
    """The steps (over seeds) of the record where β first moved, e.g. ``9`` or ``9, 18``."""
    if not agg.finished:
        return "not run"
    steps = sorted({m[0] for r in agg.finished if (m := beta_moved(r)) is not None})
    return ", ".join(map(str, steps)) or "never"


def decayed_share(result: RunResult) -> float | None:
    """Share of (layer, step) pairs in which adaptive β decay decayed β."""
    decisions = [v for r in result.tracking for v in (r.get("beta_decayed") or {}).values()]
    return sum(map(bool, decisions)) / len(decisions) if decisions else None


def largest_ratio(result: RunResult) -> float | None:
    """The largest finite r_l over layers and records."""
    finite = [
        v["r"] for r in result.tracking for v in r["layers"].values() if math.isfinite(v["r"])
    ]
    return max(finite, default=None)


def policy_label(agg: Aggregate) -> str:
    """The policy, and the layer adaptation when it is not the default."""
    label = agg.setting.policy_text
    if agg.setting.layer_adaptation != "decayed":
        label += f", trust ratio: {agg.setting.layer_adaptation}"
    return label


def setting_label(agg: Aggregate) -> str:
    """A setting as a column or row label: batch (ours), policy, and a non-default convention."""
    return f"{batch_text(agg.setting.batch)} (ours {agg.scaled.batch}), {policy_label(agg)}"
