"""Stepping an optimiser through fixed gradients, as the LAMB and LARS tests both do."""

from __future__ import annotations

import math


def lr_at(base: float, t: int) -> float:
    """A schedule that changes lr between steps, as a scheduler would."""
    return base * (1.0 + 0.5 * math.sin(t))


def run(optimizer, params, grads_per_step, before_step=None):
    """Step ``optimizer`` through the gradients, rescheduling lr; the parameters after each step.

    ``before_step(t)``, when given, runs before step t (e.g. to rewrite decay overrides).
    """
    history = []
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    for t, grads in enumerate(grads_per_step, start=1):
        if before_step is not None:
            before_step(t)
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = lr_at(base, t)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.to(p.dtype).clone()
        optimizer.step()
        history.append([p.detach().clone() for p in params])
    return history
