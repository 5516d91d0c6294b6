"""``OUT/report.md`` for a study sweep: the paper's tables beside ours, plots, tested claims.

The report reads only final files of the runs (see ``results.py``), so it can be written at any
time, even while the sweep is running or after it was killed: unfinished runs read "not run",
diverged ones "-" as in the paper.
"""

from __future__ import annotations

from pathlib import Path

from biasdecay.study.plan import PLAN_FILE, StudyPlan, load_plan
from biasdecay.study.presets import ScaledRun, total_steps
from biasdecay.study.results import collect
from biasdecay.study.sections import PLOTS_DIR, SECTIONS, Context, md_table
from biasdecay.study.specs import PAPER_DATA, batch_text
from biasdecay.study.sweep import SweepError, check_runs
from biasdecay.train.tracking import atomic_write_text

__all__ = ["REPORT_FILE", "scale_text", "write_report"]

REPORT_FILE = "report.md"


def _augment_text(scaled: ScaledRun, dataset: str) -> str:
    """The run's augmentation beside the paper's, e.g. ``none (paper: crop + flip)``."""
    if scaled.dataset == "imagenet":
        return "ImageNet's pipeline"  # it augments as it decodes, as the paper's
    paper = "random-resized crop + flip" if dataset == "imagenet" else "crop + flip"
    ours = {"cifar": "crop + flip", "flip": "flip", None: "none"}.get(
        scaled.augment, str(scaled.augment)
    )
    return ours if ours == paper else f"{ours} (paper: {paper})"


def scale_text(plan: StudyPlan, ctx: Context) -> str:
    """What the numbers were measured at, per paper data set: a markdown table and notes."""
    preset = plan.preset
    rows = []
    for dataset in ctx.datasets():
        aggs = [a for a in ctx.aggregates.values() if a.setting.dataset == dataset]
        scaled = aggs[0].scaled
        paper = PAPER_DATA[dataset]
        steps = {a.setting.batch: total_steps(a.scaled) for a in aggs}
        batches = ", ".join(
            f"{batch_text(b)} → {s} ({steps[b]:,} steps; paper "
            f"{round(paper.epochs * paper.train_size / b):,})"
            for b, s in sorted({(a.setting.batch, a.scaled.batch) for a in aggs})
        )
        rows.append(
            [
                paper.title,
                ctx.ours(dataset),
                f"{scaled.train_size:,}",
                f"{scaled.epochs:g} (paper {paper.epochs})",
                f"{scaled.width:g}",
                _augment_text(scaled, dataset),
                batches,
            ]
        )
    text = (
        f"Preset **{preset.name}**: {preset.description}. Batch sizes keep their share of the "
        "training set (the paper's 8k is 16% of CIFAR's 50k images per step), so the number of "
        f"steps per epoch matches the paper's. Seeds per setting: {plan.seeds}"
        + (
            f" (seeds {plan.first_seed}-{plan.first_seed + plan.seeds - 1})"
            if plan.first_seed
            else ""
        )
        + (" (mean ± sample std)." if plan.seeds > 1 else " (no noise estimate).")
        + "\n\n"
        + md_table(
            [
                "paper data",
                "ours",
                "train images",
                "epochs",
                "width",
                "augmentation",
                "batch (paper → ours) and steps",
            ],
            rows,
        )
    )
    if preset.augment_note:
        text += f"\n\n{preset.augment_note}."
    if plan.skipped:
        missing = sorted({PAPER_DATA[s.dataset].title for s in plan.skipped})
        text += (
            f"\n\nNot run at this preset (no stand-in data set): {', '.join(missing)} "
            f"({len(plan.skipped)} settings). Use `--preset paper` with their data."
        )
    return text


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
        ValueError: ``out`` is not a study sweep directory, or one of its run directories was
            made by other settings than its plan (``study.json``) gives that run.
    """
    out = Path(out)
    plan = plan or load_plan(out)
    _remove_temporaries(out)
    # A run directory made by other settings than the plan's would be mislabelled: refuse it.
    try:
        check_runs([r.spec for r in plan.runs], out, require_config=False)
    except SweepError as err:
        raise ValueError(
            f"no report of {out}, whose runs do not match {PLAN_FILE}: {err}"
        ) from None
    ctx = Context(plan, out, collect(plan, out))
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
        section = SECTIONS[name](ctx)
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
    atomic_write_text(path, text)
    return path, text
