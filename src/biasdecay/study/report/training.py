"""Every run's training curves, and whether it ended on a plateau (every study ends with it)."""

from __future__ import annotations

from biasdecay.study.quantities import percent
from biasdecay.study.report.cells import acc_cell, md_table, stat_cell
from biasdecay.study.report.context import Context, Section
from biasdecay.study.report.tracking import CurveGrid, curve_plot, setting_label
from biasdecay.study.results import Aggregate, final_train_accuracy, plateau_change
from biasdecay.study.tolerances import TOLERANCES

__all__ = ["training"]

_HEADERS = [
    "setting",
    "steps",
    "train accuracy (end)",
    "change over the last 20% (points)",
    "runs on a plateau",
    "test accuracy",
]


def _curves(agg: Aggregate, grid: CurveGrid) -> None:
    """Add the setting's loss and train-accuracy curves, one series per seed, to ``grid``."""
    label = setting_label(agg)
    for row, key in (("training loss", "loss"), ("train accuracy", "accuracy")):
        # x is the share of the run's steps, so that batch sizes of very different step
        # counts share one axis.
        grid[row][label] = {
            f"seed {r.run.seed}": [
                (rec["step"] / r.train[-1]["step"], rec[key]) for rec in r.train if key in rec
            ]
            for r in agg.results
            if r.train
        }


def training(ctx: Context) -> Section:
    """Every run's training curves, and whether it ended on a plateau."""
    s = Section("Training: loss curves and plateaus")
    grid: CurveGrid = {"training loss": {}, "train accuracy": {}}
    rows, on_plateau, counted = [], 0, 0
    for agg in ctx.aggregates.values():
        _curves(agg, grid)
        changes = [c for r in agg.finished if (c := plateau_change(r)) is not None]
        flat = sum(abs(c) < TOLERANCES.plateau for c in changes)
        on_plateau, counted = on_plateau + flat, counted + len(changes)
        steps = agg.finished[0].summary.get("steps") if agg.finished else None
        rows.append(
            [
                setting_label(agg),
                "n/a" if steps is None else str(steps),
                stat_cell(agg, agg.stat(final_train_accuracy), percent),
                stat_cell(agg, agg.stat(plateau_change), lambda v: f"{100 * v:+.2f}"),
                f"{flat}/{len(changes)}" if changes else "n/a",
                acc_cell(agg),
            ]
        )
    s.blocks.append(
        "Train accuracy is measured on the training mini-batches as the run saw them (augmented "
        "when its augmentation in the scale table is not none), in train mode, averaged over "
        "the last tenth of the steps. A run is on a plateau when its train accuracy moved by less "
        f"than {100 * TOLERANCES.plateau:g} point over the last 20% of training (the mean over "
        f"the last tenth of the steps minus the mean over the tenth that ends at 80%). "
        f"{on_plateau} of {counted} finished runs end on a plateau.\n\n" + md_table(_HEADERS, rows)
    )
    image = curve_plot(
        ctx,
        grid,
        "training",
        title=f"Training loss and accuracy per run ({ctx.plan.preset.name} preset)",
        x_label="share of training (step / steps)",
        log_y={"training loss": True},
        legend_title="seed",
    )
    if image:
        s.blocks.append(image)
    return s
