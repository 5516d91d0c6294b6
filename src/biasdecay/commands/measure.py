"""``biasdecay measure``: connectivity sharpness by substructure and the baselines of a model."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import torch

from biasdecay.commands.common import (
    UsageError,
    measurement_batches,
    model_spec_for,
    pad_for,
    resolve_device,
    show_progress,
    writable_file,
    write_json_atomic,
)
from biasdecay.data import load_dataset
from biasdecay.nn.checkpoint import load_model
from biasdecay.sharpness.suite import MeasureOptions, parse_measures, run_measures
from biasdecay.tables import text_table


def run(args: argparse.Namespace) -> int:
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
        write_json_atomic(
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
