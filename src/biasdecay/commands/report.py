"""``biasdecay report DIR``: write and print the study report of a sweep directory."""

from __future__ import annotations

import argparse

from biasdecay.commands.common import user_input
from biasdecay.commands.flags import add_subcommand

HELP = "report.md with the paper's tables beside ours, plots and tested claims"

DESCRIPTION = """\
Write OUT/report.md for a study sweep: the paper's tables in the paper's layout with our numbers
beside the paper's (labelled, with the data set and scale), diverged runs as "-", PNG plots under
OUT/plots (sharpness-generalisation scatter with fitted line, R², Kendall τ and Spearman ρ;
per-layer evolution curves; the r_l / decision heat map), and one line per claim of the paper
the study tests: what we measured and whether it agrees. Reads only finished run files, so it
can run while the sweep is still going. Prints the report.
"""

EPILOG = "example:\n  biasdecay report runs/study-main"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``report`` to ``subparsers`` (see :mod:`biasdecay.commands`); returns its parser."""
    p = add_subcommand(subparsers, "report", HELP, DESCRIPTION, EPILOG)
    p.add_argument("out", metavar="DIR", help="a study sweep directory (holding study.json)")
    p.add_argument("--quiet", action="store_true", help="write the report without printing it")
    return p


def run(args: argparse.Namespace) -> int:
    """Write ``DIR/report.md`` and print it (unless ``--quiet``) and its path.

    Raises:
        UsageError: ``DIR`` is not a study sweep directory, or its ``study.json`` cannot be read.
    """
    from biasdecay.study.plan import load_plan
    from biasdecay.study.report import write_report

    with user_input():
        plan = load_plan(args.out)
    path, text = write_report(args.out, plan)
    if not args.quiet:
        print(text)
    print(f"wrote {path}")
    return 0
