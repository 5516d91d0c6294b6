"""The vocabulary a paper table is described in: cells, their layout, and the claims on them.

A :class:`PaperTable` holds, once, everything about one of the paper's tables: the cells (each
a setting, the quantity read from its runs and the paper's value), how the cells are laid out
in one or more markdown tables, and the claims the paper makes about them. The studies train
:attr:`PaperTable.settings`; the report's generic renderer
(:mod:`biasdecay.study.report.render`) draws every table from its description.

Labels and texts are ``str.format`` templates. Their fields come from the cell they describe
(for a column: its first cell the study trains; for a block or a claim: the first such cell of
the block, or the claim's first ``high`` cell):

- ``{ours}``: our data set standing in for the paper's, with the preset (``Fashion-MNIST (cpu)``);
- ``{paper_data}``: the paper's data set (``CIFAR-10``);
- ``{batch}``: the paper's batch (``8k``); ``{our_batch}``: the batch it runs at here;
- ``{measured_on}``: what the runs' measures saw (``64 training images ...``);
- ``{col}``: in a block's ``ours`` / ``paper`` template, the column's own label.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Literal

from biasdecay.study.quantities import Quantity
from biasdecay.study.settings import Setting
from biasdecay.study.tolerances import tolerance

__all__ = ["Block", "Cell", "Exceeds", "Majority", "PaperTable", "Row"]


@dataclass(frozen=True)
class Cell:
    """One number of a paper table: the setting it is measured on, what is read, the paper's.

    Attributes:
        setting: the training setting whose runs give our value.
        quantity: what is read from those runs and how it prints.
        paper: the paper's value as printed (percent for accuracies); None is its "-".
    """

    setting: Setting
    quantity: Quantity
    paper: float | None


@dataclass(frozen=True)
class Row:
    """A row of a block: its label and the key of the cell in each column."""

    label: str
    keys: tuple[Hashable, ...]


@dataclass(frozen=True)
class Block:
    """One markdown table of a paper table: rows x columns of cells, ours beside the paper's.

    Attributes:
        columns: the column labels (templates).
        rows: the rows, each with one cell key per column.
        corner: the header of the label column.
        ours, paper: templates of our and the paper's header (``paper_as="column"``: two
            columns per column of cells) or row label (``paper_as="row"``: two lines per row).
        caption: text above the table (a template), if any.
        paper_as: ``column`` sets the paper's value in a column beside ours (Tables 1-3);
            ``row`` in a line below ours (Tables 4, 5).

    A column is shown when the study trains one of its cells' settings, and the block when it
    shows any column.
    """

    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    corner: str = ""
    ours: str = "{col}: ours"
    paper: str = "{col}: paper"
    caption: str = ""
    paper_as: Literal["column", "row"] = "column"

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row.keys) != len(self.columns):
                raise ValueError(
                    f"row {row.label!r} has {len(row.keys)} cells for {len(self.columns)} columns"
                )
        if self.paper_as not in ("column", "row"):
            raise ValueError(f"paper_as must be 'column' or 'row', got {self.paper_as!r}")


@dataclass(frozen=True)
class Exceeds:
    """The paper's claim that the value of the ``high`` cells exceeds that of the ``low`` ones.

    Several keys on a side stand for the best (highest mean) of them. The verdict is
    :func:`biasdecay.study.claims.compare`'s: beyond the ``noise_factor`` tolerance.

    Attributes:
        text: the claim as the report states it.
        high, low: cell keys.
        measured: what was measured (a template; ``{high}``, ``{low}`` are the two values).
        margin: the name of a tolerance added to the ``high`` side before comparing (e.g.
            ``"nearly_restores"``: within half a point or above); None for none.
    """

    text: str
    high: tuple[Hashable, ...]
    low: tuple[Hashable, ...]
    measured: str = "{high} vs {low}"
    margin: str | None = None

    def __post_init__(self) -> None:
        if not self.high or not self.low:
            raise ValueError(f"claim {self.text!r} needs cells on both sides")
        if self.margin is not None:
            tolerance(self.margin)  # an unknown name fails here, not in a report

    @property
    def keys(self) -> tuple[Hashable, ...]:
        """Every cell the claim reads."""
        return (*self.high, *self.low)


@dataclass(frozen=True)
class Majority:
    """The paper's claim that ``high`` exceeds ``low`` in most of several pairs of cells.

    It agrees when at least the ``needed`` tolerance's number of pairs are higher beyond the
    noise, disagrees when as many are lower, and is inconclusive otherwise. It is tested only
    when every cell of ``requires`` has a value.

    Attributes:
        text: the claim as the report states it.
        pairs: ``(label, high key, low key)`` for each pair.
        measured: a template with ``{agreed}``, ``{agreed_labels}``, ``{disagreed}``,
            ``{disagreed_labels}``, ``{n}`` (pairs) and ``{noise}`` (the noise factor).
        needed: the name of the tolerance giving the number of pairs needed.
        requires: cells that must have a value for the claim to be tested.
    """

    text: str
    pairs: tuple[tuple[str, Hashable, Hashable], ...]
    measured: str
    needed: str
    requires: tuple[Hashable, ...] = ()

    def __post_init__(self) -> None:
        tolerance(self.needed)

    @property
    def keys(self) -> tuple[Hashable, ...]:
        """Every cell the claim reads."""
        return (*(k for _, h, lo in self.pairs for k in (h, lo)), *self.requires)


Claimed = Exceeds | Majority


@dataclass(frozen=True)
class PaperTable:
    """One of the paper's tables, described once.

    Attributes:
        title: the report section's title.
        cells: key -> cell; their order is the order the study trains the settings in.
        blocks: the markdown tables the cells are laid out in.
        claims: the paper's claims on the cells, in the order the report tests them. A claim is
            tested only when the study trains every setting it reads.
        notes: paragraphs after the blocks (templates; the fields of the first trained cell).
    """

    title: str
    cells: Mapping[Hashable, Cell]
    blocks: tuple[Block, ...]
    claims: tuple[Claimed, ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        used = [k for b in self.blocks for r in b.rows for k in r.keys]
        used += [k for c in self.claims for k in c.keys]
        unknown = [k for k in used if k not in self.cells]
        if unknown:
            raise ValueError(f"{self.title}: unknown cell keys {unknown[:5]}")

    @property
    def settings(self) -> tuple[Setting, ...]:
        """Every setting the table reads, once each, in cell order."""
        return tuple(dict.fromkeys(cell.setting for cell in self.cells.values()))
