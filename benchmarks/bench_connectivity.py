"""Time per-sample connectivity sharpness against one forward+backward and against its peers.

For each model, one batch, every row timed in the same run over interleaved rounds, each timed
call right after an untimed one of its own (``--settle``):

* forward+backward of the batch (the unit every ratio is to);
* per-sample C through layer hooks with the exactness guard on (ours, the default path);
* C_m, the mini-batch measure (ours);
* per-sample C through ``torch.func`` vmap per-sample gradients (ours, the generic path);
* opacus 1.6 ``GradSampleModule``, hook mode and functorch mode, then the same Σ|θ⊙g_n| (where
  opacus can run the model: it refuses BatchNorm, whose buffers it cannot privatise);
* with ``--naive``, the one-sample-at-a-time loop.

Each row gets two ratios to the unit: of the best times over the rounds ("x fwd+bwd"), and the
median over rounds of the row's time over the unit's in the same round ("median x", a paired
ratio that a slow stretch of the machine moves less); and the median over its timed calls of the
minor page faults in a call ("faults": fresh 4 KiB pages asked of the system, each a cost in
time; how many depends on how much freed memory the C heap keeps, and the header names any heap
setting that is set).

Before the timings, each model's C from every path is printed, and a peer off the torch.func
value by more than float32 rounding is marked WRONG (opacus on the text model, whose position
table is looked up once for the whole batch).

With ``--memory`` each row also runs twice in a fresh process that reports its peak memory above
the model and batch alone (resident memory on a Linux CPU, allocated memory on CUDA): on the
first call (which, for our hook path, includes timing the conv plans of each new layer
geometry) and on the second (the steady state; freed memory is returned to the system first);
then the minor page faults of a third call ("faults alone": the row's own steady state, with no
other row's allocations between its calls). With ``--breakdown`` the hook path's time is also
split by stage (forward with the recording hooks, backward to the layer outputs, each kind of
layer's per-sample terms (formed during that backward, and shown apart from it), the guard's
forward and backward, the guard's comparison), best of the same rounds, as shares of a
forward+backward.

    python benchmarks/bench_connectivity.py                     # every model, CPU
    python benchmarks/bench_connectivity.py --models resnet18 --naive
    python benchmarks/bench_connectivity.py --device cuda --batch 512 --memory
    python benchmarks/bench_connectivity.py --models resnet18-gn --breakdown
    python benchmarks/bench_connectivity.py --runs 3         # and the range over 3 runs
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from _common import (
    allocator,
    cpu_name,
    fused_kernel,
    interleaved_times,
    minor_faults,
    peak_bytes,
    sync,
)
from biasdecay.nn.models import build_model
from biasdecay.sharpness.connectivity import connectivity_sharpness

Row = tuple[str, Callable[[], object]]


class Attention(nn.Module):
    """Multi-head self-attention as timm's ViT writes it: one qkv Linear, SDPA, a projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    """A pre-norm transformer encoder block (LayerNorm, attention, LayerNorm, GELU MLP)."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def torch_block(dim: int, heads: int, hidden: int) -> nn.Module:
    """The same block as torch writes it: nn.TransformerEncoderLayer, whose attention is an
    nn.MultiheadAttention (as in torchvision's ViT)."""
    return nn.TransformerEncoderLayer(
        dim, heads, hidden, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )


