"""Parameter roles: which part of the network a parameter plays (conv weight, BN shift, ...).

Roles are decided by the *type* of the module that owns the parameter (its class hierarchy),
never by its name or number of dimensions: a BatchNorm γ and β are both 1-D and their names
depend on the model's author, so neither clue can tell them apart reliably. The same table says,
for exact classes only, which standard operation they compute: what the connectivity fast path's
closed-form formulas and reparameterisation's rescalings rely on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from torch import nn

from biasdecay.errors import InputError

__all__ = [
    "FAMILIES",
    "OPS",
    "ModuleType",
    "Role",
    "is_norm_module",
    "module_type",
    "norm_types",
    "op_of",
    "param_owners",
    "param_roles",
    "register_module_type",
    "register_norm_type",
]


class Role(str, enum.Enum):
    """The role of a parameter; rows of the paper's Table 2 are groups of these."""

    CONV_WEIGHT = "conv_weight"
    CONV_BIAS = "conv_bias"
    LINEAR_WEIGHT = "linear_weight"
    LINEAR_BIAS = "linear_bias"
    NORM_SCALE = "norm_scale"  # γ of a normalisation layer
    NORM_SHIFT = "norm_shift"  # β of a normalisation layer
    EMBEDDING = "embedding"  # a lookup table (nn.Embedding): a weight, decayed like one
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
    Role.EMBEDDING: "Emb",
    Role.OTHER: "other",
}


@dataclass(frozen=True)
class ModuleType:
    """What the library knows about a module class.

    Attributes:
        family: ``"conv"``, ``"linear"``, ``"norm"`` or ``"embedding"``: the roles of its
            ``weight`` and ``bias`` (for a norm, ``weight`` is γ and ``bias`` is β; an embedding
            has a weight only).
        op: the standard operation the *exact* class computes (one of :data:`OPS`), or None
            when it is not known to compute one. The closed-form per-sample formulas of the
            connectivity fast path and the function-preserving rescalings of reparameterisation
            rely on it.
    """

    family: str
    op: str | None = None


# The one module-type table: roles, the per-sample fast path and reparameterisation read it.
# Roles follow the class hierarchy (a subclass of nn.Conv2d has conv roles); an op belongs to the
# exact class only, so a subclass with its own forward (weight standardisation, say) never gets
# the formulas by accident; it joins with register_module_type.
OPS = (
    "linear", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose", "batch_norm",
    "instance_norm", "group_norm", "layer_norm", "layer_norm_channels_first", "rms_norm",
    "embedding", "linear_transposed", "multihead_attention",
)  # fmt: skip
FAMILIES = ("conv", "linear", "norm", "embedding")
_MODULE_TYPES: dict[type[nn.Module], ModuleType] = {
    nn.Linear: ModuleType("linear", "linear"),
    nn.Bilinear: ModuleType("linear", "bilinear"),
    nn.Conv1d: ModuleType("conv", "conv1d"),
    nn.Conv2d: ModuleType("conv", "conv2d"),
    nn.Conv3d: ModuleType("conv", "conv3d"),
    **{
        cls: ModuleType("conv", "conv_transpose")
        for cls in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    },
    nn.modules.conv._ConvNd: ModuleType("conv"),  # roles of other convs (lazy ones, subclasses)
    **{
        cls: ModuleType("norm", "batch_norm")
        for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    },
    **{
        cls: ModuleType("norm", "instance_norm")
        for cls in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
    },
    nn.modules.batchnorm._NormBase: ModuleType("norm"),  # roles of other norms (lazy ones)
    nn.GroupNorm: ModuleType("norm", "group_norm"),
    nn.LayerNorm: ModuleType("norm", "layer_norm"),
    nn.RMSNorm: ModuleType("norm", "rms_norm"),  # γ only
    nn.Embedding: ModuleType("embedding", "embedding"),
    nn.EmbeddingBag: ModuleType("embedding"),
    # Linear maps under other names (see _role_of): weight_ih_l0, bias_hh_l0_reverse,
    # in_proj_weight, in_proj_bias, q_proj_weight, bias_k. Recurrent layers have no
    # per-sample formula; attention has one for its packed in-projection
    # (biasdecay.sharpness._attention), and its output projection is a plain Linear.
    nn.RNNBase: ModuleType("linear"),  # nn.RNN, nn.LSTM, nn.GRU
    nn.MultiheadAttention: ModuleType("linear", "multihead_attention"),
    nn.modules.linear.NonDynamicallyQuantizableLinear: ModuleType("linear", "linear"),
}

