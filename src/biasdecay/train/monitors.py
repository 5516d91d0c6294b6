"""Sharpness tracking during training (the paper's Figures 2-4), from the step's own gradients.

After ``backward()`` the parameters' ``.grad`` hold the logical batch's mean-loss gradient, so
C_m of every parameter is Σ|θ ⊙ g|: one foreach product and one foreach 1-norm, no extra
forward or backward. Every ``every`` steps the tracker reads C_m per role, and per normalisation
layer C_m(β_l), C_m(γ_l), ‖β_l‖, ‖γ_l‖ and r_l. It also reads the adaptive-decay decisions
when a controller runs. Reading them costs one host transfer at those steps only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from biasdecay.decay import AdaptiveBetaDecay
from biasdecay.roles import Role, is_norm_module, param_roles


class SharpnessTracker:
    """Record C_m by role and per-layer β/γ statistics every ``every`` steps.

    Args:
        model: the (unwrapped) network.
        every: steps between records (0: never).
        controller: the adaptive β decay controller, whose decisions are recorded too.
    """

    def __init__(
        self, model: nn.Module, every: int, controller: AdaptiveBetaDecay | None = None
    ) -> None:
        self.every = every
        self.controller = controller
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        roles = param_roles(model)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.roles = [roles[n] for n in self.names]
        index = {n: i for i, n in enumerate(self.names)}
        self.layers: list[tuple[str, int, int]] = []  # (layer, index of γ, index of β)
        for name, module in model.named_modules():
            if is_norm_module(module):
                g, b = f"{name}.weight", f"{name}.bias"
                if g in index and b in index:
                    self.layers.append((name, index[g], index[b]))

    def due(self, step: int) -> bool:
        """Whether step ``step`` (1-based, counted after the update) is recorded.

        Steps 1 and 2 always are (when tracking is on): a record holds the parameters before
        its step's update, so these two are the network at initialisation and after its first
        update, where the paper's curves start and against which growth is measured.
        """
        return self.every > 0 and (step <= 2 or step % self.every == 0)

    @torch.no_grad()
    def record(self, step: int) -> dict[str, Any]:
        """The record for this step, from the current gradients (call before the update)."""
        values = [p.detach() for p in self.params]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        sensitivity = torch.stack(torch._foreach_norm(torch._foreach_mul(values, grads), 1))
        norms = torch.stack(torch._foreach_norm(values, 2))
        c_m, norm = sensitivity.double().cpu().tolist(), norms.double().cpu().tolist()
        by_role = {role.value: 0.0 for role in Role}
        for role, value in zip(self.roles, c_m, strict=True):
            by_role[role.value] += value
        layers = {}
        for name, gi, bi in self.layers:
            c_gamma, c_beta = c_m[gi], c_m[bi]
            ratio = c_beta / c_gamma if c_gamma > 0 else (float("inf") if c_beta > 0 else 0.0)
            layers[name] = {
                "c_gamma": c_gamma,
                "c_beta": c_beta,
                "gamma_norm": norm[gi],
                "beta_norm": norm[bi],
                "r": ratio,
            }
        record: dict[str, Any] = {
            "kind": "sharpness",
            "step": step,
            "c_m": sum(c_m),
            "c_m_by_role": by_role,
            "layers": layers,
        }
        if self.controller is not None:
            # The controller decides from these same gradients right after this record: r ≥ R.
            record["beta_decayed"] = {
                name: layers[name]["r"] >= self.controller.threshold
                for name in self.controller.layer_names
            }
        return record
