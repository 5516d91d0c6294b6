"""The engine's pieces come from the registries: options, schedules and policies by entry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from biasdecay.optim import LAMB, LARS, OPTIMIZERS
from biasdecay.schedules import cosine_warmup, polynomial_warmup_decay
from biasdecay.train import components as C
from biasdecay.train.config import load_config


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lamb", {"betas", "eps", "layer_adaptation", "max_grad_norm"}),
        ("lars", {"momentum", "nesterov", "layer_adaptation", "trust_coefficient"}),
        ("sgd", {"momentum", "nesterov"}),
        ("adamw", {"betas", "eps"}),
    ],
)
def test_each_optimiser_gets_exactly_its_settings(name, expected) -> None:
    cfg = load_config(None, [f"optimizer.name={name}"])
    assert set(C.section_options(cfg.optimizer, OPTIMIZERS.entry(name))) == expected
    assert C.layer_adaptation(cfg) == ("decayed" if name in ("lamb", "lars") else None)


def test_optimiser_is_built_with_the_configured_options() -> None:
    cfg = load_config(None, ["optimizer.name=lars", "optimizer.momentum=0.8", "run.batch_size=512"])
    optimizer, policy, controller = C.build_optimization(cfg, _net())
    assert isinstance(optimizer, LARS) and controller is None and policy.name == "no_bias_decay"
    group = optimizer.param_groups[0]
    assert group["momentum"] == 0.8 and group["eps"] == 1e-8  # LARS's own eps: not the config's
    assert group["trust_coefficient"] == 0.001  # LARS's default, through the config
    cfg = load_config(None, ["optimizer.name=lars", "optimizer.trust_coefficient=0.02"])
    assert C.build_optimization(cfg, _net())[0].param_groups[0]["trust_coefficient"] == 0.02
    assert group["lr"] == 0.04 * math.sqrt(512 / 8192)
    cfg = load_config(None, ["optimizer.max_grad_norm=1.0"])
    optimizer, _, _ = C.build_optimization(cfg, _net())
    assert isinstance(optimizer, LAMB) and optimizer.max_grad_norm == 1.0


def test_policy_gets_only_the_options_it_takes() -> None:
    cfg = load_config(None, ["policy.name=adaptive_beta_decay", "policy.threshold=0.5"])
    policy = C.build_policy(cfg)
    assert policy.adaptive_threshold == 0.5 and policy.adaptive_coefficient == 1.0
    assert C.build_policy(load_config(None, ["policy.name=all_decay"])).name == "all_decay"


@pytest.mark.parametrize("name", ["polynomial", "cosine", "constant"])
def test_scheduler_follows_the_schedule_functions(name) -> None:
    overrides = [f"schedule.name={name}", "run.epochs=20", "optimizer.lr=0.1"]
    cfg = load_config(None, [*overrides, "schedule.warmup_epochs=2", "schedule.final_lr=0.01"])
    optimizer = torch.optim.SGD(_net().parameters(), lr=1.0)
    steps, per_epoch = 200, 10
    scheduler = C.build_scheduler(cfg, optimizer, steps, per_epoch)
    if name == "polynomial":
        expected = [polynomial_warmup_decay(t, total_steps=steps, peak_lr=0.1, final_lr=0.01)
                    for t in range(steps + 1)]  # fmt: skip
    elif name == "cosine":
        expected = [cosine_warmup(t, total_steps=steps, peak_lr=0.1, warmup_steps=20, final_lr=0.01)
                    for t in range(steps + 1)]  # fmt: skip
    else:
        expected = [0.1] * (steps + 1)
    assert [scheduler.schedule(t) for t in range(steps + 1)] == expected
