"""The one renderer of the paper's tables: a :class:`~biasdecay.study.table_spec.PaperTable`
description and the runs' results in, a report section out.

The renderer knows no table: every layout, label, paper value and claim comes from the
description (:mod:`biasdecay.study.paper_tables`). It reads each cell's value over seeds, lays
the cells out block by block (ours beside the paper's), and tests the claims whose settings the
study trains.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from biasdecay.study.claims import (
    NOISE_FACTOR,
    Claim,
    compare,
    count_verdict,
    exceeds,
    verdict_text,
)
from biasdecay.study.report.cells import md_table, quantity_cell, value_text
from biasdecay.study.report.context import Context, Section
from biasdecay.study.results import Aggregate, Stat
from biasdecay.study.table_spec import Block, Exceeds, Majority, PaperTable
from biasdecay.study.tolerances import tolerance

__all__ = ["render_table", "table_section"]


class _Cells:
    """A table's cells over this study's runs: each cell's runs and value over seeds."""

    def __init__(self, table: PaperTable, ctx: Context) -> None:
        self.table, self.ctx = table, ctx
        self.runs: dict[Hashable, Aggregate | None] = {
            key: ctx.aggregate(cell.setting) for key, cell in table.cells.items()
        }
        self.stats: dict[Hashable, Stat | None] = {
            key: agg.stat(table.cells[key].quantity.read) if agg else None
            for key, agg in self.runs.items()
        }

    def trained(self, key: Hashable) -> bool:
        return self.runs[key] is not None

    def fields(self, key: Hashable, **extra: str) -> dict[str, str]:
        return {**self.ctx.fields(self.table.cells[key].setting), **extra}

    def ours(self, key: Hashable) -> str:
        return quantity_cell(self.runs[key], self.table.cells[key].quantity)

    def paper(self, key: Hashable) -> str:
        cell = self.table.cells[key]
        return cell.quantity.paper_text(cell.paper)


def _block_text(block: Block, cells: _Cells) -> str | None:
    """One markdown table of the block's shown columns; None when it shows none."""
    shown = [
        j for j in range(len(block.columns)) if any(cells.trained(r.keys[j]) for r in block.rows)
    ]
    if not shown:
        return None
    # Each column's labels take the fields of its first cell the study trains.
    first = {j: next(r.keys[j] for r in block.rows if cells.trained(r.keys[j])) for j in shown}
    labels = {j: block.columns[j].format(**cells.fields(first[j])) for j in shown}
    headers = [block.corner]
    rows: list[list[str]] = []
    if block.paper_as == "column":
        for j in shown:
            col = cells.fields(first[j], col=labels[j])
            headers += [block.ours.format(**col), block.paper.format(**col)]
        for row in block.rows:
            line = [row.label]
            for j in shown:
                line += [cells.ours(row.keys[j]), cells.paper(row.keys[j])]
            rows.append(line)
    else:
        headers += [labels[j] for j in shown]
        for row in block.rows:  # the paper's values in a line below ours
            here = cells.fields(first[shown[0]], row=row.label)
            rows.append([block.ours.format(**here)] + [cells.ours(row.keys[j]) for j in shown])
            rows.append([block.paper.format(**here)] + [cells.paper(row.keys[j]) for j in shown])
    table = md_table(headers, rows)
    if not block.caption:
        return table
    return block.caption.format(**cells.fields(first[shown[0]])) + "\n\n" + table


def _best(cells: _Cells, keys: tuple[Hashable, ...]) -> Stat | None:
    """The value of one cell, or the best (highest mean) of several that have one."""
    values = [s for k in keys if (s := cells.stats[k]) is not None]
    return max(values, key=lambda s: s.mean, default=None)


def _exceeds(claim: Exceeds, cells: _Cells) -> Claim:
    high, low = _best(cells, claim.high), _best(cells, claim.low)
    quantity = cells.table.cells[claim.high[0]].quantity
    measured = claim.measured.format(
        **cells.fields(
            claim.high[0], high=value_text(high, quantity.ours), low=value_text(low, quantity.ours)
        )
    )
    margin = 0.0 if claim.margin is None else tolerance(claim.margin)
    return exceeds(
        claim.text, high, low, measured, cells.ctx.seeds, points=quantity.points, margin=margin
    )


def _majority(claim: Majority, cells: _Cells) -> Claim | None:
    if any(cells.stats[k] is None for k in claim.requires):
        return None
    verdicts = {label: compare(cells.stats[h], cells.stats[lo]) for label, h, lo in claim.pairs}
    agreed = [label for label, v in verdicts.items() if v == "agrees"]
    disagreed = [label for label, v in verdicts.items() if v == "disagrees"]
    measured = claim.measured.format(
        agreed=len(agreed),
        agreed_labels=", ".join(agreed) or "none",
        disagreed=len(disagreed),
        disagreed_labels=", ".join(disagreed) or "none",
        n=len(claim.pairs),
        noise=f"{NOISE_FACTOR:g}",
    )
    verdict = count_verdict(len(agreed), len(disagreed), int(tolerance(claim.needed)))
    return Claim(claim.text, measured, verdict_text(verdict, cells.ctx.seeds))


def render_table(table: PaperTable, ctx: Context) -> Section:
    """The report section of one paper table.

    Args:
        table: the table's description.
        ctx: the study's runs.

    Returns:
        The section: one markdown table per block the study has runs for, the notes, and the
        claims whose settings the study trains, in the description's order.
    """
    cells = _Cells(table, ctx)
    section = Section(table.title)
    section.blocks += [text for b in table.blocks if (text := _block_text(b, cells)) is not None]
    trained = [k for k in table.cells if cells.trained(k)]
    if trained:
        section.blocks += [note.format(**cells.fields(trained[0])) for note in table.notes]
    for claim in table.claims:
        if not all(cells.trained(k) for k in claim.keys):
            continue
        tested = _exceeds(claim, cells) if isinstance(claim, Exceeds) else _majority(claim, cells)
        if tested is not None:
            section.claims.append(tested)
    return section


def table_section(table: PaperTable) -> Callable[[Context], Section]:
    """The section function of ``table``, for the report's registry of sections."""

    def section(ctx: Context) -> Section:
        return render_table(table, ctx)

    section.__doc__ = f"{table.title} (drawn from its description)."
    return section
