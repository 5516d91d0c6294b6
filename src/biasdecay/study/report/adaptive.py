"""Adaptive β decay: the ratio r_l per layer over training and the decisions it drove.

The threshold R of each run's heat map and sentences is the one its own configuration set
(``policy.threshold``), not a default: a sweep may run with ``--set policy.threshold=...``.
"""

from __future__ import annotations

import math

from biasdecay.study.report.cells import md_table
from biasdecay.study.report.context import Context, Section, threshold, threshold_text
from biasdecay.study.results import RunResult

__all__ = ["adaptive"]

_HEADERS = [
    "run",
    "layers",
    "records",
    "(layer, step) pairs decayed",
    "decayed at the end",
    "largest r_l seen",
]

_TRUST_RATIO_NOTE = (
    ' With `optimizer.layer_adaptation = "all"` LAMB gives β the trust ratio: β '
    "starts at zero, takes one plain step at the warm-up's tiny learning rate, and "
    "then grows only by a factor (1 + η_t) per step, so with few steps β stays near "
    "zero, C(β) with it, and r_l far below R. The `adaptation` study compares the "
    "conventions."
)


def _run_row(result: RunResult, ratio: list[list[float]], decided: list[list[bool]]) -> list:
    layers, steps = len(ratio), len(result.tracking)
    finite = [v for row in ratio for v in row if math.isfinite(v)]
    share = sum(map(sum, decided)) / max(1, layers * steps)
    return [
        result.run.name,
        str(layers),
        str(steps),
        f"{100 * share:.1f}%",
        f"{100 * sum(decided[i][-1] for i in range(layers)) / layers:.0f}%",
        f"{max(finite, default=math.nan):.2e}",
    ]


def adaptive(ctx: Context) -> Section:
    """A heat map per adaptive run (seed 0), a summary row each, and the runs that never decayed."""
    from biasdecay.study.plots import decision_heatmap

    s = Section("Adaptive β decay: r_l and the decay decisions over training")
    runs = [
        (agg, r)
        for agg in ctx.aggregates.values()
        if agg.setting.policy == "adaptive_beta_decay"
        for r in agg.results[:1]
        if r.tracking
    ]
    if not runs:
        s.blocks.append("No adaptive β decay run with tracking records has finished yet.")
        return s
    rows, never = [], []
    for agg, result in runs:
        steps = [rec["step"] for rec in result.tracking]
        layers = list(result.tracking[0]["layers"])
        ratio = [[rec["layers"][layer]["r"] for rec in result.tracking] for layer in layers]
        decided = [
            [bool(rec.get("beta_decayed", {}).get(layer, False)) for rec in result.tracking]
            for layer in layers
        ]
        image = ctx.plot(
            decision_heatmap,
            f"{result.run.name}_decisions.png",
            steps,
            layers,
            ratio,
            title=f"r_l and decisions, {ctx.ours(agg.setting.dataset)}, batch {agg.scaled.batch}",
            threshold=threshold(result),
            decided=decided,
        )
        if image:
            s.blocks.append(image)
        rows.append(_run_row(result, ratio, decided))
        if not any(map(any, decided)):
            never.append((agg, result))
    s.blocks.append(md_table(_HEADERS, rows))
    shown = [result for _, result in runs]
    if len({threshold(r) for r in shown}) > 1:
        s.blocks.append(
            f"The threshold is {threshold_text(shown)}: each heat map marks its own run's R."
        )
    if never:
        text = (
            f"r_l never reached {threshold_text(r for _, r in never)} in "
            f"{len(never)} of these runs, so there adaptive β decay decayed nothing and trained "
            "exactly as no bias decay."
        )
        if any(agg.setting.layer_adaptation == "all" for agg, _ in never):
            text += _TRUST_RATIO_NOTE
        s.blocks.append(text)
    return s
