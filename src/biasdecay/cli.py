"""The ``biasdecay`` command line: ``biasdecay measure``, ``biasdecay train``, ``biasdecay list``.

Every subcommand explains itself with ``--help``. Errors in what the user typed print one line
saying what is wrong and how to fix it (exit status 2), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from biasdecay import __version__

MEASURE_HELP = """\
Measure a trained network: connectivity sharpness C (per-sample, paper eq. 4) and C_m
(mini-batch) split by substructure as in the paper's Table 2 (Conv, γ, β, FC(w), FC(b)), the
bias-utilisation ratio r_l = C(β_l)/C(γ_l) of every normalisation layer, and the baselines
Tr(H) (Hutch++), λmax(H) (Lanczos) and the Fisher-Rao norm θᵀFθ (eq. 8).

The measures run on a fixed, seeded subset of the chosen split with BatchNorm in eval mode
(C_m can use batch statistics with --train-mode). The model and BN statistics are unchanged.
"""

MEASURE_EPILOG = """\
examples:
  biasdecay measure --checkpoint runs/main/model.pt --data fashion-mnist
  biasdecay measure --checkpoint model.pt --data cifar10 --data-root ~/data/cifar-10-batches-py \\
      --measures connectivity,connectivity-m --samples 10000 --json measures.json
  biasdecay measure --model resnet18 --width 0.25 --checkpoint state_dict.pt --data fashion-mnist
"""

TRAIN_HELP = """\
Train one run with the engine: the model, data, optimiser (LAMB, LARS, SGD, AdamW), decay
policy (no_bias_decay, beta_decay, adaptive_beta_decay, ...), schedule and run settings come
from a TOML file (--config, see configs/) and --set overrides. The logical batch is split into
world size x accumulation x micro-batch. Writes RUN_DIR/{config.toml, environment.json,
param_groups.txt, metrics.jsonl, summary.json, summary.csv, checkpoints/}.

Multi-GPU or multi-process: the same command under torchrun, e.g.
  torchrun --nproc_per_node=8 -m biasdecay train --config configs/cifar10_resnet18.toml
A diverged run stops, keeps its last good checkpoint and is marked "diverged" (exit status 3).
"""

TRAIN_EPILOG = """\
examples:
  biasdecay train --config configs/fashion_resnet18_cpu.toml
  biasdecay train --config configs/cifar10_resnet18.toml --data-root ~/data/cifar-10-batches-py \\
      --set policy.name=adaptive_beta_decay --out runs/c10-adaptive
  biasdecay train --resume runs/c10-adaptive
"""


SWEEP_HELP = """\
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

