"""Optimiser registry: frozen descriptions of each optimiser and a builder that checks its options.

A sweep names its optimiser by a string; :func:`build_optimizer` turns the name and the config's
options into an instance, refusing unknown names and unknown options with the valid ones listed
(a typo in a config must fail at start-up, not silently fall back to a default).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch.optim.optimizer import Optimizer, ParamsT

from biasdecay.optim.lamb import LAMB
from biasdecay.optim.lars import LARS

__all__ = ["OPTIMIZERS", "OptimizerSpec", "build_optimizer", "optimizer_names", "optimizer_spec"]


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one registered optimiser.

    Attributes:
      name: the registry key.
      cls: the ``torch.optim.Optimizer`` subclass.
      defaults: keyword arguments the registry passes unless the caller overrides them (read-only).
      description: one line for listings.
    """

    name: str
    cls: type[Optimizer]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        # A read-only view keeps the frozen spec from being changed through its dict.
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    def option_names(self) -> tuple[str, ...]:
        """The keyword options ``cls`` accepts (every constructor argument except ``params``)."""
        signature = inspect.signature(self.cls.__init__)
        return tuple(
            name
            for name, p in signature.parameters.items()
            if name not in ("self", "params")
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        )


def _specs(*specs: OptimizerSpec) -> Mapping[str, OptimizerSpec]:
    return MappingProxyType({spec.name: spec for spec in specs})


#: Every registered optimiser by name.
OPTIMIZERS: Mapping[str, OptimizerSpec] = _specs(
    OptimizerSpec(
        "lamb",
        LAMB,
        {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6},
        "LAMB (You et al. 2020): Adam moments, bias correction, layer-wise trust ratio",
    ),
    OptimizerSpec(
        "lars",
        LARS,
        {"lr": 0.1, "momentum": 0.9, "trust_coefficient": 0.001},
        "LARS (You et al. 2017): SGD momentum with a layer-wise local learning rate",
    ),
    OptimizerSpec(
        "sgd",
        torch.optim.SGD,
        {"lr": 0.1, "momentum": 0.9},
        "torch.optim.SGD with momentum 0.9 (the paper's SGD baseline, lr 0.1)",
    ),
    OptimizerSpec(
        "adamw",
        torch.optim.AdamW,
        {"lr": 1e-3},
        "torch.optim.AdamW (decoupled weight decay)",
    ),
)


def optimizer_names() -> list[str]:
    """The registered names, sorted."""
    return sorted(OPTIMIZERS)


def optimizer_spec(name: str) -> OptimizerSpec:
    """The spec registered as ``name``.

    Raises:
      ValueError: ``name`` is not registered (the message lists the valid names).
    """
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown optimizer {name!r}; valid names: {', '.join(optimizer_names())}"
        ) from None


def build_optimizer(name: str, params: ParamsT, **overrides: Any) -> Optimizer:
    """Build the optimiser registered as ``name``.

    Args:
      name: a registered name (see :func:`optimizer_names`).
      params: parameters or parameter groups, as for any ``torch.optim.Optimizer``.
      **overrides: constructor options replacing the spec's defaults.

    Returns:
      The optimiser instance.

    Raises:
      ValueError: the name is unknown, or an option is not accepted by the optimiser (the message
        names the unknown options and lists the accepted ones).
    """
    spec = optimizer_spec(name)
    accepted = spec.option_names()
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ValueError(
            f"optimizer {name!r} got unknown option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted)}"
        )
    return spec.cls(params, **{**spec.defaults, **overrides})
