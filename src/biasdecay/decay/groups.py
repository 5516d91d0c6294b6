"""Torch param groups from a decay policy: every trainable parameter in exactly one group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from biasdecay.constraints import check_in_range
from biasdecay.decay.policies import DecayPolicy
from biasdecay.errors import InputError
from biasdecay.roles import Role, param_owners, param_roles
from biasdecay.tables import text_table

__all__ = ["freeze_roles", "param_groups", "GroupRow", "group_summary", "format_group_summary"]


def _check_weight_decay(weight_decay: float) -> float:
    check_in_range("param_groups", "weight_decay", weight_decay, 0.0)
    return float(weight_decay)


def freeze_roles(model: nn.Module, policy: DecayPolicy) -> list[str]:
    """Hold the parameters of the policy's frozen roles at their fixed values, untrained.

    ``beta_frozen``, ``gamma_frozen`` and ``bn_frozen`` fix β and/or γ of every normalisation
    layer (β at 0, γ at 1): this fills them with that value and turns ``requires_grad`` off, in
    place. Call it once, before building the optimiser; :func:`param_groups` refuses a policy
    whose frozen roles still train.

    Args:
        model: the network (changed in place).
        policy: the decay policy.

    Returns:
        The names of the parameters it froze, in model order (empty for a policy that freezes
        nothing).
    """
    roles = param_roles(model)
    frozen = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            rule = policy.rules[roles[name]]
            if rule.frozen:
                p.fill_(rule.frozen_value).requires_grad_(False)
                frozen.append(name)
    return frozen


def param_groups(
    model: nn.Module, policy: DecayPolicy, weight_decay: float
) -> list[dict[str, Any]]:
    """Param groups for any ``torch.optim`` optimiser, one per role, decay set by ``policy``.

    Parameters with ``requires_grad`` off are left out. A policy that freezes roles needs
    :func:`freeze_roles` first (this function never changes the model). Each group carries
    extra keys that torch keeps: ``role`` (a :class:`Role` value) and ``adaptive_beta``.

    Under adaptive β decay each normalisation layer's β gets a group of its own, with a
    ``layer`` key (the module's name) and a 0-dim tensor ``weight_decay`` on β's device, 0 until
    :class:`~biasdecay.AdaptiveBetaDecay` writes each step's λ_β·[r_l ≥ R] into it. Being group
    state, the decision is saved by the optimiser's ``state_dict``; biasdecay's LAMB and LARS
    read it on the device, torch's own optimisers read it as a number.

    Args:
        model: the network.
        policy: from :func:`biasdecay.decay.decay_policy`.
        weight_decay: the base coefficient λ_w (e.g. 0.01).

    Returns:
        A list of ``{"params", "weight_decay", "role", "adaptive_beta"}`` dicts (plus ``layer``
        for adaptive β groups), empty roles omitted.

    Raises:
        ValueError: a role the policy freezes still has trainable parameters.
    """
    weight_decay = _check_weight_decay(weight_decay)
    roles = param_roles(model)
    named = dict(model.named_parameters())
    unfrozen = [n for n, r in roles.items() if policy.rules[r].frozen and named[n].requires_grad]
    if unfrozen:
        frozen_roles = ", ".join(sorted({roles[n].value for n in unfrozen}))
        raise InputError(
            f"policy {policy.name!r} freezes {frozen_roles} but {len(unfrozen)} such "
            f"parameters still train ({', '.join(unfrozen[:3])}"
            f"{', ...' if len(unfrozen) > 3 else ''}); call "
            "biasdecay.freeze_roles(model, policy) before param_groups"
        )
    owners = param_owners(model)
    groups: list[dict[str, Any]] = []
    for role in Role:
        names = [n for n, r in roles.items() if r is role and named[n].requires_grad]
        if not names:
            continue
        if policy.adaptive and role is Role.NORM_SHIFT:
            groups.extend(_adaptive_beta_group(owners[n], named[n]) for n in names)
            continue
        groups.append(
            {
                "params": [named[n] for n in names],
                "weight_decay": policy.coefficient(role, weight_decay),
                "role": role.value,
                "adaptive_beta": False,
            }
        )
    # Every trainable parameter in exactly one group (nanochat's assert): a parameter missing
    # would silently not train, one listed twice would be updated twice.
    placed = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(placed) == sorted(trainable), "a parameter is missing from or repeated in groups"
    return groups


def _adaptive_beta_group(layer: str, beta: nn.Parameter) -> dict[str, Any]:
    """One normalisation layer's β alone, its decay a tensor the controller rewrites each step."""
    return {
        "params": [beta],
        "weight_decay": torch.zeros((), dtype=beta.dtype, device=beta.device),
        "role": Role.NORM_SHIFT.value,
        "adaptive_beta": True,
        "layer": layer,
    }


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