SWEEP_EPILOG = """\
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

REPORT_HELP = """\
Write OUT/report.md for a study sweep: the paper's tables in the paper's layout with our numbers
beside the paper's (labelled, with the data set and scale), diverged runs as "-", PNG plots under
OUT/plots (sharpness-generalisation scatter with fitted line, R², Kendall τ and Spearman ρ;
per-layer evolution curves; the r_l / decision heat map), and one line per claim of the paper
the study tests: what we measured and whether it agrees. Reads only finished run files, so it
can run while the sweep is still going. Prints the report.
"""


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="data set (see `biasdecay list data`; default: fashion-mnist)",
    )
    p.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="directory of the data set's files (default: the standard place, e.g. "
        "/usr/share/datasets/fashion-mnist for fashion-mnist)",
    )


def _add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of subsets and random probes")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show progress bars (default: only on a terminal)",
    )
    bar.add_argument(
        "--no-progress", dest="progress", action="store_false", help="never show progress bars"
    )


def _sweep_help() -> str:
    from biasdecay.study.presets import PRESETS
    from biasdecay.study.specs import STUDIES

    studies = "\n".join(f"  {name:<10} {study.title}" for name, study in STUDIES.items())
    presets = "\n".join(f"  {name:<10} {p.description}" for name, p in PRESETS.items())
    return SWEEP_HELP.format(studies=studies, presets=presets)


def build_parser() -> argparse.ArgumentParser:
    from biasdecay.sharpness.suite import measure_names

    parser = argparse.ArgumentParser(
        prog="biasdecay",
        description="Connectivity sharpness, bias decay and large-batch training research tools.",
    )
    parser.add_argument("--version", action="version", version=f"biasdecay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    m = sub.add_parser(
        "measure",
        help="connectivity sharpness by substructure, r_l, Tr(H), λmax(H), Fisher-Rao",
        description=MEASURE_HELP,
        epilog=MEASURE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="model checkpoint (from `biasdecay train`"
        " or a bare state_dict; loaded with weights_only=True)",
    )
    m.add_argument(
        "--model",
        default=None,
        help="model name, needed for a bare state_dict "
        "(see `biasdecay list models`); default: the one stored in the checkpoint",
    )
    m.add_argument(
        "--width",
        type=float,
        default=None,
        help="width multiplier of --model (default 1; 0.25 = ResNet-18 with 16 base channels); "
        "only with --model: a biasdecay checkpoint carries its own",
    )
    _add_data_args(m)
    m.add_argument(
        "--split",
        default="test",
        choices=["train", "test"],
        help="which split to measure on (default: test)",
    )
    m.add_argument(
        "--samples",
        type=int,
        default=1024,
        help="size of the seeded measurement subset (default: 1024)",
    )
    m.add_argument(
        "--batch-size", type=int, default=128, help="batch size; C_m depends on it (default: 128)"
    )
    m.add_argument(
        "--measures",
        default="connectivity,connectivity-m,hessian-trace,hessian-max,fisher-rao",
        help=f"comma-separated, from: {', '.join(measure_names())} (default: all but invariance)",
    )
    m.add_argument(
        "--matvecs",
        type=int,
        default=30,
        help="Hessian-vector products for the Hutch++ trace (default: 30)",
    )
    m.add_argument(
        "--lanczos-iters",
        type=int,
        default=20,
        help="maximum Lanczos iterations for λmax (default: 20)",
    )
    m.add_argument(
        "--lanczos-tol",
        type=float,
        default=1e-3,
        help="relative Ritz-residual tolerance for λmax (default: 1e-3)",
    )
    m.add_argument(
        "--fisher-labels",
        default="model",
        choices=["model", "empirical"],
        help="Fisher of the model's predictive distribution or of the true labels",
    )
    m.add_argument(
        "--train-mode",
        action="store_true",
        help="compute C_m with batch statistics (as in training) instead of eval mode",
    )
    m.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    m.add_argument("--json", metavar="OUT", help="also write every number to this JSON file")
    _add_common_args(m)

    t = sub.add_parser(
        "train",
        help="train a configured run (LAMB/LARS/SGD/AdamW, decay policies, ghost BN, torchrun)",
        description=TRAIN_HELP,
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--config", metavar="FILE", help="TOML configuration (see configs/)")
    t.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set run.epochs=2 --set policy.name=beta_decay "
        "(repeatable; wins over --config and the shortcut flags)",
    )
    t.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its newest checkpoint, with its own config.toml",
    )
    shortcuts = t.add_argument_group("shortcuts (each sets one config key)")
    for flag, kind, key in (
        ("--model", str, "model.name"),
        ("--width", float, "model.width"),
        ("--data", str, "data.name"),
        ("--data-root", str, "data.root"),
        ("--epochs", float, "run.epochs"),
        ("--batch-size", int, "run.batch_size (the logical batch)"),
        ("--micro-batch-size", int, "run.micro_batch_size (per rank)"),
        ("--lr", float, "optimizer.lr (peak)"),
        ("--optimizer", str, "optimizer.name"),
        ("--policy", str, "policy.name"),
        ("--device", str, "run.device"),
        ("--out", str, "run.out (the run directory)"),
        ("--seed", int, "run.seed"),
    ):
        shortcuts.add_argument(flag, type=kind, default=None, help=key)
    t.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events")
    bar = t.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show a progress bar (default: only on a terminal)",
    )
    bar.add_argument("--no-progress", dest="progress", action="store_false")

    sw = sub.add_parser(
        "sweep",
        help="run a study of the paper (or a grid) to the end: skips finished, resumes interrupted",
        description=_sweep_help(),
        epilog=SWEEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sw.add_argument("study", metavar="STUDY", help="a study name (below) or a grid TOML file")
    sw.add_argument("--out", required=True, help="sweep directory; run NAME goes to OUT/NAME")
    sw.add_argument(
        "--preset",
        default=None,
        help="scale of a study (required): one of the presets listed above",
    )
    sw.add_argument(
        "--seeds", type=int, default=1, help="seeds per setting; reports show mean ± std"
    )
    sw.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds are FIRST .. FIRST+SEEDS-1 (default 0): replicate a study on fresh seeds "
        "in another --out",
    )
    sw.add_argument(
        "--data-root",
        action="append",
        metavar="NAME=DIR",
        help="where data set NAME lives, e.g. cifar10=~/data/cifar-10-batches-py (repeatable)",
    )
    sw.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override one setting of every run, e.g. --set run.compile=true (repeatable)",
    )
    sw.add_argument(
        "--no-report", action="store_true", help="do not write OUT/report.md at the end"
    )
    sw.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    sw.add_argument(
        "--devices",
        default=None,
        help="comma-separated CUDA devices, one per job, e.g. 0,1,2,3 (one run per GPU)",
    )
    sw.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")

    rp = sub.add_parser(
        "report",
        help="report.md with the paper's tables beside ours, plots and tested claims",
        description=REPORT_HELP,
        epilog="example:\n  biasdecay report runs/study-main",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rp.add_argument("out", metavar="DIR", help="a study sweep directory (holding study.json)")
    rp.add_argument("--quiet", action="store_true", help="write the report without printing it")

    ls = sub.add_parser("list", help="valid model, data set, measure, study and preset names")
    ls.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", "models", "data", "measures", "studies", "presets"],
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from biasdecay.commands import listing, measure, report, sweep, train

    command = {
        "measure": measure.run,
        "train": train.run,
        "sweep": sweep.run,
        "report": report.run,
        "list": listing.run,
    }[args.command]
    try:
        return command(args)
    except (ValueError, FileNotFoundError, ImportError, FloatingPointError) as exc:
        # Every library error raised on bad input says what is wrong and how to fix it.
        print(f"biasdecay {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only or full disk, a path that is a file: one line, no trace
        from biasdecay.commands.common import os_error_text

        print(f"biasdecay {args.command}: error: {os_error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"biasdecay {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
