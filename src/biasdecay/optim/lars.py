r"""LARS: SGD with momentum and a layer-wise local learning rate (You et al., 2017).

For each parameter tensor θ with gradient g (λ: weight decay, μ: momentum, η: learning rate)::

    d  = g + λ θ
    r  = κ ‖θ‖ / (‖g‖ + λ ‖θ‖ + ε)   if θ is adapted and ‖θ‖ > 0 and ‖g‖ > 0,   else 1
    b  ← μ b + r d                    (first step: b = r d; no buffer when μ = 0: b = r d)
    θ  ← θ − η (r d + μ b)            with nesterov
    θ  ← θ − η b                      otherwise

κ is ``trust_coefficient``. λ is the group's ``weight_decay``: a number, or a 0-dim tensor read on
the device at every step (adaptive β decay rewrites it in place). Which θ are adapted is the
group's ``layer_adaptation``: ``"decayed"`` (default) exactly those with λ ≠ 0 at this step (as
MLPerf's ResNet-50 LARS, which skips BN parameters and biases from both), ``"all"`` every θ,
``"none"`` none, which is exactly SGD with momentum and L2 decay.

Implementation note: d is never stored. r·d enters the buffer as r·g + (rλ)·θ and the parameter
as θ(1 − ηrλ) − ηr·g, which saves a temporary the size of θ (and on CPU the page faults of
allocating it) at the cost of one pass over θ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from biasdecay.constraints import Constraint, OneOf, Range
from biasdecay.errors import InputError
from biasdecay.optim import _common
from biasdecay.optim._common import LAYER_ADAPTATION, CheckedOptimizer, WeightDecay

__all__ = ["LARS", "lars"]

#: What LARS's own settings may be (the shared ones: ``_common.check_shared_settings``). Groups
#: are checked against this table, and the optimiser registry (so the config) reads it.
CONSTRAINTS: dict[str, Constraint] = {
    "momentum": Range(0.0, 1.0),
    "trust_coefficient": Range(0.0, low_open=True),
    "eps": Range(0.0),
    "layer_adaptation": OneOf(LAYER_ADAPTATION),
}

# The group settings that must agree for groups to be stepped together (weight_decay may differ).
_SHARED_SETTINGS = (
    "lr", "momentum", "trust_coefficient", "eps", "nesterov", "layer_adaptation", "foreach"
)  # fmt: skip


class LARS(CheckedOptimizer):
    r"""LARS (Layer-wise Adaptive Rate Scaling), You, Gitman and Ginsburg (2017).

    Update, per parameter tensor θ with gradient g::

        d = g + λ θ
        r = κ ‖θ‖ / (‖g‖ + λ ‖θ‖ + ε)     (r = 1 if θ is not adapted, ‖θ‖ = 0 or ‖g‖ = 0)
        b ← μ b + r d                     (b = r d at the first step, and always when μ = 0)
        θ ← θ − η (r d + μ b)  if nesterov,   θ ← θ − η b  otherwise

    with κ = ``trust_coefficient``, μ = ``momentum``, λ = ``weight_decay`` and η = ``lr``.
    ``layer_adaptation`` says which θ get the local rate: ``"decayed"`` (default) exactly those
    whose λ at this step is non-zero (with a tensor λ, as under adaptive β decay, the rate
    follows that step's decision on the device), ``"all"`` every θ, ``"none"`` none.

    Decay that changes from step to step: a group's ``weight_decay`` may be a 0-dim tensor (best
    on its parameters' device and dtype), used in both d and r. It is read on the device at every
    step, may be rewritten in place between steps, and is saved by ``state_dict`` with its group.

    ``step()`` never synchronises with the device: no ``.item()``, no branch on tensor values.

    Args:
      params: parameters or parameter groups (dicts; every argument below may be set per group).
      lr: global learning rate η (>= 0, a Python float; schedulers may rewrite ``group["lr"]``).
      momentum: μ in [0, 1).
      weight_decay: L2 coefficient λ (>= 0; a number, or per group a 0-dim tensor).
      trust_coefficient: κ (> 0), the paper's η of the local rate (0.001 in You et al.).
      eps: ε (>= 0) keeping the local rate finite.
      nesterov: Nesterov momentum (needs momentum > 0).
      layer_adaptation: which parameters get the local rate r: ``"decayed"``, ``"all"`` or
        ``"none"`` (see above).
      foreach: True for the ``torch._foreach_*`` path, False for the per-tensor loop, None for
        the measured default of the parameters' device (``_common.FOREACH_IS_FASTER``).

    References:
      You, Gitman and Ginsburg, "Large Batch Training of Convolutional Networks",
      arXiv:1708.03888, 2017 (Algorithm 1).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        *,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        nesterov: bool = False,
        layer_adaptation: str = "decayed",
        foreach: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "nesterov": nesterov,
            "layer_adaptation": layer_adaptation,
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        _check_group("LARS", group)

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        momentum_buffers: list[Tensor | None],
    ) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    "LARS does not support sparse gradients: the trust ratio needs the dense "
                    "gradient norm; use dense gradients (e.g. nn.Embedding(sparse=False))"
                )
            params.append(p)
            grads.append(p.grad)
            momentum_buffers.append(self.state[p].get("momentum_buffer"))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One LARS update of every parameter that has a gradient; returns ``closure()``'s loss."""
        loss = self._closure_loss(closure)

        # Groups that differ only in weight_decay (one per role, one per layer's β) step as one.
        for members in _common.same_setting_groups(self.param_groups, _SHARED_SETTINGS):
            params: list[Tensor] = []
            grads: list[Tensor] = []
            momentum_buffers: list[Tensor | None] = []
            weight_decays: list[WeightDecay] = []
            for k in members:
                start = len(params)
                self._init_group(self.param_groups[k], params, grads, momentum_buffers)
                weight_decays.extend(
                    _common.group_weight_decays(self.param_groups[k], params[start:])
                )
            if not params:
                continue
            group = self.param_groups[members[0]]
            lars(
                params,
                grads,
                momentum_buffers,
                weight_decays,
                lr=group["lr"],
                momentum=group["momentum"],
                trust_coefficient=group["trust_coefficient"],
                eps=group["eps"],
                nesterov=group["nesterov"],
                layer_adaptation=group["layer_adaptation"],
                foreach=group["foreach"],
            )
            if group["momentum"] != 0:
                for p, buffer in zip(params, momentum_buffers, strict=True):
                    self.state[p]["momentum_buffer"] = buffer
        return loss


