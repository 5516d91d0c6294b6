"""``biasdecay sweep``: bring every run of a grid to a final state, resumably."""

from __future__ import annotations

import argparse

from biasdecay.commands.common import UsageError
from biasdecay.study.grid import load_grid
from biasdecay.study.sweep import sweep


def run(args: argparse.Namespace) -> int:
    base, runs = load_grid(args.grid)
    devices = [d.strip() for d in args.devices.split(",")] if args.devices else None
    if devices is not None and len(devices) < args.jobs:
        raise UsageError(f"--jobs {args.jobs} needs at least {args.jobs} --devices")
    outcomes = sweep(
        runs, args.out, base_config=base, jobs=args.jobs, devices=devices, dry_run=args.dry_run
    )
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.state] = counts.get(outcome.state, 0) + 1
    print("sweep: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return 1 if counts.get("failed") else 0
