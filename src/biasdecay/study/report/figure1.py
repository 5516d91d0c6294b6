"""Figure 1 (and 5-7): sharpness against test accuracy over a base run and its ablations."""

from __future__ import annotations

import math

from biasdecay.study.claims import Claim
from biasdecay.study.quantities import sci
from biasdecay.study.report.cells import acc_cell, md_table, stat_cell
from biasdecay.study.report.context import Context, Section
from biasdecay.study.results import measure_value
from biasdecay.study.settings import Setting
from biasdecay.study.stats import Correlation, correlation
from biasdecay.study.tolerances import TOLERANCES

__all__ = ["figure1"]

# Panel title, measure, key in its record.
_FIGURE_MEASURES = (
    ("Tr(H)", "hessian-trace", "value"),
    ("‖θ‖²_FR", "fisher-rao", "value"),
    ("C_m", "connectivity-m", "total"),
)


def _ablation_label(setting: Setting, base: Setting) -> str:
    if setting == base:
        return "base"
    if setting.batch != base.batch:
        return f"bs {setting.batch}"
    if setting.weight_decay != base.weight_decay:
        return f"wd {setting.weight_decay:g}"
    if setting.peak_lr != base.peak_lr:
        return f"lr {setting.peak_lr:g}"
    return f"bias decay {setting.coefficient:g}"


def _fit(xs: list[float], ys: list[float]) -> Correlation | None:
    """The correlation of log(x) with y; None with too few usable points."""
    logs = [math.log(x) if x > 0 else math.nan for x in xs]
    try:
        return correlation(logs, ys)
    except ValueError:
        return None


def _fit_row(title: str, fit: Correlation | None) -> list[str]:
    if fit is None:
        return [title, "< 3", "-", "-", "-", "-"]
    return [
        title,
        str(fit.n),
        f"{fit.r2:.3f}",
        f"{fit.kendall_tau:.3f}",
        f"{fit.spearman_rho:.3f}",
        f"{fit.slope:.4f}",
    ]


def _claims(fits: dict[str, Correlation | None]) -> list[Claim]:
    """The paper's claims on the fits: each measure falls with accuracy; FR least clearly."""
    claims = []
    for title, fit in fits.items():
        # A sign, not a difference of means: the claim is that the trend is negative at all.
        verdict = (
            "not tested" if fit is None else ("agrees" if fit.kendall_tau < 0 else "disagrees")
        )
        measured = (
            "fewer than 3 finished runs"
            if fit is None
            else f"τ = {fit.kendall_tau:.2f}, R² = {fit.r2:.2f} over {fit.n} runs"
        )
        claims.append(
            Claim(f"log {title} correlates negatively with test accuracy.", measured, verdict)
        )
    tr, fr, cm = (fits[t] for t, _, _ in _FIGURE_MEASURES)
    if tr and fr and cm:
        verdict = "agrees" if fr.r2 < min(tr.r2, cm.r2) else "disagrees"
        claims.append(
            Claim(
                "The Fisher-Rao norm relates less clearly to accuracy than Tr(H) and C_m.",
                f"R² {fr.r2:.2f} (FR) vs {tr.r2:.2f} (Tr(H)), {cm.r2:.2f} (C_m)",
                verdict,
            )
        )
        margin = TOLERANCES.r2_margin
        verdict = "agrees" if cm.r2 >= tr.r2 - margin else "disagrees"
        claims.append(
            Claim(
                f"C_m correlates with accuracy as clearly as Tr(H) (R² within {margin:g} or "
                "better).",
                f"R² {cm.r2:.2f} (C_m) vs {tr.r2:.2f} (Tr(H))",
                verdict,
            )
        )
    return claims


def figure1(ctx: Context) -> Section:
    """The runs' measures, the correlation of each with accuracy, a scatter plot, the claims."""
    from biasdecay.study.plots import ScatterPanel, sharpness_scatter

    base = ctx.plan.study.settings[0]
    s = Section(f"Sharpness vs generalisation ({ctx.plan.study.title.split(':')[0]})")
    rows, points = [], {label: ([], [], []) for label, _, _ in _FIGURE_MEASURES}
    for agg in ctx.aggregates.values():
        label = _ablation_label(agg.setting, base)
        row = [label, acc_cell(agg)]
        for title, measure, key in _FIGURE_MEASURES:
            read = measure_value(measure, key)
            row.append(stat_cell(agg, agg.stat(read), sci))
            for r in agg.finished:  # every seed is a point
                value, acc = read(r), r.accuracy
                if value is not None and acc is not None:
                    xs, ys, labels = points[title]
                    xs.append(value), ys.append(acc), labels.append(label)
        rows.append(row)
    s.blocks.append(
        f"Measured on {ctx.measured_on()}, BatchNorm in eval mode.\n\n"
        + md_table(["run", "test accuracy", "Tr(H)", "‖θ‖²_FR", "C_m"], rows)
    )
    fits = {title: _fit(*points[title][:2]) for title, _, _ in _FIGURE_MEASURES}
    panels = [ScatterPanel(t, *points[t], fits[t]) for t, _, _ in _FIGURE_MEASURES]
    s.blocks.append(
        "Correlation of log(measure) with test accuracy over the runs:\n\n"
        + md_table(
            ["measure", "points", "R²", "Kendall τ", "Spearman ρ", "slope"],
            [_fit_row(t, f) for t, f in fits.items()],
        )
    )
    image = ctx.plot(
        sharpness_scatter, f"{ctx.plan.study.name}_scatter.png", panels, title=ctx.plan.study.title
    )
    if image:
        s.blocks.append(image)
    s.claims += _claims(fits)
    return s
