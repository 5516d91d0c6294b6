"""Figures 2-4: per-layer β, γ, C_m(β), C_m(γ) over training, and β decay's effect on them."""

from __future__ import annotations

from biasdecay.study.claims import exceeds
from biasdecay.study.paper_tables import FIGURE4
from biasdecay.study.quantities import sci
from biasdecay.study.report.cells import acc_cell, md_table, stat_cell
from biasdecay.study.report.context import Context, Section
from biasdecay.study.report.tracking import CurveGrid, layer_sum_at, policy_label
from biasdecay.study.results import Aggregate, RunResult, Stat, measure_value
from biasdecay.study.settings import batch_text

__all__ = ["evolution"]

# Row of the figure -> key of a layer's tracking record.
_ROWS = {"‖β_l‖": "beta_norm", "C_m(β_l)": "c_beta", "‖γ_l‖": "gamma_norm", "C_m(γ_l)": "c_gamma"}


def _tracked(ctx: Context) -> list[tuple[Aggregate, RunResult]]:
    """Seed-0 result of every setting at the study's largest batch that has tracking records."""
    largest = max(a.setting.batch for a in ctx.aggregates.values())
    chosen = []
    for agg in ctx.aggregates.values():
        if agg.setting.batch == largest:
            done = [r for r in agg.results if r.tracking]
            if done:
                chosen.append((agg, done[0]))
    return chosen


def _end_table(tracked: list[tuple[Aggregate, RunResult]]) -> str:
    rows = [
        [
            f"{policy_label(agg)} ({batch_text(agg.setting.batch)}, ours {agg.scaled.batch})",
            acc_cell(agg),
            *(
                stat_cell(agg, agg.stat(measure_value("connectivity", "table2", r)), sci)
                for r in ("β", "γ")
            ),
        ]
        for agg, _ in tracked
    ]
    return (
        md_table(["run", "test accuracy", "C(β) at the end", "C(γ) at the end"], rows)
        + "\n\nC(β), C(γ): per-sample C of the trained network (n/a without the connectivity "
        "measure). The curves below are C_m from each tracked step's own gradients."
    )


def _plots(ctx: Context, tracked: list[tuple[Aggregate, RunResult]]) -> list[str]:
    from biasdecay.study.plots import curve_grid, paired_scatter

    grid: CurveGrid = {r: {} for r in _ROWS}
    final = {}
    for agg, result in tracked:
        column = policy_label(agg)
        for row, key in _ROWS.items():
            series: dict[str, list[tuple[float, float]]] = {}
            for record in result.tracking:
                for layer, values in record["layers"].items():
                    series.setdefault(layer, []).append((record["step"], values[key]))
            grid[row][column] = series
        final[column] = result.tracking[-1]["layers"]
    images = [
        ctx.plot(
            curve_grid,
            f"{ctx.plan.study.name}_evolution.png",
            grid,
            title=f"Per-layer β, γ and C_m over training ({ctx.ours('cifar10')})",
            log_y={"C_m(β_l)": True, "C_m(γ_l)": True},
        )
    ]
    pairs = {
        label: [(v["gamma_norm"], v["c_gamma"]) for v in layers.values()]
        for label, layers in final.items()
    }
    images.append(
        ctx.plot(
            paired_scatter,
            f"{ctx.plan.study.name}_gamma_vs_c.png",
            pairs,
            title="Figure 4: ‖γ_l‖ vs C_m(γ_l) at the last tracked step",
            x_label="‖γ_l‖",
            y_label="C_m(γ_l)",
            log=True,
        )
    )
    return [image for image in images if image]


def _change(base: Stat | None, beta: Stat | None) -> str:
    return f"{100 * (beta.mean / base.mean - 1):+.1f}%" if base and beta and base.mean else "n/a"


def _beta_decay_effect(ctx: Context, s: Section, base_agg: Aggregate, beta_agg: Aggregate) -> None:
    """Σ over layers at the last tracked step under both policies, and Section 4.1's claims."""
    totals = {
        (policy, k): agg.stat(layer_sum_at(None, k))
        for policy, agg in (("base", base_agg), ("beta", beta_agg))
        for k in _ROWS.values()
    }
    s.blocks.append(
        "Summed over layers at the last tracked step, per seed:\n\n"
        + md_table(
            ["sum over layers", "no bias decay", "β decay", "change of the means"],
            [
                [
                    name,
                    stat_cell(base_agg, totals[("base", k)], sci),
                    stat_cell(beta_agg, totals[("beta", k)], sci),
                    _change(totals[("base", k)], totals[("beta", k)]),
                ]
                for name, k in _ROWS.items()
            ],
        )
    )
    for key, what, paper_change in (
        ("c_beta", "C(β)", None),
        ("gamma_norm", "γ", FIGURE4["gamma_change"]),
        ("c_gamma", "C(γ)", FIGURE4["c_gamma_change"]),
    ):
        quoted = "" if paper_change is None else f" (paper: {100 * paper_change:+.0f}%)"
        base, beta = totals[("base", key)], totals[("beta", key)]
        s.claims.append(
            exceeds(
                f"β decay scales down {what}{quoted}.",
                base,
                beta,
                f"{_change(base, beta)} summed over layers at the last tracked step",
                ctx.seeds,
            )
        )


def evolution(ctx: Context) -> Section:
    """The tracked runs' curves per layer, the γ-C(γ) scatter, and β decay's effect."""
    s = Section("Figures 2-4: evolution of β, γ, C(β), C(γ) per layer")
    tracked = _tracked(ctx)
    if not tracked:
        s.blocks.append("No run with sharpness tracking has finished yet.")
        return s
    s.blocks.append(_end_table(tracked))
    s.blocks += _plots(ctx, tracked)
    batch = tracked[0][0].setting.batch
    base_agg = ctx.find(batch=batch, policy="no_bias_decay")
    beta_agg = ctx.find(batch=batch, policy="beta_decay")
    if base_agg is not None and beta_agg is not None:
        _beta_decay_effect(ctx, s, base_agg, beta_agg)
    return s
