"""Optimiser registry: each optimiser's class, its defaults and the constraints of its options.

A sweep names its optimiser by a string; :func:`build_optimizer` turns the name and the config's
options into an instance, refusing unknown names and unknown options with the valid ones listed
(a typo in a config must fail at start-up, not silently fall back to a default).

The defaults are the constructors' own (``LAMB(eps=1e-6)``), read from their signatures; an
entry states only where the registry departs from them (the paper's SGD baseline: lr 0.1,
momentum 0.9; LARS has no default lr).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.optimizer import Optimizer, ParamsT

from biasdecay.constraints import Range
from biasdecay.optim import lamb, lars
from biasdecay.optim.lamb import LAMB
from biasdecay.optim.lars import LARS
from biasdecay.registry import Entry, Registry

__all__ = ["OPTIMIZERS", "OptimizerSpec", "build_optimizer", "optimizer_names", "optimizer_spec"]


@dataclass(frozen=True)
class OptimizerSpec(Entry):
    """How to build one registered optimiser (an :class:`~biasdecay.registry.Entry`).

    Attributes:
      name: the registry key.
      builder: the ``torch.optim.Optimizer`` subclass (also :attr:`cls`).
      defaults: keyword arguments the registry passes unless the caller overrides them, where
        they differ from the constructor's own (read-only).
      description: one line for listings.
    """

    fixed: tuple[str, ...] = ("params",)

    @property
    def cls(self) -> type[Optimizer]:
        """The optimiser class."""
        return self.builder


# The registry's constraints are the optimisers' own (``lamb.CONSTRAINTS``, ``lars.CONSTRAINTS``;
# torch's SGD and AdamW take the same for the options they share), with one exception the config
# adds: eps = 0 is refused although LAMB accepts it, because it divides by zero where v = 0.
_STRICTER = {"eps": Range(0.0, low_open=True)}
_CONSTRAINTS = {**lamb.CONSTRAINTS, **lars.CONSTRAINTS, **_STRICTER}

#: Every registered optimiser by name (listed sorted).
OPTIMIZERS: Registry[OptimizerSpec] = Registry(
    "optimizer",
    [
        OptimizerSpec(
            "lamb",
            LAMB,
            description="LAMB (You et al. 2020): Adam moments, bias correction, layer-wise trust "
            "ratio",
        ),
        OptimizerSpec(
            "lars",
            LARS,
            {"lr": 0.1},
            "LARS (You et al. 2017): SGD momentum with a layer-wise local learning rate",
        ),
        OptimizerSpec(
            "sgd",
            torch.optim.SGD,
            {"lr": 0.1, "momentum": 0.9},
            "torch.optim.SGD with momentum 0.9 (the paper's SGD baseline, lr 0.1)",
        ),
        OptimizerSpec(
            "adamw", torch.optim.AdamW, description="torch.optim.AdamW (decoupled decay)"
        ),
    ],
    sort=True,
    constraints=_CONSTRAINTS,
)


#: The registered names, sorted.
optimizer_names = OPTIMIZERS.names


def optimizer_spec(name: str) -> OptimizerSpec:
    """The spec registered as ``name``.

    Raises:
      RegistryError: ``name`` is not registered (the message lists the valid names).
    """
    return OPTIMIZERS.entry(name)


def build_optimizer(name: str, params: ParamsT, **overrides: Any) -> Optimizer:
    """Build the optimiser registered as ``name``.

    Args:
      name: a registered name (see :func:`optimizer_names`).
      params: parameters or parameter groups, as for any ``torch.optim.Optimizer``.
      **overrides: constructor options replacing the defaults.

    Returns:
      The optimiser instance.

    Raises:
      ValueError: the name is unknown, an option is not accepted by the optimiser (the message
        names the unknown options and lists the accepted ones) or out of its range.
    """
    return OPTIMIZERS.build(name, params, **overrides)
