r"""LAMB: Adam moments with a layer-wise trust ratio (You et al., 2020), as used by the paper.

For each parameter tensor θ with gradient g at step t (Appendix D, Algorithm 1, with the typos
fixed as in docs/design.md §4: the moment lines use (1 − β₁) and β₂, and the last line has −η)::

    g   ← c·g                                  c = min(1, max_grad_norm / (‖g_all‖ + 1e-6))
    m   ← β₁ m + (1 − β₁) g
    v   ← β₂ v + (1 − β₂) g ⊙ g
    m̂   = m / (1 − β₁ᵗ),  v̂ = v / (1 − β₂ᵗ)      (bias correction; m̂ = m, v̂ = v when off)
    u   = m̂ / (√v̂ + ε) + λ θ
    r   = ‖θ‖ / ‖u‖   if θ is adapted and ‖θ‖ > 0 and ‖u‖ > 0,   else 1
    θ   ← θ − η r u

Clipping (first line) is optional and global over every parameter of the optimiser. λ is the
group's ``weight_decay``: a number, or a 0-dim tensor read on the device at every step (adaptive β
decay rewrites it in place; ``state_dict`` carries it with the group). Which θ are adapted is
the group's ``layer_adaptation``: ``"decayed"`` (default) exactly those with λ ≠ 0 at this step,
``"all"`` every θ, ``"none"`` none (then LAMB is Adam with decoupled decay added to the direction).

Implementation note (one pass over memory fewer than the formula): with
``s = √(1 − β₂ᵗ) / (1 − β₁ᵗ)`` and ``ε' = ε √(1 − β₂ᵗ)`` we have ``u = s·ũ`` where
``ũ = m / (√v + ε') + (λ/s) θ``; the trust ratio is scale-free, so ``r u = (‖θ‖/‖ũ‖) ũ``, and
without it ``u = s ũ``. The bias corrections thus never touch memory: they become Python scalars.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from biasdecay.constraints import Constraint, OneOf, Range
from biasdecay.errors import InputError
from biasdecay.optim._common import (
    LAYER_ADAPTATION,
    CheckedOptimizer,
    WeightDecay,
    adaptation_flags,
    bucket_indices,
    check_shared_settings,
    clip_coefficient,
    default_foreach,
    group_weight_decays,
    l2_norm,
    per_tensor_decay_,
    same_setting_groups,
    step_by_path,
)

__all__ = ["LAMB", "lamb"]

#: The valid values of LAMB's settings (lr and weight_decay are checked by their own functions,
#: which also refuse tensors where those are not allowed). Every group is checked against them, and
#: the optimiser registry, and so the config, reads them from here.
CONSTRAINTS: dict[str, Constraint] = {
    "betas": Range(0.0, 1.0),
    "eps": Range(0.0),
    "max_grad_norm": Range(0.0, low_open=True),
    "layer_adaptation": OneOf(LAYER_ADAPTATION),
}

# The group settings that must agree for groups to be stepped together (weight_decay may differ).
_SHARED_SETTINGS = ("lr", "betas", "eps", "layer_adaptation", "bias_correction", "foreach")


class LAMB(CheckedOptimizer):
    r"""LAMB (Layer-wise Adaptive Moments for Batch training), You et al. (2020).

    Update, per parameter tensor θ (see the module docstring for the clipping line)::

        m ← β₁ m + (1 − β₁) g,        v ← β₂ v + (1 − β₂) g²
        m̂ = m / (1 − β₁ᵗ),            v̂ = v / (1 − β₂ᵗ)
        u = m̂ / (√v̂ + ε) + λ θ
        r = ‖θ‖ / ‖u‖  (1 if θ is not adapted, or ‖θ‖ = 0, or ‖u‖ = 0)
        θ ← θ − η r u

    ``layer_adaptation`` says which θ get the ratio. Under ``"decayed"`` (the default, as in the
    LAMB authors' ResNet code and apex FusedLAMB) a parameter is adapted exactly when its λ at
    this step is non-zero, so BN parameters under no-bias-decay take plain Adam steps; with a
    tensor weight decay (adaptive β decay) the ratio follows that step's decision, on the device.
    Under ``"all"`` (optax, torch-optimizer) every parameter is adapted: a zero-initialised BN β
    then takes one plain step (‖θ‖ = 0 gives r = 1) and afterwards grows by at most a factor
    (1 + η) per step, so it stays near zero through a short run. ``"none"`` adapts nothing.

    Decay that changes from step to step: a group's ``weight_decay`` may be a 0-dim tensor
    (best on its parameters' device and dtype). It is read on the device at every step and may be
    rewritten in place between steps; the adaptive β decay controller does this, one group per
    normalisation layer's β (:func:`biasdecay.param_groups` builds them). Being a group setting,
    it is saved and restored by ``state_dict`` like any other.

    ``step()`` never synchronises with the device: no ``.item()``, no branch on tensor values.

    Args:
      params: parameters or parameter groups (dicts; any argument below except
        ``max_grad_norm`` may be set per group).
      lr: learning rate η (>= 0, a Python float; schedulers may rewrite ``group["lr"]``).
      betas: (β₁, β₂), each in [0, 1).
      eps: ε added to √v̂ (>= 0).
      weight_decay: decoupled decay λ added to the Adam direction (>= 0; a number, or per
        group a 0-dim tensor, see above).
      layer_adaptation: which parameters get the ratio r = ‖θ‖/‖u‖: ``"decayed"``,
        ``"all"`` or ``"none"`` (see above and ``biasdecay.optim._common.LAYER_ADAPTATION``).
      bias_correction: divide the moments by (1 − βᵗ).
      max_grad_norm: if set (> 0), clip the global gradient norm of all parameters of this
        optimiser to it before the moments are updated.
      foreach: True for the ``torch._foreach_*`` path, False for the per-tensor loop, None for
        the measured default of the parameters' device (``_common.FOREACH_IS_FASTER``).

    References:
      You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
      ICLR 2020 (Algorithm 2). "Bias decay matters", Appendix D, Algorithm 1.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        layer_adaptation: str = "decayed",
        bias_correction: bool = True,
        max_grad_norm: float | None = None,
        foreach: bool | None = None,
    ) -> None:
        # max_grad_norm is not a group setting: the clipping is global, over every group.
        CONSTRAINTS["max_grad_norm"].check("max_grad_norm", max_grad_norm, "LAMB")
        self.max_grad_norm = max_grad_norm
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "layer_adaptation": layer_adaptation,
            "bias_correction": bias_correction,
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        _check_group("LAMB", group)

    def __getstate__(self) -> dict[str, Any]:
        # Pickling and deepcopy keep the clipping threshold, which is not a group setting.
        return {**super().__getstate__(), "max_grad_norm": self.max_grad_norm}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("max_grad_norm", None)

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        steps: list[int],
    ) -> None:
        with_grads = [p for p in group["params"] if p.grad is not None]
        if any(p.grad.is_sparse for p in with_grads):  # before any state changes
            raise RuntimeError(
                "LAMB does not support sparse gradients; use dense gradients "
                "(e.g. nn.Embedding(sparse=False)) or torch.optim.SparseAdam"
            )
        for p in with_grads:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            # The count is a Python int: bias corrections stay host scalars, with no sync.
            state["step"] += 1
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One LAMB update of every parameter that has a gradient; returns ``closure()``'s loss."""
        loss = self._closure_loss(closure)

        # Groups that differ only in weight_decay (one per role, one per layer's β) step as one.
        merged = []
        for members in same_setting_groups(self.param_groups, _SHARED_SETTINGS):
            lists: tuple[list[Any], ...] = ([], [], [], [], [])  # θ, g, m, v, step
            weight_decays: list[WeightDecay] = []
            for k in members:
                start = len(lists[0])
                self._init_group(self.param_groups[k], *lists)
                weight_decays.extend(group_weight_decays(self.param_groups[k], lists[0][start:]))
            if lists[0]:
                merged.append((self.param_groups[members[0]], lists, weight_decays))

        clip = None
        if self.max_grad_norm is not None:
            all_grads = [g for _, lists, _ in merged for g in lists[1]]
            if all_grads:
                use_foreach = self.defaults["foreach"]
                if use_foreach is None:
                    use_foreach = default_foreach(all_grads)
                clip = clip_coefficient(all_grads, self.max_grad_norm, foreach=use_foreach)

        for group, lists, weight_decays in merged:
            beta1, beta2 = group["betas"]
            lamb(
                *lists,
                weight_decays,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                layer_adaptation=group["layer_adaptation"],
                bias_correction=group["bias_correction"],
                grad_scale=clip,
                foreach=group["foreach"],
            )
        return loss