# Classes of other libraries, by qualified name, so that roles are right without importing them:
# Hugging Face's Conv1D (GPT-2) is a linear layer with its weight stored transposed, (in, out),
# computing x W + b: op linear_transposed (nn.Linear's formulas with the weight's layout swapped).
# Llama's RMSNorm computes nn.RMSNorm's function over the last dim (in float32 for 16-bit
# inputs), with its ε named variance_epsilon. The other families listed have the same __init__
# and forward, line for line (transformers 5.25); Gemma's (1 + γ), Olmo2's and the weightless
# variants differ and are not listed. A listed class that changes is caught by the exactness
# guard, which sends its γ to the generic path.
_LLAMA_RMS_NORMS = (
    "llama.LlamaRMSNorm", "mistral.MistralRMSNorm", "mixtral.MixtralRMSNorm",
    "ministral.MinistralRMSNorm", "qwen2.Qwen2RMSNorm", "qwen2_moe.Qwen2MoeRMSNorm",
    "qwen3.Qwen3RMSNorm", "qwen3_moe.Qwen3MoeRMSNorm", "phi3.Phi3RMSNorm",
    "granite.GraniteRMSNorm", "granitemoe.GraniteMoeRMSNorm", "smollm3.SmolLM3RMSNorm",
    "olmoe.OlmoeRMSNorm", "deepseek_v2.DeepseekV2RMSNorm", "deepseek_v3.DeepseekV3RMSNorm",
    "glm.GlmRMSNorm", "glm4.Glm4RMSNorm", "ernie4_5.Ernie4_5RMSNorm", "jamba.JambaRMSNorm",
)  # fmt: skip
# ConvNeXt's LayerNorm is nn.LayerNorm with a data_format: "channels_last" normalises the last
# dim, as nn.LayerNorm does; "channels_first" normalises dim 1 of (B, C, H, W), by permuting to
# channels-last and back (op_of reads the attribute). The other families listed have the same
# __init__ and forward, line for line (transformers 5.25); DINOv3's ConvNeXt's differs.
_CONVNEXT_LAYER_NORMS = (
    "convnext.ConvNextLayerNorm", "convnextv2.ConvNextV2LayerNorm",
    "deepseek_ocr2.DeepseekOcr2SamLayerNorm", "deepseek_vl_hybrid.DeepseekVLHybridLayerNorm",
    "edgetam.EdgeTamLayerNorm", "edgetam_video.EdgeTamVideoLayerNorm",
    "got_ocr2.GotOcr2LayerNorm", "lw_detr.LwDetrLayerNorm",
    "pp_formulanet.PPFormulaNetLayerNorm", "rf_detr.RfDetrLayerNorm", "sam.SamLayerNorm",
    "sam2.Sam2LayerNorm", "sam2_video.Sam2VideoLayerNorm", "sam3_tracker.Sam3TrackerLayerNorm",
    "sam3_tracker_video.Sam3TrackerVideoLayerNorm", "sam_hq.SamHQLayerNorm",
    "seggpt.SegGptLayerNorm", "slanext.SLANeXtLayerNorm",
    "unlimited_ocr.UnlimitedOcrSamLayerNorm",
)  # fmt: skip
_MODULE_TYPES_BY_NAME: dict[str, ModuleType] = {
    "transformers.pytorch_utils.Conv1D": ModuleType("linear", "linear_transposed"),
    **{
        f"transformers.models.{family}.modeling_{family}.{cls}": ModuleType(family_type, op)
        for names, family_type, op in (
            (_LLAMA_RMS_NORMS, "norm", "rms_norm"),
            (_CONVNEXT_LAYER_NORMS, "norm", "layer_norm"),
        )
        for family, cls in (name.split(".") for name in names)
    },
}


