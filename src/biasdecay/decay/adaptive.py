"""Adaptive β decay (paper Section 4.2, Algorithm 1 of Appendix D).

After ``backward()`` and before ``optimizer.step()``, for every normalisation layer l:

    r_l = C_m(β_l) / C_m(γ_l) = Σ_i |β_i g_i| / Σ_i |γ_i g_i|     (from this step's gradients)

and β_l is decayed with λ_β in exactly the layers with r_l ≥ R, for this step only. Appendix D's
pseudo-code writes r^t ← m^t/v^t and then tests "r_l": the Adam ratio and r_l are different
things, and the test is on r_l (design.md §4). C(γ_l) = 0 with C(β_l) > 0 counts as r_l = ∞;
both zero as 0.

How the decay enters the update depends on the optimiser, so that R = 0 reproduces the
``beta_decay`` policy and R = ∞ reproduces ``no_bias_decay`` exactly:

* LAMB / LARS (``decay_overrides``): λ_β·[r_l ≥ R] replaces the β group's weight_decay inside the
  update, before the trust ratio, as in Algorithm 1.
* Optimisers with decoupled decay (AdamW, Adam(decoupled_weight_decay=True)): β_l ← β_l·(1 − η λ).
* Any other optimiser (SGD, Adam, ...): λ β_l is added to β_l's gradient, as their own
  ``weight_decay`` does.

Every r_l comes from one batched reduction and no value leaves the device in :meth:`step`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from biasdecay.roles import is_norm_module

__all__ = ["AdaptiveBetaDecay", "bias_utilization_from_grads"]

_MODES = ("auto", "override", "decoupled", "coupled")


def bias_utilization_from_grads(
    betas: list[torch.Tensor], gammas: list[torch.Tensor]
) -> torch.Tensor:
    """r_l = Σ|β⊙∂L/∂β| / Σ|γ⊙∂L/∂γ| for each layer, from the parameters' current ``.grad``.

    Args:
        betas: β of each layer (``.grad`` None counts as zero).
        gammas: γ of the same layers, in the same order.

    Returns:
        A 1-D tensor of r_l (``inf`` where only the numerator is non-zero, 0 where both are 0).
    """
    c_beta = _sensitivity_l1(betas)
    c_gamma = _sensitivity_l1(gammas)
    ratio = c_beta / torch.where(c_gamma > 0, c_gamma, torch.ones_like(c_gamma))
    return torch.where(
        c_gamma > 0, ratio, torch.where(c_beta > 0, torch.full_like(ratio, math.inf), 0.0)
    )


def _sensitivity_l1(params: list[torch.Tensor]) -> torch.Tensor:
    """Σ_i |θ_i g_i| for each tensor, as one stacked float32+ vector (foreach, no host sync)."""
    values = [p.detach() for p in params]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    products = torch._foreach_mul(values, grads)
    norms = torch._foreach_norm(products, 1)
    return torch.stack(norms).to(torch.promote_types(values[0].dtype, torch.float32))


class AdaptiveBetaDecay:
    """Decay β only in normalisation layers that lean on their bias (r_l ≥ R), step by step.

    Use between ``loss.backward()`` and ``optimizer.step()``::

        controller = AdaptiveBetaDecay(model, optimizer, threshold=0.1, beta_decay=1.0)
        loss.backward(); controller.step(); optimizer.step()

    The β parameters should sit in param groups with ``weight_decay=0`` (the
    ``adaptive_beta_decay`` policy's groups do), so the controller's decay is the only one.

    Args:
        model: the network; every normalisation layer with trainable γ and β takes part.
        optimizer: the optimiser that updates the model.
        threshold: R; layers with r_l ≥ R are decayed this step (0: all, inf: none).
        beta_decay: λ_β.
        mode: "auto" (by optimiser, see the module docstring), "override", "decoupled" or
            "coupled".
        history_every: record r_l and the decisions every this many steps (0: never).

    Attributes:
        layer_names: the participating normalisation layers, in model order.
        step_count: steps taken.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        threshold: float = 0.1,
        beta_decay: float = 1.0,
        *,
        mode: str = "auto",
        history_every: int = 1,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
        if threshold < 0 or math.isnan(threshold):
            raise ValueError(f"threshold must be >= 0 (inf disables the decay), got {threshold}")
        if not isinstance(beta_decay, (int, float)) or not (0 <= beta_decay < math.inf):
            raise ValueError(f"beta_decay must be a finite number >= 0, got {beta_decay!r}")
        if mode not in _MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(_MODES)}")
        if history_every < 0:
            raise ValueError(f"history_every must be >= 0, got {history_every}")
        self.threshold = float(threshold)
        self.beta_decay = float(beta_decay)
        self.history_every = history_every
        self.optimizer = optimizer
        self.layer_names, self.gammas, self.betas = self._find_layers(model)
        self._group_of = self._locate_in_optimizer(optimizer)
        self.mode = self._resolve_mode(mode, optimizer)
        if self.mode != "override":
            self._check_beta_undecayed()
        p0 = self.betas[0]
        # λ_β·[r_l ≥ R] per layer, rewritten in place each step; LAMB/LARS read views of it.
        self.coefficients = torch.zeros(len(self.betas), device=p0.device, dtype=p0.dtype)
        if self.mode == "override":
            for i, beta in enumerate(self.betas):
                optimizer.decay_overrides[beta] = self.coefficients[i]
        self.step_count = 0
        self._history_steps: list[int] = []
        self._history_ratios: list[torch.Tensor] = []
        self._history_decisions: list[torch.Tensor] = []
        self.last_ratios: torch.Tensor | None = None
        self.last_decisions: torch.Tensor | None = None

    @staticmethod
    def _find_layers(model: nn.Module):
        names, gammas, betas = [], [], []
        for name, module in model.named_modules():
            if not is_norm_module(module):
                continue
            gamma, beta = getattr(module, "weight", None), getattr(module, "bias", None)
            if not isinstance(beta, nn.Parameter) or not beta.requires_grad:
                continue
            if not isinstance(gamma, nn.Parameter) or not gamma.requires_grad:
                raise ValueError(
                    f"adaptive β decay needs a trainable γ in every layer with a trainable β; "
                    f"'{name}' has none (r_l = C(β_l)/C(γ_l) is undefined). Do not combine it "
                    "with gamma_frozen, or freeze that layer's β too."
                )
            names.append(name)
            gammas.append(gamma)
            betas.append(beta)
        if not betas:
            raise ValueError(
                "the model has no normalisation layer with trainable γ and β: adaptive β decay "
                "has nothing to act on"
            )
        return names, gammas, betas

    def _locate_in_optimizer(self, optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
        owner = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        missing = [
            n for n, b in zip(self.layer_names, self.betas, strict=True) if id(b) not in owner
        ]
        if missing:
            raise ValueError(
                f"the β of {', '.join(missing[:5])} {'is' if len(missing) == 1 else 'are'} not "
                "in the optimiser; build it from param_groups(model, policy, weight_decay)"
            )
        return [owner[id(b)] for b in self.betas]

    def _check_beta_undecayed(self) -> None:
        """Outside LAMB/LARS the optimiser's own decay of β would act at every step."""
        decayed = [
            (name, group["weight_decay"])
            for name, group in zip(self.layer_names, self._group_of, strict=True)
            if group.get("weight_decay", 0)
        ]
        if decayed:
            name, value = decayed[0]
            more = f" (and {len(decayed) - 1} more layers')" if len(decayed) > 1 else ""
            raise ValueError(
                f"the β of '{name}'{more} sits in a param group with "
                f"weight_decay={value}: {type(self.optimizer).__name__} would decay it at every "
                "step, leaving adaptive β decay no decision to make. Put β in groups without "
                "decay (biasdecay.param_groups(model, decay_policy('adaptive_beta_decay'), "
                "weight_decay)), or use biasdecay's LAMB or LARS, whose decay_overrides replace "
                "a group's decay"
            )

    @staticmethod
    def _resolve_mode(mode: str, optimizer: torch.optim.Optimizer) -> str:
        if mode == "override" and not hasattr(optimizer, "decay_overrides"):
            raise ValueError(
                f"mode='override' needs an optimiser with decay_overrides (biasdecay's LAMB or "
                f"LARS), not {type(optimizer).__name__}"
            )
        if mode != "auto":
            return mode
        if hasattr(optimizer, "decay_overrides"):
            return "override"
        decoupled = isinstance(optimizer, torch.optim.AdamW) or any(
            g.get("decoupled_weight_decay", False) for g in optimizer.param_groups
        )
        return "decoupled" if decoupled else "coupled"

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Decide and apply this step's β decay; call after backward, before the optimiser.

        Returns:
            The per-layer decisions (bool tensor on the device, in :attr:`layer_names` order).
        """
        ratios = bias_utilization_from_grads(self.betas, self.gammas)
        decisions = ratios >= self.threshold
        torch.mul(decisions.to(self.coefficients.dtype), self.beta_decay, out=self.coefficients)
        if self.mode == "decoupled":
            # β ← β·(1 − η λ_l), the way AdamW applies its own decay.
            factors = [
                1 - group["lr"] * c
                for group, c in zip(self._group_of, self.coefficients.unbind(), strict=True)
            ]
            torch._foreach_mul_(self.betas, factors)
        elif self.mode == "coupled":
            # g ← g + λ_l β, the way SGD/Adam apply their own weight_decay.
            grads = [b.grad if b.grad is not None else torch.zeros_like(b) for b in self.betas]
            for b, g in zip(self.betas, grads, strict=True):
                if b.grad is None:
                    b.grad = g
            scaled = torch._foreach_mul(self.betas, list(self.coefficients.unbind()))
            torch._foreach_add_([b.grad for b in self.betas], scaled)
        self.step_count += 1
        self.last_ratios, self.last_decisions = ratios, decisions
        if self.history_every and self.step_count % self.history_every == 0:
            self._history_steps.append(self.step_count)
            self._history_ratios.append(ratios)
            self._history_decisions.append(decisions)
        return decisions

    def history(self) -> dict[str, Any]:
        """Recorded r_l and decisions: ``{"layers", "steps", "ratios" (S, L), "decisions"}``.

        Moves the record to the host (one transfer), as plain lists for logs and plots.
        """
        if not self._history_steps:
            return {"layers": list(self.layer_names), "steps": [], "ratios": [], "decisions": []}
        return {
            "layers": list(self.layer_names),
            "steps": list(self._history_steps),
            "ratios": torch.stack(self._history_ratios).cpu().tolist(),
            "decisions": torch.stack(self._history_decisions).cpu().tolist(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: settings, step count and the recorded history."""
        stacked = bool(self._history_steps)
        return {
            "threshold": self.threshold,
            "beta_decay": self.beta_decay,
            "mode": self.mode,
            "layer_names": list(self.layer_names),
            "step_count": self.step_count,
            "history_every": self.history_every,
            "history_steps": torch.tensor(self._history_steps, dtype=torch.long),
            "history_ratios": torch.stack(self._history_ratios).cpu() if stacked else None,
            "history_decisions": torch.stack(self._history_decisions).cpu() if stacked else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the layers must be the same."""
        if list(state["layer_names"]) != self.layer_names:
            raise ValueError(
                "adaptive β decay state is for other layers: saved "
                f"{len(state['layer_names'])} layers ({', '.join(state['layer_names'][:3])}, ...), "
                f"this model has {len(self.layer_names)} ({', '.join(self.layer_names[:3])}, ...)"
            )
        self.threshold = float(state["threshold"])
        self.beta_decay = float(state["beta_decay"])
        self.history_every = int(state["history_every"])
        self.step_count = int(state["step_count"])
        self._history_steps = [int(s) for s in state["history_steps"].tolist()]
        device = self.coefficients.device
        ratios, decisions = state["history_ratios"], state["history_decisions"]
        self._history_ratios = [] if ratios is None else list(ratios.to(device).unbind())
        self._history_decisions = [] if decisions is None else list(decisions.to(device).unbind())
