"""The study report: ``OUT/report.md`` with the paper's tables beside ours, plots and claims.

:func:`write_report` writes it; :data:`REPORT_SECTIONS` names the sections a study can list.
The paper's tables are drawn by :mod:`~biasdecay.study.report.render` from their descriptions in
:mod:`biasdecay.study.paper_tables`; the figures' own layouts live in one module each.
"""

from biasdecay.study.report.context import PLOTS_DIR, Context, Section
from biasdecay.study.report.document import REPORT_FILE, write_report
from biasdecay.study.report.scale import scale_text
from biasdecay.study.report.sections import REPORT_SECTIONS

__all__ = [
    "PLOTS_DIR",
    "REPORT_FILE",
    "REPORT_SECTIONS",
    "Context",
    "Section",
    "scale_text",
    "write_report",
]
