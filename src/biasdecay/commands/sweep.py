"""``biasdecay sweep``: bring every run of a study (or a grid file) to a final state, resumably."""

from __future__ import annotations

import argparse
from pathlib import Path

from biasdecay.commands.common import UsageError
from biasdecay.study.grid import load_grid
from biasdecay.study.sweep import RunOutcome, sweep


def _data_roots(items: list[str] | None) -> dict[str, str]:
    roots = {}
    for item in items or []:
        name, eq, path = item.partition("=")
        if not eq or not name.strip() or not path.strip():
            raise UsageError(
                f"--data-root {item!r}: expected NAME=DIR, e.g. cifar10=~/data/cifar-10-batches-py"
            )
        roots[name.strip()] = str(Path(path.strip()).expanduser())
    return roots


def run(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: give the number of runs at a time, 1 or more")
    devices = args.devices.split(",") if args.devices is not None else None
    is_grid = args.study.endswith(".toml") or Path(args.study).is_file()
    plan = None
    if is_grid:
        if args.preset or args.seeds != 1 or args.first_seed or args.data_root:
            raise UsageError(
                "--preset, --seeds, --first-seed and --data-root apply to studies; a grid file "
                "sets its runs "
                "itself (put them in its `set` lists)"
            )
        base, runs = load_grid(args.study)
        runs = [_with_extra(r, args.set) for r in runs]
    else:
        from biasdecay.study.plan import check_plan, make_plan, save_plan
        from biasdecay.study.presets import preset_names

        if args.preset is None:
            raise UsageError(
                f"a study needs --preset: one of {', '.join(preset_names())} "
                "(cpu: minutes on a laptop; fashion: about an hour on one GPU; paper: Appendix A)"
            )
        plan = make_plan(
            args.study,
            args.preset,
            seeds=args.seeds,
            first_seed=args.first_seed,
            data_roots=_data_roots(args.data_root),
            extra=tuple(args.set or ()),
        )
        if not plan.runs:
            raise UsageError(
                f"study {args.study} has no run at preset {args.preset}: its data sets have no "
                "stand-in there; use --preset paper with the data"
            )
        check_plan(plan, args.out)  # another study's directory is named as such
        base, runs = None, [r.spec for r in plan.runs]
        print(
            f"sweep: study {plan.study.name} at preset {plan.preset.name}: {len(runs)} runs "
            f"({len(plan.study.settings) - len(plan.skipped)} settings x {plan.seeds} seed(s))"
        )
    outcomes = sweep(
        runs,
        args.out,
        base_config=base,
        jobs=args.jobs,
        devices=devices,
        dry_run=args.dry_run,
        # The plan is written only once every run is checked, so a refused sweep leaves nothing.
        before_start=None if plan is None else (lambda: save_plan(plan, args.out)),
    )
    print(_counts(outcomes))
    if any(o.state == "stopped" for o in outcomes):
        print("sweep: stopped; run the same command again to resume (report not written)")
        return 130
    if any(o.state == "busy" for o in outcomes):
        print("sweep: some runs are trained by another process; run the sweep again once they end")
        return 1
    if plan is not None and not args.dry_run and not args.no_report:
        from biasdecay.study.report import write_report

        path, _ = write_report(args.out, plan)
        print(f"report: {path} (print it with `biasdecay report {args.out}`)")
    return 1 if any(o.state == "failed" for o in outcomes) else 0


def _with_extra(run, extra: list[str] | None):
    from dataclasses import replace

    return replace(run, overrides=(*run.overrides, *(extra or ())))


def _counts(outcomes: list[RunOutcome]) -> str:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.state] = counts.get(outcome.state, 0) + 1
    return "sweep: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
