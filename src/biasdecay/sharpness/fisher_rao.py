"""The Fisher-Rao norm ‖θ‖²_FR = θᵀ F(θ) θ of a softmax classifier (paper eq. 8).

Liang et al. (2019) proposed the Fisher-Rao norm as a reparameterisation-invariant capacity
measure; the paper (Sec. 3.1) compares it with connectivity sharpness (eq. 4). Written out,

    θᵀ F(θ) θ = E_x E_y [(θ · ∇_θ log p_θ(y|x))²],

and ``θ · ∇_θ log p_θ(c|x)`` is the directional derivative of ``log softmax(f_θ(x))_c`` along θ
itself. One forward-mode Jacobian-vector product per batch, with tangent θ, therefore gives that
derivative for every sample and every class at the cost of about two forward passes, with no
per-sample backward. Where an operation of the model has no forward-mode derivative (a custom
autograd Function without ``jvp``), the same product comes from two reverse-mode passes instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jvp

from biasdecay.errors import InputError
from biasdecay.sharpness._autodiff import (
    eager_module,
    exact_higher_order,
    iter_batches,
    missing_second_derivatives,
    no_second_derivatives_error,
    preserved_state,
    trainable_parameters,
    undifferentiable_node,
)
from biasdecay.sharpness._autodiff import progress as progress_bar
from biasdecay.sharpness._per_sample import guard_tolerance, samples_interact

__all__ = ["FISHER_LABELS", "FisherRaoNorm", "fisher_rao_norm"]

#: Label distributions accepted by :func:`fisher_rao_norm`.
FISHER_LABELS = ("model", "empirical")


@dataclass(frozen=True)
class FisherRaoNorm:
    """The Fisher-Rao norm of the trainable parameters.

    Attributes:
        value: ``θᵀ F(θ) θ = ‖θ‖²_FR`` (eq. 8).
        norm: ``‖θ‖_FR``, the square root of ``value``.
        labels: ``"model"`` (true Fisher) or ``"empirical"`` (empirical Fisher).
        n_samples: number of samples averaged over.
        method: how θ · ∇_θ log p was formed: ``"jvp"`` (forward mode) or ``"double-vjp"``
            (two reverse-mode passes, where an operation of the model has no forward-mode
            derivative).
    """

    value: float
    norm: float
    labels: str
    n_samples: int
    method: str = "jvp"


def fisher_rao_norm(
    model: nn.Module, data: Iterable, *, labels: str = "model", progress: bool = False
) -> FisherRaoNorm:
    """``‖θ‖²_FR = θᵀ F(θ) θ = E_x E_y[(θ · ∇_θ log p_θ(y|x))²]`` (paper eq. 8).

    The model must be a classifier whose outputs are logits of shape ``(batch, classes)``, with
    ``p_θ(y|x) = softmax(f_θ(x))_y``: the Fisher of softmax cross-entropy.

    * ``labels="model"``: the (true) Fisher information of the paper's footnote 1 and Liang et
      al. (2019): ``y ~ p_θ(·|x)``, the expectation over ``y`` computed exactly as
      ``Σ_c p_c · d_c²`` (no label sampling).
    * ``labels="empirical"``: the empirical Fisher, ``y`` the data set's label, ``d_y²``.

    Here ``d_c = θ · ∇_θ log p_θ(c|x)``, all classes at once from one forward-mode JVP per batch
    along the tangent θ. θ is the trainable parameters (``requires_grad``); frozen parameters
    and buffers are held fixed. Samples are averaged with equal weight (batch-size weighted over
    batches). BatchNorm runs in eval mode, so each sample's term uses the running statistics, and
    the model's modes and buffers are restored afterwards.

    Args:
        model: the classifier (logits out).
        data: an iterable of ``(inputs, targets)`` batches; the targets are class indices
            (used only when ``labels="empirical"``).
        labels: ``"model"`` or ``"empirical"``.
        progress: show a progress bar over the batches.

    Returns:
        A :class:`FisherRaoNorm` with ``value = ‖θ‖²_FR`` and ``norm = ‖θ‖_FR``.

    Raises:
        ValueError: for an unknown ``labels``, a model without trainable parameters, a model
            whose samples interact in eval mode (a BatchNorm without running statistics),
            outputs that are not ``(batch, classes)`` logits, non-integer targets with
            ``"empirical"``, empty data, or an operation with neither a forward-mode derivative
            nor a double backward.

    References:
        Liang, Poggio, Rakhlin & Stokes, "Fisher-Rao Metric, Geometry, and Complexity of Neural
        Networks", AISTATS 2019.
    """
    model = eager_module(model)
    if labels not in FISHER_LABELS:
        raise InputError(f"unknown labels {labels!r}; valid options are {FISHER_LABELS}")
    interaction = samples_interact(model)
    if interaction is not None:
        raise InputError(
            f"the Fisher-Rao norm is an expectation over samples of p_θ(y|x), which this model "
            f"does not define one sample at a time: {interaction}. Give the layer running "
            "statistics (track_running_stats=True, then a pass over the data in train mode)"
        )
    theta = {name: p.detach() for name, p in trainable_parameters(model)}
    if not theta:
        raise InputError(
            "the model has no trainable parameters (none has requires_grad=True); "
            "unfreeze the parameters whose Fisher-Rao norm you want"
        )
    total = torch.zeros((), dtype=torch.float64)
    n_samples = 0
    method, refusal = "jvp", None
    with preserved_state(model, train=False), exact_higher_order(), torch.no_grad():
        batches = progress_bar(iter_batches(data, model), desc="Fisher-Rao norm", enabled=progress)
        for x, y in batches:
            if method == "jvp":
                try:
                    log_probs, directional = _log_softmax_along_theta(model, theta, x)
                except (NotImplementedError, RuntimeError) as error:
                    refusal = error  # forward mode: for this batch and the rest
                    method = "double-vjp"
            if method == "double-vjp":
                log_probs, directional = _along_theta_by_reverse_mode(model, x, refusal)
            if labels == "model":
                squared = (log_probs.exp() * directional.square()).sum(dim=1)
            else:
                squared = _at_labels(directional, y).square()
            total += squared.sum().to("cpu", torch.float64)
            n_samples += x.shape[0]
    if n_samples == 0:
        raise InputError("the data yielded no batches; pass a non-empty iterable of (x, y)")
    value = (total / n_samples).item()
    return FisherRaoNorm(
        value=value, norm=math.sqrt(value), labels=labels, n_samples=n_samples, method=method
    )


def _log_softmax_along_theta(
    model: nn.Module, theta: dict[str, torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log softmax(f_θ(x))`` and its directional derivative along θ, both ``(batch, classes)``.

    Parameters missing from ``theta`` (frozen ones) and buffers come from the module itself, so
    they are constants of the JVP.
    """

    def log_softmax_of(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return _log_softmax(functional_call(model, params, (x,)))

    # The tangent is θ itself: d/dε log p_{θ+εθ} = θ · ∇_θ log p_θ.
    return jvp(log_softmax_of, (theta,), (theta,))


def _along_theta_by_reverse_mode(
    model: nn.Module, x: torch.Tensor, refusal: Exception | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`_log_softmax_along_theta` gives, by reverse mode alone.

    The vector-Jacobian product v ↦ Jᵀv of the log-probabilities is linear in v, so
    ⟨Jᵀv, θ⟩ = vᵀ(Jθ) and its gradient with respect to v is Jθ, the directional derivative
    along θ: one backward pass that keeps its graph, then one through it. Exact; costs about
    three backward passes, and every operation needs a double backward.

    Args:
        refusal: forward mode's error, told beside this one's if this fails too.
    """
    try:
        return _reverse_over_reverse(model, x)
    except (NotImplementedError, RuntimeError) as error:
        if refusal is not None and str(error) == str(refusal):
            raise  # the model fails on this input whatever the mode: its own error
        raise InputError(
            "the Fisher-Rao norm needs the derivative of the log-probabilities along θ, and "
            f"neither forward mode ({str(refusal).splitlines()[0]}) nor a double backward "
            f"({str(error).splitlines()[0]}) runs through this model"
        ) from error


def _reverse_over_reverse(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    params = [p for _, p in trainable_parameters(model)]
    with torch.enable_grad():
        log_probs = _log_softmax(model(x))
        v = torch.zeros_like(log_probs, requires_grad=True)
        grads = torch.autograd.grad(
            log_probs, params, grad_outputs=v, create_graph=True, allow_unused=True
        )
        node = missing_second_derivatives(grads)
        if node is not None:
            measure = "the Fisher-Rao norm (by double backward)"
            raise no_second_derivatives_error(undifferentiable_node(node), measure)
        inner = sum(
            ((g * p.detach()).sum() for g, p in zip(grads, params, strict=True) if g is not None),
            start=v.new_zeros(()),
        )
        directional = None
        if inner.requires_grad:  # else no parameter reaches the outputs
            (directional,) = torch.autograd.grad(inner, v, retain_graph=True, allow_unused=True)
        if directional is None:
            directional = torch.zeros_like(log_probs)
        _check_by_first_order(log_probs, directional, params)
    return log_probs.detach(), directional


def _check_by_first_order(
    log_probs: torch.Tensor, directional: torch.Tensor, params: list[torch.Tensor]
) -> None:
    """rᵀ(Jθ) = ⟨Jᵀr, θ⟩ for a random r: the double backward's Jθ against one plain backward,
    which needs first derivatives only.

    A custom backward that cuts its graph without saying so (a ``detach`` inside it, no
    ``@once_differentiable``) leaves no node that :func:`missing_second_derivatives` could
    find, and drops its part of Jθ without a sign; this catches it.
    """
    generator = torch.Generator().manual_seed(0)
    r = torch.randn(log_probs.shape, generator=generator, dtype=log_probs.dtype)
    r = r.to(log_probs.device)
    vjps = torch.autograd.grad(log_probs, params, grad_outputs=r, allow_unused=True)
    products = [g * p.detach() for g, p in zip(vjps, params, strict=True) if g is not None]
    along = (r * directional).sum()
    first_order = sum((t.sum() for t in products), start=along.new_zeros(()))
    scale = sum((t.abs().sum() for t in products), start=(r * directional).abs().sum())
    gap = (along - first_order).abs()
    if not bool(gap <= guard_tolerance(log_probs.dtype) * scale):
        raise InputError(
            "the Fisher-Rao norm by double backward: rᵀ(Jθ) differs from ⟨Jᵀr, θ⟩ by "
            f"{(gap / scale).item():.2g} of their scale, so a backward in the model does not "
            "carry its own derivative (a custom autograd Function whose backward detaches or "
            "runs without autograd). Write that backward in differentiable torch operations"
        )


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    if logits.ndim != 2:
        raise InputError(
            f"the model returned outputs of shape {tuple(logits.shape)}; the Fisher-Rao norm "
            "needs classifier logits of shape (batch, classes)"
        )
    return torch.log_softmax(logits, dim=1)


def _at_labels(directional: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if targets.is_floating_point() or targets.is_complex() or targets.ndim != 1:
        raise InputError(
            "labels='empirical' needs class-index targets of shape (batch,); got "
            f"{targets.dtype} of shape {tuple(targets.shape)}"
        )
    return directional.gather(1, targets[:, None]).squeeze(1)
