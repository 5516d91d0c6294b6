"""Layer adaptation: which convention of LAMB's trust ratio lets β grow from zero (Figure 2)."""

from __future__ import annotations

from biasdecay.study.claims import NOISE_FACTOR, Claim, compare_to, verdict_text
from biasdecay.study.quantities import sci
from biasdecay.study.report.cells import acc_cell, md_table, stat_cell
from biasdecay.study.report.context import Context, Section
from biasdecay.study.report.tracking import (
    CurveGrid,
    beta_at_first_move,
    beta_growth,
    beta_growth_factor,
    curve_plot,
    decayed_share,
    first_move_steps,
    largest_ratio,
    layer_sum_at,
)
from biasdecay.study.results import Aggregate, Stat, measure_value
from biasdecay.study.tolerances import TOLERANCES

__all__ = ["adaptation"]

_HEADERS = [
    "layer adaptation: policy",
    "test accuracy",
    "Σ‖β_l‖ when β first moved",
    "at step",
    "Σ‖β_l‖ at the end",
    "growth",
    "C(β)",
    "largest r_l",
    "(layer, step) pairs decayed",
]
_INTRO = (
    "`optimizer.layer_adaptation`: `decayed` gives LAMB's trust ratio exactly to the "
    "parameters decayed at that step (the LAMB authors' ResNet code, apex FusedLAMB); `all` "
    "to every parameter (optax, torch-optimizer). Σ‖β_l‖ from the tracking records (each holds "
    "the parameters before its step's update): at the first record where β has left zero "
    "(the schedule starts at η = 0, so the first update moves nothing), and at the last "
    "record; growth is their ratio. C(β): per-sample C of the trained network on "
)


def _row(agg: Aggregate) -> list[str]:
    share = (
        stat_cell(agg, agg.stat(decayed_share), lambda v: f"{100 * v:.1f}%")
        if agg.setting.policy == "adaptive_beta_decay"
        else ""
    )
    return [
        f"{agg.setting.layer_adaptation}: {agg.setting.policy_text}",
        acc_cell(agg),
        stat_cell(agg, agg.stat(beta_at_first_move), sci),
        first_move_steps(agg),
        stat_cell(agg, agg.stat(layer_sum_at(None, "beta_norm")), sci),
        stat_cell(agg, agg.stat(beta_growth_factor), sci),
        stat_cell(agg, agg.stat(measure_value("connectivity", "table2", "β")), sci),
        stat_cell(agg, agg.stat(largest_ratio), sci),
        share,
    ]


def _growth_claims(s: Section, growth: dict[str, Stat | None], seeds: int) -> None:
    """Whether β grows from zero under no bias decay, per convention, and which reproduces it."""
    needed = TOLERANCES.beta_growth_log10
    reproduces = []
    for mode, stat in growth.items():
        verdict = compare_to(stat, needed)
        if verdict == "agrees":
            reproduces.append(mode)
        shown = "not available" if stat is None else f"{10**stat.mean:.3g}x (geometric mean)"
        s.claims.append(
            Claim(
                f"Under no bias decay β grows from zero (Figure 2), with layer_adaptation "
                f"{mode!r}: Σ‖β_l‖ ends at least {10**needed:g}x its value at the "
                "first record where it has moved.",
                f"growth {shown}",
                verdict_text(verdict, seeds),
            )
        )
    if growth:
        s.blocks.append(
            "Figure 2 (β growing from zero under no bias decay) is reproduced by: "
            + (", ".join(f"`{m}`" for m in reproduces) or "neither convention")
            + f" (growth beyond {NOISE_FACTOR:g} standard errors over seeds)."
        )


def adaptation(ctx: Context) -> Section:
    """Which layer-adaptation convention lets β grow from zero, as the paper's Figure 2 shows."""
    s = Section("Layer adaptation: does β grow from zero as in Figure 2?")
    grid: CurveGrid = {"Σ_l ‖β_l‖": {}, "Σ_l C_m(β_l)": {}}
    growth: dict[str, Stat | None] = {}
    for agg in ctx.aggregates.values():
        mode = agg.setting.layer_adaptation
        if agg.setting.policy == "no_bias_decay":
            growth[mode] = agg.stat(beta_growth)
        first = next((r for r in agg.results if r.tracking), None)
        if first is not None:
            for row, key in (("Σ_l ‖β_l‖", "beta_norm"), ("Σ_l C_m(β_l)", "c_beta")):
                grid[row].setdefault(f"trust ratio: {mode}", {})[agg.setting.policy_text] = [
                    (r["step"], sum(v[key] for v in r["layers"].values())) for r in first.tracking
                ]
    rows = [_row(agg) for agg in ctx.aggregates.values()]
    s.blocks.append(f"{_INTRO}{ctx.measured_on()}.\n\n" + md_table(_HEADERS, rows))
    image = curve_plot(
        ctx,
        grid,
        "beta",
        title=f"Σ_l ‖β_l‖ and Σ_l C_m(β_l) over training, seed 0 ({ctx.ours('cifar10')})",
        log_y={"Σ_l ‖β_l‖": True, "Σ_l C_m(β_l)": True},
        legend_title="policy",
    )
    if image:
        s.blocks.append(image)
    _growth_claims(s, growth, ctx.seeds)
    return s
