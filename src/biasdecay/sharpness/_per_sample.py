"""Per-sample |θ ⊙ ∂ℓ_n/∂θ| sums without materialising every per-sample gradient of the model.

One forward pass records each supported layer's input, and one backward pass (to the layer
outputs only, so no parameter gradient is ever formed) hands on each layer's output gradient as
it is formed. For sample ``n`` the loss is ℓ_n, so the output gradient of ``Σ_n ℓ_n`` restricted
to row ``n`` is exactly ∂ℓ_n/∂(layer output)_n — samples do not interact in eval mode. Each
layer forms only its own per-sample quantities, there and then:

* Linear (2-D input): the per-sample weight gradient δ_n a_nᵀ is rank one, so
  Σ_ij |W_ij δ_ni a_nj| = |δ_n|ᵀ |W| |a_n| — one matrix product, no per-sample gradient at all
  (Hugging Face's Conv1D, whose weight is stored transposed, likewise).
* Conv, and Linear on a sequence: the per-sample weight gradient Σ_s δ_n[:, s] u_n[:, s]ᵀ
  (u = unfolded input) is not rank one, so it is formed a chunk of samples at a time (bounded
  memory) or never written at all (a fused kernel), by the fastest of the measured routes
  (:mod:`._per_sample_products`).
* Embedding: sample n's gradient sums δ over n's tokens per table row, so δ is summed per
  distinct (sample, token) pair and weighed against that row of |E|.
* Norm layers (BatchNorm with running statistics, InstanceNorm, GroupNorm, LayerNorm):
  per-sample γ and β gradients are reductions of δ·x̂ and δ (by the backend's norm backward
  kernel, except for LayerNorm).

The formulas apply to the exact classes of the module-type table in :mod:`biasdecay.roles`
only. The parameters of anything else (an unregistered parametrised module, a parameter shared
between modules) are named by :func:`parameters_without_formula`, and the caller computes
theirs alone through the generic ``torch.func`` path, beside the formulas for the rest; a module
called twice sends every parameter there.

**The exactness guard.** A formula is only right if the parameter is used as the formula assumes:
once, inside its own module's standard forward. A subclass with its own forward, a weight tied
into another layer through ``F.linear`` or a reparametrisation break that without a sign. So
every batch, the signed per-sample products the formula implies for its first few samples are
summed with distinct weights w_n = 1, 2, … and compared, per parameter, with θ ⊙ g for the
gradient g of those samples' weighted loss Σ_n w_n ℓ_n that autograd computes through whatever
the model really does (one extra forward and backward of those samples). The weights make a
formula that gives one sample's rows to another fail even within the checked samples, which a
plain sum would not see. A parameter that fails is recomputed through ``torch.func`` for that
batch and every later one (or, under ``strict``, raises).
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Collection
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from biasdecay.roles import op_of
from biasdecay.sharpness import _native
from biasdecay.sharpness._attention import PARTS, recorded_forward, why_not_covered
from biasdecay.sharpness._autodiff import LossFn, check_batch_mean
from biasdecay.sharpness._fused_norm import fused_backward, with_per_sample_sums
from biasdecay.sharpness._per_sample_products import (
    Workspace,
    add_weighted_rows,
    chunked_outer_sum,
    conv_weight_terms,
    release_workspace,
    thread_workspace,
)
from biasdecay.sharpness._scale_uses import scale_layouts

# How far the formula's batch gradient may stray from autograd's, relative to the parameter's
# largest |θ ⊙ g|: summation-order noise of the dtype, far below what a wrong formula gives
# (a weight-standardised conv or a tied weight is off by O(1)).
_GUARD_RTOL = {torch.float64: 1e-9, torch.float32: 1e-3}
_GUARD_RTOL_LOW_PRECISION = 5e-2  # bf16, fp16


# The guard checks the first samples of each batch: a parameter misused (a tied weight, a
# subclass's own forward) is misused on every sample. A forward and backward of 4 samples cost
# 0.06-0.09 of a forward and backward of the batch on ResNet-18 and the transformer blocks at
# batch 128 on a 2-core CPU (8 samples: 0.09-0.13), and 0.36 on the small MLP, where per-op
# costs dominate (bench_connectivity.py --breakdown, "guard: forward+backward"). Fewer samples
# would cost less and see less (a sample on which the misuse happens to vanish); four distinct
# weights still tell every sample's rows from every other's.
GUARD_SAMPLES = 4


def guard_samples(batch: int) -> int:
    """How many of a batch's first samples the guard checks: GUARD_SAMPLES, and never the whole
    batch of two or more. A sum over every sample cannot tell which rows belong to which sample
    (a layer applied to a (tokens, batch, ...) tensor with as many tokens as samples passed it),
    and a sum over a strict subset can."""
    return min(GUARD_SAMPLES, batch - 1) if batch > 1 else 1


def guard_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the exactness guard for parameters of ``dtype``."""
    return _GUARD_RTOL.get(dtype, _GUARD_RTOL_LOW_PRECISION)


def vanishing_level(dtype: torch.dtype) -> float:
    """The share of the checked samples' C below which a parameter's contribution is rounding.

    A parameter whose gradient vanishes on every sample (a conv bias followed by InstanceNorm,
    or GroupNorm with one channel per group, which subtracts each channel's mean, so that
    Σ_s δ_s = 0) has θ⊙g and the formula's θ⊙Σ_n g_n both at rounding level: their relative
    difference is O(1) whatever the formula, and a relative test cannot tell. The guard passes
    such a parameter when autograd's Σ|θ⊙g|, the formula's Σ|θ⊙Σ_n w_n g_n| and its per-sample
    terms Σ_n w_n Σ|θ⊙g_n| are all below this share of the same samples' terms of the parameters
    that passed, so that it cannot move C by more than that share: a thousand roundings of the
    dtype, and never over a tenth of the guard's tolerance (2.3e-13 in float64, 1e-4 in
    float32).
    """
    return min(1024 * torch.finfo(dtype).eps, guard_tolerance(dtype) / 10)


def _own_trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]


