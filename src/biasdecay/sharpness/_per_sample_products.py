"""Per-sample Σ|W ⊙ G_n| of layers whose per-sample weight gradient G_n is not rank one.

A conv layer's G_n = Σ_s δ_n[:, s] u_n[:, s]ᵀ (u: the unfolded input), and a Linear layer
applied to a sequence has G_n = Σ_t δ_n[:, t] a_n[:, t]ᵀ. Neither factorises under the absolute
value, so G_n is formed and reduced against |W| at once, by the fastest of several exact routes
for the layer's shape, chosen by measurement:

* **The fused kernel** (:mod:`._native`, where a C compiler could build it): each register
  tile of G_n is reduced against |W| as it is formed, and the windows are read straight from a
  padded channels-last copy of each block of samples in the thread's cache, so neither G_n nor
  the unfolded input is ever written. Its cost is the matmul's FLOPs: 0.8-1.3× the batch
  weight-gradient kernel on ResNet-18's 3×3 layers (16 or more input channels) on a 2-core
  Xeon, where the best torch route took up to 3.0× (``benchmarks/bench_conv_routes.py``,
  docs/benchmarks.md).
* **Torch routes**, a chunk of samples at a time into one reused buffer
  (:class:`Workspace`: fresh memory for each chunk costs a page fault per 4 KiB on the CPU):
  for convs, the backend's grouped weight-gradient kernel with the chunk's samples as groups
  (any conv), or im2col and a batched matmul (1-D and 2-D convs), unfolding the input either as
  it is laid out (channels first) or after copying it channels last (one group); for a Linear
  on a sequence, a batched matmul.

Which is fastest depends on the layer's shape and on the CPU (fixed thresholds tuned on an AMD
EPYC chose wrongly on a Xeon), so each shape is timed once per process, on its first batch, as
``torch.backends.cudnn.benchmark`` does for kernels (:func:`conv_plan`, :func:`sequence_plan`).
The routes differ only in the order of floating-point sums.
``benchmarks/bench_connectivity.py --breakdown`` shows each route's time beside the batch
weight-gradient kernels'.

Every function also returns Σ_n w_n G_n over the guard's samples (``guard``: their weights,
one per sample from the first), which the exactness guard compares with autograd.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from biasdecay.sharpness import _native

_Conv = nn.modules.conv._ConvNd  # Conv1d/2d/3d and ConvTranspose1d/2d/3d

# Elements of one chunk's per-sample gradients: 2^19 float32 values = 2 MiB, so a chunk stays in
# cache, while each call is large enough that the per-op cost (dispatch, thread fork/join) does
# not dominate. Conv layers also time other chunk sizes (_TRIED_CHUNKS).
CHUNK_ELEMENTS = 1 << 19

# Chunks the conv routes are timed with (samples), besides the one CHUNK_ELEMENTS gives: the
# grouped kernel gains from more groups per call, up to a few dozen samples.
_TRIED_CHUNKS = (8, 32, 64)
# No chunk larger than this many elements of per-sample gradients and unfolded inputs (16 MiB
# of float32): the memory above what autograd holds stays bounded, timing plans included. At
# 8 MiB, ResNet-18's 128-channel 4×4 convs ran in chunks of 12 samples, and the per-chunk
# costs made its conv products 7-9% slower (bench_conv_routes.py, docs/benchmarks.md).
_MAX_CHUNK_ELEMENTS = 1 << 22
# Samples a conv plan is timed on (at most), and so its largest chunk: what is timed is what
# runs.
_TUNING_SAMPLES = 64


class Workspace:
    """Reused buffers, by use, dtype and device: every chunk's per-sample gradients (and
    unfolded inputs) are written to the same memory.

    The guard's sums Σ_n w_n G_n (:meth:`implied`), one per parameter, all held until the
    guard has compared them, are laid one after another in a buffer of their own, kept from
    batch to batch: fresh memory of the parameters' size on every batch costs the CPU a page
    fault per 4 KiB (``benchmarks/bench_connectivity.py --memory`` counts them per call).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}
        # the guard's sums handed out in this batch so far: elements, by dtype and device
        self._implied_used: dict[tuple[torch.dtype, torch.device], int] = {}

    def trim(self, max_elements: int) -> None:
        """Drop the buffers larger than ``max_elements``."""
        for key in [k for k, b in self._buffers.items() if b.numel() > max_elements]:
            del self._buffers[key]

    def take(self, shape: tuple[int, ...], like: torch.Tensor, use: str = "grad") -> torch.Tensor:
        """An uninitialised tensor of ``shape`` (``like``'s dtype, device) in ``use``'s buffer."""
        key = (use, like.dtype, like.device)
        n = math.prod(shape)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < n:
            buffer = self._buffers[key] = like.new_empty(n)
        return buffer[:n].view(shape)

    def begin_batch(self) -> None:
        """Start a batch: :meth:`implied` hands out its buffer from the start again, grown
        first to what the previous batch asked for. The previous batch's sums must no longer
        be in use."""
        for (dtype, device), used in self._implied_used.items():
            key = ("implied", dtype, device)
            if key not in self._buffers or self._buffers[key].numel() < used:
                self._buffers[key] = torch.empty(used, dtype=dtype, device=device)
        self._implied_used.clear()

    def implied(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape`` for one parameter's guard sum, in
        this batch's part of the kept buffer (fresh memory where the buffer is full: the first
        batch, or a larger one)."""
        where = (like.dtype, like.device)
        n, start = math.prod(shape), self._implied_used.get(where, 0)
        self._implied_used[where] = start + n
        buffer = self._buffers.get(("implied", *where))
        if buffer is None or buffer.numel() < start + n:
            return like.new_empty(shape)
        return buffer[start : start + n].view(shape)

    @contextmanager
    def trial(self) -> Iterator[None]:
        """Runs whose guard sums are thrown away (a plan's timing runs): what they take of the
        kept buffer is handed out again after them, and not counted toward its size."""
        used = dict(self._implied_used)
        try:
            yield
        finally:
            self._implied_used = used


def add_weighted_rows(total: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor) -> None:
    """total += Σ_i weights_i rows_i over the first ``len(weights)`` rows (none if empty):
    the guard's weighted sum of per-sample gradients, (n, k) rows into a (k,) total."""
    if weights.numel():
        total.addmv_(rows[: weights.numel()].t(), weights.to(rows.dtype))


# Buffers a thread keeps between measurements, up to _MAX_CHUNK_ELEMENTS each (the conv
# chunks'; a Linear on long sequences may take more for one call): a measurement of one batch
# then starts without page faults, and a thread never shares its buffers.
_KEPT = threading.local()


def thread_workspace() -> Workspace:
    """This thread's :class:`Workspace`; :func:`release_workspace` when a measurement ends."""
    work = getattr(_KEPT, "workspace", None)
    if work is None:
        work = _KEPT.workspace = Workspace()
    return work


def release_workspace(work: Workspace) -> None:
    """End a measurement's use of ``work``: buffers above the kept size are freed."""
    work.trim(_MAX_CHUNK_ELEMENTS)


def chunk_size(batch: int, per_sample_elements: int) -> int:
    """Samples per chunk so that a chunk holds about CHUNK_ELEMENTS gradient elements."""
    return max(1, min(batch, CHUNK_ELEMENTS // max(per_sample_elements, 1)))


def chunked_outer_sum(
    d: torch.Tensor, u: torch.Tensor, w_abs: torch.Tensor, guard: torch.Tensor, work: Workspace
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_ij |W_ij (d_n u_n)_ij| per sample, with d: (B, O, L), u: (B, L, I), W: (O, I) (a
    Linear layer on a sequence), by the faster route for this shape (:func:`sequence_plan`).

    Returns:
        The (B,) sums and Σ_n guard_n d_n u_n, flat in the weight's layout.
    """
    return _SEQUENCE_ROUTES[sequence_plan(d, u, w_abs, work)](d, u, w_abs, guard, work)


def _bmm_outer_sum(
    d: torch.Tensor, u: torch.Tensor, w_abs: torch.Tensor, guard: torch.Tensor, work: Workspace
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batched-matmul route: chunks of :func:`chunk_size` samples' gradients."""
    B, O, _ = d.shape
    per_sample = O * u.shape[-1]
    chunk = chunk_size(B, per_sample)
    w_flat = w_abs.reshape(-1)
    grad = work.implied(w_flat.shape, w_flat).zero_()
    parts = []
    for s in range(0, B, chunk):
        n = min(chunk, B - s)
        out = work.take((n, per_sample), d)
        parts.append(
            _outer_chunk(d[s : s + n], u[s : s + n], w_flat, 1, out, grad, guard[s : s + n])
        )
    return torch.cat(parts), grad


def _fused_outer_sum(
    d: torch.Tensor, u: torch.Tensor, w_abs: torch.Tensor, guard: torch.Tensor, work: Workspace
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused kernel (:mod:`._native`), reading each sample's (L, I) rows of ``u`` in place."""
    L, I = u.shape[1:]
    width = _native.lanes(u.dtype)
    key = ("sequence", L, u.stride(1), I, width)
    if key not in _COLUMNS:
        starts, blocks = torch.arange(L).mul_(u.stride(1)), torch.arange(0, I, width)
        _COLUMNS[key] = _native.Columns.of(starts, blocks, width)
    grad = work.implied(w_abs.shape, w_abs).zero_()
    sums = _native.abs_products(d, u, _COLUMNS[key], w_abs.contiguous(), guard, grad)
    return sums, grad.view(-1)


_SEQUENCE_ROUTES = {"bmm": _bmm_outer_sum, "fused": _fused_outer_sum}
SEQUENCE_ROUTES = tuple(_SEQUENCE_ROUTES)
# Routes chosen so far, by shape: {key: route}.
_SEQUENCE_PLANS: dict[tuple, str] = {}


def sequence_routes(d: torch.Tensor, u: torch.Tensor) -> tuple[str, ...]:
    """The routes that can take these operands: the batched matmul always, the fused kernel
    where it runs on their dtype and device and each of u's rows is whole vectors of it."""
    if _native.unavailable(u) is not None or u.stride(2) != 1:
        return ("bmm",)
    return ("bmm", "fused") if u.shape[2] % _native.lanes(u.dtype) == 0 else ("bmm",)


def sequence_plan(d: torch.Tensor, u: torch.Tensor, w_abs: torch.Tensor, work: Workspace) -> str:
    """The faster route for operands shaped like these: timed once (as :func:`conv_plan`),
    then cached."""
    key = (tuple(d.shape[1:]), tuple(u.shape[1:]), u.stride(1), u.stride(2), u.dtype)
    key += (u.device, torch.get_num_threads())
    if key not in _SEQUENCE_PLANS:
        routes = sequence_routes(d, u)
        if len(routes) == 1:
            _SEQUENCE_PLANS[key] = routes[0]
        else:
            m = min(d.shape[0], _TUNING_SAMPLES)
            unguarded = d.new_empty(0)
            runs = {
                r: lambda r=r: _SEQUENCE_ROUTES[r](d[:m], u[:m], w_abs, unguarded, work)
                for r in routes
            }
            with work.trial():
                _SEQUENCE_PLANS[key] = _fastest(runs, d.device)
    return _SEQUENCE_PLANS[key]


def _outer_chunk(
    d: torch.Tensor,
    u: torch.Tensor,
    w_flat: torch.Tensor,
    groups: int,
    out: torch.Tensor,
    grad: torch.Tensor,
    guard: torch.Tensor,
) -> torch.Tensor:
    """One chunk of :func:`chunked_outer_sum`: d (n, O, L), u (n, L, I), out (n, O·I/groups).

    Adds the per-sample gradients of the chunk's first samples, weighted by ``guard``, to
    ``grad``.
    """
    n, O, L = d.shape
    if groups == 1:
        g = torch.bmm(d, u, out=out.view(n, O, -1))  # (n, O, I): per-sample weight gradients
    else:
        I_total = u.shape[-1]
        dg = d.reshape(n, groups, O // groups, L)
        ug = u.reshape(n, L, groups, I_total // groups).transpose(1, 2)
        # (n, groups, O/g, I/g) = the weight layout (O, I/g)
        g = torch.matmul(dg, ug, out=out.view(n, groups, O // groups, -1))
    g = g.view(n, -1)
    add_weighted_rows(grad, g, guard)  # before the absolute value below overwrites g
    return torch.mv(g.abs_(), w_flat)


@dataclass(frozen=True)
class ConvPlan:
    """How a conv layer's per-sample weight gradients are formed: a route and a chunk."""

    route: str  # one of ROUTES
    chunk: int  # samples per chunk


def routes_for(layer: nn.Module) -> tuple[str, ...]:
    """The routes that can form ``layer``'s per-sample gradients: the im2col routes are written
    for 1-D and 2-D convs (the channels-last one and the fused kernel for a single group, the
    kernel where it could be built: :func:`._native.unavailable`), the grouped kernel for any
    (3-D and transposed ones included)."""
    if layer.weight.dim() > 4 or layer.transposed:
        return ("grouped",)
    if layer.groups != 1:
        return ("grouped", "im2col")
    return tuple(r for r in ROUTES if r != "fused" or _native.unavailable() is None)


def candidate_plans(
    layer: _Conv, batch: int, positions: int, padded_input: int = 0
) -> list[ConvPlan]:
    """The plans :func:`conv_plan` times for ``layer`` on ``batch`` samples with ``positions``
    output positions each (and ``padded_input`` elements in one sample's padded input, which
    the channels-last route copies a chunk of)."""
    per_sample = layer.weight.numel()
    unfolded = layer.weight[0].numel() * layer.groups * positions  # one sample's im2col block
    routes = routes_for(layer)
    elements = {
        "grouped": per_sample,
        "im2col": per_sample + unfolded,
        "im2col channels-last": per_sample + unfolded + padded_input,
    }
    plans = []
    for route in routes:
        if route == "fused":
            # No per-sample gradient, and its threads' copies of the input take blocks of a few
            # samples whatever the chunk (_native.copies_elements); its time hardly depends on
            # the chunk: the largest alone is timed.
            plans.append(ConvPlan(route, min(batch, _TUNING_SAMPLES)))
            continue
        cap = _cap(elements[route])
        tried = (chunk_size(batch, per_sample), *_TRIED_CHUNKS)
        # A single-group call takes a slower kernel path: where im2col is there instead, the
        # grouped route needs two samples.
        least = 2 if route == "grouped" and len(routes) > 1 else 1
        chunks = sorted({min(c, batch, cap) for c in tried})
        plans += [ConvPlan(route, c) for c in chunks if c >= least]
    return plans


def _cap(elements: int) -> int:
    """The most samples per chunk when each takes ``elements`` of the workspace."""
    return max(1, min(_TUNING_SAMPLES, _MAX_CHUNK_ELEMENTS // max(elements, 1)))


# Plans chosen so far, by layer geometry: {key: plan}.
_PLANS: dict[tuple, ConvPlan] = {}


def _geometry(layer: nn.Module, a: torch.Tensor) -> tuple:
    return (
        type(layer),
        tuple(layer.weight.shape),
        tuple(a.shape[1:]),
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
        layer.padding_mode,
        a.dtype,
        a.device,
        torch.get_num_threads(),
    )


def conv_plan(layer: _Conv, a: torch.Tensor, delta: torch.Tensor, work: Workspace) -> ConvPlan:
    """The fastest plan for ``layer`` with inputs shaped like ``a``: timed once, then cached.

    The candidates each run on the batch's first samples (at most _TUNING_SAMPLES), timed by
    :func:`_fastest`.
    """
    key = _geometry(layer, a)
    plan = _PLANS.get(key)
    if plan is None:
        plans = plans_for(layer, a, delta)
        if len(plans) == 1:
            plan = plans[0]
        else:
            m = min(a.shape[0], _TUNING_SAMPLES)
            runs = {p: _plan_run(layer, a[:m], delta[:m], p, work) for p in plans}
            with work.trial():
                plan = _fastest(runs, a.device)
        _PLANS[key] = plan
    return plan


def plans_for(layer: _Conv, a: torch.Tensor, delta: torch.Tensor) -> list[ConvPlan]:
    """:func:`candidate_plans` for ``layer`` with input ``a`` and output gradient ``delta``
    (without the fused kernel where it cannot take ``a``'s dtype or device)."""
    plans = candidate_plans(layer, a.shape[0], delta[0, 0].numel(), _padded_elements(layer, a[0]))
    if _native.unavailable(a) is not None:
        plans = [p for p in plans if p.route != "fused"]
    return plans


def _padded_elements(layer: _Conv, sample: torch.Tensor) -> int:
    """Elements of one sample's input once padded as ``layer`` pads it."""
    if isinstance(layer.padding, str):  # 'same' pads by at most the kernel's reach
        pads = [d * (k - 1) for k, d in zip(layer.kernel_size, layer.dilation, strict=True)]
    else:
        pads = [2 * p for p in layer.padding]
    return sample.shape[0] * math.prod(n + p for n, p in zip(sample.shape[1:], pads, strict=True))


def chosen_plan(layer: _Conv, a: torch.Tensor) -> ConvPlan | None:
    """The plan :func:`conv_plan` chose for this layer geometry, if it has been timed."""
    return _PLANS.get(_geometry(layer, a))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_TIMED_ROUNDS = 3
_clock = time.perf_counter  # what plans are timed by (a test gives its own)


def _plan_run(
    layer: nn.Module, a: torch.Tensor, delta: torch.Tensor, plan: ConvPlan, work: Workspace
) -> Callable[[], object]:
    """One call of ``plan`` on these operands, without the guard's sum: what is timed."""
    unguarded = a.new_empty(0)
    return lambda: conv_weight_terms(layer, a, delta, unguarded, work, plan)


def _fastest(runs: dict[Any, Callable[[], object]], device: torch.device) -> Any:
    """The key of the fastest of ``runs``: each is called once to warm up (a backend builds its
    kernel for a new shape), then once per round for _TIMED_ROUNDS rounds, and its best time
    counts (timings on a shared machine are noisy upwards).

    The rounds interleave the candidates, so a slow stretch of the machine slows one run of
    each candidate, not every run of one candidate. Timed one candidate after the other (best
    of two runs each), a slower route was chosen for some of ResNet-18's layers in one
    benchmark run (docs/benchmarks.md).
    """
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, math.inf)
    for _ in range(_TIMED_ROUNDS):
        for key, run in runs.items():
            _sync(device)
            start = _clock()
            run()
            _sync(device)
            best[key] = min(best[key], _clock() - start)
    return min(runs, key=best.__getitem__)


def conv_weight_terms(
    layer: _Conv,
    a: torch.Tensor,
    delta: torch.Tensor,
    guard: torch.Tensor,
    work: Workspace,
    plan: ConvPlan | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Σ|W ⊙ G_n| of a conv layer, (B,), and Σ_n guard_n G_n.

    Args:
        a: the layer's input; delta: the gradient at its output (per sample).
        plan: how; default :func:`conv_plan`'s choice.
    """
    plan = plan or conv_plan(layer, a, delta, work)
    padding = layer.padding
    if isinstance(padding, str) or layer.padding_mode != "zeros":
        # Pad exactly as the layer does ('same', reflect, ...), then work without padding.
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        a = F.pad(a, layer._reversed_padding_repeated_twice, mode=mode)
        padding = (0,) * len(layer.kernel_size)
    operands = _ConvOperands(layer, a, delta, tuple(padding))
    return _ROUTES[plan.route](operands, guard, plan.chunk, work)


@dataclass(frozen=True)
class _ConvOperands:
    """What every route reads: the layer, its input (padded here where the layer pads other
    than with explicit zeros), the output gradient, the padding left to apply, and |W|."""

    layer: nn.Module
    a: torch.Tensor
    delta: torch.Tensor
    padding: tuple[int, ...]

    @cached_property
    def w_abs(self) -> torch.Tensor:
        return self.layer.weight.detach().abs()


def _grouped(
    operands: _ConvOperands, guard: torch.Tensor, chunk: int, work: Workspace
) -> tuple[torch.Tensor, torch.Tensor]:
    """The grouped route (the kernel allocates its output: ``work`` is not used).

    A chunk of n samples is laid side by side in the channel dimension, (1, n·C_in, …), and
    treated as one sample of a conv with n·groups groups: its weight gradient, computed by the
    backend's own weight-gradient kernel (oneDNN, cuDNN), is the stack of the n samples'
    per-sample gradients, (n·C_out, C_in/groups, …) — for a transposed conv, whose weight is
    (C_in, C_out/groups, …), (n·C_in, C_out/groups, …). This costs the FLOPs of the ordinary
    weight gradient.
    """
    layer, w_abs, padding = operands.layer, operands.w_abs, operands.padding
    a, delta = operands.a.contiguous(), operands.delta.contiguous()
    B = a.shape[0]
    rows = w_abs.shape[0]  # C_out, or C_in for a transposed conv
    w_flat = w_abs.reshape(-1)
    # The kernel reads only the weight's shape: a stride-0 view of one element stands for it.
    weight_shape = a.new_empty(()).expand(chunk * rows, *w_abs.shape[1:])
    output_padding = _output_padding(layer, a, delta, padding)
    parts, grad = [], work.implied(w_flat.shape, w_flat).zero_()
    for s in range(0, B, chunk):
        n = min(chunk, B - s)
        _, g, _ = torch.ops.aten.convolution_backward(
            delta[s : s + n].reshape(1, -1, *delta.shape[2:]),
            a[s : s + n].reshape(1, -1, *a.shape[2:]),
            weight_shape[: n * rows],
            None,
            layer.stride,
            padding,
            layer.dilation,
            layer.transposed,
            output_padding,
            n * layer.groups,
            (False, True, False),
        )
        g = g.reshape(n, -1)  # (n, C_out·C_in/groups·k…): the per-sample weight gradients
        add_weighted_rows(grad, g, guard[s : s + n])  # before abs_ overwrites g
        parts.append(torch.mv(g.abs_(), w_flat))
    return torch.cat(parts), grad.reshape(w_abs.shape)


def _output_padding(
    layer: nn.Module, a: torch.Tensor, delta: torch.Tensor, padding: tuple[int, ...]
) -> tuple[int, ...]:
    """A transposed conv's output padding, from the shapes of its input and output: the
    forward may have been given ``output_size`` rather than used ``layer.output_padding``.
    Zeros for an ordinary conv."""
    if not layer.transposed:
        return (0,) * len(padding)
    return tuple(
        out - ((size - 1) * stride - 2 * pad + dil * (k - 1) + 1)
        for out, size, stride, pad, dil, k in zip(
            delta.shape[2:],
            a.shape[2:],
            layer.stride,
            padding,
            layer.dilation,
            layer.kernel_size,
            strict=True,
        )
    )


@dataclass(frozen=True)
class _Conv2dView:
    """A 1-D or 2-D conv's operands as a 2-D conv's (a 1-D conv is one of height 1): what both
    im2col routes read."""

    a: torch.Tensor  # (B, C, H, W), not padded
    d: torch.Tensor  # (B, O, L): the output gradient, positions flattened
    padding: tuple[int, int]  # still to apply, with zeros
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    out_size: tuple[int, int]  # (h_out, w_out), h_out · w_out = L


def _as_2d(operands: _ConvOperands) -> _Conv2dView:
    layer, a, delta = operands.layer, operands.a, operands.delta
    one_d = a.dim() == 3  # as a 2-D conv of height 1: kernel, stride, dilation 1, no padding

    def lift(t: tuple[int, ...], height: int = 1) -> tuple[int, int]:
        return (height, *t) if one_d else tuple(t)

    if one_d:
        a, delta = a.unsqueeze(2), delta.unsqueeze(2)
    view = _Conv2dView(
        a,
        delta.reshape(*delta.shape[:2], -1),
        lift(operands.padding, 0),
        lift(layer.kernel_size),
        lift(layer.stride),
        lift(layer.dilation),
        tuple(delta.shape[2:]),
    )
    # The unfolds read windows through as_strided, which checks only the whole batch's
    # storage: the windows must fit each sample's padded input.
    fits = tuple(
        (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
        for size, pad, dil, k, stride in zip(
            a.shape[2:], view.padding, view.dilation, view.kernel, view.stride, strict=True
        )
    )
    assert fits == view.out_size, (fits, view.out_size)
    return view


def _unfolded(
    operands: _ConvOperands, guard: torch.Tensor, chunk: int, work: Workspace
) -> tuple[torch.Tensor, torch.Tensor]:
    """The im2col route: unfold a chunk of inputs (:func:`_unfold`), then a batched matmul."""
    view, w_abs = _as_2d(operands), operands.w_abs
    (ph, pw), a = view.padding, view.a
    if ph or pw:
        a = F.pad(a, (pw, pw, ph, ph))
    B, d = a.shape[0], view.d
    w_flat = w_abs.reshape(-1)
    per_sample = w_flat.numel()
    parts, grad = [], work.implied(w_flat.shape, w_flat).zero_()
    for s in range(0, B, chunk):
        n = min(chunk, B - s)
        # Unfolded a chunk at a time: the block and its gradients stay in cache.
        u = _unfold(a[s : s + n], view, work)
        out = work.take((n, per_sample), d)
        parts.append(
            _outer_chunk(
                d[s : s + n],
                u.transpose(1, 2),
                w_flat,
                operands.layer.groups,
                out,
                grad,
                guard[s : s + n],
            )
        )
    return torch.cat(parts), grad.reshape(w_abs.shape)


def _unfold(a: torch.Tensor, view: _Conv2dView, work: Workspace) -> torch.Tensor:
    """``F.unfold`` of a chunk of ``view``'s padded (n, C, H, W) input, (n, C·kh·kw, L), in the
    workspace.

    A strided view of the input copied into the buffer: on a 2-core Xeon, much faster than
    ``F.unfold`` on large feature maps (and a little slower on 4×4 ones).
    """
    n, C = a.shape[:2]
    (kh, kw), (dh, dw), (sh, sw) = view.kernel, view.dilation, view.stride
    h_out, w_out = view.out_size
    sn, sc, s_h, s_w = a.stride()
    windows = a.as_strided(
        (n, C, kh, kw, h_out, w_out), (sn, sc, dh * s_h, dw * s_w, sh * s_h, sw * s_w)
    )
    out = work.take((n, C, kh, kw, h_out, w_out), a, use="unfold")
    return out.copy_(windows).view(n, C * kh * kw, h_out * w_out)


def _unfolded_channels_last(
    operands: _ConvOperands, guard: torch.Tensor, chunk: int, work: Workspace
) -> tuple[torch.Tensor, torch.Tensor]:
    """The channels-last im2col route (one group): each chunk of inputs is copied, padded, into
    (n, H, W, C) order, so that a window's C channels are contiguous and the chunk unfolds as a
    copy of whole channel vectors, (n, L, kh·kw·C), where the channels-first unfold copies rows
    of w_out values (4 on a 4×4 map).

    The per-sample gradients come out in the weight order (O, kh, kw, C): |W| and the guard's
    sum are permuted to it and back.
    """
    view = _as_2d(operands)
    a, d = view.a, view.d
    (B, C, H, W), O = a.shape, d.shape[1]
    (ph, pw), (kh, kw) = view.padding, view.kernel
    w_abs = operands.w_abs.view(O, C, kh, kw)  # a 1-D conv's too
    w_flat = w_abs.permute(0, 2, 3, 1).reshape(-1)  # (O, kh, kw, C), the columns' order
    per_sample = w_flat.numel()
    parts, grad = [], work.take(w_flat.shape, w_flat, use="guard sum").zero_()
    for s in range(0, B, chunk):
        n = min(chunk, B - s)
        rows = work.take((n, H + 2 * ph, W + 2 * pw, C), a, use="channels last")
        if s == 0 and (ph or pw):
            # The border, once: every chunk (the last, shorter one too, a prefix of the same
            # layout) writes only the interior of the same buffer.
            rows.zero_()
        rows[:, ph : ph + H, pw : pw + W].copy_(a[s : s + n].permute(0, 2, 3, 1))
        u = _unfold_channels_last(rows, view, work)
        out = work.take((n, per_sample), d)
        parts.append(_outer_chunk(d[s : s + n], u, w_flat, 1, out, grad, guard[s : s + n]))
    return torch.cat(parts), _in_weight_order(grad.view(O, kh, kw, C), operands, work)


def _in_weight_order(grad: torch.Tensor, operands: _ConvOperands, work: Workspace) -> torch.Tensor:
    """The guard's sum, accumulated in the columns' order (O, kh, kw, C), copied into the
    weight's own order (O, C, kh, kw) (a 1-D conv's: (O, C, k))."""
    weight = operands.layer.weight
    out = work.implied(tuple(weight.shape), grad)
    out.view(grad.shape[0], grad.shape[3], *grad.shape[1:3]).copy_(grad.permute(0, 3, 1, 2))
    return out


def _unfold_channels_last(rows: torch.Tensor, view: _Conv2dView, work: Workspace) -> torch.Tensor:
    """A padded (n, H, W, C) chunk unfolded as (n, L, kh·kw·C), in the workspace."""
    n, _, _, C = rows.shape
    (kh, kw), (dh, dw), (sh, sw) = view.kernel, view.dilation, view.stride
    h_out, w_out = view.out_size
    sn, s_h, s_w, sc = rows.stride()
    windows = rows.as_strided(
        (n, h_out, w_out, kh, kw, C), (sn, sh * s_h, sw * s_w, dh * s_h, dw * s_w, sc)
    )
    out = work.take((n, h_out, w_out, kh, kw, C), rows, use="unfold")
    return out.copy_(windows).view(n, h_out * w_out, kh * kw * C)


def _fused(
    operands: _ConvOperands, guard: torch.Tensor, chunk: int, work: Workspace
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused route (one group, 1-D and 2-D convs): the kernel of :mod:`._native` copies
    each block of samples into a padded channels-last buffer of its thread (in cache), reads
    each window straight from it and reduces every tile of the per-sample gradients against |W|
    as it forms it, so neither the unfolded input nor a per-sample gradient is written.

    The channels are padded with zeros up to whole vectors of the kernel (and |W| with zero
    columns), which adds nothing to any sum.
    """
    view = _as_2d(operands)
    a, d = view.a, view.d
    (B, C, _, W), O = a.shape, d.shape[1]
    (ph, pw), (kh, kw) = view.padding, view.kernel
    width = _native.lanes(a.dtype)
    channels = -(-C // width) * width  # the copies' channels: padded to whole vectors
    # |W| in the columns' order (O, kh, kw, C), its channels padded: one pass, in the workspace.
    w_abs = work.take((O, kh, kw, channels), a, use="weights")
    weight = operands.layer.weight.detach().view(O, C, kh, kw).permute(0, 2, 3, 1)
    torch.abs(weight, out=w_abs[..., :C])
    if channels != C:
        w_abs[..., C:].zero_()
    columns = _window_columns(view, W + 2 * pw, channels, width)
    grad = work.take(w_abs.shape, w_abs, use="guard sum").zero_()
    w_abs, grad_rows = w_abs.view(O, -1), grad.view(O, -1)
    planar = _native.Planar(a, (ph, pw), channels)
    # The kernel's threads copy blocks of samples, padded channels last, into this buffer; they
    # write the interior alone, so the border and the padding channels are zeroed once.
    size = _native.copies_elements(planar, guard.numel())
    copies = work.take((size,), a, use="channels last").zero_()
    parts = []
    for s in range(0, B, chunk):
        n = min(chunk, B - s)
        rows = _native.Planar(a[s : s + n], (ph, pw), channels)
        parts.append(
            _native.abs_products(d[s : s + n], rows, columns, w_abs, guard[s:], grad_rows, copies)
        )
    return torch.cat(parts), _in_weight_order(grad[..., :C], operands, work)


# Column layouts of the fused route, by window geometry: {key: _native.Columns}.
_COLUMNS: dict[tuple, _native.Columns] = {}


def _window_columns(
    view: _Conv2dView, padded_width: int, channels: int, width: int
) -> _native.Columns:
    """Where the fused kernel finds U_n in a padded (n, H, W, channels) sample: the start of
    output position l's window (off_l), and of each block of ``width`` channels at each kernel
    position, in the weight's (kh, kw, C) order, within a window (off_k)."""
    key = (view.kernel, view.dilation, view.stride, view.out_size, padded_width, channels, width)
    if key not in _COLUMNS:
        (kh, kw), (dh, dw), (sh, sw) = view.kernel, view.dilation, view.stride
        h_out, w_out = view.out_size
        starts = torch.arange(h_out).mul_(sh * padded_width).view(-1, 1)
        off_l = (starts + torch.arange(w_out).mul_(sw)).mul_(channels).view(-1)
        taps = torch.arange(kh).mul_(dh * padded_width).view(-1, 1) + torch.arange(kw).mul_(dw)
        off_k = (taps.view(-1, 1) * channels + torch.arange(0, channels, width)).view(-1)
        _COLUMNS[key] = _native.Columns.of(off_l, off_k, width)
    return _COLUMNS[key]


# The ways of forming a conv layer's per-sample weight gradients, each exact.
_ROUTES = {
    "grouped": _grouped,
    "im2col": _unfolded,
    "im2col channels-last": _unfolded_channels_last,
    "fused": _fused,
}
ROUTES = tuple(_ROUTES)
