"""Model registry: each network's builder, the options it takes and the input size it needs.

Every builder takes the same keyword arguments (``in_channels``, ``num_classes``, ``width``,
``image_size``) plus its own extras, so a sweep can build any network from one config section.
Their valid ranges are the annotations below, their defaults the registry's shared ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

from torch import nn

from biasdecay.constraints import Range
from biasdecay.nn.models.mlp import MLP
from biasdecay.nn.models.resnet import ResNet18
from biasdecay.nn.models.resnet_d import ResNet50D
from biasdecay.nn.models.vgg import VGG, VGG_CONFIGS, min_input_size
from biasdecay.registry import Entry, Registry

__all__ = ["MODELS", "ModelEntry", "build_model", "min_image_size", "model_names", "scale_width"]

# The arguments every builder takes, with their valid ranges.
Channels = Annotated[int, Range(1, integer=True)]  # channels of the input images, e.g. 1 or 3
Classes = Annotated[int, Range(1, integer=True)]  # number of output logits, e.g. 10
Width = Annotated[float, Range(0.0, low_open=True)]  # multiplier of every hidden width
Pixels = Annotated[int, Range(1, integer=True)]  # height/width of the inputs, e.g. 32
_COMMON_DEFAULTS = {"in_channels": 3, "num_classes": 10, "width": 1.0, "image_size": 32}
_COMMON_HELP = {
    "in_channels": "channels of the input images (1 for MNIST-like data, 3 for CIFAR/ImageNet)",
    "num_classes": "number of output logits",
    "width": "multiplier of every hidden width, channels = max(1, round(c * width)); 1.0 is the "
    "original network, 0.25 gives ResNet-18 with 16 base channels",
    "image_size": "height/width of the inputs in pixels",
    "hidden_sizes": "hidden layer sizes before scaling by width",
    "batch_norm": "a BatchNorm1d after every hidden layer",
}


def scale_width(channels: int, width: float) -> int:
    """A hidden width scaled by the ``width`` multiplier: ``max(1, round(channels * width))``."""
    return max(1, round(channels * width))


def _scaled(channels: Sequence[int], width: float) -> tuple[int, ...]:
    return tuple(scale_width(c, width) for c in channels)


def _mlp(
    *,
    in_channels: Channels,
    num_classes: Classes,
    width: Width,
    image_size: Pixels,
    hidden_sizes: Sequence[int] = (512, 512),
    batch_norm: bool = False,
) -> MLP:
    in_features = in_channels * image_size * image_size
    return MLP(in_features, num_classes, _scaled(hidden_sizes, width), batch_norm=batch_norm)


def _resnet18(
    *, in_channels: Channels, num_classes: Classes, width: Width, image_size: Pixels
) -> ResNet18:
    del image_size  # global average pooling accepts any size
    return ResNet18(in_channels, num_classes, _scaled((64, 128, 256, 512), width))


def _vgg(config: str, batch_norm: bool) -> Callable[..., VGG]:
    def build(
        *, in_channels: Channels, num_classes: Classes, width: Width, image_size: Pixels
    ) -> VGG:
        scaled = [c if isinstance(c, str) else scale_width(c, width) for c in VGG_CONFIGS[config]]
        return VGG(scaled, in_channels, num_classes, batch_norm=batch_norm, image_size=image_size)

    return build


def _resnet50d(
    *, in_channels: Channels, num_classes: Classes, width: Width, image_size: Pixels
) -> ResNet50D:
    del image_size  # global average pooling accepts any size
    return ResNet50D(
        in_channels,
        num_classes,
        stem_widths=_scaled((32, 32, 64), width),
        stage_widths=_scaled((64, 128, 256, 512), width),
    )


@dataclass(frozen=True)
class ModelEntry(Entry):
    """A registered network (an :class:`~biasdecay.registry.Entry`).

    Attributes:
      min_image_size: smallest input height/width the feature stack accepts (one halving per
        max-pool); 1 when any size works.
    """

    min_image_size: int = 1


#: Every network by name, in listing order.
MODELS: Registry[ModelEntry] = Registry(
    "model",
    [
        ModelEntry("mlp", _mlp, description="multi-layer perceptron (Section 3, eq. 1)"),
        ModelEntry(
            "resnet18", _resnet18, description="ResNet-18 with the CIFAR stem (He et al. 2016)"
        ),
        ModelEntry(
            "vgg11",
            _vgg("A", batch_norm=False),
            description="VGG-11, CIFAR variant, no normalisation",
            min_image_size=min_input_size(VGG_CONFIGS["A"]),
        ),
        ModelEntry(
            "vgg19_bn",
            _vgg("E", batch_norm=True),
            description="VGG-19 with BatchNorm, CIFAR variant",
            min_image_size=min_input_size(VGG_CONFIGS["E"]),
        ),
        ModelEntry(
            "resnet50d",
            _resnet50d,
            description="ResNet-50-D (He et al. 2019), the ImageNet network",
        ),
    ],
    defaults=_COMMON_DEFAULTS,
    option_help=_COMMON_HELP,
)


#: Names accepted by :func:`build_model`, in registry order.
model_names = MODELS.names


def min_image_size(name: str) -> int:
    """Smallest input height/width model ``name`` accepts (1 when any size works).

    Data loaders pad smaller images (28x28 Fashion-MNIST for VGG) up to this size.

    Raises:
        RegistryError: ``name`` is not registered (a ``ValueError``).
    """
    return MODELS.entry(name).min_image_size


def build_model(name: str, **options: object) -> nn.Module:
    """Build a registered network.

    Args:
        name: one of :func:`model_names` (``mlp``, ``resnet18``, ``vgg11``, ``vgg19_bn``,
            ``resnet50d``).
        **options: ``in_channels`` (default 3), ``num_classes`` (10), ``width`` (1.0;
            ``channels = max(1, round(c * width))``), ``image_size`` (32; sets the MLP's input
            features and is checked against VGG's minimum of 32), and model-specific ones:
            ``mlp`` takes ``hidden_sizes`` (before scaling by ``width``, default ``(512, 512)``)
            and ``batch_norm`` (default False). ``MODELS[name].describe_options()`` lists them.

    Returns:
        The freshly initialised model, in float32 and training mode.

    Raises:
        RegistryError: unknown ``name`` (a ``ValueError``).
        ConstraintError: a non-positive ``width`` / ``num_classes`` / ``in_channels`` /
            ``image_size`` (a ``ValueError``).
        OptionError: keyword arguments the chosen model does not accept (a ``TypeError``).
    """
    return MODELS.build(name, **options)
