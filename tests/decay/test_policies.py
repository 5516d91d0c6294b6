"""Decay policies (Tables 3 and 4): which coefficient, or freezing, each role gets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from biasdecay.decay import (
    decay_policy,
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
        ("no_bias", {}, "valid names: no_bias_decay, all_decay"),
        ("beta_decay", {"gamma": 0.1}, "valid options: beta, decay_biases"),
        ("all_decay", {"beta": 1.0}, "valid options: none"),
        ("beta_decay", {"beta": -1.0}, "beta must be in \\[0, inf\\)"),
        ("gamma_decay", {"gamma": float("nan")}, "gamma must be in \\[0, inf\\), got nan"),
        ("adaptive_beta_decay", {"threshold": -0.1}, "threshold must be in \\[0, inf\\]"),
    ],
)
def test_bad_policy_input(name, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        decay_policy(name, **options)
