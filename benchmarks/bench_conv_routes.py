"""Time every per-sample conv route on each conv layer of a model, against its batch kernel.

Per-sample C forms each conv layer's per-sample weight gradients by one of several exact routes
(``biasdecay.sharpness._per_sample_products.ROUTES``) and keeps the fastest plan for each layer
geometry. This script records the inputs and output gradients of every conv layer of the
benchmark's ResNet-18 (one forward+backward), then times, for each distinct geometry, every plan
of every route (the candidates ``conv_plan`` would time) and the ordinary batch weight-gradient
kernel, all interleaved over the same rounds. It prints, per geometry, the best plan of each
route in milliseconds, and, summed over the model's layers, the total of the best route with and
without each route (the gain a route brings, in the same run), against the batch kernels.

    python benchmarks/bench_conv_routes.py
    python benchmarks/bench_conv_routes.py --model resnet18-gn --repeats 11
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from _common import cpu_name, fused_kernel, interleaved_times
from bench_connectivity import batch_weight_gradient, build
from biasdecay.sharpness import _per_sample_products as products


def recorded_conv_operands(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> list[tuple[nn.Conv2d, torch.Tensor, torch.Tensor]]:
    """(layer, input, output gradient of Σ_n ℓ_n) of every Conv2d, from one forward+backward."""
    inputs: dict[nn.Module, torch.Tensor] = {}
    grads: dict[nn.Module, torch.Tensor] = {}

    def keep(layer: nn.Module, args: tuple, out: torch.Tensor) -> None:
        inputs[layer] = args[0].detach()
        out.register_hook(lambda g: grads.__setitem__(layer, g.detach()))

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles = [m.register_forward_hook(keep) for m in convs]
    try:
        with torch.enable_grad():
            logits = model(x)
            params = [p for p in model.parameters() if p.requires_grad]
            torch.autograd.grad(F.cross_entropy(logits, y) * x.shape[0], params)
    finally:
        for h in handles:
            h.remove()
    return [(m, inputs[m], grads[m]) for m in convs]


def geometry(layer: nn.Conv2d, a: torch.Tensor) -> str:
    o, c, kh, kw = layer.weight.shape
    h, w = a.shape[2:]
    return f"{o}x{c}x{kh}x{kw} on {h}x{w}, stride {layer.stride[0]}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="resnet18", choices=("resnet18", "resnet18-gn"), help="the network"
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    model, x, what = build(args.model, args.batch, device)
    y = torch.randint(0, 10, (x.shape[0],))
    print("$ python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    print(
        f"torch {torch.__version__} | {cpu_name()} | {os.cpu_count()} cores | "
        f"threads {torch.get_num_threads()} | float32 | best of {args.repeats} interleaved rounds"
        f" | {fused_kernel()}"
    )
    print(f"## {args.model}: {what} | batch {args.batch} | eval")
    layers: dict[str, list] = {}  # geometry -> [(layer, a, delta), ...]
    for layer, a, delta in recorded_conv_operands(model, x, y):
        layers.setdefault(geometry(layer, a), []).append((layer, a, delta))
    work, unguarded = products.Workspace(), x.new_empty(0)
    rows: list[tuple[str, Callable[[], object]]] = []
    plans_of: dict[str, dict[str, list[str]]] = {}  # geometry -> route -> row names
    for geo, same in layers.items():
        layer, a, delta = same[0]
        rows.append(
            (f"{geo} | batch kernel", lambda p=(layer, a, delta): batch_weight_gradient(*p))
        )
        for plan in products.plans_for(layer, a, delta):
            name = f"{geo} | {plan.route} | {plan.chunk}"
            rows.append(
                (
                    name,
                    lambda p=plan, o=(layer, a, delta): products.conv_weight_terms(
                        *o, unguarded, work, p
                    ),
                )
            )
            plans_of.setdefault(geo, {}).setdefault(plan.route, []).append(name)
    times = interleaved_times(rows, args.repeats, device, settle=1)
    best = {name: min(t) * 1e3 for name, t in times.items()}
    routes = products.ROUTES
    print(
        f"{'layer geometry':34s} {'layers':>6s} {'batch':>7s} "
        + " ".join(f"{r:>22s}" for r in routes)
    )
    kernels = 0.0  # the batch kernels, summed over the model's layers
    best_without = {r: 0.0 for r in (None, *routes)}
    for geo, same in layers.items():
        n = len(same)
        kernel = best[f"{geo} | batch kernel"]
        by_route = {
            r: min((best[name], name.rsplit(" | ", 1)[1]) for name in names)
            for r, names in plans_of[geo].items()
        }
        cells = [
            f"{by_route[r][0]:8.2f} ms (chunk {by_route[r][1]:>2s})"
            if r in by_route
            else f"{'-':>22s}"
            for r in routes
        ]
        print(f"{geo:34s} {n:6d} {kernel:7.2f} " + " ".join(cells))
        kernels += n * kernel
        for left_out in best_without:
            best_without[left_out] += n * min(
                v for r, (v, _) in by_route.items() if r != left_out or len(by_route) == 1
            )
    print(f"\nsummed over the model's {sum(len(s) for s in layers.values())} conv layers (ms):")
    summary = {
        "batch weight-gradient kernels": kernels,
        "per-sample, the best of every route": best_without[None],
        **{f"per-sample, the best without {r}": best_without[r] for r in routes},
    }
    for label, ms in summary.items():
        print(f"  {label:52s} {ms:8.2f}")


if __name__ == "__main__":
    main()
