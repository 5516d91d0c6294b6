"""VGG networks (Simonyan & Zisserman, 2015) in the CIFAR variant used by large-batch papers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from biasdecay.errors import InputError
from biasdecay.nn.models.resnet import init_conv_weights

__all__ = ["POOL", "VGG", "VGG_CONFIGS", "min_input_size"]

POOL = "M"  # a 2x2 stride-2 max-pool in a feature configuration

# Channel configurations of the original paper's Table 1 (A = VGG-11, E = VGG-19).
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    "E": (
        *(64, 64, POOL, 128, 128, POOL),
        *(256, 256, 256, 256, POOL),
        *(512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL),
    ),
}


def min_input_size(config: Sequence[int | str]) -> int:
    """Smallest height/width the feature stack accepts: each max-pool halves it (floor)."""
    return 2 ** sum(1 for item in config if item == POOL)


def _too_small(height: int, width: int, min_size: int) -> ValueError:
    return ValueError(
        f"VGG needs inputs of at least {min_size}x{min_size} (one halving per max-pool), got "
        f"{height}x{width}; pad the inputs to {min_size}x{min_size} (`biasdecay train`: "
        f"data.pad_to = {min_size}, or none to pad automatically; in code: DeviceLoader's "
        "pad_to). 28x28 MNIST-like images need 2 pixels on each side"
    )


@torch.fx.wrap  # recorded as one call in fx graphs instead of traced (its `if` needs real sizes)
def _require_min_size(x: torch.Tensor, min_size: int) -> torch.Tensor:
    height, width = x.shape[-2], x.shape[-1]
    if height < min_size or width < min_size:
        raise _too_small(height, width, min_size)
    return x


class VGG(nn.Module):
    """VGG feature stack with a CIFAR head: global average pool and one linear layer.

    Features follow the original configurations: 3x3 convolutions *with bias* (as in the
    original), each followed by ReLU, or by BatchNorm then ReLU when ``batch_norm`` is set
    (VGG-19-BN keeps the conv bias too, as torchvision and the BN paper's VGGs do), and 2x2
    max-pools. The classifier is ``AdaptiveAvgPool2d(1) -> flatten -> Linear(channels,
    num_classes)``: the CIFAR variant used in large-batch papers, *not* the ImageNet head of three
    4096-wide layers. Five max-pools mean inputs must be at least 32x32; smaller inputs raise a
    ``ValueError`` asking to pad them (checked at build time via ``image_size`` and in forward).

    Submodules: ``features`` (``conv1``, ``bn1``, ``relu1``, ``pool1``, ...), ``pool``,
    ``flatten``, ``classifier``.

    Args:
        config: channel counts of the conv layers, with :data:`POOL` (``"M"``) for each max-pool;
            see :data:`VGG_CONFIGS`.
        in_channels: channels of the input images.
        num_classes: number of output logits.
        batch_norm: put a ``BatchNorm2d`` between every conv and its ReLU (the "-BN" variants).
        image_size: height/width of the inputs the model will see; checked against the minimum.
    """

    def __init__(
        self,
        config: Sequence[int | str],
        in_channels: int = 3,
        num_classes: int = 10,
        batch_norm: bool = False,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        self.min_input_size = min_input_size(config)
        if image_size < self.min_input_size:
            raise _too_small(image_size, image_size, self.min_input_size)
        self.features = nn.Sequential()
        channels, n_conv, n_pool = in_channels, 0, 0
        for item in config:
            if item == POOL:
                n_pool += 1
                self.features.add_module(f"pool{n_pool}", nn.MaxPool2d(2, 2))
                continue
            n_conv += 1
            self.features.add_module(f"conv{n_conv}", nn.Conv2d(channels, item, 3, padding=1))
            if batch_norm:
                self.features.add_module(f"bn{n_conv}", nn.BatchNorm2d(item))
            self.features.add_module(f"relu{n_conv}", nn.ReLU())
            channels = item
        if n_conv == 0:
            raise InputError(f"VGG config {tuple(config)} has no conv layer")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, ``(B, num_classes)``, for images ``(B, in_channels, H, W)`` with H, W >= 32."""
        x = _require_min_size(x, self.min_input_size)
        return self.classifier(self.flatten(self.pool(self.features(x))))
