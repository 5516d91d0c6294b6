"""What the framework integrations share: LAMB under a role-based policy, the β check, records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from biasdecay.decay import decay_policy, freeze_roles, param_groups
from biasdecay.optim import LAMB
from biasdecay.roles import is_norm_module


def lamb_for(
    model: nn.Module,
    *,
    lr: float,
    policy: str = "no_bias_decay",
    weight_decay: float = 0.01,
    layer_adaptation: str = "decayed",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    **policy_options: float | bool,
) -> LAMB:
    """LAMB over ``model``'s parameters under a role-based decay policy.

    The one place the integrations' LAMB settings and their defaults are stated: Lightning's
    ``configure_lamb`` and the Hugging Face ``lamb_for`` both build through it.

    Args:
        model: the network.
        lr: the peak learning rate.
        policy: a decay policy name (``biasdecay list`` shows them), e.g. ``no_bias_decay``,
            ``beta_decay``, ``adaptive_beta_decay`` (then add the framework's adaptive β decay
            callback).
        weight_decay: λ_w of the non-normalisation weights (embeddings included).
        layer_adaptation: which parameters take the trust ratio: ``"decayed"``, ``"all"``,
            ``"none"``.
        betas: Adam's β₁, β₂.
        eps: Adam's ε.
        **policy_options: the policy's own options (``beta``, ``gamma``, ``threshold``, ...).

    Returns:
        The optimiser, over :func:`biasdecay.param_groups`.
    """
    chosen = decay_policy(policy, **policy_options)
    freeze_roles(model, chosen)  # the frozen policies fix β and/or γ first
    groups = param_groups(model, chosen, weight_decay)
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
