"""Function-preserving reparameterisations: neuron rescaling (eq. 9) and BatchNorm folding.

Connectivity sharpness is invariant to the rescaling ρ_{c,l,k} of eq. 9 (Theorem 3.1) while the
Hessian trace and top eigenvalue are not (Dinh et al., 2017); these functions build the equivalent
networks that show it. Folding BatchNorm into the preceding layer is the other classic
equivalence: it removes γ and β altogether, which is why C(β) and C(γ) are properties of the
parameterisation, not of the function.
"""

from __future__ import annotations

import copy
import math
import numbers

import torch
import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from biasdecay.errors import InputError
from biasdecay.roles import op_of

__all__ = ["fold_batchnorm", "rescalable_pairs", "rescale_neuron"]

# Rescalings preserve the function only for layers that compute their standard operation, so
# they are chosen by the exact class's op in the module-type table (biasdecay.roles), never by
# isinstance: a weight-standardised Conv2d subclass is not rescalable as a conv.
_LINEAR_OPS = ("linear",)
_CONV_OPS = ("conv1d", "conv2d", "conv3d")
_NORM_AFFINE_OPS = ("batch_norm", "group_norm")
_SUPPORTED_INCOMING = "nn.Linear, nn.Conv1d/2d/3d, affine nn.BatchNorm1d/2d/3d, affine nn.GroupNorm"
_SUPPORTED_OUTGOING = "nn.Linear, nn.Conv1d/2d/3d"


def _is_linear(module: nn.Module) -> bool:
    return op_of(module) in _LINEAR_OPS


def _is_norm_affine(module: nn.Module) -> bool:
    return op_of(module) in _NORM_AFFINE_OPS


def _is_batch_norm(module: nn.Module) -> bool:
    return op_of(module) == "batch_norm"


# --------------------------------------------------------------------------------------------
# Neuron rescaling, eq. 9
# --------------------------------------------------------------------------------------------


def _resolve(model: nn.Module, module: nn.Module | str, which: str) -> tuple[str, nn.Module]:
    """The (qualified name, module) for a module given by name or object, checked to be in model."""
    if isinstance(module, str):
        try:
            return module, model.get_submodule(module)
        except AttributeError as err:
            names = [n for n, _ in model.named_modules() if n]
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise InputError(
                f"{which} {module!r} is not a submodule of the model; use a name from "
                f"model.named_modules(), e.g. {shown}"
            ) from err
    if not isinstance(module, nn.Module):
        raise TypeError(f"{which} must be an nn.Module or its qualified name, got {module!r}")
    for name, candidate in model.named_modules():
        if candidate is module:
            return name, module
    raise InputError(
        f"{which} ({type(module).__name__}) is not a submodule of the model; pass a module of "
        "this model or its qualified name"
    )


def _is_plain_conv(module: nn.Module) -> bool:
    # Transposed convs (op conv_transpose) store weights as (in, out/groups, ...), so the
    # slicing below would be wrong.
    return op_of(module) in _CONV_OPS


def _output_units(module: nn.Module, name: str) -> int:
    """How many units (features/channels) ``module`` outputs, for a supported incoming layer."""
    if _is_linear(module):
        return module.out_features
    if _is_plain_conv(module):
        return module.out_channels
    if _is_norm_affine(module):
        if module.weight is None or module.bias is None:
            raise InputError(
                f"incoming norm layer {name!r} has no affine γ/β to rescale; build it with "
                "affine=True or pass the layer before it"
            )
        return module.weight.shape[0]
    raise InputError(
        f"incoming {name!r} is a {type(module).__name__}, which is not supported; supported: "
        f"{_SUPPORTED_INCOMING}"
    )


def _scale_incoming(module: nn.Module, index: int, c: float) -> None:
    # Linear rows, conv output channels and norm γ_k all sit at index `index` of dim 0.
    module.weight[index].mul_(c)
    if module.bias is not None:
        module.bias[index].mul_(c)


