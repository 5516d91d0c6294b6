"""Adaptive β decay (paper Section 4.2, Algorithm 1 of Appendix D).

After ``backward()`` and before ``optimizer.step()``, for every normalisation layer l:

    r_l = C_m(β_l) / C_m(γ_l) = Σ_i |β_i g_i| / Σ_i |γ_i g_i|     (from this step's gradients)

and β_l is decayed with λ_β in exactly the layers with r_l ≥ R, for this step only. Appendix D's
pseudo-code writes r^t ← m^t/v^t and then tests "r_l": the Adam ratio and r_l are different
things, and the test is on r_l (docs/design.md §4). C(γ_l) = 0 with C(β_l) > 0 counts as
r_l = ∞; both zero as 0.

The decision lives where torch keeps optimiser settings: each layer's β sits alone in a param
group (:func:`biasdecay.param_groups` builds them) whose ``weight_decay`` is a 0-dim tensor, and
the controller writes λ_β·[r_l ≥ R] into it. The optimiser then applies its own decay rule to β,
exactly as it would a number, so R = 0 reproduces the ``beta_decay`` policy and R = ∞ reproduces
``no_bias_decay``: inside the update before the trust ratio for LAMB/LARS (Algorithm 1), as a
gradient term for SGD/Adam, decoupled for AdamW. The decision is saved with the optimiser's
``state_dict``, and LAMB/LARS's ``layer_adaptation="decayed"`` reads the same tensor.

Every r_l comes from one segmented reduction, and no value leaves the device in :meth:`step`
(torch's own optimisers read the tensor as a number, which costs them a sync per β).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

from biasdecay.constraints import check_in_range
from biasdecay.errors import InputError
from biasdecay.roles import is_norm_module

__all__ = ["AdaptiveBetaDecay", "bias_utilization_from_grads"]

_HOW_TO_BUILD = (
    "build the optimiser over biasdecay.param_groups(model, "
    "decay_policy('adaptive_beta_decay'), weight_decay): it gives each layer's β a group of its "
    "own whose weight_decay is a 0-dim tensor (biasdecay's LAMB and LARS, and torch.optim's "
    "SGD, Adam and AdamW, all apply it)"
)


def bias_utilization_from_grads(
    betas: list[torch.Tensor], gammas: list[torch.Tensor]
) -> torch.Tensor:
    """r_l = Σ|β⊙∂L/∂β| / Σ|γ⊙∂L/∂γ| for each layer, from the parameters' current ``.grad``.

    Args:
        betas: β of each layer (``.grad`` None counts as zero), all on one device.
        gammas: γ of the same layers, in the same order.

    Returns:
        A 1-D tensor of r_l (``inf`` where only the numerator is non-zero, 0 where both are 0).
    """
    return _LayerRatios(betas, gammas)()


class _LayerRatios:
    """r_l of fixed layers, set up once: the controller computes it at every step.

    Σ_i |θ_i g_i| of every β and γ comes from one segmented reduction over their concatenation:
    five kernels whatever the number of layers, where a foreach product and norm launch two per
    tensor on the CPU. Nothing is read back to the host.
    """

    def __init__(self, betas: list[torch.Tensor], gammas: list[torch.Tensor]) -> None:
        self.params = [*betas, *gammas]
        self.count = len(betas)
        first = self.params[0]
        self.lengths = torch.tensor([p.numel() for p in self.params], device=first.device)
        self.flat = all(p.dim() == 1 for p in self.params)  # else each is viewed as 1-D
        # The widest of the layers' dtypes, at least float32 (sums of fp16 values in float32).
        self.dtype = functools.reduce(
            torch.promote_types, (p.dtype for p in self.params), torch.float32
        )
        self.same_dtype = all(p.dtype == self.dtype for p in self.params)

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        params = self.params
        if not self.flat:
            params, grads = [p.reshape(-1) for p in params], [g.reshape(-1) for g in grads]
        values, slopes = torch.cat(params), torch.cat(grads)
        if not self.same_dtype:
            values, slopes = values.to(self.dtype), slopes.to(self.dtype)
        products = values.mul_(slopes).abs_()
        # unsafe: the lengths are ours and right by construction; checking them would cost the
        # host a sync (segment_reduce validates them with .item()).
        sums = torch.segment_reduce(products, "sum", lengths=self.lengths, unsafe=True)
        c_beta, c_gamma = sums[: self.count], sums[self.count :]
        # c/0 is inf where only the numerator is non-zero, and 0/0 (NaN) counts as 0.
        return torch.nan_to_num(c_beta / c_gamma, nan=0.0, posinf=math.inf)


class AdaptiveBetaDecay:
    """Decay β only in normalisation layers that lean on their bias (r_l ≥ R), step by step.

    Use between ``loss.backward()`` and ``optimizer.step()``::

        policy = decay_policy("adaptive_beta_decay")
        optimizer = LAMB(param_groups(model, policy, weight_decay=0.01), lr=1e-3)
        controller = AdaptiveBetaDecay(model, optimizer, threshold=0.1, beta_decay=1.0)
        loss.backward(); controller.step(); optimizer.step()

    Args:
        model: the network; every normalisation layer with trainable γ and β takes part.
        optimizer: the optimiser that updates the model; each participating β must sit alone in
            a param group whose ``weight_decay`` is a 0-dim tensor (see the module docstring).
        threshold: R; layers with r_l ≥ R are decayed this step (0: all, inf: none).
        beta_decay: λ_β.
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
        history_every: int = 1,
    ) -> None:
        owner = "AdaptiveBetaDecay"
        check_in_range(owner, "threshold", threshold, 0.0, high_open=False)  # inf: never
        check_in_range(owner, "beta_decay", beta_decay, 0.0)
        if isinstance(history_every, bool) or not isinstance(history_every, int):
            raise InputError(f"{owner}: history_every must be an int >= 0, got {history_every!r}")
        check_in_range(owner, "history_every", history_every, 0)
        self.threshold = float(threshold)
        self.beta_decay = float(beta_decay)
        self.history_every = history_every
        self.optimizer = optimizer
        self.layer_names, self.gammas, self.betas = self._find_layers(model)
        self._group_index = self._decay_groups(optimizer)
        self._ratios = _LayerRatios(self.betas, self.gammas)
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
                raise InputError(
                    f"adaptive β decay needs a trainable γ in every layer with a trainable β; "
                    f"'{name}' has none (r_l = C(β_l)/C(γ_l) is undefined). Do not combine it "
                    "with gamma_frozen, or freeze that layer's β too."
                )
            names.append(name)
            gammas.append(gamma)
            betas.append(beta)
        if not betas:
            raise InputError(
                "the model has no normalisation layer with trainable γ and β: adaptive β decay "
                "has nothing to act on"
            )
        devices = {p.device for p in (*gammas, *betas)}
        if len(devices) > 1:
            raise InputError(
                "adaptive β decay reduces every layer's r_l in one pass, so its γ and β must be "
                f"on one device; this model has them on {sorted(map(str, devices))}"
            )
        return names, gammas, betas

    def _decay_groups(self, optimizer: torch.optim.Optimizer) -> list[int]:
        """The index of each β's param group, checked to be β's alone with a tensor decay.

        Indices, not the group dicts: ``load_state_dict`` replaces the dicts (and their tensors)
        but keeps their order.
        """
        owner = {id(p): k for k, g in enumerate(optimizer.param_groups) for p in g["params"]}
        missing = [
            n for n, b in zip(self.layer_names, self.betas, strict=True) if id(b) not in owner
        ]
        if missing:
            raise InputError(
                f"the β of {', '.join(map(repr, missing[:5]))} "
                f"{'is' if len(missing) == 1 else 'are'} not in the optimiser; " + _HOW_TO_BUILD
            )
        indices = []
        for name, beta in zip(self.layer_names, self.betas, strict=True):
            index = owner[id(beta)]
            group = optimizer.param_groups[index]
            problem = None
            if "weight_decay" not in group:
                problem = f"is in a group without weight_decay ({type(optimizer).__name__})"
            elif len(group["params"]) != 1:
                problem = f"shares its param group with {len(group['params']) - 1} other tensors"
            elif not isinstance(group["weight_decay"], torch.Tensor):
                problem = f"is in a group whose weight_decay is the number {group['weight_decay']}"
            elif group["weight_decay"].dim() != 0:
                problem = "is in a group whose weight_decay is not a 0-dim tensor"
            if problem is not None:
                raise InputError(
                    f"adaptive β decay writes each layer's decision into the weight_decay of "
                    f"that layer's own param group, but the β of '{name}' {problem}; "
                    + _HOW_TO_BUILD
                )
            indices.append(index)
        return indices

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Decide and apply this step's β decay; call after backward, before the optimiser.

        Returns:
            The per-layer decisions (bool tensor on the device, in :attr:`layer_names` order).
        """
        ratios = self._ratios()
        decisions = ratios >= self.threshold
        coefficients = decisions.to(ratios.dtype) * self.beta_decay
        # Looked up each step, not kept: loading the optimiser's state_dict replaces the tensors.
        groups = self.optimizer.param_groups
        targets = [groups[k]["weight_decay"] for k in self._group_index]
        torch._foreach_copy_(targets, list(coefficients.unbind()))
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
            raise InputError(
                "adaptive β decay state is for other layers: saved "
                f"{len(state['layer_names'])} layers ({', '.join(state['layer_names'][:3])}, ...), "
                f"this model has {len(self.layer_names)} ({', '.join(self.layer_names[:3])}, ...)"
            )
        self.threshold = float(state["threshold"])
        self.beta_decay = float(state["beta_decay"])
        self.history_every = int(state["history_every"])
        self.step_count = int(state["step_count"])
        self._history_steps = [int(s) for s in state["history_steps"].tolist()]
        device = self.betas[0].device
        ratios, decisions = state["history_ratios"], state["history_decisions"]
        self._history_ratios = [] if ratios is None else list(ratios.to(device).unbind())
        self._history_decisions = [] if decisions is None else list(decisions.to(device).unbind())
