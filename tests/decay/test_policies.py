"""Decay policies (Tables 3 and 4) and the param groups built from them."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from biasdecay.decay import (
    decay_policy,
    format_group_summary,
    group_summary,
    param_groups,
    policy_names,
)
from biasdecay.roles import Role

W, CB, LW, LB, G, B = (
    Role.CONV_WEIGHT,
    Role.CONV_BIAS,
    Role.LINEAR_WEIGHT,
    Role.LINEAR_BIAS,
    Role.NORM_SCALE,
    Role.NORM_SHIFT,
)

# policy -> expected coefficient per role with base weight_decay 0.01 ("F" = frozen)
EXPECTED = {
    "no_bias_decay": {W: 0.01, CB: 0.0, LW: 0.01, LB: 0.0, G: 0.0, B: 0.0},
    "all_decay": {W: 0.01, CB: 0.01, LW: 0.01, LB: 0.01, G: 0.01, B: 0.01},
    "beta_decay": {W: 0.01, CB: 0.0, LW: 0.01, LB: 0.0, G: 0.0, B: 1.0},
    "gamma_decay": {W: 0.01, CB: 0.0, LW: 0.01, LB: 0.0, G: 0.01, B: 0.0},
    "bias_decay": {W: 0.01, CB: 1.0, LW: 0.01, LB: 1.0, G: 0.0, B: 1.0},
    "beta_frozen": {W: 0.01, CB: 0.0, LW: 0.01, LB: 0.0, G: 0.0, B: "F"},
    "gamma_frozen": {W: 0.01, CB: 0.0, LW: 0.01, LB: 0.0, G: "F", B: 0.0},
    "bn_frozen": {W: 0.01, CB: 0.0, LW: 0.01, LB: 0.0, G: "F", B: "F"},
    "adaptive_beta_decay": {W: 0.01, CB: 0.0, LW: 0.01, LB: 0.0, G: 0.0, B: 0.0},
}


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, bias=True),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


def test_every_policy_is_tested() -> None:
    assert sorted(policy_names()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_policy_coefficients_per_role(name: str) -> None:
    policy = decay_policy(name)
    for role, expected in EXPECTED[name].items():
        rule = policy.rules[role]
        if expected == "F":
            assert rule.frozen and policy.coefficient(role, 0.01) == 0.0
        else:
            assert not rule.frozen and policy.coefficient(role, 0.01) == expected, role
    assert policy.adaptive is (name == "adaptive_beta_decay")


def test_options_change_coefficients() -> None:
    assert decay_policy("beta_decay", beta=0.1).coefficient(B, 0.01) == 0.1
    assert decay_policy("gamma_decay", gamma=0.5).coefficient(G, 0.01) == 0.5
    bias = decay_policy("bias_decay", bias=0.1)
    assert [bias.coefficient(r, 0.01) for r in (CB, LB, B, G, W)] == [0.1, 0.1, 0.1, 0.0, 0.01]
    assert decay_policy("no_bias_decay", decay_biases=True).coefficient(CB, 0.02) == 0.02
    adaptive = decay_policy("adaptive_beta_decay", beta=2.0, threshold=math.inf)
    assert adaptive.adaptive_coefficient == 2.0 and adaptive.adaptive_threshold == math.inf


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("no_bias", {}, "valid policies: no_bias_decay, all_decay"),
        ("beta_decay", {"gamma": 0.1}, "valid options: beta, decay_biases"),
        ("all_decay", {"beta": 1.0}, "valid options: none"),
        ("beta_decay", {"beta": -1.0}, "beta must be >= 0"),
        ("gamma_decay", {"gamma": float("nan")}, "gamma must be a finite number"),
        ("adaptive_beta_decay", {"threshold": -0.1}, "threshold must be a number >= 0"),
    ],
)
def test_bad_policy_input(name, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        decay_policy(name, **options)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_param_groups_place_every_parameter_once(name: str) -> None:
    model = net()
    groups = param_groups(model, decay_policy(name), weight_decay=0.01)
    placed = [p for g in groups for p in g["params"]]
    assert len(placed) == len({id(p) for p in placed})
    assert {id(p) for p in placed} == {id(p) for p in model.parameters() if p.requires_grad}
    for g in groups:
        expected = EXPECTED[name][Role(g["role"])]
        assert g["weight_decay"] == expected
        assert g["adaptive_beta"] is (name == "adaptive_beta_decay" and g["role"] == B.value)
    torch.optim.SGD(groups, lr=0.1)  # torch accepts them as they are


def test_frozen_roles_are_fixed_and_excluded() -> None:
    model = net()
    with torch.no_grad():
        model[1].weight.fill_(3.0)
        model[1].bias.fill_(2.0)
    groups = param_groups(model, decay_policy("bn_frozen"), weight_decay=0.01)
    assert {g["role"] for g in groups} == {W.value, CB.value, LW.value, LB.value}
    for bn in (model[1], model[4]):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.weight.requires_grad
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias)) and not bn.bias.requires_grad


def test_caller_frozen_parameters_are_left_out() -> None:
    model = net()
    model[0].weight.requires_grad_(False)
    groups = param_groups(model, decay_policy("no_bias_decay"), weight_decay=0.01)
    assert all(p is not model[0].weight for g in groups for p in g["params"])


def test_summary_table_lists_roles_and_treatment() -> None:
    model = net()
    rows = {r.role: r for r in group_summary(model, decay_policy("adaptive_beta_decay"), 0.01)}
    assert rows[B].coefficient is None and rows[B].tensors == 2 and rows[B].elements == 7
    assert rows[CB].tensors == 1 and rows[CB].coefficient == 0.0
    text = format_group_summary(model, decay_policy("adaptive_beta_decay"), 0.01)
    assert "adaptive_beta_decay(beta=1.0, threshold=0.1, decay_biases=False)" in text
    assert "1 where r_l >= 0.1" in text
    frozen = format_group_summary(net(), decay_policy("beta_frozen"), 0.01)
    assert "frozen at 0" in frozen
    assert "trust ratio" not in text  # no layer adaptation named: an optimiser without one


@pytest.mark.parametrize(
    ("mode", "beta", "conv_bias", "weight"),
    [
        ("decayed", "where decayed", "no", "yes"),
        ("all", "yes", "yes", "yes"),
        ("none", "no", "no", "no"),
    ],
)
def test_summary_shows_which_roles_take_the_trust_ratio(mode, beta, conv_bias, weight) -> None:
    rows = format_group_summary(net(), decay_policy("adaptive_beta_decay"), 0.01, mode)
    assert f"layer_adaptation {mode!r}" in rows.splitlines()[0]
    by_role = {}  # role value -> the last column ("trust ratio") of its row
    for line in rows.splitlines()[3:]:
        cells = re.split(r"\s{2,}", line.strip())
        by_role[cells[0].rsplit("(", 1)[1].rstrip(")")] = cells[-1]
    assert by_role[B.value] == beta
    assert by_role[CB.value] == conv_bias
    assert by_role[Role.CONV_WEIGHT.value] == weight


def test_bad_weight_decay() -> None:
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        param_groups(net(), decay_policy("all_decay"), weight_decay=-0.1)