def _scale_outgoing(
    module: nn.Module, name: str, index: int, c: float, units: int, incoming_is_linear: bool
) -> None:
    if _is_linear(module):
        fan_in = module.in_features
        flattened = not incoming_is_linear and fan_in % units == 0
        if fan_in != units and not flattened:
            allowed = f"{units}" if incoming_is_linear else f"a multiple of {units}"
            raise InputError(
                f"outgoing Linear {name!r} has in_features={fan_in} but the incoming layer has "
                f"{units} output units; in_features must be {allowed} (channel-major flatten)"
            )
        # Channel-major flatten: channel k owns the contiguous columns k*S .. (k+1)*S - 1.
        span = fan_in // units
        module.weight[:, index * span : (index + 1) * span].div_(c)
        return
    if _is_plain_conv(module):
        if module.in_channels != units:
            raise InputError(
                f"outgoing conv {name!r} has in_channels={module.in_channels} but the incoming "
                f"layer has {units} output units; they must be equal"
            )
        # Grouped conv: input channel k feeds only the output channels of its group g, through
        # column k mod (in/groups) of their weights.
        in_per_group = module.in_channels // module.groups
        out_per_group = module.out_channels // module.groups
        group, column = divmod(index, in_per_group)
        rows = slice(group * out_per_group, (group + 1) * out_per_group)
        module.weight[rows, column].div_(c)
        return
    raise InputError(
        f"outgoing {name!r} is a {type(module).__name__}, which is not supported; supported: "
        f"{_SUPPORTED_OUTGOING}"
    )


def rescale_neuron(
    model: nn.Module,
    incoming: nn.Module | str,
    outgoing: nn.Module | str,
    index: int,
    c: float,
) -> None:
    """Apply the paper's reparameterisation ρ_{c,l,k} (eq. 9) in place.

    Multiplies the ``index``-th output unit of ``incoming`` by ``c`` (a Linear row and bias entry,
    a conv output channel and bias entry, or a norm layer's γ_k and β_k) and divides the matching
    input unit of ``outgoing`` (a Linear column, or a conv input channel) by ``c``. When
    ``outgoing`` is a Linear after a flatten of conv/norm features, its ``in_features`` must be a
    multiple S of the channel count and channel k is columns ``k*S .. (k+1)*S - 1``
    (channel-major flatten; S = 1 after global average pooling).

    The network function is unchanged *only* if everything between the two layers is positively
    homogeneous (eq. 2): ReLU / leaky ReLU, max or average pooling, flatten, identity. A
    normalisation layer, a residual addition or a non-homogeneous activation in between (or any
    other consumer of ``incoming``'s output) breaks the equivalence; the function does not check
    the path. With BatchNorm as ``incoming`` the equivalence holds in both train and eval mode,
    because the running statistics are taken before γ and β. Connectivity sharpness is invariant
    under this map (Theorem 3.1); Hessian-based sharpness is not.

    Args:
        model: the network containing both layers.
        incoming: the layer whose output unit is scaled up (module or qualified name). Supported:
            ``nn.Linear``, ``nn.Conv1d/2d/3d``, affine ``nn.BatchNorm1d/2d/3d``, affine
            ``nn.GroupNorm``.
        outgoing: the next layer, whose input unit is scaled down (module or qualified name).
            Supported: ``nn.Linear``, ``nn.Conv1d/2d/3d`` (grouped convolutions included).
        index: the unit k, ``0 <= index < number of output units of incoming``.
        c: the factor, a finite number > 0.

    Raises:
        ValueError: ``c`` not finite and positive, ``index`` out of range, a module that is not in
            the model or of an unsupported type, or shapes that do not connect.
    """
    if isinstance(c, bool) or not isinstance(c, numbers.Real) or not math.isfinite(c) or not c > 0:
        raise InputError(
            f"c must be a finite number > 0 (ρ_c of eq. 9 is only function-preserving for "
            f"positive scales through ReLU); got {c!r}"
        )
    c = float(c)
    in_name, in_module = _resolve(model, incoming, "incoming")
    out_name, out_module = _resolve(model, outgoing, "outgoing")
    units = _output_units(in_module, in_name)
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):
        raise InputError(f"index must be an integer in [0, {units}); got {index!r}")
    if not 0 <= index < units:
        raise InputError(
            f"index {index} is out of range for {in_name!r}, which has {units} output units; "
            f"use 0 <= index < {units}"
        )
    index = int(index)
    with torch.no_grad():
        # Outgoing first: it is the one whose shape can fail, and nothing must change if it does.
        _scale_outgoing(out_module, out_name, index, c, units, _is_linear(in_module))
        _scale_incoming(in_module, index, c)