def register_module_type(
    cls: type[nn.Module], family: str, op: str | None = None
) -> type[nn.Module]:
    """Declare what a module class is: its parameters' roles and, optionally, its operation.

    Give an ``op`` only when the class computes exactly that standard operation in eval mode
    (e.g. a BatchNorm subclass that changes only its training statistics). The connectivity
    guard still checks every batch, so a wrong declaration is caught, not trusted.

    Args:
        cls: the module class.
        family: ``"conv"``, ``"linear"``, ``"norm"`` or ``"embedding"``.
        op: one of :data:`OPS`, or None.

    Returns:
        ``cls`` unchanged.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_module_type expects an nn.Module subclass, got {cls!r}")
    if family not in FAMILIES:
        raise InputError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    if op is not None and op not in OPS:
        raise InputError(f"unknown op {op!r}; valid: {', '.join(OPS)} or None")
    _MODULE_TYPES[cls] = ModuleType(family, op)
    return cls


def register_norm_type(cls: type[nn.Module]) -> type[nn.Module]:
    """Declare a module class as a normalisation layer (``weight`` = γ, ``bias`` = β).

    Usable as a class decorator. Subclasses of BatchNorm/GroupNorm/LayerNorm need no
    registration for their roles.

    Args:
        cls: the module class.

    Returns:
        ``cls`` unchanged.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_norm_type expects an nn.Module subclass, got {cls!r}")
    if cls not in _MODULE_TYPES:
        register_module_type(cls, "norm")
    return cls


def module_type(module: nn.Module, *, exact: bool = False) -> ModuleType | None:
    """The table's entry for ``module``'s class, or None.

    Args:
        module: any module.
        exact: look up the exact class only (what an op needs); otherwise the nearest
            registered class in its hierarchy (what roles need).
    """
    for cls in type(module).__mro__[:1] if exact else type(module).__mro__:
        entry = _MODULE_TYPES.get(cls) or _MODULE_TYPES_BY_NAME.get(
            f"{cls.__module__}.{cls.__qualname__}"
        )
        if entry is not None:
            return entry
    return None


def op_of(module: nn.Module) -> str | None:
    """The standard operation ``module``'s exact class computes (:data:`OPS`), or None.

    A LayerNorm class that is told ``data_format="channels_first"`` (ConvNeXt's) normalises
    dim 1: "layer_norm_channels_first".
    """
    entry = module_type(module, exact=True)
    if entry is None:
        return None
    if entry.op == "layer_norm" and getattr(module, "data_format", None) == "channels_first":
        return "layer_norm_channels_first"
    return entry.op


def norm_types() -> tuple[type[nn.Module], ...]:
    """The module classes currently treated as normalisation layers."""
    return tuple(cls for cls, entry in _MODULE_TYPES.items() if entry.family == "norm")


def is_norm_module(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (BatchNorm, GroupNorm, LayerNorm, registered)."""
    entry = module_type(module)
    return entry is not None and entry.family == "norm"


_ROLES = {
    "conv": (Role.CONV_WEIGHT, Role.CONV_BIAS),
    "linear": (Role.LINEAR_WEIGHT, Role.LINEAR_BIAS),
    "norm": (Role.NORM_SCALE, Role.NORM_SHIFT),
    "embedding": (Role.EMBEDDING, Role.OTHER),
}


def _role_of(module: nn.Module, local_name: str) -> Role:
    entry = module_type(module)
    if entry is None:
        return Role.OTHER
    weight, bias = _ROLES[entry.family]
    if local_name in ("weight", "bias"):
        return weight if local_name == "weight" else bias
    if entry.family in ("linear", "conv"):
        # A layer of several linear maps names each weight and bias: weight_ih_l0 and
        # bias_hh_l0 (nn.LSTM), in_proj_weight and in_proj_bias (nn.MultiheadAttention).
        words = local_name.split("_")
        if "weight" in words:
            return weight
        if "bias" in words:
            return bias
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
