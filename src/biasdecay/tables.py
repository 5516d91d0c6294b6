"""Plain-text tables with aligned columns, for terminal output and training logs."""

from __future__ import annotations

import math
from collections.abc import Sequence


def format_number(value: object, digits: int = 3) -> str:
    """Scientific notation like the paper's Table 2 (``3.34e-01``); text passes through."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    if isinstance(value, int):  # counts stay counts
        return f"{value:,}"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits - 1}e}"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 3) -> str:
    """A left/right aligned text table: first column left, numbers right."""
    cells = [[str(h) for h in headers]] + [
        [r[0] if isinstance(r[0], str) else format_number(r[0], digits)]
        + [format_number(v, digits) for v in r[1:]]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for k, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
