"""Every measure of every trained network, and the invariance check of C against Tr(H)."""

from __future__ import annotations

import math

from biasdecay.study.claims import Claim
from biasdecay.study.quantities import sci
from biasdecay.study.report.cells import acc_cell, md_table, stat_cell
from biasdecay.study.report.context import Context, Section
from biasdecay.study.results import measure_value
from biasdecay.study.settings import batch_text
from biasdecay.study.tolerances import TOLERANCES

__all__ = ["invariance", "measures"]

# Column, measure, key in its record.
_MEASURE_COLUMNS = (
    ("C", "connectivity", "total"),
    ("C_m", "connectivity-m", "total"),
    ("Tr(H)", "hessian-trace", "value"),
    ("λmax(H)", "hessian-max", "value"),
    ("‖θ‖²_FR", "fisher-rao", "value"),
)


def measures(ctx: Context) -> Section:
    """One row per setting: its accuracy, every measure and the time C and Tr(H) took."""
    s = Section("Every measure of every trained network")
    rows = []
    for agg in ctx.aggregates.values():
        row = [
            f"{batch_text(agg.setting.batch)} (ours {agg.scaled.batch}), {agg.setting.policy_text}"
        ]
        row.append(acc_cell(agg))
        row += [stat_cell(agg, agg.stat(measure_value(m, k)), sci) for _, m, k in _MEASURE_COLUMNS]
        c_time = agg.stat(measure_value("connectivity", "seconds"))
        trace_time = agg.stat(measure_value("hessian-trace", "seconds"))
        row.append(
            f"{c_time.mean:.1f} s / {trace_time.mean:.1f} s" if c_time and trace_time else "n/a"
        )
        rows.append(row)
    headers = ["run", "test accuracy"] + [c for c, _, _ in _MEASURE_COLUMNS] + ["time C / Tr(H)"]
    s.blocks.append(
        f"On {ctx.measured_on()}, BatchNorm in eval mode; Tr(H) by "
        f"Hutch++ with {ctx.plan.preset.budget.matvecs} matvecs, λmax by Lanczos "
        f"({ctx.plan.preset.budget.lanczos_iters} iterations).\n\n" + md_table(headers, rows)
    )
    return s


_INVARIANCE_HEADERS = [
    "run",
    "rescaled unit",
    "max Δ output",
    "C",
    "C rescaled",
    "ΔC/C",
    "Tr(H)",
    "Tr(H) rescaled",
    "ΔTr/Tr",
]


def _invariance_row(name: str, inv: dict) -> list[str]:
    return [
        name,
        f"{inv['incoming']}[{inv['unit']}] x {inv['factor']:g}",
        f"{inv['output_max_abs_change']:.1e}",
        sci(inv["original"]["connectivity"]),
        sci(inv["rescaled"]["connectivity"]),
        f"{inv['connectivity_relative_change']:.1e}",
        sci(inv["original"]["hessian_trace"]["value"]),
        sci(inv["rescaled"]["hessian_trace"]["value"]),
        f"{inv['hessian_trace_relative_change']:.1e}",
    ]


def invariance(ctx: Context) -> Section:
    """C and Tr(H) before and after a function-preserving rescaling, and whether each moved."""
    s = Section("Invariance: C vs Tr(H) under a function-preserving neuron rescaling (eq. 9)")
    rows, worst_c, least_h = [], 0.0, math.inf
    for agg in ctx.aggregates.values():
        for r in agg.finished:
            inv = (r.measures or {}).get("invariance")
            if not inv:
                continue
            worst_c = max(worst_c, inv["connectivity_relative_change"])
            least_h = min(least_h, inv["hessian_trace_relative_change"])
            rows.append(_invariance_row(r.run.name, inv))
    if not rows:
        s.blocks.append("No finished run has the invariance measure yet.")
        return s
    s.blocks.append(f"On {ctx.measured_on()}.\n\n" + md_table(_INVARIANCE_HEADERS, rows))
    s.claims.append(
        Claim(
            "C is invariant under the rescaling ρ (Theorem 3.1).",
            f"largest relative change of C {worst_c:.1e} over {len(rows)} networks",
            "agrees" if worst_c < TOLERANCES.invariant else "disagrees",
        )
    )
    s.claims.append(
        Claim(
            "Hessian-based sharpness is not invariant under ρ (Dinh et al., 2017).",
            f"smallest relative change of Tr(H) {least_h:.1e} over {len(rows)} networks",
            "agrees" if least_h > TOLERANCES.not_invariant else "disagrees",
        )
    )
    return s