def _check_group(owner: str, group: dict[str, Any]) -> None:
    _common.check_shared_settings(owner, group)
    for name in ("momentum", "trust_coefficient", "eps"):
        CONSTRAINTS[name].check(name, group[name], owner)
    if not isinstance(group["nesterov"], bool):
        raise InputError(f"{owner}: nesterov must be a bool, got {group['nesterov']!r}")
    if group["nesterov"] and group["momentum"] == 0:
        raise InputError(f"{owner}: nesterov=True needs momentum in (0, 1), got momentum=0")


def lars(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    weight_decays: list[WeightDecay],
    *,
    lr: float,
    momentum: float,
    trust_coefficient: float,
    eps: float,
    nesterov: bool,
    layer_adaptation: str,
    foreach: bool | None = None,
) -> None:
    """Functional LARS: update ``params`` in place and fill/update ``momentum_buffers``.

    Args:
      params, grads: matching lists of tensors (θ, g).
      momentum_buffers: the buffers b, None where a parameter has none yet; new buffers are
        written into this list (it is ignored when ``momentum`` is 0).
      weight_decays: each parameter's λ, a number or a 0-dim tensor on its device.
      lr, momentum, trust_coefficient, eps, nesterov, layer_adaptation: as in :class:`LARS`.
      foreach: True or False for one path for every tensor; None picks per tensor (see
        ``FOREACH_IS_FASTER`` and ``SMALL_TENSOR_NUMEL`` in ``biasdecay.optim._common``).
    """
    _common.step_by_path(
        (_single_tensor_lars, _multi_tensor_lars),
        (params, grads, momentum_buffers, weight_decays),
        {
            "lr": lr,
            "momentum": momentum,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "nesterov": nesterov,
            "layer_adaptation": layer_adaptation,
        },
        foreach=foreach,
        written=(2,),  # new momentum buffers go back to the caller
    )


# A per-tensor coefficient: one Python float shared by every tensor of a bucket, or a vector with
# one entry per tensor.
Coefficient = float | Tensor