def samples_interact(model: nn.Module) -> str | None:
    """Why the samples of a batch interact in the model's eval forward, or None.

    A BatchNorm without running statistics (``track_running_stats=False``) normalises with the
    batch's own statistics in eval mode too, so each sample's loss depends on the others: there
    is no per-sample gradient of a fixed function, on any path. (Run on one sample alone, as
    ``torch.func`` and the one-sample loop would, it normalises that sample with its own
    statistics: another function, and another number.)
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None:
            return (
                f"BatchNorm '{name}' ({type(module).__name__}) has no running statistics "
                "(track_running_stats=False), so in eval mode it normalises each batch with the "
                "batch's own statistics and the samples' losses depend on one another"
            )
    return None


def parameters_without_formula(model: nn.Module) -> dict[str, str]:
    """The trainable parameters of ``model`` that no layer formula covers, each with why.

    A parameter is left to the generic path (``torch.func``) when its own module has no
    per-sample formula (no known operation: a class outside the module-type table, a subclass
    with its own forward, a module holding a class token or a position table itself), when its
    module is an ``nn.MultiheadAttention`` or an Embedding that the formula does not cover, or
    when it is shared between modules. Every other parameter keeps its formula. The model's
    samples must not interact (:func:`samples_interact`), which the caller checks first:
    without that no path has a per-sample gradient to compute.

    Returns:
        ``{parameter name: why no formula covers it}``, in the model's order; empty when the
        hook path covers every trainable parameter.
    """
    name_of = {id(p): n for n, p in model.named_parameters()}
    owner_of: dict[int, str] = {}
    left: dict[str, str] = {}
    uncovered: dict[str, str] = {}  # output projections of attention the formula does not cover
    for name, module in model.named_modules():
        why = uncovered.get(name) or _module_without_formula(name, module)
        if why is not None and op_of(module) == "multihead_attention":
            # F.multi_head_attention_forward applies out_proj's weights itself
            uncovered[f"{name}.out_proj" if name else "out_proj"] = why
        own = _own_trainable(module)
        if not own:
            continue
        for _, p in own:
            if id(p) in owner_of:
                why_shared = (
                    f"it is shared by modules '{owner_of[id(p)]}' and '{name}', and a formula "
                    "assumes a parameter used by one module"
                )
                left.setdefault(name_of[id(p)], why_shared)
                continue
            owner_of[id(p)] = name
            if why is not None:
                left[name_of[id(p)]] = why
    return left


def _module_without_formula(name: str, module: nn.Module) -> str | None:
    """Why the per-sample formulas do not cover ``module``'s own parameters, or None."""
    op = op_of(module)
    if op not in _HANDLERS:
        what = "no known operation" if op is None else f"no per-sample formula for {op}"
        return (
            f"its module '{name}' ({type(module).__name__}) has {what} "
            "(biasdecay.roles.register_module_type declares a standard one)"
        )
    if op == "multihead_attention" and why_not_covered(module) is not None:
        return (
            f"its module, nn.MultiheadAttention '{name}', has {why_not_covered(module)}, which "
            "the per-sample formula does not cover"
        )
    if op == "embedding" and module.scale_grad_by_freq:
        return (
            f"its module, Embedding '{name}', scales its gradient by the batch's token "
            "frequencies (scale_grad_by_freq), which the per-sample formula does not"
        )
    return None


