"""``biasdecay measure``: connectivity sharpness by substructure and the baselines of a model."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import torch

from biasdecay.atomic import write_json
from biasdecay.commands.common import (
    UsageError,
    measurement_batches,
    model_spec_for,
    pad_for,
    resolve_device,
    user_input,
    writable_file,
)
from biasdecay.commands.flags import add_progress_flags, add_subcommand, show_progress
from biasdecay.data import load_dataset
from biasdecay.nn.checkpoint import load_model
from biasdecay.sharpness.suite import MeasureOptions, measure_names, parse_measures, run_measures
from biasdecay.tables import text_table

HELP = "connectivity sharpness by substructure, r_l, Tr(H), λmax(H), Fisher-Rao"

DESCRIPTION = """\
Measure a trained network: connectivity sharpness C (per-sample, paper eq. 4) and C_m
(mini-batch) split by substructure as in the paper's Table 2 (Conv, γ, β, FC(w), FC(b)), the
bias-utilisation ratio r_l = C(β_l)/C(γ_l) of every normalisation layer, and the baselines
Tr(H) (Hutch++), λmax(H) (Lanczos) and the Fisher-Rao norm θᵀFθ (eq. 8).

The measures run on a fixed, seeded subset of the chosen split with BatchNorm in eval mode
(C_m can use batch statistics with --train-mode). The model and BN statistics are unchanged.
"""

EPILOG = """\
examples:
  biasdecay measure --checkpoint runs/main/model.pt --data fashion-mnist
  biasdecay measure --checkpoint model.pt --data cifar10 --data-root ~/data/cifar-10-batches-py \\
      --measures connectivity,connectivity-m --samples 10000 --json measures.json
  biasdecay measure --model resnet18 --width 0.25 --checkpoint state_dict.pt --data fashion-mnist