class TinyViT(nn.Module):
    """Patch embedding (4×4 patches of a 32×32 image: 64 tokens), transformer blocks, a head."""

    def __init__(
        self, dim: int = 128, depth: int = 2, heads: int = 4, classes: int = 10, block=Block
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(3 * 4 * 4, dim)
        self.blocks = nn.Sequential(*(block(dim, heads, 4 * dim) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(x, 4, stride=4).transpose(1, 2)  # (B, 64, 48)
        return self.head(self.norm(self.blocks(self.embed(patches))).mean(1))


class TinyTextClassifier(nn.Module):
    """Token and position embeddings (nn.Embedding), the same transformer blocks, a head."""

    def __init__(self, vocab: int = 1000, tokens: int = 64, dim: int = 128, depth: int = 2) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, dim), nn.Embedding(tokens, dim)
        self.blocks = nn.Sequential(*(Block(dim, 4, 4 * dim) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        where = torch.arange(ids.shape[1], device=ids.device)
        return self.head(self.norm(self.blocks(self.tokens(ids) + self.positions(where))).mean(1))


def batch_norm_to_group_norm(model: nn.Module) -> nn.Module:
    """Every BatchNorm2d replaced by a GroupNorm (opacus' own fix for models it refuses)."""
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            setattr(model, name, nn.GroupNorm(math.gcd(c, 8), c))
        else:
            batch_norm_to_group_norm(child)
    return model


def build(name: str, batch: int, device: torch.device) -> tuple[nn.Module, torch.Tensor, str]:
    """The model, a batch of inputs and a one-line description."""
    torch.manual_seed(0)
    if name in ("resnet18", "resnet18-gn"):
        model = build_model("resnet18", in_channels=3, num_classes=10, width=0.25)
        if name == "resnet18-gn":
            model = batch_norm_to_group_norm(model)
        x = torch.randn(batch, 3, 32, 32)
        what = "ResNet-18 width 16, 32x32" + (", GroupNorm" if name.endswith("gn") else ", BN")
    elif name == "mlp":
        model = build_model("mlp", in_channels=1, num_classes=10, image_size=28)
        x = torch.randn(batch, 1, 28, 28)
        what = "MLP 784-512-512-10, ReLU"
    elif name == "vit":
        model, x = TinyViT(), torch.randn(batch, 3, 32, 32)
        what = "2 transformer blocks (dim 128, 4 heads, 64 tokens), LayerNorm"
    elif name == "torch-vit":
        model, x = TinyViT(block=torch_block), torch.randn(batch, 3, 32, 32)
        what = "the same 2 blocks as nn.TransformerEncoderLayer (nn.MultiheadAttention)"
    elif name == "text":
        model, x = TinyTextClassifier(), torch.randint(0, 1000, (batch, 64))
        what = "token embeddings (1,000 x 128) and 2 transformer blocks, 64 tokens"
    else:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    model = model.to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    return model, x.to(device), f"{what} ({n_params:,} params)"


MODELS = ("resnet18", "resnet18-gn", "mlp", "vit", "torch-vit", "text")


def per_sample_abs_sum(model: nn.Module) -> float:
    """C from per-sample gradients that opacus stored in ``p.grad_sample``."""
    total = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        g = p.grad_sample
        total += (g * p.detach()).abs().reshape(g.shape[0], -1).sum(dtype=torch.float64).cpu()
    return total.item() / g.shape[0]


def opacus_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[list[Row], str]:
    """opacus' two per-sample-gradient engines, or why they cannot run this model."""
    try:
        from opacus import GradSampleModule
    except ImportError:
        return [], "opacus is not installed (pip install -e '.[bench]' \"torch==2.13.0\")"
    if any(len(list(m.buffers(recurse=False))) for m in model.modules()):
        return [], "opacus refuses modules with buffers (BatchNorm); see the GroupNorm model"
    rows, failed = [], []
    for mode in ("hooks", "functorch"):
        # opacus records activations in train mode only; without buffers or dropout, the
        # models here compute the same function in both modes.
        wrapped = GradSampleModule(
            copy.deepcopy(model).train(), loss_reduction="mean", force_functorch=mode == "functorch"
        )

        def run(wrapped: nn.Module = wrapped) -> float:
            wrapped.zero_grad(set_to_none=True)
            F.cross_entropy(wrapped(x), y).backward()
            return per_sample_abs_sum(wrapped._module)

        try:
            run()
        except Exception as error:  # opacus' own failure on this model: reported, not timed
            first = str(error).splitlines()[0] if str(error) else ""
            failed.append(f"opacus {mode} fails on this model ({type(error).__name__}: {first})")
            continue
        rows.append((f"C per-sample, opacus {mode}", run))
    return rows, "; ".join(failed)


def naive_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(x.shape[0]):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        for g, p in zip(torch.autograd.grad(loss, params), params, strict=True):
            total += (g * p).abs().sum()
    return (total / x.shape[0]).item()


def rows_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, naive: bool):
    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    rows: list[Row] = [
        ("forward+backward (unit)", forward_backward),
        ("C per-sample, hooks + guard (ours)", lambda: connectivity_sharpness(model, [(x, y)])),
        (
            "C_m mini-batch (ours)",
            lambda: connectivity_sharpness(model, [(x, y)], per_sample=False),
        ),
        (
            "C per-sample, torch.func vmap (ours)",
            lambda: connectivity_sharpness(model, [(x, y)], method="vmap", chunk_size=32),
        ),
    ]
    peers, why_not = opacus_rows(model, x, y)
    rows += peers
    if naive:
        rows.append(("C per-sample, naive loop", lambda: naive_loop(model, x, y)))
    return rows, why_not


def peak_memory_child(args: argparse.Namespace) -> None:
    """Run one row twice in this fresh process; print each call's peak memory above the setup's."""
    device = torch.device(args.device)
    model, x, _ = build(args.memory_row[0], args.batch, device)
    y = torch.randint(0, 10, (x.shape[0],), device=device)
    rows, _ = rows_for(model, x, y, naive=True)
    fn = dict(rows)[args.memory_row[1]]
    first = peak_bytes(fn, device)
    if device.type == "cpu":
        # What the first call freed stays resident unless it is handed back (glibc).
        import ctypes
        import gc

        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    peak = peak_bytes(fn, device)
    # Minor page faults of one more call, this process's memory now in its steady state.
    before = minor_faults()
    fn()
    print(json.dumps({"first_bytes": first, "peak_bytes": peak, "faults": minor_faults() - before}))


def peak_memory(args: argparse.Namespace, model_name: str, row: str) -> tuple[float, float, int]:
    """Peak memory (MiB) of ``row`` above the model and batch, on a fresh process's second
    call (the steady state) and on its first; and the minor page faults of a third call."""
    cmd = [sys.executable, __file__, "--device", args.device, "--batch", str(args.batch)]
    cmd += ["--memory-row", model_name, row]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    return peaks["peak_bytes"] / 2**20, peaks["first_bytes"] / 2**20, peaks["faults"]


# Float32 rounding of the same sum of per-sample terms is about 1e-7 relative; a peer further
# from torch.func's per-sample value than this has other per-sample gradients.
AGREEMENT_RTOL = 1e-4


def bench_model(args: argparse.Namespace, name: str) -> dict[str, float]:
    """Print one model's agreement line, its timed rows and (with ``--breakdown``) its stages.

    Returns:
        For the summary of several runs: "ours", the hook path's median x; and, where opacus
        ran, "opacus / ours", the fastest opacus row's over ours, by median ratios, and
        "opacus wrong", 1.0 where its C is off the torch.func value (else 0.0).
    """
    device = torch.device(args.device)
    model, x, what = build(name, args.batch, device)
    y = torch.randint(0, 10, (x.shape[0],), device=device)
    rows, why_not = rows_for(model, x, y, args.naive)
    ours = connectivity_sharpness(model, [(x, y)])
    print(f"\n## {name}: {what} | batch {args.batch} | eval")
    values = {"vmap": connectivity_sharpness(model, [(x, y)], method="vmap").total}
    for row_name, fn in rows:
        if "opacus" in row_name:
            values[row_name.split(", ")[1]] = fn()
    shown = ", ".join(f"{k} {v:.8g}" for k, v in values.items())
    print(f"agreement: ours C = {ours.total:.8g} ({ours.method}); {shown}")
    if ours.fallback_reason:
        print(f"ours: {ours.fallback_reason}")
    wrong = {
        k: v / values["vmap"] - 1
        for k, v in values.items()
        if k != "vmap" and abs(v / values["vmap"] - 1) > AGREEMENT_RTOL
    }
    for peer, off in wrong.items():
        print(f"{peer}: WRONG, off the torch.func per-sample value by {off:+.2%}")
    if why_not:
        print(f"opacus: not run, {why_not}")
    faults: dict[str, list[int]] = {}
    times = interleaved_times(rows, args.repeats, device, args.settle, faults)
    best = {row: min(t) for row, t in times.items()}
    unit = best[rows[0][0]]
    # The median over rounds of a row's time over the unit's in the same round: a paired
    # ratio, which a slow stretch of the machine moves less than the ratio of two best times.
    paired = {
        row: statistics.median(a / b for a, b in zip(t, times[rows[0][0]], strict=True))
        for row, t in times.items()
    }
    header = f"{'method':38s} {'seconds':>9s} {'x fwd+bwd':>10s} {'median x':>9s} {'faults':>8s}"
    memory = f" {'peak MiB':>9s} {'1st call':>9s} {'faults alone':>12s}"
    print(header + (memory if args.memory else ""))
    for row_name, _ in rows:
        line = f"{row_name:38s} {best[row_name]:9.4f} {best[row_name] / unit:10.2f}"
        line += f" {paired[row_name]:9.2f} {statistics.median(faults[row_name]):8.0f}"
        if args.memory:
            peak, first, alone = peak_memory(args, name, row_name)
            line += f" {peak:9.1f} {first:9.1f} {alone:12d}"
        print(line)
    summary = {"ours": paired[rows[1][0]]}
    peers = [r for r, _ in rows if "opacus" in r]
    if peers:
        ratio = min(best[r] for r in peers) / best[rows[1][0]]
        median = min(paired[r] for r in peers) / paired[rows[1][0]]
        summary["opacus / ours"] = median
        summary["opacus wrong"] = float(bool(wrong))
        caveat = " (opacus is wrong on this model)" if wrong else ""
        print(
            f"fastest opacus / ours (hooks + guard): {ratio:.2f}x "
            f"(median ratios: {median:.2f}x){caveat}"
        )
    if args.breakdown:
        stage_breakdown(model, x, y, args.repeats, device)
    return summary


# The target for the hook path with its guard on, in median x of a forward+backward.
TARGET = 1.3


def print_runs_summary(runs: list[dict[str, dict[str, float]]]) -> None:
    """Per model, the range over the runs of ours' median x (and how many runs are at or under
    TARGET) and of the fastest opacus over ours."""
    print(f"\n## over {len(runs)} runs (each value a run's median of per-round ratios)")
    print(f"{'model':14s} {'ours, median x':>16s} {f'<= {TARGET}':>8s} {'opacus / ours':>15s}")
    for name in runs[0]:
        ours = [run[name]["ours"] for run in runs]
        under = sum(v <= TARGET for v in ours)
        lead = [run[name]["opacus / ours"] for run in runs if "opacus / ours" in run[name]]
        lead_range = f"{min(lead):.2f}-{max(lead):.2f}" if lead else "-"
        if any(run[name].get("opacus wrong") for run in runs):
            lead_range += " (opacus wrong)"
        print(
            f"{name:14s} {f'{min(ours):.2f}-{max(ours):.2f}':>16s} "
            f"{f'{under} of {len(ours)}':>8s} {lead_range:>15s}"
        )


def stage_breakdown(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int, device: torch.device
) -> None:
    """Best time of each stage of the hook path over ``repeats`` rounds, against fwd+bwd.

    Also, as a reference outside the total: the ordinary (batch) weight-gradient kernels of the
    same conv and linear layers on the same recorded inputs and output gradients, the FLOPs the
    per-sample weight-gradient products cannot go below.
    """
    from biasdecay.sharpness import _native, _per_sample, _per_sample_products

    hooked = _per_sample.HookedPerSample(model, F.cross_entropy)
    spent: dict[str, float] = {}

    def timed(stage: str, fn: Callable[[], object]) -> object:
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        spent[stage] = spent.get(stage, 0.0) + time.perf_counter() - start
        return out

    def layer_stage(layer: nn.Module, a: torch.Tensor) -> str:
        kind = type(layer).__name__
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            plan = _per_sample_products.chosen_plan(layer, a)  # timed in the warm-up round
            return f"terms: {kind} ({plan.route if plan else 'timing plans'})"
        return f"terms: {kind}"

    terms, autograd, guard = _per_sample._layer_terms, hooked._autograd_gradient, hooked._guard
    backward = hooked.recorder.backward

    def layer_terms(layer: nn.Module, a: torch.Tensor, delta: torch.Tensor, *rest) -> object:
        stage = layer_stage(layer, a)
        out = timed(stage, lambda: terms(layer, a, delta, *rest))
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.MultiheadAttention)):
            # Here, while δ exists (the backward frees it after this layer); named as the
            # layer's terms are: "terms: Conv2d (grouped)" -> its reference.
            kind = stage.removeprefix("terms: ")
            timed(f"{REFERENCE}, {kind}", lambda: batch_weight_gradient(layer, a, delta))
        return out

    kinds = {"batch_norm": "BatchNorm", "group_norm": "GroupNorm", "layer_norm": "LayerNorm"}
    fused_norms = {f"{k}_backward": getattr(_native, f"{k}_backward") for k in kinds}

    def fused_norm_stage(kernel: str) -> Callable[..., object]:
        # A norm layer's input gradient and per-sample terms, in the pass that replaces
        # autograd's own backward of the layer (biasdecay.sharpness._fused_norm).
        stage = f"terms: {kinds[kernel.removesuffix('_backward')]}, with its backward (fused)"
        return lambda *args: timed(stage, lambda: fused_norms[kernel](*args))

    _per_sample._layer_terms = layer_terms
    for kernel in fused_norms:
        setattr(_native, kernel, fused_norm_stage(kernel))
    hooked._autograd_gradient = lambda *a: timed("guard: forward+backward", lambda: autograd(*a))
    hooked._guard = lambda *a: timed("guard: comparison", lambda: guard(*a))

    def inside_backward() -> float:
        return sum(v for k, v in spent.items() if k.startswith(("terms: ", REFERENCE)))

    def backward_alone(*args) -> None:
        """The backward pass less what runs inside it: the layers' terms (formed as it goes)
        and the references."""
        before = inside_backward()
        timed("backward to layer outputs", lambda: backward(*args))
        spent["backward to layer outputs"] -= inside_backward() - before

    hooked.recorder.backward = backward_alone

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    best: dict[str, float] = {}
    try:
        for round_ in range(repeats + 1):  # the first is a warm-up
            spent.clear()
            total = timed("total", lambda: hooked(x, y))
            assert total is not None, "a layer ran twice: the hook path does not apply"
            timed("unit", fwd_bwd)
            references = sum(v for k, v in spent.items() if k.startswith(REFERENCE))
            spent["total"] -= references
            stages = sum(
                v
                for k, v in spent.items()
                if k not in ("total", "unit") and not k.startswith(REFERENCE)
            )
            spent["forward with recording hooks, rest"] = spent["total"] - stages
            if round_:
                for stage, seconds in spent.items():
                    best[stage] = min(best.get(stage, math.inf), seconds)
    finally:
        _per_sample._layer_terms = terms
        for kernel, fn in fused_norms.items():
            setattr(_native, kernel, fn)
        hooked.close()
    unit = best.pop("unit")
    references = {k: best.pop(k) for k in sorted(best) if k.startswith(REFERENCE)}
    print(f"hook path by stage (best of {repeats}; forward+backward {unit:.4f} s)")
    for stage, seconds in sorted(best.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:38s} {seconds:9.4f} {seconds / unit:10.2f}")
    print("  reference, not in the total: the batch weight-gradient kernels of the same layers")
    for stage, seconds in references.items():
        layers = stage.removeprefix(REFERENCE + ", ")
        print(f"    {layers:36s} {seconds:9.4f} {seconds / unit:10.2f}")


REFERENCE = "batch weight gradient"


def batch_weight_gradient(layer: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The ordinary weight gradient of one conv or linear layer (an attention module: its
    packed in-projection) from its input and δ."""
    if isinstance(layer, (nn.Linear, nn.MultiheadAttention)):
        return delta.reshape(-1, delta.shape[-1]).t() @ a.reshape(-1, a.shape[-1])
    assert layer.padding_mode == "zeros" and not isinstance(layer.padding, str), layer
    return torch.ops.aten.convolution_backward(
        delta,
        a,
        layer.weight,
        None,
        layer.stride,
        layer.padding,
        layer.dilation,
        False,
        (0,) * len(layer.stride),
        layer.groups,
        (False, True, False),
    )[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"from {', '.join(MODELS)}")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--naive", action="store_true", help="add the slow per-sample loop")
    parser.add_argument("--memory", action="store_true", help="peak memory of every row")
    parser.add_argument("--breakdown", action="store_true", help="the hook path's time by stage")
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="measure every model this many times, one run after another, then print the range "
        "of each model's ratios over the runs (a machine's run-to-run spread)",
    )
    parser.add_argument(
        "--settle",
        type=int,
        default=1,
        help="untimed calls of a row before each timed one, so that each row is timed in its "
        "own steady state of the CPU heap, not in the one the previous row left (0: none)",
    )
    parser.add_argument("--memory-row", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # opacus warns about its secure RNG and full backward hooks on every model; not ours.
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message=".*full_backward_hook.*")
    if args.memory_row:
        peak_memory_child(args)
        return
    print("$ python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    print(
        f"torch {torch.__version__} | {cpu_name()} | {os.cpu_count()} cores | "
        f"threads {torch.get_num_threads()} | device {args.device} | float32 | "
        f"best of {args.repeats} interleaved rounds, {args.settle} untimed call(s) before each"
        f" | {fused_kernel()} | {allocator()}"
    )
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    runs = []
    for run in range(args.runs):
        if args.runs > 1:
            print(f"\n### run {run + 1} of {args.runs}")
        runs.append({name: bench_model(args, name) for name in args.models.split(",")})
    if args.runs > 1:
        print_runs_summary(runs)


if __name__ == "__main__":
    main()
