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
Train a network for a short while with SGD (momentum, cosine schedule) on a device-resident
data set and save runs/NAME/model.pt for `biasdecay measure`. This is the small trainer; the
full engine (LAMB/LARS, decay policies, multi-GPU, resume) is separate.
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
        default=1.0,
        help="width multiplier of --model (0.25 = ResNet-18 with 16 base channels)",
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
        help=f"comma-separated, from: {', '.join(measure_names())} (default: all)",
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
        "train", help="a short SGD run that saves a checkpoint to measure", description=TRAIN_HELP
    )
    t.add_argument("--model", default="resnet18", help="see `biasdecay list models`")
    t.add_argument(
        "--width",
        type=float,
        default=0.25,
        help="width multiplier (default 0.25: ResNet-18 with 16 base channels)",
    )
    _add_data_args(t)
    t.add_argument("--epochs", type=float, default=1.0, help="epochs, may be fractional")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=0.05, help="peak learning rate (cosine decay)")
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--weight-decay", type=float, default=5e-4, help="on all parameters")
    t.add_argument(
        "--augment",
        default=None,
        choices=["cifar", "flip"],
        help="batched augmentation: cifar = random crop (pad 4) + flip",
    )
    t.add_argument(
        "--train-samples",
        type=int,
        default=None,
        help="train on a seeded subset of this many samples",
    )
    t.add_argument("--out", default="runs/quick", help="output directory (default: runs/quick)")
    _add_common_args(t)

    ls = sub.add_parser("list", help="valid model, data set and measure names")
    ls.add_argument("what", nargs="?", default="all", choices=["all", "models", "data", "measures"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from biasdecay.commands import listing, measure, train

    command = {"measure": measure.run, "train": train.run, "list": listing.run}[args.command]
    try:
        return command(args)
    except (ValueError, FileNotFoundError, ImportError, FloatingPointError) as exc:
        # Every library error raised on bad input says what is wrong and how to fix it.
        print(f"biasdecay {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"biasdecay {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
