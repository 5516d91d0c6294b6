"""Model registry: a plain dict of builders and a getter that checks its arguments.

Every builder takes the same keyword arguments (``in_channels``, ``num_classes``, ``width``,
``image_size``) plus its own extras, so a sweep can build any network from one config section.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence

from torch import nn

from biasdecay.nn.models.mlp import MLP
from biasdecay.nn.models.resnet import ResNet18
from biasdecay.nn.models.resnet_d import ResNet50D
from biasdecay.nn.models.vgg import VGG, VGG_CONFIGS, min_input_size

__all__ = ["MODELS", "build_model", "model_names", "scale_width"]

_COMMON_ARGS = ("in_channels", "num_classes", "width", "image_size")


def scale_width(channels: int, width: float) -> int:
    """A hidden width scaled by the ``width`` multiplier: ``max(1, round(channels * width))``."""
    return max(1, round(channels * width))


def _scaled(channels: Sequence[int], width: float) -> tuple[int, ...]:
    return tuple(scale_width(c, width) for c in channels)


def _mlp(
    *,
    in_channels: int,
    num_classes: int,
    width: float,
    image_size: int,
    hidden_sizes: Sequence[int] = (512, 512),
    batch_norm: bool = False,
) -> MLP:
    in_features = in_channels * image_size * image_size
    return MLP(in_features, num_classes, _scaled(hidden_sizes, width), batch_norm=batch_norm)


def _resnet18(*, in_channels: int, num_classes: int, width: float, image_size: int) -> ResNet18:
    del image_size  # global average pooling accepts any size
    return ResNet18(in_channels, num_classes, _scaled((64, 128, 256, 512), width))


def _vgg(config: str, batch_norm: bool) -> Callable[..., VGG]:
    def build(*, in_channels: int, num_classes: int, width: float, image_size: int) -> VGG:
        scaled = [c if isinstance(c, str) else scale_width(c, width) for c in VGG_CONFIGS[config]]
        return VGG(scaled, in_channels, num_classes, batch_norm=batch_norm, image_size=image_size)

    return build


def _resnet50d(*, in_channels: int, num_classes: int, width: float, image_size: int) -> ResNet50D:
    del image_size  # global average pooling accepts any size
    return ResNet50D(
        in_channels,
        num_classes,
        stem_widths=_scaled((32, 32, 64), width),
        stage_widths=_scaled((64, 128, 256, 512), width),
    )


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "resnet18": _resnet18,
    "vgg11": _vgg("A", batch_norm=False),
    "vgg19_bn": _vgg("E", batch_norm=True),
    "resnet50d": _resnet50d,
}


def model_names() -> list[str]:
    """Names accepted by :func:`build_model`, in registry order."""
    return list(MODELS)


# Models whose feature stack needs a minimum input size (one halving per max-pool).
_MIN_IMAGE_SIZE = {
    "vgg11": min_input_size(VGG_CONFIGS["A"]),
    "vgg19_bn": min_input_size(VGG_CONFIGS["E"]),
}


def min_image_size(name: str) -> int:
    """Smallest input height/width model ``name`` accepts (1 when any size works).

    Data loaders pad smaller images (28x28 Fashion-MNIST for VGG) up to this size.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return _MIN_IMAGE_SIZE.get(name, 1)


def _check_count(name: str, value: object, minimum: int, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} ({meaning}); got {value!r}")


def _check_width(width: object) -> None:
    if (
        isinstance(width, bool)
        or not isinstance(width, numbers.Real)
        or not math.isfinite(width)
        or width <= 0
    ):
        raise ValueError(
            f"width must be a finite number > 0 (a multiplier of every hidden width; 1.0 is the "
            f"original network, 0.25 gives ResNet-18 with 16 base channels); got {width!r}"
        )


def _extra_args(builder: Callable[..., nn.Module]) -> list[str]:
    params = inspect.signature(builder).parameters
    return [p for p in params if p not in _COMMON_ARGS]


def build_model(
    name: str,
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    width: float = 1.0,
    image_size: int = 32,
    **kwargs: object,
) -> nn.Module:
    """Build a registered network.

    Args:
        name: one of :func:`model_names` (``mlp``, ``resnet18``, ``vgg11``, ``vgg19_bn``,
            ``resnet50d``).
        in_channels: channels of the input images (1 for MNIST-like data, 3 for CIFAR/ImageNet).
        num_classes: number of output logits.
        width: multiplier of every hidden width, ``channels = max(1, round(c * width))``; 1.0 is
            the original network.
        image_size: height/width of the inputs; sets the MLP's input features and is checked
            against VGG's minimum of 32.
        **kwargs: model-specific options: ``mlp`` takes ``hidden_sizes`` (before scaling by
            ``width``, default ``(512, 512)``) and ``batch_norm`` (default False).

    Returns:
        The freshly initialised model, in float32 and training mode.

    Raises:
        ValueError: unknown ``name``, or a non-positive ``width`` / ``num_classes`` /
            ``in_channels`` / ``image_size``.
        TypeError: keyword arguments the chosen model does not accept.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    _check_count("in_channels", in_channels, 1, "channels of the input images, e.g. 1 or 3")
    _check_count("num_classes", num_classes, 1, "number of output logits, e.g. 10")
    _check_count("image_size", image_size, 1, "height/width of the inputs in pixels, e.g. 32")
    _check_width(width)
    builder = MODELS[name]
    accepted = _extra_args(builder)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        options = ", ".join(accepted) if accepted else "none"
        raise TypeError(
            f"model {name!r} got unexpected keyword arguments: {', '.join(unknown)}; its options "
            f"are: {options} (common to all: {', '.join(_COMMON_ARGS)})"
        )
    return builder(
        in_channels=in_channels,
        num_classes=num_classes,
        width=width,
        image_size=image_size,
        **kwargs,
    )
