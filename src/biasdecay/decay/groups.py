"""Torch param groups from a decay policy: every trainable parameter in exactly one group."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from biasdecay.decay.policies import DecayPolicy
from biasdecay.roles import Role, param_roles
from biasdecay.tables import text_table

__all__ = ["param_groups", "GroupRow", "group_summary", "format_group_summary"]


def _check_weight_decay(weight_decay: float) -> float:
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    return float(weight_decay)


def _freeze(model: nn.Module, policy: DecayPolicy, roles: dict[str, Role]) -> None:
    """Hold the policy's frozen roles at their values with ``requires_grad`` off."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, role in roles.items():
            rule = policy.rules[role]
            if rule.frozen:
                params[name].fill_(rule.frozen_value).requires_grad_(False)


def param_groups(
    model: nn.Module, policy: DecayPolicy, weight_decay: float
) -> list[dict[str, Any]]:
    """Param groups for any ``torch.optim`` optimiser, one per role, decay set by ``policy``.

    Frozen roles (``beta_frozen``, ``gamma_frozen``, ``bn_frozen``) are filled with their fixed
    value and get ``requires_grad=False`` *in place*, and are left out of the groups. Parameters
    already frozen by the caller are left out too. Each group carries extra keys that torch
    keeps: ``role`` (a :class:`Role` value), ``adaptive_beta`` (True for the β group of
    adaptive β decay, whose decay the controller applies per layer and step).

    Args:
        model: the network.
        policy: from :func:`biasdecay.decay.decay_policy`.
        weight_decay: the base coefficient λ_w (e.g. 0.01).

    Returns:
        A list of ``{"params", "weight_decay", "role", "adaptive_beta"}`` dicts, empty roles
        omitted.
    """
    weight_decay = _check_weight_decay(weight_decay)
    roles = param_roles(model)
    _freeze(model, policy, roles)
    named = dict(model.named_parameters())
    groups: list[dict[str, Any]] = []
    for role in Role:
        params = [named[n] for n, r in roles.items() if r is role and named[n].requires_grad]
        if not params:
            continue
        groups.append(
            {
                "params": params,
                "weight_decay": policy.coefficient(role, weight_decay),
                "role": role.value,
                "adaptive_beta": policy.adaptive and role is Role.NORM_SHIFT,
            }
        )
    # Every trainable parameter in exactly one group (nanochat's assert): a parameter missing
    # would silently not train, one listed twice would be updated twice.
    placed = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(placed) == sorted(trainable), "a parameter is missing from or repeated in groups"
    return groups


@dataclass(frozen=True)
class GroupRow:
    """One line of the policy summary: how a role is treated and how much of the model it is."""

    role: Role
    tensors: int
    elements: int
    coefficient: float | None  # None: decided per layer and step (adaptive β decay)
    frozen: bool


def group_summary(model: nn.Module, policy: DecayPolicy, weight_decay: float) -> list[GroupRow]:
    """How ``policy`` treats each role present in ``model`` (frozen roles included)."""
    weight_decay = _check_weight_decay(weight_decay)
    roles = param_roles(model)
    named = dict(model.named_parameters())
    rows = []
    for role in Role:
        members = [named[n] for n, r in roles.items() if r is role]
        if not members:
            continue
        rule = policy.rules[role]
        adaptive = policy.adaptive and role is Role.NORM_SHIFT
        rows.append(
            GroupRow(
                role=role,
                tensors=len(members),
                elements=sum(p.numel() for p in members),
                coefficient=None if adaptive else policy.coefficient(role, weight_decay),
                frozen=rule.frozen,
            )
        )
    return rows


def format_group_summary(
    model: nn.Module,
    policy: DecayPolicy,
    weight_decay: float,
    layer_adaptation: str | None = None,
) -> str:
    """The summary as a text table, headed by the policy, for training logs.

    Args:
        model: the network.
        policy: the decay policy.
        weight_decay: the base coefficient λ_w.
        layer_adaptation: the LAMB/LARS ``layer_adaptation`` (``"decayed"``, ``"all"``,
            ``"none"``), shown per role as a "trust ratio" column; None for an optimiser
            without one (the column is left out).

    Returns:
        The header line and the table.
    """
    rows = []
    for row in group_summary(model, policy, weight_decay):
        if row.frozen:
            treatment = f"frozen at {policy.rules[row.role].frozen_value:g}"
        elif row.coefficient is None:
            treatment = (
                f"{policy.adaptive_coefficient:g} where r_l >= {policy.adaptive_threshold:g}"
            )
        else:
            treatment = f"{row.coefficient:g}"
        line = [f"{row.role.label} ({row.role.value})", row.tensors, row.elements, treatment]
        if layer_adaptation is not None:
            line.append(_trust_ratio_text(row, layer_adaptation))
        rows.append(line)
    header = ["role", "tensors", "elements", "weight decay"]
    title = f"decay policy {policy.describe()}, base weight_decay {weight_decay:g}"
    if layer_adaptation is not None:
        header.append("trust ratio")
        title += f", layer_adaptation {layer_adaptation!r}"
    return f"{title}\n{text_table(header, rows)}"


def _trust_ratio_text(row: GroupRow, layer_adaptation: str) -> str:
    """Whether a role's parameters take the LAMB/LARS trust ratio, in words."""
    if row.frozen:
        return "-"
    if layer_adaptation == "all":
        return "yes"
    if layer_adaptation == "none":
        return "no"
    if row.coefficient is None:
        return "where decayed"  # adaptive β decay: the ratio follows each step's decision
    return "yes" if row.coefficient != 0 else "no"
