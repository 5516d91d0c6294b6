"""Time connectivity sharpness against a forward+backward of the same batch and its baselines.

Prints, for one batch: one forward+backward (the unit), per-sample C through layer hooks (ours),
per-sample C through torch.func vmap per-sample gradients (the generic path), the naive
one-sample-at-a-time loop, and C_m. Every row is timed in this run; ratios are to the unit.

    python benchmarks/bench_connectivity.py                 # ResNet-18 width 16, batch 128, CPU
    python benchmarks/bench_connectivity.py --device cuda --batch 512
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable

import torch
from torch import nn

from _common import cpu_name, interleaved_best
from biasdecay.nn.models import build_model
from biasdecay.sharpness.connectivity import connectivity_sharpness


def naive_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(x.shape[0]):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        for g, p in zip(torch.autograd.grad(loss, params), params, strict=True):
            total += (g * p).abs().sum()
    return (total / x.shape[0]).item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--width", type=float, default=0.25, help="0.25 = base width 16")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--skip-naive", action="store_true", help="skip the slow per-sample loop")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, in_channels=3, num_classes=10, width=args.width)
    model = model.to(device).eval()
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    n_params = sum(p.numel() for p in model.parameters())

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()

    rows: list[tuple[str, Callable[[], object]]] = [
        ("forward+backward (unit)", forward_backward),
        ("C per-sample, hooks (ours)", lambda: connectivity_sharpness(model, [(x, y)])),
        (
            "C per-sample, torch.func vmap",
            lambda: connectivity_sharpness(model, [(x, y)], method="vmap", chunk_size=32),
        ),
        (
            "C_m mini-batch (ours)",
            lambda: connectivity_sharpness(model, [(x, y)], per_sample=False),
        ),
    ]
    if not args.skip_naive:
        rows.append(("C per-sample, naive loop", lambda: naive_loop(model, x, y)))

    print("$ python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    print(
        f"torch {torch.__version__} | {cpu_name()} | {os.cpu_count()} cores | "
        f"threads {torch.get_num_threads()} | device {device} | {args.model} width {args.width} "
        f"({n_params:,} params) | batch {args.batch} | {args.image_size}x{args.image_size} | eval"
    )
    hooks = connectivity_sharpness(model, [(x, y)]).total
    vmapped = connectivity_sharpness(model, [(x, y)], method="vmap").total
    print(f"agreement: hooks C = {hooks:.10g}, vmap C = {vmapped:.10g}")
    best = interleaved_best(rows, args.repeats, device)
    unit = best[rows[0][0]]
    print(f"{'method':34s} {'seconds':>9s} {'x fwd+bwd':>10s}")
    for name, _ in rows:
        print(f"{name:34s} {best[name]:9.4f} {best[name] / unit:10.2f}")


if __name__ == "__main__":
    main()
