"""Norm layers (eval-mode BatchNorm, GroupNorm, LayerNorm) whose backward also forms their
per-sample γ and β gradients.

Autograd's backward of such a layer reads the output gradient δ and the input x to form the
input gradient (a GroupNorm's reads them twice: for the group sums, then for the gradient); the
per-sample gradients Σ δ·x̂ and Σ δ (over positions or tokens), taken from the output's
gradient hook, read both again (a LayerNorm's, three more passes). In the hook path's measured
forward, the output of a layer that ran the standard kernel (BatchNorm with running
statistics, GroupNorm, LayerNorm) is therefore handed on through :class:`_WithPerSampleSums`,
whose backward forms all of them in one pass over memory (``batch_norm_backward``,
``group_norm_backward`` and ``layer_norm_backward`` of :mod:`._native`). On ResNet-18 and the
transformer blocks this takes the per-sample norm terms out of the cost almost entirely
(docs/benchmarks.md).

The value the layer computed is handed on unchanged; only its backward is replaced, by the same
formula. The exactness guard still compares every parameter's implied gradient with autograd's
on the untouched model, so a backward that differed would not pass unseen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from biasdecay.roles import op_of
from biasdecay.sharpness import _native

# (per-sample ∂ℓ_n/∂γ, per-sample ∂ℓ_n/∂β), each (B, *parameter shape) in the input's dtype.
SumsSink = Callable[[torch.Tensor, torch.Tensor], None]

# (δ, x, whether to form the input gradient) -> (input gradient or None, per-sample ∂ℓ_n/∂γ and
# ∂ℓ_n/∂β, (B, *parameter shape) each)
Backward = Callable[
    [torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]
]


def fused_backward(
    layer: nn.Module, a: torch.Tensor, output: torch.Tensor, batch: int | None
) -> Backward | None:
    """The fused backward of ``layer``, which computed ``output`` from ``a``, or None where it
    does not apply: another module or kernel, a BatchNorm in training mode, an input that is
    not one contiguous (B, C, …) row per sample, or no kernel for it (another dtype or device,
    no compiler)."""
    if a.grad_fn is None or a.dim() < 2 or not a.is_contiguous() or output.shape != a.shape:
        return None  # nothing below needs the input gradient; or a layout the kernels refuse
    if batch is None or a.shape[0] != batch or _native.unavailable(a) is not None:
        return None
    op, node = op_of(layer), output.grad_fn
    try:
        if op == "batch_norm" and type(node).__name__ == "NativeBatchNormBackward0":
            return _batch_norm(layer, a, node)
        if op == "group_norm" and type(node).__name__ == "NativeGroupNormBackward0":
            return _group_norm(layer, a, node)
        if op == "layer_norm" and type(node).__name__ == "NativeLayerNormBackward0":
            return _layer_norm(layer, a, node)
    except (AttributeError, RuntimeError):  # another torch's node, or already freed
        return None
    return None


def _same_input(saved: torch.Tensor, a: torch.Tensor) -> bool:
    return saved.data_ptr() == a.data_ptr() and saved.shape == a.shape and saved.dtype == a.dtype


def _batch_norm(layer: nn.Module, a: torch.Tensor, node) -> Backward | None:
    """The running statistics with which the kernel normalised ``a`` in eval mode."""
    mean, var, eps = node._saved_running_mean, node._saved_running_var, node._saved_eps
    if node._saved_training or mean is None or var is None or eps != layer.eps:
        return None
    if not _same_input(node._saved_input, a) or mean.dtype != a.dtype:
        return None
    mean = mean.detach().contiguous()
    invstd = 1 / torch.sqrt(var.detach() + eps)  # as the kernel computes it
    gamma = layer.weight.detach() if layer.weight is not None else torch.ones_like(invstd)
    scale = (gamma * invstd).contiguous()

    def backward(delta: torch.Tensor, x: torch.Tensor, input_gradient: bool):
        grad_in, sum_d, sum_dx = _native.batch_norm_backward(delta, x, mean, scale, input_gradient)
        return grad_in, sum_dx * invstd.to(torch.float64), sum_d

    return backward


def _group_norm(layer: nn.Module, a: torch.Tensor, node) -> Backward | None:
    """The per-(sample, group) mean and 1/std that the GroupNorm's forward saved for ``a``."""
    groups, eps = node._saved_group, node._saved_eps
    mean, rstd = node._saved_result1.detach(), node._saved_result2.detach()
    if groups != layer.num_groups or eps != layer.eps or not _same_input(node._saved_input, a):
        return None
    if layer.weight is None or tuple(mean.shape) != (a.shape[0], groups):
        return None
    if mean.dtype != a.dtype:
        return None
    mean, rstd = mean.contiguous(), rstd.contiguous()
    gamma = layer.weight.detach().contiguous()
    channels = a.shape[1] // groups

    def backward(delta: torch.Tensor, x: torch.Tensor, input_gradient: bool):
        grad_in, sum_d, sum_dx = _native.group_norm_backward(
            delta, x, mean, rstd, gamma, input_gradient
        )
        per_channel = rstd.to(torch.float64).repeat_interleave(channels, dim=1)
        return grad_in, sum_dx * per_channel, sum_d

    return backward


def _layer_norm(layer: nn.Module, a: torch.Tensor, node) -> Backward | None:
    """The per-row mean and 1/std that the LayerNorm's forward saved for ``a``."""
    shape, weight = tuple(node._saved_normalized_shape), node._saved_weight
    if shape != tuple(layer.normalized_shape) or not _same_input(node._saved_input, a):
        return None
    if layer.weight is None or weight is None or weight.data_ptr() != layer.weight.data_ptr():
        return None
    mean, rstd = node._saved_result1.detach(), node._saved_result2.detach()
    if mean.dtype != a.dtype:
        return None
    mean, rstd = mean.contiguous(), rstd.contiguous()
    gamma = layer.weight.detach().contiguous()

    def backward(delta: torch.Tensor, x: torch.Tensor, input_gradient: bool):
        grad_in, g_gamma, g_beta = _native.layer_norm_backward(
            delta, x, mean, rstd, gamma, input_gradient
        )
        per_sample = (x.shape[0], *shape)
        return grad_in, g_gamma.view(per_sample), g_beta.view(per_sample)

    return backward


@dataclass
class _State:
    backward: Backward
    sink: SumsSink
    output: torch.Tensor | None  # the layer's output, handed on by the forward (then dropped)


class _WithPerSampleSums(torch.autograd.Function):
    """Hands on a norm layer's computed output; its backward gives the input gradient and sends
    the per-sample γ and β gradients to the sink."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, state: _State) -> torch.Tensor:
        ctx.save_for_backward(a)
        ctx.state = state
        out, state.output = state.output, None
        return out

    @staticmethod
    def backward(ctx, delta: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        (a,) = ctx.saved_tensors
        state = ctx.state
        grad_in, g_gamma, g_beta = state.backward(delta.contiguous(), a, ctx.needs_input_grad[0])
        state.sink(g_gamma.to(a.dtype), g_beta.to(a.dtype))  # no copy where already
        return grad_in, None


def with_per_sample_sums(
    a: torch.Tensor, output: torch.Tensor, backward: Backward, sink: SumsSink
) -> torch.Tensor:
    """``output`` (a norm layer's, on input ``a``, which carries its autograd history), with a
    backward that also sends the per-sample γ and β gradients to ``sink``.

    Args:
        backward: from :func:`fused_backward`.
    """
    return _WithPerSampleSums.apply(a, _State(backward, sink, output.detach()))
