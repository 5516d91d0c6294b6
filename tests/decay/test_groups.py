"""Param groups from a decay policy, explicit freezing, and the policy summary table."""

from __future__ import annotations

import re

import pytest
import torch
from test_policies import CB, EXPECTED, LB, LW, B, W, net

from biasdecay.decay import (
    decay_policy,
    format_group_summary,
    freeze_roles,
    group_summary,
    param_groups,
)
from biasdecay.roles import Role


def groups_for(name: str, model=None):
    model = net() if model is None else model
    policy = decay_policy(name)
    freeze_roles(model, policy)
    return model, param_groups(model, policy, weight_decay=0.01)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_param_groups_place_every_parameter_once(name: str) -> None:
    model, groups = groups_for(name)
    placed = [p for g in groups for p in g["params"]]
    assert len(placed) == len({id(p) for p in placed})
    assert {id(p) for p in placed} == {id(p) for p in model.parameters() if p.requires_grad}
    for g in groups:
        expected = EXPECTED[name][Role(g["role"])]
        assert g["weight_decay"] == expected
        assert g["adaptive_beta"] is (name == "adaptive_beta_decay" and g["role"] == B.value)
    torch.optim.SGD(groups, lr=0.1)  # torch accepts them as they are


def test_adaptive_beta_decay_gives_each_layer_its_own_tensor_decay() -> None:
    model, groups = groups_for("adaptive_beta_decay")
    betas = [g for g in groups if g["adaptive_beta"]]
    assert [g["layer"] for g in betas] == ["1", "4"]
    for g, bn in zip(betas, (model[1], model[4]), strict=True):
        assert g["params"] == [bn.bias]
        decay = g["weight_decay"]
        assert isinstance(decay, torch.Tensor) and decay.dim() == 0 and decay.item() == 0.0
        assert decay.dtype == bn.bias.dtype and decay.device == bn.bias.device
    assert betas[0]["weight_decay"] is not betas[1]["weight_decay"]  # one decision per layer
    # Every other role keeps a number, one group per role.
    others = [g for g in groups if not g["adaptive_beta"]]
    assert all(not isinstance(g["weight_decay"], torch.Tensor) for g in others)


def test_frozen_roles_are_fixed_and_excluded() -> None:
    model = net()
    with torch.no_grad():
        model[1].weight.fill_(3.0)
        model[1].bias.fill_(2.0)
    policy = decay_policy("bn_frozen")
    with pytest.raises(ValueError, match=r"freezes norm_scale, norm_shift.*call.*freeze_roles"):
        param_groups(model, policy, weight_decay=0.01)  # the model is never changed silently
    assert torch.equal(model[1].weight, torch.full_like(model[1].weight, 3.0))
    frozen = freeze_roles(model, policy)
    assert frozen == ["1.weight", "1.bias", "4.weight", "4.bias"]
    groups = param_groups(model, policy, weight_decay=0.01)
    assert {g["role"] for g in groups} == {W.value, CB.value, LW.value, LB.value}
    for bn in (model[1], model[4]):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.weight.requires_grad
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias)) and not bn.bias.requires_grad
    assert freeze_roles(net(), decay_policy("no_bias_decay")) == []


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
    with pytest.raises(ValueError, match=r"weight_decay must be in \[0, inf\), got -0.1"):
        param_groups(net(), decay_policy("all_decay"), weight_decay=-0.1)
