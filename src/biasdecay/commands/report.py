"""``biasdecay report DIR``: write and print the study report of a sweep directory."""

from __future__ import annotations

import argparse

from biasdecay.study.report import write_report


def run(args: argparse.Namespace) -> int:
    path, text = write_report(args.out)
    if not args.quiet:
        print(text)
    print(f"wrote {path}")
    return 0
