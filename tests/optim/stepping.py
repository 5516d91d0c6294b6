"""The LAMB and LARS tests' shared fixtures: a tiny parameter set, fixed gradients, stepping."""

from __future__ import annotations

import math

import torch
from torch import nn

STEPS = 6

# Parameter shapes of a tiny network; index 2 starts at zero like a BN β, index 5 starts at zero
# and never gets a gradient signal (‖θ‖ = ‖u‖ = 0 at every step).
SHAPES = [(4, 3), (4,), (5,), (2, 3, 3, 3), (6,), (3,)]
ZERO_PARAMS = (2, 5)
ZERO_GRADS = (5,)


def make_params(dtype: torch.dtype = torch.float64) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for i, shape in enumerate(SHAPES):
        value = torch.randn(shape, generator=gen, dtype=torch.float64)
        if i in ZERO_PARAMS:
            value.zero_()
        params.append(nn.Parameter(value.to(dtype)))
    return params


def make_grads(scale: float = 1.0) -> list[list[torch.Tensor]]:
    """Float64 gradients for every step, the same for every test."""
    gen = torch.Generator().manual_seed(1)
    steps = []
    for _ in range(STEPS):
        grads = [scale * torch.randn(shape, generator=gen, dtype=torch.float64) for shape in SHAPES]
        for i in ZERO_GRADS:
            grads[i].zero_()
        steps.append(grads)
    return steps


def lr_at(base: float, t: int) -> float:
    """A schedule that changes lr between steps, as a scheduler would."""
    return base * (1.0 + 0.5 * math.sin(t))


def run(optimizer, params, grads_per_step, before_step=None):
    """Step ``optimizer`` through the gradients, rescheduling lr; the parameters after each step.

    ``before_step(t)``, when given, runs before step t (e.g. to rewrite tensor decays).
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


def build_groups(specs, params, tensor_decay=None):
    """Param groups from specs (``{"idx": [...], **options}``).

    Each parameter in ``tensor_decay`` (index -> 0-dim tensor) gets a group of its own with its
    spec's options and that tensor as ``weight_decay``, the way adaptive β decay's groups are built.
    """
    tensor_decay = tensor_decay or {}
    groups = []
    for spec in specs:
        options = {k: v for k, v in spec.items() if k != "idx"}
        plain = [params[i] for i in spec["idx"] if i not in tensor_decay]
        if plain:
            groups.append({"params": plain, **options})
        groups.extend(
            {"params": [params[i]], **options, "weight_decay": tensor_decay[i]}
            for i in spec["idx"]
            if i in tensor_decay
        )
    return groups


def scheduled_decay(params, schedule=None):
    """Tensor decays that follow ``schedule`` ({index: t -> λ}) and the hook that sets them.

    The tensors are rewritten in place before each step, as the adaptive β decay controller does;
    give them to :func:`build_groups` and the returned ``before_step`` to :func:`run`.
    """
    schedule = schedule or {}
    tensors = {i: torch.zeros((), dtype=params[i].dtype) for i in schedule}

    def before_step(t):
        for i, rule in schedule.items():
            tensors[i].fill_(rule(t))

    return tensors, before_step
