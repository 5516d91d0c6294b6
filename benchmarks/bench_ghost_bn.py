"""Time GhostBatchNorm2d forward+backward against plain BatchNorm2d and a loop over ghost batches.

Rows, all measured in this run on the same input (training mode, running statistics updated):
plain ``nn.BatchNorm2d`` over the whole batch (the unit: what ghost BN costs on top of it), our
vectorised ``GhostBatchNorm2d`` (one fold + one ``F.batch_norm``), and the naive reference: a
Python loop of ``nn.BatchNorm2d`` over the ghost batches and a ``torch.cat``. Both layouts
(contiguous NCHW and channels_last) are timed.

    python benchmarks/bench_ghost_bn.py                 # three shapes (see --shape), 1 thread
    python benchmarks/bench_ghost_bn.py --threads 0     # torch's default thread count
    python benchmarks/bench_ghost_bn.py --device cuda --shape 4096x64x32x32
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
from biasdecay.nn.ghost_bn import GhostBatchNorm2d


class ChunkLoopBatchNorm2d(nn.BatchNorm2d):
    """The naive ghost BN: BatchNorm applied to each ghost batch in a Python loop."""

    def __init__(self, num_features: int, ghost_batch_size: int) -> None:
        super().__init__(num_features)
        self.ghost_batch_size = ghost_batch_size

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        batch_norm = super().forward  # bound here: a comprehension has no super() of its own
        return torch.cat([batch_norm(c) for c in input.split(self.ghost_batch_size)])


def forward_backward(
    layer: nn.Module, x: torch.Tensor, upstream: torch.Tensor
) -> Callable[[], None]:
    """One training forward+backward of ``layer`` on ``x`` with a fixed upstream gradient."""

    def run() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(upstream)

    return run


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``"512x64x16x16"`` -> ``(512, 64, 16, 16)`` (batch, channels, height, width)."""
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"expected NxCxHxW, got {text!r}")
    return parts  # type: ignore[return-value]


def time_shape(
    shape: tuple[int, int, int, int], ghost_size: int, repeats: int, device: torch.device
) -> None:
    """Print the agreement check and the timing table for one input shape."""
    channels = shape[1]
    torch.manual_seed(0)
    x = torch.randn(shape, device=device)
    ghost = GhostBatchNorm2d(channels, ghost_size).to(device)
    loop = ChunkLoopBatchNorm2d(channels, ghost_size).to(device)
    diff = (ghost(x) - loop(x)).abs().max().item()
    stats = (ghost.running_var - loop.running_var).abs().max().item()
    print(
        f"\ninput {shape}, {shape[0] // ghost_size} ghost batches of {ghost_size}; agreement with "
        f"the loop: max |Δoutput| = {diff:.1e}, max |Δrunning_var| = {stats:.1e}"
    )

    layers = {
        "BatchNorm2d (unit)": nn.BatchNorm2d(channels),
        "GhostBatchNorm2d (ours)": GhostBatchNorm2d(channels, ghost_size),
        "loop of BatchNorm2d over ghosts": ChunkLoopBatchNorm2d(channels, ghost_size),
    }
    rows: list[tuple[str, Callable[[], object]]] = []
    for layout, memory_format in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
        x = torch.randn(shape, device=device).contiguous(memory_format=memory_format)
        x.requires_grad_()
        upstream = torch.randn(shape, device=device).contiguous(memory_format=memory_format)
        for name, layer in layers.items():
            rows.append((f"{layout} {name}", forward_backward(layer.to(device), x, upstream)))
    best = interleaved_best(rows, repeats, device)
    print(f"{'layer (train forward+backward)':42s} {'ms':>8s} {'x BN':>6s} {'x loop':>7s}")
    for name, _ in rows:
        layout = name.split()[0]
        unit = best[f"{layout} BatchNorm2d (unit)"]
        loop_time = best[f"{layout} loop of BatchNorm2d over ghosts"]
        print(
            f"{name:42s} {best[name] * 1e3:8.2f} {best[name] / unit:6.2f} "
            f"{best[name] / loop_time:7.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape",
        type=parse_shape,
        action="append",
        help="NxCxHxW, repeatable (default: 512x64x16x16, 512x256x4x4 and 8192x64x2x2, "
        "the last at the paper's batch size of 8k: 256 ghost batches)",
    )
    parser.add_argument("--ghost", type=int, default=32, help="ghost batch size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine a thread descheduled by another "
        "process stalls every parallel region, and the loop row has 16x as many of them, so its "
        "time swings tenfold with the load; 0 keeps torch's default)",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    shapes = args.shape or [(512, 64, 16, 16), (512, 256, 4, 4), (8192, 64, 2, 2)]
    device = torch.device(args.device)

    print("$ python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    print(
        f"torch {torch.__version__} | {cpu_name()} | {os.cpu_count()} cores | "
        f"threads {torch.get_num_threads()} | device {device} | float32 | training mode, "
        f"best of {args.repeats} interleaved rounds"
    )
    for shape in shapes:
        time_shape(shape, args.ghost, args.repeats, device)


if __name__ == "__main__":
    main()
