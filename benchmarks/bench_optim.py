"""Time one optimiser step of LAMB and LARS against torch's AdamW and SGD on ResNet-18's parameters.

Every row owns a copy of the ResNet-18 (width 64) parameter set with fixed random gradients and is
timed in the same run: our LAMB and LARS on their single-tensor, foreach and default paths, torch
AdamW and SGD (momentum 0.9) on the same three, and torch-optimizer's Lamb when it imports. Two
more rows step LAMB and LARS over the adaptive β decay policy's groups (one per BN layer's β, its
decay a 0-dim tensor, set to a mix of decayed and undecayed layers), the cost of adaptive β decay
inside the optimiser. ``--width 0.125`` times the cpu preset's network instead. Rows
are interleaved round by round (the order rotates) so a noisy stretch of the machine does not
favour one of them; the ratios at the end are given for the medians and for the bests.

    python benchmarks/bench_optim.py                     # CPU, float32, 40 rounds
    python benchmarks/bench_optim.py --device cuda --rounds 100
    python benchmarks/bench_optim.py --profile lamb      # torch.profiler table of one row

torch-optimizer is optional: ``pip install --no-deps torch-optimizer pytorch-ranger`` (no-deps,
so pip never replaces the installed torch).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from _common import cpu_name, sync
from biasdecay.decay import decay_policy, param_groups
from biasdecay.nn.models import build_model
from biasdecay.optim import LAMB, LARS


@dataclass
class Row:
    """One timed optimiser: its label and the step function to call."""

    name: str
    step: Callable[[], object]


def resnet18(device: torch.device, dtype: torch.dtype, seed: int, width: float) -> torch.nn.Module:
    """A fresh ResNet-18 (10 classes) with random gradients and non-zero BN β."""
    torch.manual_seed(seed)
    model = build_model("resnet18", in_channels=3, num_classes=10, width=width)
    model = model.to(device=device, dtype=dtype)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-2
    return model


def adaptive_groups(model: torch.nn.Module) -> list[dict]:
    """The adaptive β decay policy's groups, every other layer's β decayed (λ_β = 1)."""
    groups = param_groups(model, decay_policy("adaptive_beta_decay"), 0.01)
    betas = [g for g in groups if g["adaptive_beta"]]
    for k, group in enumerate(betas):
        group["weight_decay"].fill_(float(k % 2))
    return groups


def make_rows(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[Row]:
    """Every optimiser to time, each on its own parameter copy."""
    paths = {"single": False, "foreach": True, "default": None}
    wd = args.weight_decay
    builders: list[tuple[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]] = []
    for path, foreach in paths.items():
        builders += [
            (
                f"LAMB (ours) {path}",
                lambda p, f=foreach: LAMB(p, lr=1e-3, weight_decay=wd, foreach=f),
            ),
            (
                f"LARS (ours) {path}",
                lambda p, f=foreach: LARS(p, lr=0.1, momentum=0.9, weight_decay=wd, foreach=f),
            ),
            (
                f"torch AdamW {path}",
                lambda p, f=foreach: torch.optim.AdamW(p, lr=1e-3, weight_decay=wd, foreach=f),
            ),
            (
                f"torch SGD-momentum {path}",
                lambda p, f=foreach: torch.optim.SGD(
                    p, lr=0.1, momentum=0.9, weight_decay=wd, foreach=f
                ),
            ),
        ]
    try:
        import torch_optimizer

        builders.append(
            (
                "torch-optimizer Lamb",
                lambda p: torch_optimizer.Lamb(p, lr=1e-3, weight_decay=wd, debias=True),
            )
        )
    except Exception as error:  # any import failure (missing, or built for another torch)
        print(f"skipping torch-optimizer Lamb: {type(error).__name__}: {error}")

    builders += [
        ("LAMB (ours) adaptive β groups", lambda m: LAMB(adaptive_groups(m), lr=1e-3)),
        (
            "LARS (ours) adaptive β groups",
            lambda m: LARS(adaptive_groups(m), lr=0.1, momentum=0.9),
        ),
    ]
    rows = []
    for seed, (name, build) in enumerate(builders):
        if args.only and not any(key.lower() in name.lower() for key in args.only):
            continue
        model = resnet18(device, dtype, seed, args.width)
        optimizer = build(model if "groups" in name else list(model.parameters()))
        rows.append(Row(name, optimizer.step))
    return rows


def time_interleaved(
    rows: list[Row], rounds: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per step of every row over ``rounds`` rounds; the row order rotates each round."""
    for row in rows:
        for _ in range(warmup):  # allocator, lazy state, caches
            row.step()
    sync(device)
    times: dict[str, list[float]] = {row.name: [] for row in rows}
    for r in range(rounds):
        shift = r % len(rows)
        for row in rows[shift:] + rows[:shift]:
            sync(device)
            start = time.perf_counter()
            row.step()
            sync(device)
            times[row.name].append(time.perf_counter() - start)
    return times