def _check_group(owner: str, group: dict[str, Any]) -> None:
    check_shared_settings(owner, group)
    betas = group["betas"]
    if not isinstance(betas, Sequence) or len(betas) != 2:
        raise InputError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
    CONSTRAINTS["betas"].check("betas", tuple(betas), owner)
    CONSTRAINTS["eps"].check("eps", group["eps"], owner)
    if not isinstance(group["bias_correction"], bool):
        raise InputError(
            f"{owner}: bias_correction must be a bool, got {group['bias_correction']!r}"
        )


def _scalars(
    step: int, beta1: float, beta2: float, eps: float, bias_correction: bool
) -> tuple[float, float]:
    """``(s, ε')`` of the module docstring: u = s·ũ with ũ = m / (√v + ε') + (λ/s) θ."""
    if not bias_correction:
        return 1.0, eps
    correction2_sqrt = math.sqrt(1.0 - beta2**step)
    return correction2_sqrt / (1.0 - beta1**step), eps * correction2_sqrt


def lamb(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[int],
    weight_decays: Sequence[WeightDecay],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    layer_adaptation: str,
    bias_correction: bool,
    grad_scale: Tensor | None = None,
    foreach: bool | None = None,
) -> None:
    """Functional LAMB: update ``params``, ``exp_avgs`` and ``exp_avg_sqs`` in place.

    Args:
      params, grads, exp_avgs, exp_avg_sqs: matching lists of tensors (θ, g, m, v).
      steps: the 1-based number of this update for each parameter (t in 1 − βᵗ).
      weight_decays: each parameter's λ, a number or a 0-dim tensor on its device.
      lr, beta1, beta2, eps, layer_adaptation, bias_correction: as in :class:`LAMB`.
      grad_scale: a 0-dim tensor every gradient is multiplied by first (global clipping).
      foreach: True or False for one path for every tensor; None picks per tensor (see
        ``FOREACH_IS_FASTER`` and ``SMALL_TENSOR_NUMEL`` in ``biasdecay.optim._common``).
    """
    adapted = adaptation_flags(layer_adaptation, weight_decays)
    step_by_path(
        (_single_tensor_lamb, _multi_tensor_lamb),
        (params, grads, exp_avgs, exp_avg_sqs, steps, weight_decays, adapted),
        {
            "lr": lr,
            "beta1": beta1,
            "beta2": beta2,
            "eps": eps,
            "bias_correction": bias_correction,
            "grad_scale": grad_scale,
        },
        foreach=foreach,
    )


