"""Tiny float64 networks and data for the exact oracles of the Hessian and Fisher tests."""

from __future__ import annotations

import torch
from torch import nn


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def conv_bn(activation: type[nn.Module] = nn.Tanh) -> nn.Module:
    """Conv → BN → activation → linear, with non-trivial BN statistics and affine parameters."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), activation(), nn.Flatten(), nn.Linear(18, 3)
    ).double()
    # So that eval-mode BN is not an identity.
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.normal_()
    return model


def batches(model_name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two batches of unequal sizes: a data-set measure must weight batches by their size."""
    g = torch.Generator().manual_seed(2)
    shape = (6,) if model_name == "mlp" else (1, 5, 5)
    return [
        (
            torch.randn(n, *shape, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=g),
        )
        for n in (7, 4)
    ]
