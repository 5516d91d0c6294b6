"""ResNet-18 with the CIFAR stem (He et al., 2016), the paper's main CIFAR network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from biasdecay.errors import InputError

__all__ = ["BasicBlock", "ResNet18", "init_conv_weights"]


def init_conv_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) conv weights, zero conv biases; norms keep γ = 1, β = 0.

    Shared by every conv model of the registry. Linear layers keep PyTorch's default
    initialisation.

    Args:
        model: the network to initialise in place.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with "same" padding and no bias (a BatchNorm follows and supplies β)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or projection shortcut (post-activation).

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is ``conv1x1 -> BN``
    when the stride or the channel count changes, the identity otherwise.

    Args:
        in_channels: channels of the block's input.
        out_channels: channels of both convolutions and of the output.
        stride: stride of the first convolution (and of the projection shortcut).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output, ``(B, out_channels, H / stride, W / stride)``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class StagedResNet(nn.Module):
    """What every ResNet here shares: ``stem``, ``layer1`` ... ``layer4``, then a pooled head.

    Subclasses build ``stem`` and the four stages, then call :meth:`_finish`.
    """

    def _finish(self, channels: int, num_classes: int) -> None:
        """Global average pooling, a linear classifier with bias, and the conv initialisation."""
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        init_conv_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, ``(B, num_classes)``, for images ``(B, in_channels, H, W)``."""
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.fc(self.flatten(self.pool(x)))


class ResNet18(StagedResNet):
    """ResNet-18 for small images (CIFAR stem: one 3x3 stride-1 conv, no max-pool).

    ``conv3x3 -> BN -> ReLU``, four stages of two :class:`BasicBlock` (strides 1, 2, 2, 2), global
    average pooling and a linear classifier with bias. Global pooling makes any input of at
    least 8x8 work (28x28 MNIST-like and 32x32 CIFAR included). With the default widths and
    3 input channels, 10 classes it has 11,173,962 parameters.

    Submodules: ``stem`` (``conv``, ``bn``, ``relu``), ``layer1`` ... ``layer4`` (Sequentials of
    blocks), ``pool``, ``flatten``, ``fc``.

    Args:
        in_channels: channels of the input images.
        num_classes: number of output logits.
        stage_widths: channels of the four stages; the stem has ``stage_widths[0]``. The registry
            scales ``(64, 128, 256, 512)`` by its ``width`` multiplier.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        stage_widths: Sequence[int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        if len(stage_widths) != 4:
            raise InputError(f"ResNet18 needs 4 stage widths, got {tuple(stage_widths)}")
        self.stem = nn.Sequential()
        self.stem.add_module("conv", conv3x3(in_channels, stage_widths[0]))
        self.stem.add_module("bn", nn.BatchNorm2d(stage_widths[0]))
        self.stem.add_module("relu", nn.ReLU())
        channels = stage_widths[0]
        for stage, (width, stride) in enumerate(
            zip(stage_widths, (1, 2, 2, 2), strict=True), start=1
        ):
            blocks = nn.Sequential(BasicBlock(channels, width, stride), BasicBlock(width, width))
            self.add_module(f"layer{stage}", blocks)
            channels = width
        self._finish(channels, num_classes)
