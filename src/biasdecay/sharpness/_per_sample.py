"""Per-sample |θ ⊙ ∂ℓ_n/∂θ| sums without materialising every per-sample gradient of the model.

One forward pass records each supported layer's input, and one backward pass (to the input, so
no parameter gradient is ever formed) records each layer's output gradient. For sample ``n`` the
loss is ℓ_n, so the output gradient of ``Σ_n ℓ_n`` restricted to row ``n`` is exactly
∂ℓ_n/∂(layer output)_n — samples do not interact in eval mode. Each layer then forms only its own
per-sample quantities:

* Linear (2-D input): the per-sample weight gradient δ_n a_nᵀ is rank one, so
  Σ_ij |W_ij δ_ni a_nj| = |δ_n|ᵀ |W| |a_n| — one matrix product, no per-sample gradient at all.
* Conv: the per-sample weight gradient Σ_s δ_n[:, s] u_n[:, s]ᵀ (u = unfolded input) is not rank
  one, so it is formed by a batched matmul, a chunk of samples at a time (bounded memory).
* Norm layers (BatchNorm with running statistics, GroupNorm, LayerNorm): per-sample γ and β
  gradients are reductions of δ·x̂ and δ.

Anything else (an unsupported parametrised module, a module called twice, a parameter shared
between modules) makes :func:`supports_fast_path` return a reason, and the caller uses the
generic ``torch.func.vmap`` path instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biasdecay.sharpness._autodiff import LossFn

# Elements of one chunk's per-sample conv gradients (B_chunk × C_out × C_in·k·k) and unfolded
# inputs; 2^23 float32 values = 32 MiB, small enough for any device, large enough for BLAS.
_CHUNK_ELEMENTS = 1 << 18

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
_FAST_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.GroupNorm, nn.LayerNorm, *_BN_TYPES)


def _own_trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]


def supports_fast_path(model: nn.Module) -> str | None:
    """``None`` if the hook path handles every trainable parameter of ``model``, else why not."""
    seen: set[int] = set()
    for name, module in model.named_modules():
        own = _own_trainable(module)
        if not own:
            continue
        if not isinstance(module, _FAST_TYPES):
            return f"module '{name}' ({type(module).__name__}) has parameters of its own"
        if isinstance(module, _BN_TYPES) and module.running_mean is None:
            return (
                f"BatchNorm '{name}' has no running statistics, so its eval output depends on "
                "the whole batch and a per-sample gradient does not exist"
            )
        for _, p in own:
            if id(p) in seen:
                return f"a parameter of '{name}' is shared with another module"
            seen.add(id(p))
    return None


class _Recorder:
    """Forward hooks that keep each layer's input and register a hook for its output gradient."""

    def __init__(self, model: nn.Module) -> None:
        self.layers: list[tuple[str, nn.Module]] = [
            (n, m) for n, m in model.named_modules() if _own_trainable(m)
        ]
        self.inputs: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self._handles = [
            m.register_forward_hook(self._make_hook(n), with_kwargs=False) for n, m in self.layers
        ]

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.calls[name] = self.calls.get(name, 0) + 1
            self.inputs[name] = args[0].detach()

            # A tensor hook registered now sees the gradient of this value even if a later
            # in-place op (`out += shortcut`, ReLU(inplace=True)) overwrites the tensor.
            def keep(grad: torch.Tensor) -> None:
                self.grads[name] = grad

            output.register_hook(keep)

        return hook

    def clear(self) -> None:
        self.inputs.clear()
        self.grads.clear()
        self.calls.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _linear_terms(
    layer: nn.Linear, a: torch.Tensor, delta: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-sample Σ|θ⊙g| of a Linear layer's weight and bias, each of shape (B,)."""
    out: dict[str, torch.Tensor] = {}
    B = a.shape[0]
    if layer.weight.requires_grad:
        w_abs = layer.weight.detach().abs()
        if a.dim() == 2:
            # Rank-one per-sample gradient: |W ⊙ δ aᵀ| summed = |δ|ᵀ|W||a|.
            out["weight"] = ((delta.abs() @ w_abs) * a.abs()).sum(1)
        else:
            a3, d3 = a.reshape(B, -1, a.shape[-1]), delta.reshape(B, -1, delta.shape[-1])
            out["weight"] = _chunked_outer_sum(d3.transpose(1, 2), a3, w_abs)
    if layer.bias is not None and layer.bias.requires_grad:
        g_b = delta.reshape(B, -1, delta.shape[-1]).sum(1)
        out["bias"] = (g_b.abs() * layer.bias.detach().abs()).sum(1)
    return out


def _chunk_size(batch: int, per_sample_elements: int) -> int:
    return max(1, min(batch, _CHUNK_ELEMENTS // max(per_sample_elements, 1)))


def _abs_weighted_sum(g: torch.Tensor, w_abs_flat: torch.Tensor) -> torch.Tensor:
    """Σ_k |g_nk|·|w_k| per row n, as one matrix-vector product (no (n, P) temporary)."""
    return torch.mv(g.abs_().reshape(g.shape[0], -1), w_abs_flat)


def _chunked_outer_sum(
    d: torch.Tensor, u: torch.Tensor, w_abs: torch.Tensor, groups: int = 1
) -> torch.Tensor:
    """Σ_ij |W_ij (d_n u_n)_ij| per sample, with d: (B, O, L), u: (B, L, I), W: (O, I·…).

    The (B, O, I) per-sample gradients are formed a chunk of samples at a time.
    """
    B, O, L = d.shape
    I_total = u.shape[-1]
    chunk = _chunk_size(B, O * I_total // groups + L * I_total)
    w_flat = w_abs.reshape(-1)
    result = []
    for s in range(0, B, chunk):
        result.append(_outer_chunk(d[s : s + chunk], u[s : s + chunk], w_flat, groups))
    return torch.cat(result)


def _outer_chunk(
    d: torch.Tensor, u: torch.Tensor, w_flat: torch.Tensor, groups: int
) -> torch.Tensor:
    """One chunk of :func:`_chunked_outer_sum`: d (n, O, L), u (n, L, I)."""
    n, O, L = d.shape
    if groups == 1:
        g = torch.bmm(d, u)  # (n, O, I): per-sample weight gradients
    else:
        I_total = u.shape[-1]
        dg = d.reshape(n, groups, O // groups, L)
        ug = u.reshape(n, L, groups, I_total // groups).transpose(1, 2)
        g = torch.matmul(dg, ug)  # (n, groups, O/g, I/g) = weight layout (O, I/g)
    return _abs_weighted_sum(g, w_flat)


def _unfolded_conv_weight(
    a: torch.Tensor,
    delta: torch.Tensor,
    w_abs: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """Per-sample Σ|W ⊙ G_n| of any 2-D conv through im2col (unfold) and a batched matmul."""
    B = a.shape[0]
    d = delta.reshape(B, delta.shape[1], -1)  # (B, O, L)
    O, L = d.shape[1], d.shape[2]
    I_total = w_abs[0].numel() * groups
    # Unfold a chunk at a time: the unfolded block and its gradients stay in cache.
    chunk = _chunk_size(B, O * I_total // groups + L * I_total)
    w_flat = w_abs.reshape(-1)
    parts = []
    for s in range(0, B, chunk):
        u = F.unfold(a[s : s + chunk], kernel, dilation=dilation, padding=padding, stride=stride)
        parts.append(_outer_chunk(d[s : s + chunk], u.transpose(1, 2), w_flat, groups))
    return torch.cat(parts)


def _unit_stride_conv_weight(
    a: torch.Tensor,
    delta: torch.Tensor,
    w_abs: torch.Tensor,
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """Per-sample Σ|W ⊙ G_n| of a stride-1, ungrouped 2-D conv without im2col.

    On the zero-padded input flattened row by row, the inputs that kernel tap (i, j) sees form
    one contiguous window of Ho·Wp values (Wp = padded width) starting at i·dh·Wp + j·dw, if the
    output gradient δ is laid out on the same Wp-wide rows (zeros in the Wp − Wo extra columns,
    which cancel the wrapped-around reads). So each tap's per-sample gradient is a single batched
    matmul over a strided view: no unfolded copy of the input is ever made.
    """
    B, c_in = a.shape[:2]
    O, Ho, Wo = delta.shape[1:]
    kh, kw = w_abs.shape[2:]
    ph, pw = padding
    # One extra bottom row keeps the last tap's window in bounds (it reads only junk columns).
    a_pad = F.pad(a, (pw, pw, ph, ph + 1))
    Hp, Wp = a_pad.shape[2:]
    length = Ho * Wp
    a_flat = a_pad.reshape(B, c_in, Hp * Wp)
    d_rows = F.pad(delta, (0, Wp - Wo)).reshape(B, O, length)
    taps = [
        (i * dilation[0] * Wp + j * dilation[1], w_abs[:, :, i, j].reshape(-1))
        for i in range(kh)
        for j in range(kw)
    ]
    chunk = _chunk_size(B, c_in * Hp * Wp + O * length + O * c_in)
    parts = []
    for s in range(0, B, chunk):
        x_c, d_c = a_flat[s : s + chunk], d_rows[s : s + chunk]
        total = None
        for start, w_tap in taps:
            window = x_c[:, :, start : start + length]  # (n, C_in, Ho·Wp) view
            g = torch.bmm(d_c, window.transpose(1, 2))  # (n, O, C_in) for this tap
            term = _abs_weighted_sum(g, w_tap)
            total = term if total is None else total + term
        parts.append(total)
    return torch.cat(parts)


def _conv_terms(
    layer: nn.Conv1d | nn.Conv2d, a: torch.Tensor, delta: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-sample Σ|θ⊙g| of a Conv1d/Conv2d layer's weight and bias, each of shape (B,)."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(layer, nn.Conv1d):  # treat as a 2-D conv with height 1
        a, delta = a.unsqueeze(2), delta.unsqueeze(2)
        kernel, stride = (1, *layer.kernel_size), (1, *layer.stride)
        dilation = (1, *layer.dilation)
        padding = layer.padding if isinstance(layer.padding, str) else (0, *layer.padding)
    else:
        kernel, stride, dilation, padding = (
            layer.kernel_size,
            layer.stride,
            layer.dilation,
            layer.padding,
        )
    if layer.weight.requires_grad:
        if isinstance(padding, str) or layer.padding_mode != "zeros":
            # Pad exactly as the layer does ('same', reflect, ...), then work without padding.
            pad = layer._reversed_padding_repeated_twice
            mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
            if isinstance(layer, nn.Conv1d):
                a = F.pad(a.squeeze(2), pad, mode=mode).unsqueeze(2)
            else:
                a = F.pad(a, pad, mode=mode)
            padding = (0, 0)
        w_abs = layer.weight.detach().abs().reshape(layer.weight.shape[0], -1, *kernel)
        if stride == (1, 1) and layer.groups == 1:
            out["weight"] = _unit_stride_conv_weight(a, delta, w_abs, padding, dilation)
        else:
            out["weight"] = _unfolded_conv_weight(
                a, delta, w_abs, kernel, stride, padding, dilation, layer.groups
            )
    if layer.bias is not None and layer.bias.requires_grad:
        g_b = delta.sum(tuple(range(2, delta.dim())))
        out["bias"] = (g_b.abs() * layer.bias.detach().abs()).sum(1)
    return out


def _normalised_input(layer: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """x̂ of a norm layer in eval mode (before γ, β), sample by sample."""
    if isinstance(layer, _BN_TYPES):
        shape = (1, -1) + (1,) * (a.dim() - 2)
        mean = layer.running_mean.view(shape)
        var = layer.running_var.view(shape)
        return (a - mean) * torch.rsqrt(var + layer.eps)
    if isinstance(layer, nn.GroupNorm):
        return F.group_norm(a, layer.num_groups, None, None, layer.eps)
    return F.layer_norm(a, layer.normalized_shape, None, None, layer.eps)


def _sum_dims(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    # torch's sum over an empty dim tuple sums everything; here it must be a no-op.
    return t.sum(dims) if dims else t


def _norm_terms(layer: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample Σ|γ⊙g_γ| and Σ|β⊙g_β| of a BatchNorm/GroupNorm/LayerNorm layer."""
    out: dict[str, torch.Tensor] = {}
    B = a.shape[0]
    if isinstance(layer, nn.LayerNorm):
        k = len(layer.normalized_shape)
        reduce_dims = tuple(range(1, a.dim() - k))  # leading non-batch dims
    else:
        reduce_dims = tuple(range(2, a.dim()))  # spatial dims; channels stay
    w, b = layer.weight, layer.bias
    if w is not None and w.requires_grad:
        g_w = _sum_dims(delta * _normalised_input(layer, a), reduce_dims)
        out["weight"] = (g_w.abs() * w.detach().abs()).reshape(B, -1).sum(1)
    if b is not None and b.requires_grad:
        g_b = _sum_dims(delta, reduce_dims)
        out["bias"] = (g_b.abs() * b.detach().abs()).reshape(B, -1).sum(1)
    return out


def _layer_terms(layer: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    if isinstance(layer, nn.Linear):
        return _linear_terms(layer, a, delta)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        return _conv_terms(layer, a, delta)
    return _norm_terms(layer, a, delta)


class HookedPerSample:
    """Per-sample connectivity terms of one batch through layer hooks (see module docstring)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.recorder = _Recorder(model)
        owner_of = {id(p): n for n, p in model.named_parameters()}
        self.names = {
            (lname, local): owner_of[id(p)]
            for lname, layer in self.recorder.layers
            for local, p in _own_trainable(layer)
        }

    def close(self) -> None:
        self.recorder.remove()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """``{parameter name: (B,) per-sample Σ|θ⊙∂ℓ_n/∂θ|}``, or None if a layer ran twice."""
        rec = self.recorder
        rec.clear()
        # Differentiating with respect to the input alone makes autograd skip every
        # parameter-gradient kernel: only output gradients (the hooks) are produced.
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x)
            # The loss is a batch mean, so B × loss = Σ_n ℓ_n; its gradient w.r.t. row n of any
            # activation is ∂ℓ_n/∂(activation)_n.
            total = self.loss_fn(logits, y) * x.shape[0]
            if any(c > 1 for c in rec.calls.values()):
                return None
            torch.autograd.grad(total, [x], allow_unused=True)
        terms: dict[str, torch.Tensor] = {}
        for lname, layer in rec.layers:
            if lname not in rec.grads:  # layer unused in this forward: zero sensitivity
                continue
            for local, value in _layer_terms(layer, rec.inputs[lname], rec.grads[lname]).items():
                terms[self.names[(lname, local)]] = value
        rec.clear()
        return terms


def vmap_per_sample(
    model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, chunk_size: int
) -> dict[str, torch.Tensor]:
    """The same terms as :class:`HookedPerSample` through ``torch.func`` per-sample gradients.

    Works for any model whose eval forward treats samples independently; costs a
    chunk × parameter-count buffer.
    """
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
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