"""

DEFAULT_MEASURES = "connectivity,connectivity-m,hessian-trace,hessian-max,fisher-rao"

# The subset's size and the estimators' budgets: flag, type, default, help.
SIZES = (
    ("--samples", int, 1024, "size of the seeded measurement subset (default: 1024)"),
    ("--batch-size", int, 128, "batch size; C_m depends on it (default: 128)"),
    ("--matvecs", int, 30, "Hessian-vector products for the Hutch++ trace (default: 30)"),
    ("--lanczos-iters", int, 20, "maximum Lanczos iterations for λmax (default: 20)"),
    ("--lanczos-tol", float, 1e-3, "relative Ritz-residual tolerance for λmax (default: 1e-3)"),
)
# Options with a fixed set of values: flag, default, choices, help.
SPLIT_HELP = "which split to measure on (default: test)"
FISHER_HELP = "Fisher of the model's predictive distribution or of the true labels"
CHOICES = (
    ("--split", "test", ["train", "test"], SPLIT_HELP),
    ("--fisher-labels", "model", ["model", "empirical"], FISHER_HELP),
    ("--dtype", "float32", ["float32", "float64"], None),
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``measure`` to ``subparsers`` (see :mod:`biasdecay.commands`); returns its parser."""
    p = add_subcommand(subparsers, "measure", HELP, DESCRIPTION, EPILOG)
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="model checkpoint (from `biasdecay train`"
        " or a bare state_dict; loaded with weights_only=True)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model name, needed for a bare state_dict "
        "(see `biasdecay list models`); default: the one stored in the checkpoint",
    )
    p.add_argument(
        "--width",
        type=float,
        default=None,
        help="width multiplier of --model (default 1; 0.25 = ResNet-18 with 16 base channels); "
        "only with --model: a biasdecay checkpoint carries its own",
    )
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
    p.add_argument(
        "--measures",
        default=DEFAULT_MEASURES,
        help=f"comma-separated, from: {', '.join(measure_names())} (default: all but invariance)",
    )
    for flag, kind, default, text in SIZES:
        p.add_argument(flag, type=kind, default=default, help=text)
    for flag, default, choices, text in CHOICES:
        p.add_argument(flag, default=default, choices=choices, help=text)
    p.add_argument(
        "--train-mode",
        action="store_true",
        help="compute C_m with batch statistics (as in training) instead of eval mode",
    )
    p.add_argument("--json", metavar="OUT", help="also write every number to this JSON file")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of subsets and random probes")
    add_progress_flags(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Measure the model ``args`` name on its data, print the tables, optionally write JSON.

    Raises:
        BiasDecayError: bad input (a name, a path, a checkpoint that does not fit); nothing was
            measured.
    """
    with user_input():
        measures = parse_measures(args.measures)
    device = resolve_device(args.device)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    if args.checkpoint is None and args.model is None:
        raise UsageError("give --checkpoint PATH (and --model NAME if it is a bare state_dict)")

    if args.width is not None and args.model is None:
        raise UsageError(
            "--width sets the width of --model; without --model it would be ignored (a "
            "checkpoint saved by biasdecay records its own width): drop --width, or add --model"
        )
    if args.json:  # before the measures, not after they have all been computed
        writable_file(args.json, "--json")
    with user_input():  # an unknown data set or model name, a width the model refuses
        test = load_dataset(args.data, split=args.split, root=args.data_root)
        width = 1.0 if args.width is None else args.width
        spec = model_spec_for(args.model, test, width) if args.model is not None else None
        if args.checkpoint is not None:
            model, spec, meta = load_model(args.checkpoint, spec)
        else:  # freshly initialised network: allowed, and said so in the output
            model, meta = spec.build().eval(), {"note": "untrained (no checkpoint)"}
    if spec.in_channels != test.in_channels or spec.num_classes != test.num_classes:
        raise UsageError(
            f"the model expects {spec.in_channels} input channels and {spec.num_classes} classes "
            f"but {args.data} has {test.in_channels} and {test.num_classes}; measure it on the "
            "data set it was trained on"
        )
    model = model.to(device=device, dtype=dtype)
    batches = measurement_batches(
        test,
        samples=args.samples,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        pad_to=pad_for(spec.name, test),
        dtype=dtype,
    )
    n = sum(int(x.shape[0]) for x, _ in batches)
    print(f"model: {spec.describe()}" + (f" from {args.checkpoint}" if args.checkpoint else ""))
    print(
        f"data: {args.data} {args.split} split, {n} samples in batches of {args.batch_size}"
        f"{' (SYNTHETIC)' if test.synthetic else ''}; device {device}, {args.dtype}"
    )
    options = MeasureOptions(
        hessian_matvecs=args.matvecs,
        lanczos_iters=args.lanczos_iters,
        lanczos_tol=args.lanczos_tol,
        seed=args.seed,
        minibatch_train_mode=args.train_mode,
        fisher_labels=args.fisher_labels,
        progress=show_progress(args.progress),
    )
    results = run_measures(
        model,
        batches,
        measures,
        options,
        on_start=lambda name: print(f"... {name}", file=sys.stderr, flush=True),
    )
    print()
    print(format_results(results))
    if args.json:
        write_json(
            args.json,
            {
                "model": spec.__dict__,
                "checkpoint": args.checkpoint,
                "checkpoint_meta": meta,
                "data": {
                    "name": args.data,
                    "split": args.split,
                    "samples": n,
                    "batch_size": args.batch_size,
                    "synthetic": test.synthetic,
                    "seed": args.seed,
                },
                "device": str(device),
                "dtype": args.dtype,
                "results": results,
            },
        )
        print(f"\nwrote {args.json}")
    return 0


def format_results(results: dict[str, dict[str, Any]]) -> str:
    """The terminal report: Table 2-style rows, r_l per layer, then the baselines."""
    blocks: list[str] = []
    conn = [(k, results[k]) for k in ("connectivity", "connectivity-m") if k in results]
    if conn:
        headers = ["substructure"] + [r["measure"] for _, r in conn]
        rows = [[row] + [r["table2"][row] for _, r in conn] for row in conn[0][1]["table2"]]
        rows = [r for r in rows if r[0] != "other" or any(v is not None for v in r[1:])]
        blocks.append("Connectivity sharpness by substructure (paper Table 2 rows)\n")
        blocks[-1] += text_table(headers, rows)
        layers = list(conn[0][1]["bias_utilization"])
        if layers:
            r_rows = [
                [layer] + [r["bias_utilization"].get(layer) for _, r in conn] for layer in layers
            ]
            blocks.append(
                "Bias utilisation r_l = C(β_l)/C(γ_l) per normalisation layer\n"
                + text_table(["layer"] + [f"r_l ({r['measure']})" for _, r in conn], r_rows)
            )
    base_rows = []
    if "hessian-trace" in results:
        r = results["hessian-trace"]
        base_rows.append(
            [
                "Tr(H)",
                r["value"],
                r["stderr"],
                _log(r["value"]),
                f"{r['method']}, {r['n_matvecs']} matvecs",
            ]
        )
    if "hessian-max" in results:
        r = results["hessian-max"]
        note = f"Lanczos, {r['n_matvecs']} matvecs{'' if r['converged'] else ', NOT converged'}"
        base_rows.append(["λmax(H)", r["value"], r["residual"], _log(r["value"]), note])
    if "fisher-rao" in results:
        r = results["fisher-rao"]
        base_rows.append(["‖θ‖²_FR", r["value"], None, _log(r["value"]), f"{r['labels']} Fisher"])
    if base_rows:
        blocks.append(
            "Baselines\n"
            + text_table(["measure", "value", "± / residual", "log", "how"], base_rows)
        )
    if "invariance" in results:
        blocks.append(format_invariance(results["invariance"]))
    return "\n\n".join(blocks)


def format_invariance(r: dict[str, Any]) -> str:
    """The invariance check as a two-row table: C unchanged, Tr(H) changed (eq. 9)."""
    before, after = r["original"], r["rescaled"]
    rows = [
        [
            "C (per-sample)",
            before["connectivity"],
            after["connectivity"],
            r["connectivity_relative_change"],
        ],
        [
            "Tr(H)",
            before["hessian_trace"]["value"],
            after["hessian_trace"]["value"],
            r["hessian_trace_relative_change"],
        ],
    ]
    return (
        f"Invariance: unit {r['unit']} of {r['incoming']} x {r['factor']:g}, its input to "
        f"{r['outgoing']} / {r['factor']:g} (same function: outputs differ by at most "
        f"{r['output_max_abs_change']:.1e})\n"
        + text_table(["measure", "original", "rescaled", "relative change"], rows)
    )


def _log(value: float) -> float | None:
    return math.log(value) if value > 0 else None
