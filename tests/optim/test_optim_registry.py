"""The optimiser registry: every entry builds and steps; unknown names and options fail loudly."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from biasdecay.optim import (
    LAMB,
    LARS,
    OPTIMIZERS,
    OptimizerSpec,
    build_optimizer,
    optimizer_names,
    optimizer_spec,
)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    # No bias before the BN: its gradient would be exactly 0, and plain SGD would not move it.
    return nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def test_registered_names():
    assert optimizer_names() == ["adamw", "lamb", "lars", "sgd"]
    assert optimizer_spec("lamb").cls is LAMB
    assert optimizer_spec("lars").cls is LARS
    assert optimizer_spec("sgd").cls is torch.optim.SGD
    assert optimizer_spec("adamw").cls is torch.optim.AdamW


@pytest.mark.parametrize("name", optimizer_names())
def test_every_optimizer_builds_and_steps(name):
    model = tiny_model()
    optimizer = build_optimizer(name, model.parameters())
    assert isinstance(optimizer, OPTIMIZERS[name].cls)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.randn(16, 4)).square().mean()
    loss.backward()
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("name", optimizer_names())
def test_spec_is_frozen_and_described(name):
    spec = OPTIMIZERS[name]
    assert spec.name == name and spec.description
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.defaults["lr"] = 1.0  # type: ignore[index]
    assert set(spec.defaults) <= set(spec.option_names())


def test_sgd_defaults_to_momentum():
    optimizer = build_optimizer("sgd", tiny_model().parameters())
    assert optimizer.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("name", optimizer_names())
def test_overrides_replace_defaults(name):
    optimizer = build_optimizer(name, tiny_model().parameters(), lr=0.123, weight_decay=0.01)
    assert optimizer.param_groups[0]["lr"] == 0.123
    assert optimizer.param_groups[0]["weight_decay"] == 0.01


def test_param_groups_pass_through():
    model = tiny_model()
    groups = [
        {"params": list(model[0].parameters()), "weight_decay": 0.01},
        {"params": list(model[1].parameters()) + list(model[3].parameters())},
    ]
    optimizer = build_optimizer("lamb", groups, max_grad_norm=1.0, layer_adaptation="none")
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert optimizer.max_grad_norm == 1.0
    assert optimizer.param_groups[1]["layer_adaptation"] == "none"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown optimizer 'lamd'; valid names: adamw, lamb"):
        build_optimizer("lamd", tiny_model().parameters())


def test_unknown_option_is_named():
    match = r"unknown option\(s\) trust_coeficient;.*trust_coefficient"
    with pytest.raises(ValueError, match=match):
        build_optimizer("lars", tiny_model().parameters(), trust_coeficient=0.01)


def test_spec_defaults_are_copied():
    defaults = {"lr": 0.5}
    spec = OptimizerSpec("x", torch.optim.SGD, defaults, "test")
    defaults["lr"] = 1.0
    assert spec.defaults["lr"] == 0.5