def _single_tensor_lamb(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[int],
    weight_decays: list[WeightDecay],
    adapted: list[bool | Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    bias_correction: bool,
    grad_scale: Tensor | None,
) -> None:
    for i, param in enumerate(params):
        grad, exp_avg, exp_avg_sq = grads[i], exp_avgs[i], exp_avg_sqs[i]
        if grad_scale is not None:
            grad = grad * grad_scale.to(device=grad.device, dtype=grad.dtype)

        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)

        scale, eps_scaled = _scalars(steps[i], beta1, beta2, eps, bias_correction)
        update = exp_avg_sq.sqrt().add_(eps_scaled)
        torch.div(exp_avg, update, out=update)  # reuse the buffer: one temporary per tensor
        per_tensor_decay_([update], [param], [weight_decays[i]], 1.0 / scale, foreach=False)

        # ‖θ‖/‖ũ‖ applied to ũ equals r·u; the fallback r = 1 applied to u is s applied to ũ.
        if adapted[i] is False:
            # The same arithmetic as a "no" decided on the device, so that a tensor λ of 0 gives
            # bit-for-bit what a number λ of 0 gives (adaptive β decay at R = ∞).
            coefficient = param.new_full((), scale)
        else:
            param_norm = l2_norm(param)
            update_norm = l2_norm(update)
            use_ratio = (param_norm > 0) & (update_norm > 0)
            if adapted[i] is not True:  # a device-side decision: adapted where the tensor λ ≠ 0
                use_ratio = use_ratio & (adapted[i] != 0)
            coefficient = torch.where(use_ratio, param_norm / update_norm, scale)
        param.addcmul_(update, coefficient, value=-lr)


