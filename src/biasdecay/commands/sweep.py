"""``biasdecay sweep``: bring every run of a study (or a grid file) to a final state, resumably."""

from __future__ import annotations

import argparse
from pathlib import Path

from biasdecay.commands.common import UsageError, user_input
from biasdecay.commands.flags import add_overrides_flag, add_subcommand
from biasdecay.registry import RegistryError
from biasdecay.study.grid import load_grid
from biasdecay.study.sweep import RunOutcome, sweep

HELP = "run a study of the paper (or a grid) to the end: skips finished, resumes interrupted"

DESCRIPTION = """\
Run a study of the paper (one table or figure) or a grid file, resumably. Each run is a
`biasdecay train` process in OUT/NAME (its log in OUT/NAME/train.log): finished and diverged
runs are skipped, interrupted ones resumed from their last checkpoint, new ones started. Kill
the sweep at any moment and start it again: at most each run's work since its last checkpoint is
lost. OUT/sweep.json lists every run with its labels and state; a study sweep ends by writing
OUT/report.md (see `biasdecay report`).

studies (STUDY):
{studies}

presets (--preset):
{presets}

grid file (STUDY ending in .toml):
  base = "configs/fashion_resnet18_cpu.toml"   # relative to the grid file; optional
  set = ["run.epochs=2"]                       # every run; optional
  [runs.no_bias_decay]
  set = ["policy.name=no_bias_decay"]
  labels = {{ policy = "no bias decay" }}
"""

EPILOG = """\
examples:
  biasdecay sweep main --preset quick --seeds 3 --jobs 2 --out runs/study-main
  biasdecay sweep main --preset quick --seeds 3 --first-seed 3 --out runs/study-main-replica
  biasdecay sweep adaptation --preset cpu --seeds 3 --out runs/adaptation
  biasdecay sweep table4 --preset fashion --out runs/table4 --seeds 3
  biasdecay sweep table3 --preset paper --out runs/table3 --jobs 4 --devices 0,1,2,3 \\
      --data-root cifar10=~/data/cifar-10-batches-py --data-root cifar100=~/data/cifar-100-python \\
      --data-root imagenet=~/data/imagenet
  biasdecay sweep table1 --preset cpu --out runs/t1 --dry-run
"""


def _description() -> str:
    """The description with the study and preset names, each with its one-line summary."""
    from biasdecay.study.presets import PRESETS
    from biasdecay.study.specs import STUDIES

    studies = "\n".join(f"  {name:<10} {study.title}" for name, study in STUDIES.items())
    presets = "\n".join(f"  {name:<10} {p.description}" for name, p in PRESETS.items())
    return DESCRIPTION.format(studies=studies, presets=presets)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``sweep`` to ``subparsers`` (see :mod:`biasdecay.commands`); returns its parser."""
    p = add_subcommand(subparsers, "sweep", HELP, _description(), EPILOG)
    p.add_argument("study", metavar="STUDY", help="a study name (below) or a grid TOML file")
    p.add_argument("--out", required=True, help="sweep directory; run NAME goes to OUT/NAME")
    p.add_argument(
        "--preset",
        default=None,
        help="scale of a study (required): one of the presets listed above",
    )
    p.add_argument(
        "--seeds", type=int, default=1, help="seeds per setting; reports show mean ± std"
    )
    p.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds are FIRST .. FIRST+SEEDS-1 (default 0): replicate a study on fresh seeds "
        "in another --out",
    )
    p.add_argument(
        "--data-root",
        action="append",
        metavar="NAME=DIR",
        help="where data set NAME lives, e.g. cifar10=~/data/cifar-10-batches-py (repeatable)",
    )
    add_overrides_flag(
        p, "override one setting of every run, e.g. --set run.compile=true (repeatable)"
    )
    p.add_argument("--no-report", action="store_true", help="do not write OUT/report.md at the end")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument(
        "--devices",
        default=None,
        help="comma-separated CUDA devices, one per job, e.g. 0,1,2,3 (one run per GPU)",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    return p


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
    """Bring every run of the study or grid to a final state; write the report of a study.

    Returns:
        The exit status: 0 when every run ended, 1 when a run failed or is trained elsewhere,
        130 when the sweep was stopped (run the same command again to resume).

    Raises:
        BiasDecayError: bad input (a study, preset, grid file, override or directory); nothing
            was started or written.
    """
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
        with user_input():
            base, runs = load_grid(args.study)
        runs = [_with_extra(r, args.set) for r in runs]
    else:
        from biasdecay.study.plan import check_plan, make_plan, save_plan
        from biasdecay.study.presets import preset_names
        from biasdecay.study.specs import STUDIES

        if args.preset is None:
            raise UsageError(
                f"a study needs --preset: one of {', '.join(preset_names())} "
                "(cpu: minutes on a laptop; fashion: about an hour on one GPU; paper: Appendix A)"
            )
        if args.study not in STUDIES:  # the registry's message, and the other kind of STUDY
            try:
                STUDIES.entry(args.study)
            except RegistryError as err:
                raise UsageError(f"{err} (or give the path of a grid TOML file)") from err
        with user_input():  # an unknown preset, a bad seed count or run.epochs
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
        with user_input():  # another study's directory is named as such
            check_plan(plan, args.out)
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
