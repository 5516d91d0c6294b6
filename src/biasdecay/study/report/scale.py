"""What a report's numbers were measured at: data, training images, epochs, width, batches."""

from __future__ import annotations

from biasdecay.study.plan import StudyPlan
from biasdecay.study.presets import ScaledRun, total_steps
from biasdecay.study.report.cells import md_table
from biasdecay.study.report.context import Context
from biasdecay.study.settings import PAPER_DATA, batch_text

__all__ = ["scale_text"]


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
