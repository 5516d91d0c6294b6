"""Time every per-sample route on each conv layer, or each Linear layer on a sequence, of a
model, against its batch kernel.

Per-sample C forms each conv layer's per-sample weight gradients by one of several exact routes
(``biasdecay.sharpness._per_sample_products.ROUTES``) and keeps the fastest plan for each layer
geometry; a Linear layer on a sequence has its own routes (``SEQUENCE_ROUTES``: batched matmul,
fused kernel). This script records the inputs and output gradients of every such layer of one of
the connectivity benchmark's models (one forward+backward), then times, for each distinct
geometry, every plan of every route (the candidates ``conv_plan`` or ``sequence_plan`` would
time) and the ordinary batch weight-gradient kernel, all interleaved over the same rounds. It
prints, per geometry, the best plan of each route in milliseconds, and, summed over the model's
layers, the total of the best route with and without each route (the gain a route brings, in
the same run), against the batch kernels.

    python benchmarks/bench_conv_routes.py
    python benchmarks/bench_conv_routes.py --model resnet18-gn --repeats 11
    python benchmarks/bench_conv_routes.py --model vit      # Linear layers on 64 tokens
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from _common import allocator, cpu_name, fused_kernel, interleaved_times
from bench_connectivity import batch_weight_gradient, build
from biasdecay.sharpness import _per_sample_products as products


def recorded_operands(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(layer, input, output gradient of Σ_n ℓ_n) of every Conv2d, and of every Linear that
    runs on a sequence (an input of more than two dims), from one forward+backward."""
    inputs: dict[nn.Module, torch.Tensor] = {}
    grads: dict[nn.Module, torch.Tensor] = {}

    def keep(layer: nn.Module, args: tuple, out: torch.Tensor) -> None:
        inputs[layer] = args[0].detach()
        out.register_hook(lambda g: grads.__setitem__(layer, g.detach()))

    timed = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(keep) for m in timed]
    try:
        with torch.enable_grad():
            logits = model(x)
            params = [p for p in model.parameters() if p.requires_grad]
            torch.autograd.grad(F.cross_entropy(logits, y) * x.shape[0], params)
    finally:
        for h in handles:
            h.remove()
    return [
        (m, inputs[m], grads[m])
        for m in timed
        if isinstance(m, nn.Conv2d) or inputs[m].dim() > 2  # a Linear on rows has no routes
    ]


def geometry(layer: nn.Module, a: torch.Tensor) -> str:
    if isinstance(layer, nn.Linear):
        tokens = a[0].numel() // a.shape[-1]
        return f"Linear {layer.out_features}x{layer.in_features} on {tokens} tokens"
    o, c, kh, kw = layer.weight.shape
    h, w = a.shape[2:]
    return f"{o}x{c}x{kh}x{kw} on {h}x{w}, stride {layer.stride[0]}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="resnet18",
        choices=("resnet18", "resnet18-gn", "vit", "text"),
        help="the network: its conv layers, or (vit, text) its Linear layers on sequences",
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
        f" | {fused_kernel()} | {allocator()}"
    )
    print(f"## {args.model}: {what} | batch {args.batch} | eval")
    layers: dict[str, list] = {}  # geometry -> [(layer, a, delta), ...]
    for layer, a, delta in recorded_operands(model, x, y):
        layers.setdefault(geometry(layer, a), []).append((layer, a, delta))
    work, unguarded = products.Workspace(), x.new_empty(0)
    rows: list[tuple[str, Callable[[], object]]] = []
    plans_of: dict[str, dict[str, list[str]]] = {}  # geometry -> route -> row names
    for geo, same in layers.items():
        layer, a, delta = same[0]
        rows.append(
            (f"{geo} | batch kernel", lambda p=(layer, a, delta): batch_weight_gradient(*p))
        )
        for route, chunk, run in candidates(layer, a, delta, unguarded, work):
            name = f"{geo} | {route} | {chunk}"
            rows.append((name, run))
            plans_of.setdefault(geo, {}).setdefault(route, []).append(name)
    times = interleaved_times(rows, args.repeats, device, settle=1)
    best = {name: min(t) * 1e3 for name, t in times.items()}
    every = dict.fromkeys((*products.ROUTES, *products.SEQUENCE_ROUTES))  # "fused" in both
    routes = [r for r in every if any(r in by_geo for by_geo in plans_of.values())]
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
        cells = [cell(*by_route[r]) if r in by_route else "-" for r in routes]
        print(f"{geo:34s} {n:6d} {kernel:7.2f} " + " ".join(f"{c:>22s}" for c in cells))
        kernels += n * kernel
        for left_out in best_without:
            best_without[left_out] += n * min(
                v for r, (v, _) in by_route.items() if r != left_out or len(by_route) == 1
            )
    linear = sum(len(same) for same in layers.values() if isinstance(same[0][0], nn.Linear))
    counts = {
        "Linear layers on sequences": linear,
        "conv layers": sum(len(same) for same in layers.values()) - linear,
    }
    what = " and ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    print(f"\nsummed over the model's {what} (ms):")
    summary = {
        "batch weight-gradient kernels": kernels,
        "per-sample, the best of every route": best_without[None],
        **{f"per-sample, the best without {r}": best_without[r] for r in routes},
    }
    for label, ms in summary.items():
        print(f"  {label:52s} {ms:8.2f}")


def cell(ms: float, chunk: str) -> str:
    """A route's best time in a layer's row, with its chunk where it has one."""
    return f"{ms:8.2f} ms" + (f" (chunk {chunk:>2s})" if chunk else "")


def candidates(
    layer: nn.Module, a: torch.Tensor, delta: torch.Tensor, unguarded: torch.Tensor, work
) -> list[tuple[str, str, Callable[[], object]]]:
    """(route, chunk, a call) of every plan the hook path would time for this layer; the chunk
    is "" for a Linear's routes, which chunk (or not) by themselves."""
    if isinstance(layer, nn.Linear):  # on a sequence: (B, O, L) gradients, (B, L, I) inputs
        d = delta.reshape(delta.shape[0], -1, delta.shape[-1]).transpose(1, 2)
        u = a.reshape(a.shape[0], -1, a.shape[-1])
        w_abs = layer.weight.detach().abs()
        return [
            (r, "", lambda r=r: products._SEQUENCE_ROUTES[r](d, u, w_abs, unguarded, work))
            for r in products.sequence_routes(d, u)
        ]
    return [
        (
            plan.route,
            str(plan.chunk),
            lambda p=plan: products.conv_weight_terms(layer, a, delta, unguarded, work, p),
        )
        for plan in products.plans_for(layer, a, delta)
    ]


if __name__ == "__main__":
    main()