class _Recorder:
    """Forward hooks that keep each layer's input and hand its output's gradient on as soon as
    the backward pass has formed it.

    In the measured forward each layer's output gets a tensor hook (it receives the gradient of
    the value the layer returned, even where a later in-place op changes the tensor:
    ``out += shortcut``, ReLU(inplace=True)) and its gradient edge is noted. The backward pass
    then asks autograd for the gradients at the edges of the *lowest* layers alone (those with
    no other recorded layer below them), which drives it through every layer's output but
    computes neither a parameter gradient nor the input's. So each output gradient is used
    while it is fresh in cache and freed by autograd as in an ordinary backward: the pass
    never holds every layer's output gradient at once (holding them all costs memory, and on
    the CPU page faults on every batch). ``on_gradient(name, grad)`` receives them.
    """

    def __init__(self, model: nn.Module, skip: Collection[str] = ()) -> None:
        self.layers: list[tuple[str, nn.Module]] = [
            (n, m) for n, m in model.named_modules() if _own_trainable(m) and n not in skip
        ]
        self.inputs: dict[str, torch.Tensor] = {}
        self.edges: dict[str, object] = {}
        self.calls: dict[str, int] = {}
        self.on_gradient = None  # callable(name, grad), set by the user of the recorder
        # callable(name, per-sample γ gradients, per-sample β gradients): a norm layer whose
        # backward forms them (biasdecay.sharpness._fused_norm), when ``fuse`` is on
        self.on_norm_sums = None
        self.fuse = True
        self.active = False  # on during the measured forward alone
        self.batch: int | None = None  # the measured batch's size, set before its forward
        self.expand_tables = True  # see _expanded_lookup
        self.expanded: set[str] = set()
        self._lowest: set[str] = set()  # layers whose gradients autograd is asked for
        self._tables = {n for n, m in self.layers if op_of(m) == "embedding"}
        # Layers a measured forward ran in a way no formula covers: {name: why}
        self.not_covered: dict[str, str] = {}
        self._handles = [
            m.register_forward_hook(self._make_hook(n), with_kwargs=False)
            for n, m in self.layers
            if op_of(m) != "multihead_attention"
        ]
        # Attention modules apply their weights inside one function: their measured forward
        # is computed in steps the recorder sees (biasdecay.sharpness._attention).
        self._patched: list[tuple[nn.Module, object]] = []
        for n, m in self.layers:
            if op_of(m) == "multihead_attention":
                self._patched.append((m, m.__dict__.get("forward")))
                m.forward = recorded_forward(
                    m, n, self._record_output, self._measuring, self._not_covered
                )

    def _measuring(self) -> bool:
        """Whether this forward is the measured one (not the guard's, nor torch.func's)."""
        return self.active and torch.is_grad_enabled()

    def _record_output(self, name: str, a: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Keep a layer's input; hand its output's gradient on when the backward forms it."""
        self.calls[name] = self.calls.get(name, 0) + 1
        self.inputs[name] = a.detach()
        if output.requires_grad:
            self.take_gradient(name, output)
        return output

    def take_gradient(self, name: str, leaf: torch.Tensor) -> None:
        """Hand on ``leaf``'s gradient under ``name`` when the backward forms it."""
        self.edges[name] = torch.autograd.graph.get_gradient_edge(leaf)
        leaf.register_hook(self._gradient_hook(name))

    def _not_covered(self, name: str, why: str) -> None:
        """An attention module ran as its formula does not cover: it and its output projection
        (whose own forward did not run) get no terms."""
        self.not_covered[name] = why
        self.not_covered[f"{name}.out_proj" if name else "out_proj"] = why

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not self._measuring():
                return None
            a, replaced = args[0].detach(), None
            fused = fused_backward(module, args[0], output, self.batch) if self.fuse else None
            if fused is not None and output.requires_grad:
                # Its terms come from its own backward, in the pass that forms its input's
                # gradient; its edge is its input's, so that the backward runs it.
                self.calls[name] = self.calls.get(name, 0) + 1
                sink = lambda g_gamma, g_beta: self.on_norm_sums(name, g_gamma, g_beta)  # noqa: E731
                self.edges[name] = torch.autograd.graph.get_gradient_edge(args[0])
                return with_per_sample_sums(args[0], output, fused, sink)
            if output.requires_grad and self._one_lookup_for_the_batch(name, a):
                a, replaced = self._expanded_lookup(a, output)
                output = replaced
                self.expanded.add(name)
            self._record_output(name, a, output)
            return replaced

        return hook

    def _gradient_hook(self, name: str):
        def take(grad: torch.Tensor) -> torch.Tensor | None:
            with torch.no_grad():
                self.on_gradient(name, grad)
            if name in self._lowest:
                # Captured for autograd.grad's result, which is not used, and not propagated
                # further (nothing recorded lies below): a stride-0 zero frees it now.
                return grad.new_zeros(()).expand(grad.shape)
            return None

        return take

    def _one_lookup_for_the_batch(self, name: str, ids: torch.Tensor) -> bool:
        """An Embedding looked up once for the whole batch: ids of shape (1, T…) or (T,)."""
        if not self.expand_tables or self.batch is None or name not in self._tables:
            return False
        return self.batch > 1 and (ids.dim() == 1 or (ids.dim() > 1 and ids.shape[0] == 1))

    def _expanded_lookup(
        self, ids: torch.Tensor, output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The lookup and its output expanded over the batch (views, no copy).

        A position table looked up as ``pos(arange(T))`` and broadcast over the batch gets, at
        its output, the gradient summed over the samples: no formula can split it. Handed to the
        model expanded to one row per sample, the output broadcasts as before, and its gradient
        is per sample. If the model treats the expanded output otherwise (it is not broadcast),
        the guard's autograd pass, which runs the model untouched, tells; if it fails, the
        forward is run again without expansion (:class:`HookedPerSample`).
        """
        if ids.dim() == 1:  # (T,) -> (1, T)
            ids, output = ids.unsqueeze(0), output.unsqueeze(0)
        batch = self.batch
        return ids.expand(batch, *ids.shape[1:]), output.expand(batch, *output.shape[1:])

    def backward(self, total: torch.Tensor) -> None:
        """Back-propagate ``total`` through every recorded layer's output; each output gradient
        goes to ``on_gradient`` as it is formed."""
        self._lowest = set(lowest_layers(self.edges))
        # One edge may stand for two layers (a fused norm layer's is its input's).
        lowest = {(id(e.node), e.output_nr): e for n, e in self.edges.items() if n in self._lowest}
        edges = list(lowest.values())
        try:
            torch.autograd.grad(total, edges, allow_unused=True)
        finally:
            self._lowest = set()

    def clear(self) -> None:
        self.inputs.clear()
        self.edges.clear()
        self.calls.clear()
        self.expanded.clear()
        self.not_covered.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        for module, forward in self._patched:
            del module.forward
            if forward is not None:  # a forward of the module's own instance, put back
                module.forward = forward
        self._patched.clear()


def lowest_layers(edges: dict[str, object]) -> list[str]:
    """The layers (of ``{name: gradient edge}``) whose backward node has no other layer's node
    below it in the autograd graph.

    Asking autograd for the gradients at these edges alone runs every other layer's node (each
    lies above one of them), so every layer's output gradient is formed, and only these few
    are kept for the result. One pass over the graph (each node once).
    """
    recorded = {id(e.node) for e in edges.values()}
    below: dict[int, bool] = {}  # node -> whether a recorded node lies strictly below it
    children: dict[int, list] = {}
    for start in {id(e.node): e.node for e in edges.values()}.values():
        stack = [(start, False)]
        while stack:
            node, finished = stack.pop()
            key = id(node)
            if finished:
                below[key] = any(id(c) in recorded or below[id(c)] for c in children[key])
                continue
            if key in children:  # visited from another parent (a DAG: it is finished)
                continue
            kids = children[key] = [c for c, _ in node.next_functions if c is not None]
            stack.append((node, True))
            stack.extend((c, False) for c in kids if id(c) not in children)
    return [n for n, e in edges.items() if not below[id(e.node)]]


# A layer's terms: {local parameter name: (per-sample Σ|θ⊙g_n| of shape (B,), Σ_n w_n g_n
# over the guard's samples, shaped like the parameter)}; ``guard`` holds the weights w_n of the
# batch's first samples. The second is what the guard compares with autograd's gradient of
# those samples' weighted loss Σ_n w_n ℓ_n.
Terms = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _weighted(rows: torch.Tensor, guard: torch.Tensor) -> torch.Tensor:
    """Σ_n w_n rows_n over the guard's samples: (B, *shape) rows into a (*shape) sum."""
    total = rows.new_zeros(rows[0].numel())
    add_weighted_rows(total, rows.reshape(rows.shape[0], -1), guard)
    return total.view(rows.shape[1:])


def _linear_terms(
    layer: nn.Module,
    a: torch.Tensor,
    delta: torch.Tensor,
    guard: torch.Tensor,
    work: Workspace,
    transposed: bool = False,
) -> Terms:
    """Per-sample Σ|θ⊙g| of a Linear layer's weight and bias, and the guard's gradients.

    Args:
        transposed: the weight is stored (in, out) and the layer computes x W + b (Hugging
            Face's Conv1D), so its gradient is aᵀδ where nn.Linear's is δᵀa.
    """
    out: Terms = {}
    B, s = a.shape[0], guard.numel()
    weights = guard.to(delta.dtype)
    if layer.weight.requires_grad:
        weight = layer.weight.detach()
        w_abs = torch.abs(weight, out=work.take(weight.shape, weight, use="weights"))
        left, right = (a, delta) if transposed else (delta, a)  # the gradient is leftᵀ right
        if a.dim() == 2:
            # Rank-one per-sample gradient: Σ|W ⊙ l rᵀ| = |l|ᵀ|W||r| = Σ |(|l|ᵀ|W|) ⊙ r|, as
            # |l|ᵀ|W| ≥ 0. Into kept buffers: fresh ones cost page faults on every batch.
            l_abs = torch.abs(left, out=work.take(left.shape, left, use="rows"))
            product = torch.mm(l_abs, w_abs, out=work.take(right.shape, right, use="products"))
            per_sample = product.mul_(right).abs_().sum(1)
            implied = work.implied(weight.shape, weight)
            torch.mm((left[:s] * weights[:, None]).t(), right[:s], out=implied)
            out["weight"] = (per_sample, implied)
        else:
            l3, r3 = left.reshape(B, -1, left.shape[-1]), right.reshape(B, -1, right.shape[-1])
            per_sample, grad = chunked_outer_sum(l3.transpose(1, 2), r3, w_abs, guard, work)
            out["weight"] = (per_sample, grad.reshape(layer.weight.shape))
    if layer.bias is not None and layer.bias.requires_grad:
        b_abs = layer.bias.detach().abs()
        if delta.dim() == 2:  # one row per sample: the per-sample bias gradient is δ itself
            out["bias"] = (delta.abs() @ b_abs, weights @ delta[:s])
        else:
            g_b = delta.reshape(B, -1, delta.shape[-1]).sum(1)
            out["bias"] = ((g_b.abs() * b_abs).sum(1), _weighted(g_b, guard))
    return out


def _conv_terms(
    layer: nn.modules.conv._ConvNd,
    a: torch.Tensor,
    delta: torch.Tensor,
    guard: torch.Tensor,
    work: Workspace,
) -> Terms:
    """Per-sample Σ|θ⊙g| of a conv layer's weight and bias (Conv1d/2d/3d, ConvTranspose1d/2d/3d),
    and the guard's gradients."""
    out: Terms = {}
    if layer.weight.requires_grad:
        out["weight"] = conv_weight_terms(layer, a, delta, guard, work)
    if layer.bias is not None and layer.bias.requires_grad:
        g_b = delta.sum(tuple(range(2, delta.dim())))
        out["bias"] = ((g_b.abs() * layer.bias.detach().abs()).sum(1), _weighted(g_b, guard))
    return out


def _embedding_terms(
    layer: nn.Embedding,
    ids: torch.Tensor,
    delta: torch.Tensor,
    guard: torch.Tensor,
    work: Workspace,
) -> Terms:
    """Per-sample Σ|E⊙g| of an Embedding table E, and the guard's gradient.

    Sample n's gradient has, in row v, the sum of δ over n's tokens equal to v (none for the
    padding row, as F.embedding's backward does). So δ is summed per distinct (sample, token)
    pair (one index_add) and each sum is weighed against its row of |E|: the cost is that of the
    tokens, and nothing table-sized is formed per sample. Sparse gradients (``sparse=True``) are
    the same numbers, and a ``max_norm`` table has been renormalised by the recorded forward.
    """
    if not layer.weight.requires_grad:
        return {}
    B = ids.shape[0]
    V, D = layer.weight.shape
    flat_ids, d = ids.reshape(B, -1), delta.reshape(-1, delta.shape[-1])
    keys = (torch.arange(B, device=ids.device).unsqueeze(1) * V + flat_ids).reshape(-1)
    pairs, which = torch.unique(keys, return_inverse=True)
    rows = pairs % V
    # Token-sized operands in kept buffers (fresh ones cost page faults on every batch).
    summed = work.take((pairs.numel(), D), d, use="pair sums").zero_().index_add_(0, which, d)
    table = layer.weight.detach()
    w_rows = torch.index_select(table, 0, rows, out=work.take(summed.shape, table, use="rows"))
    values = summed.abs_().mul_(w_rows.abs_()).sum(1)
    if layer.padding_idx is not None:
        values = values.masked_fill(rows == layer.padding_idx, 0)
    per_sample = values.new_zeros(B).index_add_(0, pairs // V, values)
    s = guard.numel()
    weighted = (delta[:s].reshape(s, -1, D) * guard.to(d.dtype)[:, None, None]).reshape(-1, D)
    grad = work.implied((V, D), d).zero_().index_add_(0, flat_ids[:s].reshape(-1), weighted)
    if layer.padding_idx is not None:
        grad[layer.padding_idx] = 0
    return {"weight": (per_sample, grad)}


def _sum_dims(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    # torch's sum over an empty dim tuple sums everything; here it must be a no-op.
    return t.sum(dims) if dims else t


def _channel_norm_gradients(
    layer: nn.Module,
    a: torch.Tensor,
    delta: torch.Tensor,
    op: str,
    want: tuple[bool, bool],
    saved: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-sample ∂ℓ_n/∂γ and ∂ℓ_n/∂β, each (B, C), of an eval-mode BatchNorm, InstanceNorm or
    GroupNorm.

    The backend's own backward kernel, asked for the γ and β gradients alone, on the batch laid
    out as one sample of B·C channels (B·groups groups for GroupNorm, B·C for InstanceNorm; the
    running statistics repeated B times where they normalise): its per-channel sums are then
    per-sample ones. The kernel reads δ and the input once and forms neither x̂ nor δ·x̂
    (bench_connectivity.py --breakdown on the 2-core Xeon: ResNet-18's GroupNorm terms 18 ms,
    against 23 ms through F.group_norm and (δ·x̂).sum()).

    Args:
        want: which of (γ, β) to compute.
        saved: a GroupNorm's per-(sample, group) mean and 1/std, (B, groups), as its forward
            saved them (:func:`_saved_group_statistics`); else they are computed here, which
            costs a pass that also writes the normalised input (about half of these terms'
            time on ResNet-18's GroupNorm layers).
    """
    B, C = a.shape[:2]
    a1, d1 = a.reshape(1, B * C, -1), delta.reshape(1, B * C, -1)
    mask = [False, *want]  # no input gradient
    if getattr(layer, "running_mean", None) is not None:  # eval: the running statistics
        mean, var = layer.running_mean.repeat(B), layer.running_var.repeat(B)
        _, g_gamma, g_beta = torch.ops.aten.native_batch_norm_backward(
            d1, a1, None, mean, var, None, None, False, layer.eps, mask
        )
    else:
        groups = B * (layer.num_groups if op == "group_norm" else C)  # instance norm: C
        positions = a1.shape[2]
        if saved is not None:
            mean, rstd = (t.reshape(1, groups) for t in saved)
        else:
            _, mean, rstd = torch.native_group_norm(
                a1, None, None, 1, B * C, positions, groups, layer.eps
            )
        ones = a.new_ones(1).expand(B * C)  # read only for the input gradient, not computed here
        _, g_gamma, g_beta = torch.ops.aten.native_group_norm_backward(
            d1, a1, mean, rstd, ones, 1, B * C, positions, groups, mask
        )
    return tuple(g if g is None else g.view(B, C) for g in (g_gamma, g_beta))


def _normalized_shape(layer: nn.Module) -> tuple[int, ...]:
    """The trailing dims a LayerNorm or RMSNorm normalises (Hugging Face's RMSNorm: its γ's)."""
    return tuple(getattr(layer, "normalized_shape", layer.weight.shape))


def _trailing_norm_gamma_gradient(
    layer: nn.Module, a: torch.Tensor, delta: torch.Tensor, op: str, reduce_dims: tuple[int, ...]
) -> torch.Tensor:
    """Per-sample ∂ℓ_n/∂γ of a LayerNorm or RMSNorm: δ·x̂ summed over the leading (token) dims.

    x̂ is (x − mean)/sqrt(var + ε) for LayerNorm, x/sqrt(mean(x²) + ε) for RMSNorm (ε: ``eps``,
    or Hugging Face's ``variance_epsilon``; torch's RMSNorm takes None as its dtype's epsilon).
    """
    shape = _normalized_shape(layer)
    if op == "layer_norm":
        x_hat = F.layer_norm(a, shape, None, None, layer.eps)
    else:
        eps = layer.eps if hasattr(layer, "eps") else layer.variance_epsilon
        x_hat = F.rms_norm(a, shape, None, eps)
    return _sum_dims(delta * x_hat, reduce_dims)


def _norm_terms(
    layer: nn.Module,
    a: torch.Tensor,
    delta: torch.Tensor,
    guard: torch.Tensor,
    op: str,
    saved: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Terms:
    """Per-sample Σ|γ⊙g_γ| and Σ|β⊙g_β| of a BatchNorm/InstanceNorm/GroupNorm/LayerNorm/RMSNorm
    (``saved``: see :func:`_channel_norm_gradients`)."""
    gamma, beta = layer.weight, getattr(layer, "bias", None)  # RMSNorm: no β
    want = tuple(p is not None and p.requires_grad for p in (gamma, beta))
    if op in ("layer_norm", "rms_norm"):
        tokens = tuple(range(1, a.dim() - len(_normalized_shape(layer))))  # the leading dims
        g_gamma = _trailing_norm_gamma_gradient(layer, a, delta, op, tokens) if want[0] else None
        g_beta = _sum_dims(delta, tokens) if want[1] else None  # (B, *parameter shape)
    else:
        g_gamma, g_beta = _channel_norm_gradients(layer, a, delta, op, want, saved)
    return _norm_terms_of(layer, g_gamma, g_beta, guard)


def _channels_first_norm_terms(
    layer: nn.Module, a: torch.Tensor, delta: torch.Tensor, guard: torch.Tensor, work: Workspace
) -> Terms:
    """A LayerNorm over dim 1 of (B, C, *spatial) (ConvNeXt's channels-first one): nn.LayerNorm's
    formula on its input and output gradient with the channels moved last, as it computes."""
    return _norm_terms(layer, a.movedim(1, -1), delta.movedim(1, -1), guard, "layer_norm")


def _norm_terms_of(
    layer: nn.Module,
    g_gamma: torch.Tensor | None,
    g_beta: torch.Tensor | None,
    guard: torch.Tensor,
) -> Terms:
    """A norm layer's terms from its per-sample γ and β gradients, (B, *parameter shape) each
    (None: not trainable)."""
    B = next(g for g in (g_gamma, g_beta) if g is not None).shape[0]
    out: Terms = {}
    beta = getattr(layer, "bias", None)  # RMSNorm: no β
    for local, p, g_n in (("weight", layer.weight, g_gamma), ("bias", beta, g_beta)):
        if g_n is not None:
            per_sample = (g_n.abs() * p.detach().abs()).reshape(B, -1).sum(1)
            out[local] = (per_sample, _weighted(g_n, guard).reshape(p.shape))
    return out


def _attention_terms(
    layer: nn.MultiheadAttention,
    a: torch.Tensor,
    delta: torch.Tensor,
    guard: torch.Tensor,
    work: Workspace,
    rows: slice = slice(None),
) -> Terms:
    """An attention module's packed in-projection: a Linear on the sequence with weight
    ``in_proj_weight`` (its output projection is a Linear module of its own); with ``rows``,
    the Linear of those rows of it and of ``in_proj_bias`` (a third, in cross-attention)."""
    bias = None if layer.in_proj_bias is None else layer.in_proj_bias[rows]
    packed = SimpleNamespace(weight=layer.in_proj_weight[rows], bias=bias)
    terms = _linear_terms(packed, a, delta, guard, work)
    return {f"in_proj_{local}": value for local, value in terms.items()}


# The exact per-sample formula of each standard operation (biasdecay.roles.OPS) that has one.
_HANDLERS = {
    "multihead_attention": _attention_terms,
    "linear": _linear_terms,
    "linear_transposed": lambda *args: _linear_terms(*args, transposed=True),
    "conv1d": _conv_terms,
    "conv2d": _conv_terms,
    "conv3d": _conv_terms,
    "conv_transpose": _conv_terms,
    "embedding": _embedding_terms,
    "layer_norm_channels_first": _channels_first_norm_terms,
    **{
        op: (lambda layer, a, delta, guard, work, op=op: _norm_terms(layer, a, delta, guard, op))
        for op in ("batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm")
    },
}


# The recorder's name for a parameter taken expanded over the batch (not a module's name)
_BROADCAST = "<broadcast>"

# Ops whose formulas treat every dim between the sample dim and the trailing feature dims as
# tokens: a layer of these run on k rows per sample gets its input grouped (B, k, …).
_TOKEN_OPS = frozenset({"linear", "linear_transposed", "layer_norm", "rms_norm", "embedding"})


def _samples_first(
    layer: nn.Module, a: torch.Tensor, delta: torch.Tensor, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's input and output gradient with one leading row per sample, where the model ran
    it on k rows per sample (k > 1), flattened sample by sample: OPT's feed-forward on
    (B·T, d), Swin's window attention on (B·windows, tokens, d). Rows are grouped as
    consecutive runs of k, sample 0's first: a model that flattened them token by token, or
    any other way, makes the guard's weighted check fail (the runs mix samples), and the layer's
    parameters go to the generic path. Other inputs are returned as they are.
    """
    rows = a.shape[0] if a.dim() else 0
    if (
        op_of(layer) not in _TOKEN_OPS
        or batch is None
        or rows <= batch
        or rows % batch
        or delta.dim() == 0
        or delta.shape[0] != rows
    ):
        return a, delta
    k = rows // batch
    return a.reshape(batch, k, *a.shape[1:]), delta.reshape(batch, k, *delta.shape[1:])


def _layer_terms(
    layer: nn.Module,
    a: torch.Tensor,
    delta: torch.Tensor,
    guard: torch.Tensor,
    work: Workspace,
    node: object = None,
) -> Terms:
    """The layer's terms by its formula; ``node``: the autograd node that formed its output,
    whose saved statistics a GroupNorm reuses."""
    op = op_of(layer)
    saved = _saved_group_statistics(node, layer, a) if op == "group_norm" else None
    if saved is not None:
        return _norm_terms(layer, a, delta, guard, op, saved)
    return _HANDLERS[op](layer, a, delta, guard, work)


def _saved_group_statistics(
    node: object, layer: nn.Module, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The mean and 1/std per (sample, group) that a GroupNorm's own forward computed on ``a``
    and saved for its backward, or None where its output did not come from that kernel on that
    input (another implementation, a cast input, a subclass's forward). Values the formula
    then gets wrong would show in the guard, which recomputes through autograd."""
    if type(node).__name__ != "NativeGroupNormBackward0":
        return None
    try:
        saved_input, group, eps = node._saved_input, node._saved_group, node._saved_eps
        mean, rstd = node._saved_result1, node._saved_result2
    except (AttributeError, RuntimeError):  # another torch's node, or already freed
        return None
    same_input = saved_input.data_ptr() == a.data_ptr() and saved_input.shape == a.shape
    if not same_input or group != layer.num_groups or eps != layer.eps:
        return None
    if mean.dtype != a.dtype or tuple(mean.shape) != (a.shape[0], group):
        return None
    return mean.detach(), rstd.detach()


@dataclass
class _BatchTerms:
    """What the layers of one measured batch have given so far."""

    guard: torch.Tensor  # the guard's weights, one per checked sample from the first
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B,) sums
    implied: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> Σ_n w_n g_n
    unbatched: list[GuardFailure] = field(default_factory=list)  # modules not run per sample


@dataclass
class GuardFailure:
    """A parameter whose formula disagreed with autograd on a batch, or could not apply."""

    name: str
    relative_error: float  # max |θ⊙(Σ_n g_n − g)| / max |θ⊙g|; NaN where no formula ran
    why: str | None = None  # why no formula ran

    def describe(self) -> str:
        """What went wrong, for an error message or a report's fallback reason."""
        if self.why is not None:
            return self.why
        return f"θ⊙Σ_n g_n differs from θ⊙g by {self.relative_error:.2g} of its largest entry"


class HookedPerSample:
    """Per-sample connectivity terms of one batch through layer hooks (see module docstring).

    Args:
        model: the network.
        loss_fn: the batch-mean loss.
        without: the parameters no layer formula covers (:func:`parameters_without_formula`).
            A module whose trainable parameters are all among them is not recorded. Those of
            them held by a module not recorded are measured here all the same, taken expanded
            over the batch (:meth:`_broadcast_gradient`), when they are shaped (1, tokens,
            features) (a class token, a position table) or when ``example``'s forward uses them
            only in elementwise arithmetic with activations (a layer scale,
            :func:`~biasdecay.sharpness._scale_uses.scale_layouts`); the rest,
            :attr:`elsewhere`, get no terms here, and the caller computes theirs otherwise.
        example: the first samples of the first batch, for that probe (None: no probe).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        without: Collection[str] = (),
        example: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        without = frozenset(without)
        named = dict(model.named_parameters())
        name_of = {id(p): n for n, p in named.items()}
        unrecorded = {
            n
            for n, m in model.named_modules()
            if all(name_of[id(p)] in without for _, p in _own_trainable(m))
        }
        held_by_unrecorded = {
            name_of[id(p)] for n in unrecorded for _, p in _own_trainable(model.get_submodule(n))
        }
        # Parameters the model broadcasts over the batch, if it does (the guard checks it),
        # each with its shape after the sample dim when handed over expanded: token sequences,
        # (1, tokens, features), as ViTs hold their class token and position table (a parameter
        # of another shape with a leading 1 is as likely a table the model indexes or caches),
        # and parameters that the example's forward only multiplies or adds to activations.
        # None: one that forward did not use, handed over as a leaf of its own shape, whose
        # gradient, if the backward forms one, says the model did use it (_broadcast_gradient).
        self.broadcast: dict[str, tuple[int, ...] | None] = {
            n: tuple(named[n].shape[1:])
            for n in named
            if n in held_by_unrecorded and named[n].dim() == 3 and named[n].shape[0] == 1
        }
        if example is not None:
            others = {
                n: p
                for n, p in named.items()
                if n in held_by_unrecorded and n not in self.broadcast and p.requires_grad
            }
            for n, gap in scale_layouts(model, example, others).items():
                self.broadcast[n] = None if gap is None else (1,) * gap + tuple(named[n].shape)
        self._leaves: list[weakref.ref] = []  # the expanded leaves of the last measured forward
        self.expand_broadcast = True  # False once the model refused them expanded
        self.elsewhere = without - set(self.broadcast)
        self.recorder = _Recorder(model, skip=unrecorded)
        self.recorder.on_gradient = self._layer_gradient
        self.recorder.on_norm_sums = self._norm_sums
        self._layer = dict(self.recorder.layers)
        self.names = {
            (lname, local): name_of[id(p)]
            for lname, layer in self.recorder.layers
            for local, p in _own_trainable(layer)
        }
        # the parameters measured here, which the guard checks
        self.params = {
            n: p for n, p in named.items() if p.requires_grad and n not in self.elsewhere
        }
        self.workspace = thread_workspace()
        self._batch: _BatchTerms | None = None  # the batch being measured
        # the measured and the guard's outputs of the checked samples (see __call__)
        self._head: list[torch.Tensor] | None = None
        self._guard_out: list[torch.Tensor] = []

    def close(self) -> None:
        self.recorder.remove()
        release_workspace(self.workspace)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, *, check_mean: bool = False
    ) -> tuple[dict[str, torch.Tensor], list[GuardFailure]] | None:
        """Per-sample terms and the guard's verdict, or None if a layer ran twice.

        Args:
            check_mean: first check that the loss averages over the batch
                (:func:`~biasdecay.sharpness._autodiff.check_batch_mean`), on this forward's
                outputs.

        Returns:
            ``{parameter name: (B,) per-sample Σ|θ⊙∂ℓ_n/∂θ|}`` for the parameters the guard
            passed, and the parameters it failed (their formula values are not returned).
        """
        rec = self.recorder
        x = x.detach()
        rec.batch = x.shape[0]
        self.workspace.begin_batch()  # the previous batch's guard sums are compared
        # Distinct weights 1, 2, …: a formula that gives one sample's rows to another (a layer
        # whose rows are not samples) fails a weighted sum even where a plain one would match.
        guard = torch.arange(1, guard_samples(x.shape[0]) + 1, device=x.device)
        try:
            recorded = self._record(x, y, guard, check_mean)
        except Exception:
            if not (rec.expanded or (self.broadcast and self.expand_broadcast)):
                raise
            # The model does not just broadcast a table or a parameter handed to it expanded
            # (its shape mattered): record this model as it is, from now on.
            rec.expand_tables = self.expand_broadcast = False
            recorded = self._record(x, y, guard, check_mean)
        if self._leaves_kept():
            warnings.warn(
                f"per-sample C: the model kept a tensor computed from {', '.join(self.broadcast)} "
                "after its forward (stored activations, or a cache), which they were handed to "
                "it expanded over the batch for; they are measured through torch.func from now "
                "on. A cache that the model's forward reuses now holds values of that batch: "
                "clear it after the measurement",
                stacklevel=4,  # the caller of connectivity_sharpness
            )
            self.expand_broadcast = False
            recorded = self._record(x, y, guard, check_mean)
        batch, self._batch = self._batch, None
        if not recorded:
            return None
        if self.broadcast and not self.expand_broadcast:
            why = "the model does not take it expanded over the batch (its shape matters)"
            batch.unbatched += [GuardFailure(n, math.nan, why) for n in self.broadcast]
        else:  # the backward formed no gradient of an unused one: zero for every sample
            for name in (n for n, tail in self.broadcast.items() if tail is None):
                if name not in batch.terms:
                    batch.terms[name] = x.new_zeros(x.shape[0], dtype=self.params[name].dtype)
                    batch.implied[name] = torch.zeros_like(self.params[name])
        for lname, why in rec.not_covered.items():
            module = self._layer.get(lname)  # absent: no trainable parameter of its own
            batch.unbatched += [
                GuardFailure(self.names[(lname, local)], math.nan, f"its module '{lname}': {why}")
                for local, _ in ([] if module is None else _own_trainable(module))
            ]
        for name in self.elsewhere:  # a shared parameter's formula ran in each module
            batch.terms.pop(name, None)
            batch.implied.pop(name, None)
        skip = {f.name for f in batch.unbatched}
        try:
            truths = self._autograd_gradient(x, y, guard)
            same = self._head is None or _same_outputs(self._head, self._guard_out)
        except Exception:
            if self._head is None:
                raise
            same = False  # the model kept something of the expanded forward (a cache of it)
        if not same:
            # A table or parameter handed over expanded changed what the model computes (it
            # used its shape): measure this batch again, and the later ones, as the model is.
            rec.expand_tables = self.expand_broadcast = False
            return self(x, y, check_mean=check_mean)
        failures = self._guard(batch.implied, truths, skip)
        if failures:
            failures = _not_vanishing(failures, self.params, truths, batch)
        failures = [f for f in batch.unbatched if f.name not in self.elsewhere] + failures
        for failure in failures:
            batch.terms.pop(failure.name, None)
        return batch.terms, failures

    def _record(
        self, x: torch.Tensor, y: torch.Tensor, guard: torch.Tensor, check_mean: bool
    ) -> bool:
        """The measured forward and backward; each layer's terms are formed in the backward
        (:meth:`_layer_gradient`), into ``self._batch``. False if a layer ran twice."""
        rec = self.recorder
        rec.clear()
        self._batch = _BatchTerms(guard)
        try:
            with torch.enable_grad():
                rec.active = True
                try:
                    logits = self._measured_forward(x)
                finally:
                    rec.active = False
                substituted = rec.expanded or (self.broadcast and self.expand_broadcast)
                # the checked samples' outputs, which the guard's pass of the model as it is
                # must reproduce where anything was handed over expanded
                self._head = _first_rows(logits, guard.numel()) if substituted else None
                # The loss is a batch mean, so B × loss = Σ_n ℓ_n; its gradient w.r.t. row n of
                # any activation is ∂ℓ_n/∂(activation)_n.
                if check_mean:
                    check_batch_mean(self.loss_fn, logits.detach(), y)
                total = self.loss_fn(logits, y) * x.shape[0]
                if any(c > 1 for c in rec.calls.values()):
                    return False
                rec.backward(total)
        finally:  # the graph's references: activations, nodes
            rec.inputs.clear()
            rec.edges.clear()
        return True

    def _measured_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's forward, with each parameter of :attr:`broadcast` replaced by a leaf
        expanded over the batch (a view: no copy), whose gradient, taken by the recorder, holds
        one row per sample."""
        if not (self.broadcast and self.expand_broadcast):
            return self.model(x)
        expanded = {}
        for name, tail in self.broadcast.items():
            p = self.params[name].detach()
            leaf = p if tail is None else p.reshape(1, *tail).expand(x.shape[0], *tail)
            leaf = leaf.requires_grad_()
            expanded[name] = leaf
            self.recorder.take_gradient(_BROADCAST + name, leaf)
        self._leaves = [weakref.ref(leaf) for leaf in expanded.values()]
        return torch.func.functional_call(self.model, expanded, (x,))

    def _leaves_kept(self) -> bool:
        """Whether anything still holds an expanded leaf (or a tensor computed from it, whose
        graph does) once the measured pass is over: a model that caches what its forward
        computed from its parameters, which later forwards would reuse."""
        kept = any(ref() is not None for ref in self._leaves)
        self._leaves = []
        return kept

    def _broadcast_gradient(self, name: str, grad: torch.Tensor) -> None:
        """A broadcast parameter's per-sample gradients, row n sample n's: its terms, now."""
        # autograd hands a leaf a gradient of its own shape: (batch, *broadcast[name]), whose
        # trailing dims are θ's own (tokens and features for a token sequence)
        batch, size = self._batch, self.recorder.batch
        if self.broadcast[name] is None:
            why = "the model used it, and the first batch's probe forward did not"
            batch.unbatched.append(GuardFailure(name, math.nan, why))
            return
        theta = self.params[name].detach()
        s = batch.guard.numel()
        batch.terms[name] = (grad * theta).abs().reshape(size, -1).sum(1)
        weights = batch.guard.to(grad.dtype).view(-1, *(1,) * (grad.dim() - 1))
        batch.implied[name] = (grad[:s] * weights).sum(0).reshape(theta.shape)

    def _layer_gradient(self, lname: str, delta: torch.Tensor) -> None:
        """One layer's output gradient, as the backward pass forms it: its terms, now.

        ``lname`` may name a third of an attention module's in-projection (cross-attention,
        ``"<module>#q"``, see :data:`._attention.PARTS`): its terms add to the module's, or a
        broadcast parameter (``_BROADCAST + name``).
        """
        if lname.startswith(_BROADCAST):
            self._broadcast_gradient(lname[len(_BROADCAST) :], delta)
            return
        base, part = lname[:-2], lname[-2:]
        if part not in PARTS or base not in self._layer:
            base, part = lname, None
        batch, layer, size = self._batch, self._layer[base], self.recorder.batch
        a = self.recorder.inputs.pop(lname)  # not needed after this layer's terms
        if part is None:
            a, delta = _samples_first(layer, a, delta, size)
        if a.dim() == 0 or a.shape[0] != size or delta.shape[0] != size:
            # Run once for the whole batch and broadcast (a position table looked up as
            # pos(arange(T))): its output gradient is already summed over the samples.
            why = (
                f"its module '{base}' ran on an input of shape {tuple(a.shape)}, not one "
                f"row per sample of the batch of {size}"
            )
            batch.unbatched += [
                GuardFailure(self.names[(base, local)], math.nan, why)
                for local, _ in _own_trainable(layer)
            ]
            return
        if part is not None:
            self._attention_part(layer, base, PARTS[part], a, delta)
            return
        edge = self.recorder.edges.get(lname)
        node = None if edge is None else edge.node
        for local, (value, grad) in _layer_terms(
            layer, a, delta, batch.guard, self.workspace, node
        ).items():
            batch.terms[self.names[(lname, local)]] = value
            batch.implied[self.names[(lname, local)]] = grad

    def _attention_part(
        self,
        layer: nn.MultiheadAttention,
        lname: str,
        third: int,
        a: torch.Tensor,
        delta: torch.Tensor,
    ) -> None:
        """One projection of cross-attention: a Linear with a third of the in-projection's
        weight and bias, whose per-sample sums and implied gradient add to the parameter's."""
        batch, E = self._batch, layer.embed_dim
        rows = slice(third * E, (third + 1) * E)
        for local, (value, grad) in _attention_terms(
            layer, a, delta, batch.guard, self.workspace, rows
        ).items():
            name = self.names[(lname, local)]
            batch.terms[name] = batch.terms[name] + value if name in batch.terms else value
            if name not in batch.implied:
                batch.implied[name] = grad.new_zeros(getattr(layer, local).shape)
            batch.implied[name][rows] += grad

    def _norm_sums(self, lname: str, g_gamma: torch.Tensor, g_beta: torch.Tensor) -> None:
        """A norm layer's per-sample γ and β gradients, formed by its own backward
        (:mod:`._fused_norm`): its terms, now."""
        batch, layer = self._batch, self._layer[lname]
        want = [p is not None and p.requires_grad for p in (layer.weight, layer.bias)]
        g_gamma, g_beta = (g if w else None for g, w in zip((g_gamma, g_beta), want, strict=True))
        for local, (value, grad) in _norm_terms_of(layer, g_gamma, g_beta, batch.guard).items():
            batch.terms[self.names[(lname, local)]] = value
            batch.implied[self.names[(lname, local)]] = grad

    def _autograd_gradient(
        self, x: torch.Tensor, y: torch.Tensor, guard: torch.Tensor
    ) -> dict[str, torch.Tensor | None]:
        """∂(Σ_n w_n ℓ_n)/∂θ over the batch's first samples (weights ``guard``), through
        whatever the model really computes.

        Samples do not interact in eval mode, so this is the weighted sum of their per-sample
        gradients, which the formulas must reproduce. Row n of the outputs' gradient of
        Σ_n ℓ_n is ∂ℓ_n/∂(output)_n (the loss is a batch mean), so weighting the rows as the
        backward pass goes through the outputs (a hook) weights the samples, in one pass. The
        recorder is off (it is on during the measured forward alone).
        """
        s = guard.numel()
        with torch.enable_grad():
            out = self.model(x[:s].detach())
            rows = guard.to(out.dtype).view(-1, *(1,) * (out.dim() - 1))
            if out.requires_grad:  # else autograd.grad below says that nothing does
                out.register_hook(lambda d_out: d_out * rows)
            total = self.loss_fn(out, y[:s]) * s
            grads = torch.autograd.grad(total, list(self.params.values()), allow_unused=True)
        self._guard_out = _first_rows(out, s)
        return dict(zip(self.params, grads, strict=True))

    def _guard(
        self,
        implied: dict[str, torch.Tensor],
        autograd_grad: dict[str, torch.Tensor | None],
        skip: Collection[str] = (),
    ) -> list[GuardFailure]:
        """Compare θ⊙Σ_n g_n (formula) with θ⊙g (autograd) per parameter; one host sync.

        All parameters (but ``skip``, failed already) are compared at once: by the native
        kernel (one read of each operand) where it runs, else by a few multi-tensor (foreach)
        kernels.
        """
        names, thetas, truths, formulas = [], [], [], []
        for name, p in self.params.items():
            truth, formula = autograd_grad[name], implied.get(name)
            if (truth is None and formula is None) or p.numel() == 0 or name in skip:
                continue  # unused by this batch on both counts, nothing to check, or failed
            theta = p.detach()
            names.append(name)
            thetas.append(theta)
            if truth is None:
                truth = torch.zeros_like(theta)
            elif truth.layout != torch.strided:  # an Embedding(sparse=True)'s gradient
                truth = truth.to_dense()
            truths.append(truth)
            formulas.append(formula)
        if not names:
            return []
        failures = []
        for name, theta, (scale, error) in zip(
            names, thetas, _guard_extremes(thetas, truths, formulas), strict=True
        ):
            scale = max(scale, torch.finfo(theta.dtype).tiny)
            if error > guard_tolerance(theta.dtype) * scale:
                failures.append(GuardFailure(name, error / scale))
        return failures


def _first_rows(output: object, rows: int) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, or any nesting of tuples, lists and dicts,
    such as Hugging Face's outputs), detached, each cut to its first ``rows`` rows."""
    from torch.utils._pytree import tree_leaves

    leaves = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]
    return [t.detach()[:rows] if t.dim() else t.detach() for t in leaves]


def _same_outputs(measured: list[torch.Tensor], truth: list[torch.Tensor]) -> bool:
    """Whether the measured forward's outputs of the checked samples are the guard's, each
    within the guard's tolerance of its largest entry (:func:`_first_rows` of both)."""
    if len(measured) != len(truth):
        return False
    for m, t in zip(measured, truth, strict=True):
        if m.shape != t.shape or m.dtype != t.dtype:
            return False
        if not t.numel() or not t.is_floating_point():
            if not torch.equal(m, t):
                return False
            continue
        scale = max(t.abs().max().item(), torch.finfo(t.dtype).tiny)
        if not (m - t).abs().max().item() <= guard_tolerance(t.dtype) * scale:
            return False
    return True


def _not_vanishing(
    failures: list[GuardFailure],
    params: dict[str, nn.Parameter],
    truths: dict[str, torch.Tensor | None],
    batch: _BatchTerms,
) -> list[GuardFailure]:
    """The guard's failures less the parameters whose contribution vanishes to rounding
    (:func:`vanishing_level`); one host transfer. Runs only when something failed."""
    failed = {f.name for f in failures}
    weights = batch.guard.to(torch.float64)
    s = weights.numel()
    # Σ_n w_n (per-sample terms) of every parameter with terms, as the formulas give them
    checked = {n: (t[:s].to(torch.float64) * weights).sum() for n, t in batch.terms.items()}
    passed = [v for n, v in checked.items() if n not in failed]
    if not passed:
        return failures
    sums = [torch.stack(passed).sum()]
    for f in failures:
        theta = params[f.name].detach()
        truth, formula = truths.get(f.name), batch.implied.get(f.name)
        for grad in (truth, formula):
            if grad is None:
                sums.append(theta.new_zeros((), dtype=torch.float64))
                continue
            if grad.layout != torch.strided:  # an Embedding(sparse=True)'s gradient
                grad = grad.to_dense()
            sums.append((theta * grad.to(theta.dtype)).abs().sum(dtype=torch.float64))
        sums.append(checked.get(f.name, theta.new_full((), math.inf, dtype=torch.float64)))
    values = torch.stack([v.to(sums[0].device) for v in sums]).tolist()
    reference, per_failure = values[0], values[1:]
    kept = []
    for i, f in enumerate(failures):
        level = vanishing_level(params[f.name].dtype) * reference
        if not all(v <= level for v in per_failure[3 * i : 3 * i + 3]):  # NaN: kept
            kept.append(f)
    return kept


def _guard_extremes(
    thetas: list[torch.Tensor], truths: list[torch.Tensor], formulas: list[torch.Tensor | None]
) -> list[tuple[float, float]]:
    """(max |θ⊙g|, max |θ⊙(g − f)|) per parameter (f None: zero); NaN where one met a NaN."""
    native = [
        i for i, t in enumerate(thetas) if t.device.type == "cpu" and _native.unavailable(t) is None
    ]
    out: list[tuple[float, float] | None] = [None] * len(thetas)
    for dtype in {thetas[i].dtype for i in native}:
        idx = [i for i in native if thetas[i].dtype == dtype]
        pairs = _native.guard_extremes(
            [thetas[i].contiguous() for i in idx],
            [truths[i].to(dtype).contiguous() for i in idx],
            [None if formulas[i] is None else formulas[i].to(dtype).contiguous() for i in idx],
        )
        for i, pair in zip(idx, pairs, strict=True):
            out[i] = pair
    rest = [i for i, pair in enumerate(out) if pair is None]
    if rest:
        pairs = _foreach_extremes(
            [thetas[i] for i in rest],
            [truths[i] for i in rest],
            [torch.zeros_like(thetas[i]) if formulas[i] is None else formulas[i] for i in rest],
        )
        for i, pair in zip(rest, pairs, strict=True):
            out[i] = pair
    return out


def _foreach_extremes(
    thetas: list[torch.Tensor], truths: list[torch.Tensor], formulas: list[torch.Tensor]
) -> list[tuple[float, float]]:
    """:func:`_guard_extremes` by torch's multi-tensor kernels, on any device and dtype."""
    # In place on autograd's gradients (each made this call's own first): fresh tensors
    # would cost page faults on the CPU.
    truths = _writable(truths)
    torch._foreach_mul_(truths, thetas)  # θ⊙g
    extremes = _extremes(truths)  # taken before the next line overwrites θ⊙g
    torch._foreach_addcmul_(truths, thetas, formulas, value=-1)  # θ⊙g − θ⊙Σ_n g_n
    # max |θ⊙g| and max |θ⊙(Σ_n g_n − g)| of every parameter
    values = _abs_max(extremes + _extremes(truths))
    n = len(thetas)
    return list(zip(values[:n], values[n:], strict=True))


def _writable(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors, each copied where writing to it in place is unsafe.

    Autograd may return a parameter's gradient as an expanded view (a parameter summed into
    the output: ``p.sum()``), which cannot be written in place, or hand two parameters views of
    one buffer (parameters used only through ``p1 + p2``), where writing one changes the other.
    """
    seen: set[int] = set()
    out = []
    for t in tensors:
        if not t.is_contiguous() or t.untyped_storage().data_ptr() in seen:
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(t.untyped_storage().data_ptr())
        out.append(t)
    return out


def _extremes(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's min and max, as 0-d tensors on its device: one pass, no temporary (on the
    CPU an ∞-norm kernel is an order of magnitude slower)."""
    return [v for t in tensors for v in torch.aminmax(t)]


def _abs_max(extremes: list[torch.Tensor]) -> list[float]:
    """max |t| of every tensor from :func:`_extremes`'s list, with one host transfer."""
    if len({v.dtype for v in extremes}) > 1:
        extremes = [v.double() for v in extremes]
    flat = torch.stack(extremes).tolist()
    return [max(-lo, hi) for lo, hi in zip(flat[::2], flat[1::2], strict=True)]


def vmap_per_sample(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk_size: int,
    only: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The same terms as :class:`HookedPerSample` through ``torch.func`` per-sample gradients.

    Works for any model whose eval forward treats samples independently; costs a
    chunk × (differentiated parameters) buffer.

    Args:
        only: differentiate these parameters alone (the others are held constant); None: all
            trainable ones.
    """
    from torch.func import functional_call, grad, vmap

    params = {
        n: p.detach()
        for n, p in model.named_parameters()
        if p.requires_grad and (only is None or n in only)
    }
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in params}
    buffers = dict(model.named_buffers())

    def single_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor):
        out = functional_call(model, (p, frozen, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    per_sample_grad = vmap(grad(single_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)
    terms: dict[str, list[torch.Tensor]] = {n: [] for n in params}
    for s in range(0, x.shape[0], chunk_size):
        grads = per_sample_grad(params, x[s : s + chunk_size], y[s : s + chunk_size])
        for n, g in grads.items():
            terms[n].append((g * params[n]).abs().reshape(g.shape[0], -1).sum(1))
    return {n: torch.cat(v) for n, v in terms.items()}


def loop_per_sample(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    only: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The same terms as :class:`HookedPerSample`, one sample at a time: a forward and a
    backward of each sample through whatever the model computes.

    For models ``torch.func`` cannot transform (``nn.LSTM`` and ``nn.GRU``, which write into
    tensors of their own inside the forward; a module that updates a parameter in place). It
    costs one forward and backward per sample, with no vectorisation across samples.

    Args:
        only: differentiate these parameters alone; None: all trainable ones.
    """
    params = {
        n: p for n, p in model.named_parameters() if p.requires_grad and (only is None or n in only)
    }
    thetas = [p.detach() for p in params.values()]
    rows: list[list[torch.Tensor]] = [[] for _ in params]
    for i in range(x.shape[0]):
        with torch.enable_grad():
            loss = loss_fn(model(x[i : i + 1]), y[i : i + 1])
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for row, theta, g in zip(rows, thetas, grads, strict=True):
            if g is None:  # not used by this sample
                row.append(theta.new_zeros(()))
                continue
            if g.layout != torch.strided:  # an Embedding(sparse=True)'s gradient
                g = g.to_dense()
            row.append((g * theta).abs().sum())
    return {n: torch.stack(row) for n, row in zip(params, rows, strict=True)}