# Operations that commute with a positive per-channel scale (eq. 2): a chain of these between two
# layers keeps ρ function-preserving.
_HOMOGENEOUS_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Identity,
)
_HOMOGENEOUS_FUNCTIONS = (torch.relu, nn.functional.relu, nn.functional.leaky_relu, torch.flatten)


def _is_incoming(module: nn.Module) -> bool:
    if _is_norm_affine(module):
        return module.weight is not None and module.bias is not None
    return _is_linear(module) or _is_plain_conv(module)


def _homogeneous(node: torch.fx.Node, model: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), _HOMOGENEOUS_MODULES)
    if node.op == "call_function":
        return node.target in _HOMOGENEOUS_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "flatten", "view", "reshape")


def rescalable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Layer pairs ``(incoming, outgoing)`` for which :func:`rescale_neuron` preserves the function.

    A pair qualifies when ``incoming`` (Linear, conv, affine BatchNorm/GroupNorm) feeds
    ``outgoing`` (Linear or conv) through a chain of positively homogeneous operations only
    (ReLU, leaky ReLU, pooling, flatten), and nothing else reads any value on that chain: a
    residual branch that also consumes the activation would see the rescaled unit. In a ResNet
    block that is ``bn1 -> relu -> conv2``. Pairs come in forward order.

    Args:
        model: a torch.fx-traceable network.

    Returns:
        The qualified names of each pair (empty when there is none).

    Raises:
        ValueError: the model cannot be traced with torch.fx.
    """
    graph, calls = _trace(model, "rescalable_pairs")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _is_incoming(model.get_submodule(node.target)):
            continue
        current = node
        while len(current.users) == 1:
            (user,) = current.users
            if user.op == "call_module" and _foldable_layer(model.get_submodule(user.target)):
                if calls[node.target] == 1 and calls[user.target] == 1:
                    pairs.append((node.target, user.target))
                break
            if not _homogeneous(user, model):
                break
            current = user
    return pairs


# --------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------


class _LeafTracer(torch.fx.Tracer):
    """Keeps every conv, linear and BatchNorm (user subclasses included) as one call_module."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _ConvNd | nn.Linear | _BatchNorm):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module, caller: str) -> tuple[torch.fx.Graph, dict[str, int]]:
    """The fx graph of ``model`` and how often forward calls each module (shared ones > 1)."""
    try:
        graph = _LeafTracer().trace(model)
    except Exception as err:  # fx raises many types (TraceError, TypeError, ...)
        raise InputError(
            f"{caller} needs a torch.fx-traceable model (no Python control flow on tensor "
            f"values in forward); tracing {type(model).__name__} failed: "
            f"{type(err).__name__}: {err}"
        ) from err
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return graph, calls


def _foldable_layer(module: nn.Module) -> bool:
    return _is_linear(module) or _is_plain_conv(module)


