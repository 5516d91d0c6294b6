"""What the framework integrations share: LAMB under a role-based policy, the deferred β
controller, records."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from biasdecay.decay import AdaptiveBetaDecay, decay_policy, freeze_roles, param_groups
from biasdecay.errors import InputError
from biasdecay.optim import LAMB
from biasdecay.roles import is_norm_module
from biasdecay.train.monitors import SharpnessTracker


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


def check_every(every: object) -> None:
    """Raise unless ``every`` (a monitor's steps between records) is an integer >= 1."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise InputError(f"every must be an integer >= 1 (steps between records), got {every!r}")


def start_tracker(owner: str, model: nn.Module, every: int) -> SharpnessTracker:
    """The monitors' tracker of ``model``; a model without norm layers gets a warning, once.

    Args:
        owner: the callback's name, for the warning.
        model: the network being trained.
        every: steps between records.

    Returns:
        The :class:`~biasdecay.train.monitors.SharpnessTracker`.
    """
    tracker = SharpnessTracker(model, every)
    if not tracker.layers:
        warnings.warn(
            f"{owner}: the model has no normalisation layer with trainable γ and β; it records "
            "C_m by role only (no ‖β_l‖, ‖γ_l‖ or r_l)",
            stacklevel=3,
        )
    return tracker


class DeferredBetaDecay:
    """Base of both frameworks' adaptive β decay callbacks (Section 4.2): the deferred controller.

    A framework hands its callbacks the model and the optimiser only once training runs, so the
    controller is built at the first :meth:`_decay_step`. A model without a trainable β gets
    one warning, and every step after it does nothing.

    Args:
        threshold: R (decay β_l where r_l >= R).
        beta_decay: λ_β.

    Attributes:
        controller: the :class:`~biasdecay.AdaptiveBetaDecay`, once built (None before the first
            step, or for a model without a trainable β).
    """

    def __init__(self, threshold: float = 0.1, beta_decay: float = 1.0) -> None:
        super().__init__()
        self.threshold = threshold
        self.beta_decay = beta_decay
        self.controller: AdaptiveBetaDecay | None = None
        self._disabled = False

    def _decay_step(self, model: nn.Module, optimizer: Any) -> None:
        """One controller step, before ``optimizer.step()`` (a wrapper's ``.optimizer`` is used)."""
        if self._disabled:
            return
        if self.controller is None:
            if not has_trainable_beta(model):
                warnings.warn(
                    f"{type(self).__name__}: the model has no normalisation layer with a "
                    "trainable β, so there is no β to decay; the callback does nothing",
                    stacklevel=3,
                )
                self._disabled = True
                return
            inner: torch.optim.Optimizer = getattr(optimizer, "optimizer", optimizer)
            self.controller = AdaptiveBetaDecay(
                model, inner, threshold=self.threshold, beta_decay=self.beta_decay
            )
        self.controller.step()


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
