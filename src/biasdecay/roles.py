"""Parameter roles: which part of the network a parameter plays (conv weight, BN shift, ...).

Roles are decided by the *type* of the module that owns the parameter (``isinstance``), never by
its name or number of dimensions: a BatchNorm γ and β are both 1-D and their names depend on the
model's author, so neither clue can tell them apart reliably.
"""

from __future__ import annotations

import enum

from torch import nn

__all__ = [
    "Role",
    "param_roles",
    "param_owners",
    "register_norm_type",
    "norm_types",
    "is_norm_module",
]


class Role(str, enum.Enum):
    """The role of a parameter; rows of the paper's Table 2 are groups of these."""

    CONV_WEIGHT = "conv_weight"
    CONV_BIAS = "conv_bias"
    LINEAR_WEIGHT = "linear_weight"
    LINEAR_BIAS = "linear_bias"
    NORM_SCALE = "norm_scale"  # γ of a normalisation layer
    NORM_SHIFT = "norm_shift"  # β of a normalisation layer
    OTHER = "other"

    @property
    def label(self) -> str:
        """The paper's short name for the role (Table 2 rows)."""
        return _LABELS[self]


_LABELS = {
    Role.CONV_WEIGHT: "Conv(w)",
    Role.CONV_BIAS: "Conv(b)",
    Role.LINEAR_WEIGHT: "FC(w)",
    Role.LINEAR_BIAS: "FC(b)",
    Role.NORM_SCALE: "γ",
    Role.NORM_SHIFT: "β",
    Role.OTHER: "other",
}

# Normalisation layers whose `weight` is γ and `bias` is β. Extended by register_norm_type
# (ghost batch norm registers itself) so user-defined norms get the right roles too.
_NORM_TYPES: list[type[nn.Module]] = [
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
]
_CONV_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd,)
_LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear)


def register_norm_type(cls: type[nn.Module]) -> type[nn.Module]:
    """Declare a module class as a normalisation layer (``weight`` = γ, ``bias`` = β).

    Usable as a class decorator. Subclasses of BatchNorm/GroupNorm/LayerNorm need no
    registration.

    Args:
        cls: the module class.

    Returns:
        ``cls`` unchanged.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_norm_type expects an nn.Module subclass, got {cls!r}")
    if cls not in _NORM_TYPES:
        _NORM_TYPES.append(cls)
    return cls


def norm_types() -> tuple[type[nn.Module], ...]:
    """The module classes currently treated as normalisation layers."""
    return tuple(_NORM_TYPES)


def is_norm_module(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (BatchNorm, GroupNorm, LayerNorm, registered)."""
    return isinstance(module, tuple(_NORM_TYPES))


def _role_of(module: nn.Module, local_name: str) -> Role:
    if is_norm_module(module):
        if local_name == "weight":
            return Role.NORM_SCALE
        if local_name == "bias":
            return Role.NORM_SHIFT
    elif isinstance(module, _CONV_TYPES):
        if local_name == "weight":
            return Role.CONV_WEIGHT
        if local_name == "bias":
            return Role.CONV_BIAS
    elif isinstance(module, _LINEAR_TYPES):
        if local_name == "weight":
            return Role.LINEAR_WEIGHT
        if local_name == "bias":
            return Role.LINEAR_BIAS
    return Role.OTHER


def param_roles(model: nn.Module) -> dict[str, Role]:
    """Map every parameter name of ``model`` to its :class:`Role`.

    Names are those of ``model.named_parameters()`` (shared parameters appear once, under their
    first name). Parameters with ``requires_grad=False`` are included: a frozen γ is still a γ.

    Args:
        model: any ``nn.Module``.

    Returns:
        ``{parameter name: Role}`` in ``named_parameters`` order.
    """
    owner: dict[int, tuple[nn.Module, str]] = {}
    for module in model.modules():
        for local_name, p in module.named_parameters(recurse=False):
            owner.setdefault(id(p), (module, local_name))
    roles: dict[str, Role] = {}
    for name, p in model.named_parameters():
        module, local_name = owner[id(p)]
        roles[name] = _role_of(module, local_name)
    return roles


def param_owners(model: nn.Module) -> dict[str, str]:
    """Map every parameter name to the qualified name of the module that owns it ("" = root)."""
    owner: dict[int, str] = {}
    for mod_name, module in model.named_modules():
        for _, p in module.named_parameters(recurse=False):
            owner.setdefault(id(p), mod_name)
    return {name: owner[id(p)] for name, p in model.named_parameters()}