def _find_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer, bn)`` names for each BatchNorm called in forward; raise if one is unfoldable."""
    graph, calls = _trace(model, "fold_batchnorm")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _is_batch_norm(model.get_submodule(node.target)):
            continue
        bn_name = node.target
        source = node.args[0] if node.args else None
        layer = None
        if isinstance(source, torch.fx.Node) and source.op == "call_module":
            layer = model.get_submodule(source.target)
        if layer is None or not _foldable_layer(layer):
            if layer is not None:
                what = type(layer).__name__
            elif isinstance(source, torch.fx.Node):
                what = f"{source.op} {source.target!s}"  # e.g. placeholder x, call_function relu
            else:
                what = "a constant"
            raise InputError(
                f"cannot fold BatchNorm {bn_name!r}: its input comes from {what}, not directly "
                "from a Conv/Linear layer (e.g. a pre-activation block); only conv/linear -> BN "
                "pairs can be folded"
            )
        if len(source.users) != 1:
            raise InputError(
                f"cannot fold BatchNorm {bn_name!r}: the output of {source.target!r} is also used "
                "elsewhere, and folding would change that other use"
            )
        if calls[bn_name] != 1 or calls[source.target] != 1:
            raise InputError(
                f"cannot fold BatchNorm {bn_name!r}: it or {source.target!r} is called more than "
                "once in forward (shared module)"
            )
        pairs.append((source.target, bn_name))
    return pairs


def _fold_into(layer: nn.Module, bn: _BatchNorm, bn_name: str) -> None:
    """Fold eval-mode ``bn`` into ``layer``: W' = W·s, b' = (b - μ)·s + β, s = γ/sqrt(σ² + ε)."""
    if bn.running_mean is None or bn.running_var is None:
        raise InputError(
            f"cannot fold BatchNorm {bn_name!r}: it has track_running_stats=False, so eval mode "
            "normalises with batch statistics, which no fixed affine map reproduces"
        )
    weight = layer.weight
    units = weight.shape[0]
    if bn.num_features != units:
        raise InputError(
            f"cannot fold BatchNorm {bn_name!r}: num_features={bn.num_features} but the layer "
            f"before it has {units} output units"
        )
    f64 = {"dtype": torch.float64, "device": weight.device}
    gamma = bn.weight.to(**f64) if bn.weight is not None else torch.ones(units, **f64)
    beta = bn.bias.to(**f64) if bn.bias is not None else torch.zeros(units, **f64)
    scale = gamma / torch.sqrt(bn.running_var.to(**f64) + bn.eps)
    bias = layer.bias.to(**f64) if layer.bias is not None else torch.zeros(units, **f64)
    new_weight = weight.to(**f64) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    new_bias = (bias - bn.running_mean.to(**f64)) * scale + beta
    weight.copy_(new_weight.to(weight.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias.to(weight.dtype), requires_grad=weight.requires_grad)
    else:
        layer.bias.copy_(new_bias.to(layer.bias.dtype))


def _replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-equivalent copy of ``model`` with every BatchNorm folded into the layer before it.

    Each BatchNorm (1d/2d/3d, subclasses included, assumed to normalise with running statistics in
    eval mode) whose input is a Conv/Linear layer whose output has no other consumer is folded:
    with s = γ/sqrt(running_var + ε), the layer's weight is scaled by s per output unit and its
    bias becomes (b - running_mean)·s + β (a layer without bias gets one); the BatchNorm is
    replaced by ``nn.Identity``. The arithmetic is done in float64 and cast back to the
    parameter dtype. The pairs are found with torch.fx on the copy, but the copy's module tree is
    edited directly, so the result has the same class as ``model`` (not a GraphModule). BatchNorm
    modules that forward never calls are left alone.

    The copy computes the same function as ``model.eval()``; in training mode they differ (the
    original would use batch statistics). Folding removes every γ and β, so the C(γ), C(β) split
    of connectivity sharpness (eq. 11, 17) is a property of the parameterisation.

    Args:
        model: an fx-traceable network; it is not modified.

    Returns:
        The folded deep copy, with ``model``'s training flag.

    Raises:
        ValueError: the model is not fx-traceable, or a BatchNorm cannot be folded (its input is
            not a Conv/Linear, e.g. pre-activation; that layer's output is used elsewhere; a
            module is called twice; it has no running statistics), naming the BatchNorm.
    """
    folded = copy.deepcopy(model)
    pairs = _find_pairs(folded)
    with torch.no_grad():
        for layer_name, bn_name in pairs:
            bn = folded.get_submodule(bn_name)
            _fold_into(folded.get_submodule(layer_name), bn, bn_name)
        for _, bn_name in pairs:
            _replace_module(folded, bn_name, nn.Identity())
    return folded