@dataclass
class _BucketScalars:
    """The per-tensor scalars of one (device, dtype) bucket, computed as vectors.

    Both paths share them: about ten small kernels per bucket instead of ten launches on 0-dim
    tensors per parameter tensor, and the same arithmetic, so single-tensor and foreach agree.
    """

    rates: Coefficient  # r
    rate_decays: Coefficient  # r·λ (the weight of θ in r·d)
    shrink: Coefficient  # 1 − η·r·λ (the factor on θ in θ − η·r·d)
    has_decay: bool
    count: int  # tensors in the bucket

    def entries(self, name: str) -> list[float] | list[Tensor]:
        """One coefficient per tensor: a float repeated, or the vector's 0-dim entries."""
        value = getattr(self, name)
        return list(value.unbind(0)) if isinstance(value, Tensor) else [value] * self.count


def _local_rates(
    param_norms: Tensor,
    grad_norms: Tensor,
    decays: Tensor | float,
    trust_coefficient: float,
    eps: float,
) -> Tensor:
    """r = κ‖θ‖/(‖g‖ + λ‖θ‖ + ε) where both norms are positive, else 1 (elementwise)."""
    rates = trust_coefficient * param_norms / (grad_norms + decays * param_norms + eps)
    return torch.where((param_norms > 0) & (grad_norms > 0), rates, 1.0)


def _bucket_scalars(
    params: list[Tensor],
    grads: list[Tensor],
    weight_decays: list[WeightDecay],
    *,
    lr: float,
    trust_coefficient: float,
    eps: float,
    layer_adaptation: str,
    foreach: bool,
) -> _BucketScalars:
    """r, r·λ and 1 − η·r·λ for every tensor of one bucket."""
    decays: Coefficient = weight_decays[0]
    if any(isinstance(lam, Tensor) or lam != decays for lam in weight_decays):
        # Fill kernels, not torch.tensor(): a host-to-device copy could block the host.
        decays = torch.stack(
            [
                lam if isinstance(lam, Tensor) else params[0].new_full((), lam)
                for lam in weight_decays
            ]
        )
    adapted = _common.adaptation_flags(layer_adaptation, weight_decays)
    # r = 1 of unadapted tensors is a tensor too (a fill kernel), so that they go through the same
    # arithmetic as adapted ones: a tensor λ of 0 then equals a number λ of 0 bitwise.
    rates: Coefficient = params[0].new_ones(len(params))
    if any(flag is not False for flag in adapted):
        if foreach:
            param_norms, grad_norms = torch._foreach_norm(params), torch._foreach_norm(grads)
        else:
            param_norms = [_common.l2_norm(p) for p in params]
            grad_norms = [_common.l2_norm(g) for g in grads]
        rates = _local_rates(
            torch.stack(param_norms), torch.stack(grad_norms), decays, trust_coefficient, eps
        )
        if not all(flag is True for flag in adapted):
            # Some tensors are not adapted, or a tensor λ decides on the device: r = 1 there.
            # Fill kernels stand for the host's bools, so nothing is copied to the device; the
            # tensor λs are compared with 0 in one kernel.
            yes, no = rates.new_ones(()), rates.new_zeros(())
            decided = torch.stack([yes if f is True else no if f is False else f for f in adapted])
            rates = torch.where(decided != 0, rates, 1.0)
    rate_decays = rates * decays
    return _BucketScalars(
        rates=rates,
        rate_decays=rate_decays,
        shrink=1.0 - lr * rate_decays,
        has_decay=isinstance(decays, Tensor) or decays != 0,
        count=len(params),
    )


def _axpy_(target: Tensor, x: Tensor, coefficient: float | Tensor, value: float = 1.0) -> None:
    """``target += value · coefficient · x`` (coefficient a float or a 0-dim tensor)."""
    if isinstance(coefficient, Tensor):
        target.addcmul_(x, coefficient, value=value)
    else:
        target.add_(x, alpha=value * coefficient)


