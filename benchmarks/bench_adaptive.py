"""Overhead of adaptive β decay: a LAMB step with the controller against a plain LAMB step.

Both run on the parameter set of ResNet-18 at width 64 (11.2M parameters, 62 tensors) with
fixed random gradients, under the adaptive_beta_decay and no_bias_decay policies. The timed
unit is what a training loop adds per step: ``controller.step(); optimizer.step()`` against
``optimizer.step()``. Rows are interleaved over rounds; each keeps its best and median time.

    python benchmarks/bench_adaptive.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from _common import cpu_name
from biasdecay.decay import AdaptiveBetaDecay, decay_policy, param_groups
from biasdecay.nn.models import build_model
from biasdecay.optim import LAMB


def setup(policy: str, device: torch.device, adaptive: bool):
    torch.manual_seed(0)
    model = build_model("resnet18", in_channels=3, num_classes=10, width=1.0).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = LAMB(param_groups(model, decay_policy(policy), weight_decay=0.01), lr=1e-3)
    controller = AdaptiveBetaDecay(model, optimizer, threshold=0.1) if adaptive else None

    def step() -> None:
        if controller is not None:
            controller.step()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print("$ python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    print(
        f"torch {torch.__version__} | {cpu_name()} | {os.cpu_count()} cores | threads "
        f"{torch.get_num_threads()} | device {device} | resnet18 width 1.0 parameter set"
    )
    rows = {
        "LAMB, no_bias_decay": setup("no_bias_decay", device, adaptive=False),
        "LAMB + adaptive β decay": setup("adaptive_beta_decay", device, adaptive=True),
    }
    times: dict[str, list[float]] = {name: [] for name in rows}
    for fn in rows.values():
        fn()  # warm-up: optimiser state allocation
    for _ in range(args.rounds):
        for name, fn in rows.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    base = min(times["LAMB, no_bias_decay"])
    base_median = statistics.median(times["LAMB, no_bias_decay"])
    print(
        f"{'step':28s} {'best ms':>9s} {'median ms':>10s} {'best ratio':>11s} {'median ratio':>13s}"
    )
    for name, ts in times.items():
        best, median = min(ts), statistics.median(ts)
        print(
            f"{name:28s} {best * 1e3:9.2f} {median * 1e3:10.2f} {best / base:11.3f} "
            f"{median / base_median:13.3f}"
        )


if __name__ == "__main__":
    main()