def _multi_tensor_lamb(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[int],
    weight_decays: list[WeightDecay],
    adapted: list[bool | Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    bias_correction: bool,
    grad_scale: Tensor | None,
) -> None:
    # One bucket per (device, dtype, step): a bucket shares its bias-correction scalars.
    for idx in bucket_indices(params, steps):
        bucket_params = [params[i] for i in idx]
        bucket_grads = [grads[i] for i in idx]
        bucket_avgs = [exp_avgs[i] for i in idx]
        bucket_sqs = [exp_avg_sqs[i] for i in idx]
        bucket_decays = [weight_decays[i] for i in idx]
        first = bucket_params[0]
        if grad_scale is not None:
            bucket_grads = torch._foreach_mul(
                bucket_grads, grad_scale.to(device=first.device, dtype=first.dtype)
            )

        torch._foreach_lerp_(bucket_avgs, bucket_grads, 1.0 - beta1)
        torch._foreach_mul_(bucket_sqs, beta2)
        torch._foreach_addcmul_(bucket_sqs, bucket_grads, bucket_grads, value=1.0 - beta2)

        scale, eps_scaled = _scalars(steps[idx[0]], beta1, beta2, eps, bias_correction)
        # One temporary per tensor, as torch's foreach Adam: m / (√v + ε') is formed in place
        # (reciprocal, then times m) rather than allocating a second parameter-sized list.
        updates = torch._foreach_sqrt(bucket_sqs)
        torch._foreach_add_(updates, eps_scaled)
        torch._foreach_reciprocal_(updates)
        torch._foreach_mul_(updates, bucket_avgs)
        per_tensor_decay_(updates, bucket_params, bucket_decays, 1.0 / scale, foreach=True)

        flags = [adapted[i] for i in idx]
        ratio = [k for k, flag in enumerate(flags) if flag is not False]
        # Unadapted tensors take s (r = 1) through the same arithmetic as adapted ones, as in
        # the single-tensor path: a tensor λ of 0 then equals a number λ of 0 bitwise.
        plain = first.new_full((), scale)
        coefficients: list[Tensor] = [plain] * len(idx)
        if ratio:
            param_norms = torch.stack(torch._foreach_norm([bucket_params[k] for k in ratio]))
            update_norms = torch.stack(torch._foreach_norm([updates[k] for k in ratio]))
            use_ratio = (param_norms > 0) & (update_norms > 0)
            if any(flags[k] is not True for k in ratio):  # device-side decisions (tensor λ)
                # A fill kernel stands for the host's True (no host-to-device copy, no sync);
                # the tensor λs are compared with 0 in one kernel.
                yes = param_norms.new_ones(())
                decided = torch.stack([yes if flags[k] is True else flags[k] for k in ratio])
                use_ratio = use_ratio & (decided != 0)
            ratios = torch.where(use_ratio, param_norms / update_norms, scale).unbind(0)
            for k, value in zip(ratio, ratios, strict=True):
                coefficients[k] = value
        torch._foreach_addcmul_(bucket_params, updates, coefficients, value=-lr)