def _single_tensor_lars(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    weight_decays: list[WeightDecay],
    *,
    lr: float,
    momentum: float,
    trust_coefficient: float,
    eps: float,
    nesterov: bool,
    layer_adaptation: str,
) -> None:
    for idx in _common.bucket_indices(params, [None] * len(params)):
        scalars = _bucket_scalars(
            [params[i] for i in idx],
            [grads[i] for i in idx],
            [weight_decays[i] for i in idx],
            lr=lr,
            trust_coefficient=trust_coefficient,
            eps=eps,
            layer_adaptation=layer_adaptation,
            foreach=False,
        )
        rates, rate_decays, shrinks = (
            scalars.entries("rates"),
            scalars.entries("rate_decays"),
            scalars.entries("shrink"),
        )
        for k, i in enumerate(idx):
            param, grad = params[i], grads[i]
            if momentum == 0:  # θ ← θ(1 − η r λ) − η r g
                if scalars.has_decay:
                    param.mul_(shrinks[k])
                _axpy_(param, grad, rates[k], -lr)
                continue
            buffer = momentum_buffers[i]
            if buffer is None:
                buffer = grad * rates[k]  # a new tensor (never an alias of the gradient)
                momentum_buffers[i] = buffer
            else:
                buffer.mul_(momentum)
                _axpy_(buffer, grad, rates[k])
            if scalars.has_decay:
                _axpy_(buffer, param, rate_decays[k])
            if nesterov:  # θ ← θ(1 − η r λ) − η r g − η μ b
                if scalars.has_decay:
                    param.mul_(shrinks[k])
                _axpy_(param, grad, rates[k], -lr)
                param.add_(buffer, alpha=-lr * momentum)
            else:
                param.add_(buffer, alpha=-lr)


def _pick(coefficient: Coefficient, indices: list[int]) -> float | list[Tensor]:
    """The entries ``indices`` of a per-tensor coefficient (a float applies to every tensor)."""
    if isinstance(coefficient, Tensor):
        entries = coefficient.unbind(0)
        return [entries[k] for k in indices]
    return coefficient


def _foreach_axpy_(
    targets: list[Tensor], xs: list[Tensor], coefficient: float | list[Tensor], value: float = 1.0
) -> None:
    """``target += value · coefficient · x`` for every pair."""
    if isinstance(coefficient, list):
        torch._foreach_addcmul_(targets, xs, coefficient, value=value)
    else:
        torch._foreach_add_(targets, xs, alpha=value * coefficient)


def _multi_tensor_lars(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    weight_decays: list[WeightDecay],
    *,
    lr: float,
    momentum: float,
    trust_coefficient: float,
    eps: float,
    nesterov: bool,
    layer_adaptation: str,
) -> None:
    for idx in _common.bucket_indices(params, [None] * len(params)):
        bucket_params = [params[i] for i in idx]
        bucket_grads = [grads[i] for i in idx]
        scalars = _bucket_scalars(
            bucket_params,
            bucket_grads,
            [weight_decays[i] for i in idx],
            lr=lr,
            trust_coefficient=trust_coefficient,
            eps=eps,
            layer_adaptation=layer_adaptation,
            foreach=True,
        )
        everyone = list(range(len(idx)))
        rates = _pick(scalars.rates, everyone)

        if momentum == 0:
            if scalars.has_decay:
                torch._foreach_mul_(bucket_params, _pick(scalars.shrink, everyone))
            _foreach_axpy_(bucket_params, bucket_grads, rates, -lr)
            continue

        new = [k for k, i in enumerate(idx) if momentum_buffers[i] is None]
        old = [k for k, i in enumerate(idx) if momentum_buffers[i] is not None]
        if new:
            new_grads = [bucket_grads[k] for k in new]
            created = torch._foreach_mul(new_grads, _pick(scalars.rates, new))  # copies of g
            for k, buffer in zip(new, created, strict=True):
                momentum_buffers[idx[k]] = buffer
        if old:
            old_buffers = [momentum_buffers[idx[k]] for k in old]
            torch._foreach_mul_(old_buffers, momentum)
            _foreach_axpy_(old_buffers, [bucket_grads[k] for k in old], _pick(scalars.rates, old))
        bucket_buffers = [momentum_buffers[i] for i in idx]
        if scalars.has_decay:
            _foreach_axpy_(bucket_buffers, bucket_params, _pick(scalars.rate_decays, everyone))

        if nesterov:
            if scalars.has_decay:
                torch._foreach_mul_(bucket_params, _pick(scalars.shrink, everyone))
            _foreach_axpy_(bucket_params, bucket_grads, rates, -lr)
            torch._foreach_add_(bucket_params, bucket_buffers, alpha=-lr * momentum)
        else:
            torch._foreach_add_(bucket_params, bucket_buffers, alpha=-lr)
