"""The report's sections by name: the names a :class:`~biasdecay.study.specs.Study` lists.

The paper's Tables 1-5 are drawn by the one generic renderer from their descriptions
(:data:`biasdecay.study.paper_tables.PAPER_TABLES`); the figures and checks whose layout is their
own (a scatter plot with fits, per-layer curves, heat maps) are small functions of their own.
"""

from __future__ import annotations

from collections.abc import Callable

from biasdecay.study.paper_tables import PAPER_TABLES
from biasdecay.study.report.adaptation import adaptation
from biasdecay.study.report.adaptive import adaptive
from biasdecay.study.report.context import Context, Section
from biasdecay.study.report.evolution import evolution
from biasdecay.study.report.figure1 import figure1
from biasdecay.study.report.measures import invariance, measures
from biasdecay.study.report.render import table_section
from biasdecay.study.report.training import training

__all__ = ["REPORT_SECTIONS"]

#: Section name -> the function that writes it from the study's runs.
REPORT_SECTIONS: dict[str, Callable[[Context], Section]] = {
    **{name: table_section(table) for name, table in PAPER_TABLES.items()},
    "figure1": figure1,
    "measures": measures,
    "invariance": invariance,
    "evolution": evolution,
    "adaptive": adaptive,
    "adaptation": adaptation,
    "training": training,
}