def profile_row(row: Row, steps: int) -> None:
    """Print torch.profiler's operator table for ``steps`` steps of one row."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            row.step()
    print(f"\nprofile of {row.name!r} over {steps} steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per row first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="λ for every row")
    parser.add_argument(
        "--width", type=float, default=1.0, help="ResNet-18 width factor (0.125: the cpu preset)"
    )
    parser.add_argument(
        "--only", nargs="*", default=None, help="time only rows whose name contains one of these"
    )
    parser.add_argument(
        "--profile", default=None, help="after timing, profile the first row containing this"
    )
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    print("$ python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    machine = cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(
        f"torch {torch.__version__} | {machine} | {os.cpu_count()} cores | "
        f"threads {torch.get_num_threads()} | device {device} | {args.dtype}"
    )
    sample = list(resnet18(device, dtype, 0, args.width).parameters())
    n_params, n_tensors = sum(p.numel() for p in sample), len(sample)
    del sample
    rows = make_rows(args, device, dtype)
    print(
        f"ResNet-18 width {round(64 * args.width)} parameters: {n_params:,} in {n_tensors} "
        f"tensors | weight decay "
        f"{args.weight_decay} | {args.rounds} rounds after {args.warmup} warm-up steps"
    )
    times = time_interleaved(rows, args.rounds, args.warmup, device)

    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{'optimizer step':34s} {'median ms':>10s} {'best ms':>9s}")
    for row in rows:
        print(f"{row.name:34s} {medians[row.name] * 1e3:10.2f} {min(times[row.name]) * 1e3:9.2f}")

    best = {name: min(t) for name, t in times.items()}
    comparisons = [
        ("LAMB default / AdamW default", "LAMB (ours) default", "torch AdamW default", "<= 1.5"),
        (
            "LAMB default / torch-optimizer Lamb",
            "LAMB (ours) default",
            "torch-optimizer Lamb",
            "< 1",
        ),
        (
            "LARS default / SGD-momentum default",
            "LARS (ours) default",
            "torch SGD-momentum default",
            "<= 1.6",
        ),
        (
            "LAMB adaptive β groups / LAMB default",
            "LAMB (ours) adaptive β groups",
            "LAMB (ours) default",
            "~1",
        ),
        (
            "LARS adaptive β groups / LARS default",
            "LARS (ours) adaptive β groups",
            "LARS (ours) default",
            "~1",
        ),
        ("LAMB foreach / LAMB single", "LAMB (ours) foreach", "LAMB (ours) single", "CPU default"),
        ("LARS foreach / LARS single", "LARS (ours) foreach", "LARS (ours) single", "CPU default"),
    ]
    print(f"\n{'ratio':40s} {'medians':>8s} {'bests':>8s}   goal")
    for label, num, den, goal in comparisons:
        if num in medians and den in medians:
            print(
                f"{label:40s} {medians[num] / medians[den]:8.2f} {best[num] / best[den]:8.2f}"
                f"   {goal}"
            )

    if args.profile:
        matching = [row for row in rows if args.profile.lower() in row.name.lower()]
        if matching:
            profile_row(matching[0], steps=5)


if __name__ == "__main__":
    main()
