"""The report's table cells and markdown tables: a mean ± std over seeds, or why there is none."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from biasdecay.study.quantities import ACCURACY, Quantity, percent
from biasdecay.study.results import Aggregate, Stat

__all__ = ["acc_cell", "md_table", "quantity_cell", "stat_cell", "value_text"]


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table (first column left-aligned, the others right-aligned)."""
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def stat_cell(
    agg: Aggregate | None,
    stat: Stat | None,
    fmt: Callable[[float], str],
    *,
    per_seed: bool = False,
) -> str:
    """A mean (± std over seeds); ``-`` for a diverged setting (the paper's hyphen).

    Args:
        agg: the setting's runs (None: the study does not train it).
        stat: the value over its finished seeds.
        fmt: the format of one number.
        per_seed: append every seed's value, for the cells a verdict rests on.

    Returns:
        The cell's text: ``n/a``, ``-``, ``not run``, or the mean ± std (and seeds).
    """
    if agg is None:
        return "n/a"
    if agg.state == "diverged":
        return "-"
    if agg.state == "missing":
        return "not run"
    if stat is None:
        return "n/a"
    text = fmt(stat.mean)
    if stat.std is not None:
        text += f" ± {fmt(stat.std).lstrip('+')}"
    if per_seed and len(stat.values) > 1:  # every seed's value: the spread itself
        text += f" ({', '.join(fmt(v) for v in stat.values)})"
    if agg.diverged:
        text += f" ({agg.diverged}/{len(agg.results)} diverged)"
    return text


def quantity_cell(agg: Aggregate | None, quantity: Quantity) -> str:
    """The cell of ``quantity`` over ``agg``'s seeds, in the quantity's own format."""
    stat = agg.stat(quantity.read) if agg else None
    return stat_cell(agg, stat, quantity.ours, per_seed=quantity.per_seed)


def acc_cell(agg: Aggregate | None) -> str:
    """Test accuracy over the seeds, every seed's value listed."""
    return quantity_cell(agg, ACCURACY)


def value_text(stat: Stat | None, fmt: Callable[[float], str] = percent) -> str:
    """A mean for a claim's measured text, or ``not available``."""
    return "not available" if stat is None else fmt(stat.mean)
