"""How far per-sample C on a small MLP can go below its cost now: hand-written lower bounds,
timed beside the library in the same run.

On the MLP row of ``bench_connectivity.py`` (784-512-512-10, batch 128) a forward+backward takes
about 3 ms on a 2-core CPU, and per-sample C costs about twice that. This script writes out, for
an MLP of Linear layers and ReLUs alone, the least work each measure needs in eager PyTorch,
with none of the library's generality (no hooks, no module table, no report), and times it
against the same unit:

* ``floor, no guard``: one forward keeping each Linear layer's input and output, one backward
  to the layer outputs (no weight gradient), and per layer Σ_ij |δ_i| |W_ij| |a_j| per sample
  (one matmul, as the library's rank-one formula), then the sum;
* ``floor + guard``: the same, plus the check the library makes on every batch: the gradient of
  the first 4 samples' weighted loss through autograd (a forward and backward of 4 samples),
  the same weighted sum from the formula's rows (a rank-4 matmul per weight), and the largest
  |θ⊙(difference)| and |θ⊙g| per parameter;
* ``the guard's autograd pass alone``: the part of that check which no implementation of it can
  skip;
* ``C_m floor``: a forward+backward with weight gradients, then Σ|θ⊙g|;
* the library's per-sample C and C_m (``connectivity_sharpness``) on the same model and batch.

Every C printed must agree with the library's; the ratios say how much of its cost is the
measure's own work and how much is the general machinery.

    python benchmarks/bench_mlp_floor.py
    python benchmarks/bench_mlp_floor.py --widths 784,1024,1024,10 --batch 512
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from _common import cpu_name, interleaved_times
from biasdecay.sharpness._per_sample import GUARD_SAMPLES
from biasdecay.sharpness.connectivity import connectivity_sharpness


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def linears(model: nn.Sequential) -> list[nn.Linear]:
    return [m for m in model if isinstance(m, nn.Linear)]


def recorded_forward(model: nn.Sequential, x: torch.Tensor):
    """Logits, and each Linear layer's input and output (the outputs in the graph)."""
    inputs, outputs, h = [], [], x
    for m in model:
        if isinstance(m, nn.Linear):
            inputs.append(h.detach())
            h = m(h)
            outputs.append(h)
        else:
            h = m(h)
    return h, inputs, outputs


def floor_terms(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor):
    """Per-sample Σ|θ⊙g_n| summed over the batch, and the layers' rows (δ, a)."""
    with torch.enable_grad():
        logits, inputs, outputs = recorded_forward(model, x)
        total = F.cross_entropy(logits, y) * x.shape[0]
        deltas = torch.autograd.grad(total, outputs)
    c = x.new_zeros(())
    for layer, a, delta in zip(linears(model), inputs, deltas, strict=True):
        d_abs = delta.abs()
        c += (torch.mm(d_abs, layer.weight.detach().abs()) * a.abs()).sum()
        c += (d_abs @ layer.bias.detach().abs()).sum()
    return c, inputs, deltas


def guard_weights(x: torch.Tensor) -> torch.Tensor:
    """The guard's distinct weights 1, …, GUARD_SAMPLES of the batch's first samples."""
    return torch.arange(1, GUARD_SAMPLES + 1, dtype=x.dtype)


def guard_autograd(model: nn.Sequential, x, y) -> tuple[torch.Tensor, ...]:
    """The part of the guard no check can skip: autograd's gradient of the first samples'
    weighted loss, through the model as it is (a forward and backward of 4 samples)."""
    s, w = GUARD_SAMPLES, guard_weights(x)
    with torch.enable_grad():
        out = model(x[:s])
        total = (F.cross_entropy(out, y[:s], reduction="none") * w).sum()
        return torch.autograd.grad(total, list(model.parameters()))


def floor_guard(model: nn.Sequential, x, y, inputs, deltas) -> bool:
    """The guard's check on the first samples: autograd's weighted gradient against the
    formula's rows; True where every parameter agrees to float32 rounding."""
    s, w = GUARD_SAMPLES, guard_weights(x)
    params = list(model.parameters())  # weight, bias of each Linear in turn
    truths = guard_autograd(model, x, y)
    implied = []
    for a, delta in zip(inputs, deltas, strict=True):
        weighted = delta[:s] * w[:, None]
        implied += [weighted.t() @ a[:s], weighted.sum(0)]
    ok = True
    for p, truth, formula in zip(params, truths, implied, strict=True):
        theta = p.detach()
        scale = (theta * truth).abs().max()
        error = (theta * (truth - formula)).abs().max()
        ok &= bool(error <= 1e-3 * scale)
    return ok


def floor_minibatch(model: nn.Sequential, x, y) -> torch.Tensor:
    params = [p for p in model.parameters()]
    with torch.enable_grad():
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    return sum((g * p.detach()).abs().sum() for g, p in zip(grads, params, strict=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="784,512,512,10", help="layer widths, input first")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50, help="interleaved timing rounds")
    args = parser.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    if len(widths) < 2 or min(widths) < 1:
        parser.error("--widths needs two or more positive widths, e.g. 784,512,512,10")
    if args.batch <= GUARD_SAMPLES:
        parser.error(f"--batch must exceed the guard's {GUARD_SAMPLES} samples")
    torch.manual_seed(0)
    model = mlp(widths)
    x = torch.randn(args.batch, widths[0])
    y = torch.randint(0, widths[-1], (args.batch,))

    def unit() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    def guarded() -> bool:
        _, inputs, deltas = floor_terms(model, x, y)
        return floor_guard(model, x, y, inputs, deltas)

    ours = connectivity_sharpness(model, [(x, y)])
    floor_c = floor_terms(model, x, y)[0].item() / args.batch
    ours_m = connectivity_sharpness(model, [(x, y)], per_sample=False)
    print(
        f"torch {torch.__version__} | {cpu_name()} | threads {torch.get_num_threads()} | "
        f"float32 | {args.repeats} interleaved rounds, 1 untimed call before each"
    )
    print(f"## MLP {'-'.join(map(str, widths))}, ReLU | batch {args.batch} | eval")
    print(
        f"agreement: per-sample C ours {ours.total:.6f} ({ours.method}), floor {floor_c:.6f}; "
        f"C_m ours {ours_m.total:.6f}, floor {floor_minibatch(model, x, y).item():.6f}; "
        f"floor guard passes: {guarded()}"
    )
    rows = [
        ("forward+backward (unit)", unit),
        ("per-sample C, floor, no guard", lambda: floor_terms(model, x, y)),
        ("per-sample C, floor + guard", guarded),
        ("the guard's autograd pass alone", lambda: guard_autograd(model, x, y)),
        ("per-sample C, ours (hooks + guard)", lambda: connectivity_sharpness(model, [(x, y)])),
        ("C_m, floor", lambda: floor_minibatch(model, x, y)),
        (
            "C_m, ours",
            lambda: connectivity_sharpness(model, [(x, y)], per_sample=False),
        ),
    ]
    times = interleaved_times(rows, args.repeats, torch.device("cpu"), settle=1)
    unit_times = times[rows[0][0]]
    print(f"{'method':40s} {'best s':>9s} {'x fwd+bwd':>10s} {'median x':>9s}")
    for name, _ in rows:
        t = times[name]
        paired = statistics.median(a / b for a, b in zip(t, unit_times, strict=True))
        print(f"{name:40s} {min(t):9.5f} {min(t) / min(unit_times):10.2f} {paired:9.2f}")


if __name__ == "__main__":
    main()
