"""What the framework integrations share: LAMB under a role-based policy, and the β check."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from biasdecay.decay import decay_policy, param_groups
from biasdecay.optim import LAMB
from biasdecay.roles import is_norm_module


def role_lamb(
    module: nn.Module,
    *,
    lr: float,
    policy: str,
    weight_decay: float,
    layer_adaptation: str,
    betas: tuple[float, float],
    eps: float,
    policy_options: Mapping[str, float | bool],
) -> LAMB:
    """LAMB over ``module``'s parameters, grouped by :func:`biasdecay.param_groups`.

    Args:
        module: the network.
        lr: the peak learning rate.
        policy: a decay policy name (``biasdecay list`` shows them).
        weight_decay: λ_w of the non-normalisation weights.
        layer_adaptation: ``"decayed"``, ``"all"`` or ``"none"``: which groups take the trust
            ratio.
        betas: Adam's β₁, β₂.
        eps: Adam's ε.
        policy_options: the policy's own options (``beta``, ``gamma``, ``threshold``, ...).

    Returns:
        The optimiser.
    """
    groups = param_groups(module, decay_policy(policy, **policy_options), weight_decay)
    return LAMB(groups, lr=lr, betas=betas, eps=eps, layer_adaptation=layer_adaptation)


def has_trainable_beta(module: nn.Module) -> bool:
    """Whether ``module`` has a normalisation layer with a trainable β (a bias to decay)."""
    return any(
        is_norm_module(m)
        and isinstance(getattr(m, "bias", None), nn.Parameter)
        and m.bias.requires_grad
        for m in module.modules()
    )


def flatten_record(record: Mapping[str, Any], prefix: str = "sharpness") -> dict[str, float]:
    """A tracking record as flat ``prefix/...`` scalars, the form the frameworks' loggers take.

    Args:
        record: from :meth:`biasdecay.train.monitors.SharpnessTracker.record`.
        prefix: the metrics' namespace.

    Returns:
        ``{"sharpness/c_m": ..., "sharpness/c_m/<role>": ..., "sharpness/<layer>/r": ...}``;
        decisions as 0/1.
    """
    out = {f"{prefix}/c_m": float(record["c_m"])}
    for role, value in record["c_m_by_role"].items():
        out[f"{prefix}/c_m/{role}"] = float(value)
    for layer, stats in record["layers"].items():
        for key, value in stats.items():
            out[f"{prefix}/{layer}/{key}"] = float(value)
    for layer, decayed in record.get("beta_decayed", {}).items():
        out[f"{prefix}/{layer}/beta_decayed"] = float(decayed)
    return out
