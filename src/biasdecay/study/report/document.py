"""``OUT/report.md`` for a study sweep: the paper's tables beside ours, plots, tested claims.

The report reads only final files of the runs (see ``results.py``), so it can be written at any
time, even while the sweep is running or after it was killed: unfinished runs read "not run",
diverged ones "-" as in the paper.
"""

from __future__ import annotations

from pathlib import Path

from biasdecay.atomic import write_text
from biasdecay.study.plan import PLAN_FILE, StudyPlan, load_plan
from biasdecay.study.report.context import PLOTS_DIR, Context
from biasdecay.study.report.scale import scale_text
from biasdecay.study.report.sections import REPORT_SECTIONS
from biasdecay.study.results import collect
from biasdecay.study.sweep import SweepError, check_runs

__all__ = ["REPORT_FILE", "write_report"]

REPORT_FILE = "report.md"


def _status_line(ctx: Context) -> str:
    counts: dict[str, int] = {}
    for agg in ctx.aggregates.values():
        for r in agg.results:
            counts[r.state] = counts.get(r.state, 0) + 1
    total = sum(counts.values())
    parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return f"Runs: {total} ({parts})."


def _remove_temporaries(out: Path) -> None:
    """Half-written figures and reports of an earlier, killed report: they are redrawn now."""
    for stale in [*(out / PLOTS_DIR).glob(".*.tmp"), *out.glob(f".{REPORT_FILE}.*.tmp")]:
        stale.unlink(missing_ok=True)


def write_report(out: str | Path, plan: StudyPlan | None = None) -> tuple[Path, str]:
    """Write ``OUT/report.md`` (and ``OUT/plots/*.png``) for the study sweep in ``out``.

    Args:
        out: the sweep directory (holding ``study.json`` and one directory per run).
        plan: the plan (default: read from ``OUT/study.json``).

    Returns:
        The report's path and its markdown text.

    Raises:
        SweepError: ``out`` is not a study sweep directory, or one of its run directories was
            made by other settings than its plan (``study.json``) gives that run; the message
            names the directories and how to fix them.
        FileWriteError: the report or a plot could not be written.
    """
    out = Path(out)
    plan = plan or load_plan(out)
    _remove_temporaries(out)
    # A run directory made by other settings than the plan's would be mislabelled: refuse it.
    # What passes is each run's configuration, which the sections read the runs' settings from.
    try:
        configs = check_runs([r.spec for r in plan.runs], out, require_config=False)
    except SweepError as err:
        raise SweepError(
            f"no report of {out}, whose runs do not match {PLAN_FILE}: {err}"
        ) from None
    ctx = Context(plan, out, collect(plan, out, configs))
    lines = [
        f"# {plan.study.title}",
        "",
        f"Study `{plan.study.name}`, written by `biasdecay report {out}`. Our numbers are "
        "labelled *ours*, the paper's *paper*; a hyphen is a run that diverged, as in the paper.",
        "",
        scale_text(plan, ctx),
        "",
        _status_line(ctx),
    ]
    claims = []
    # Every study ends with its runs' training curves, so a reader can see they were trained.
    for name in (*plan.study.sections, "training"):
        section = REPORT_SECTIONS[name](ctx)
        lines += ["", f"## {section.title}", ""]
        for block in section.blocks:
            lines += [block, ""]
        if section.claims:
            lines += ["Claims tested:", ""] + [c.markdown() for c in section.claims]
        claims += section.claims
    if claims:
        counts: dict[str, int] = {}
        for c in claims:
            key = c.verdict.split(" (")[0]
            counts[key] = counts.get(key, 0) + 1
        summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
        lines += ["", "## Claims: summary", "", f"{len(claims)} claims tested: {summary}."]
    if ctx.plot_notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in ctx.plot_notes]
    text = "\n".join(lines).rstrip() + "\n"
    path = out / REPORT_FILE
    write_text(path, text)
    return path, text
