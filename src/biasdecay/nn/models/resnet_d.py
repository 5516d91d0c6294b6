"""ResNet-50-D (He et al., 2019, "Bag of Tricks"), the paper's ImageNet network (Appendix A)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from biasdecay.errors import InputError
from biasdecay.nn.models.resnet import StagedResNet

__all__ = ["Bottleneck", "ResNet50D"]


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU()]


def downsample_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """ResNet-D projection: average-pool to downsample, then a stride-1 ``conv1x1 -> BN``.

    The plain ResNet shortcut is a stride-2 1x1 conv, which ignores three quarters of its input;
    pooling first lets every activation reach the next stage. A stride-1 projection (channel
    change only) is just ``conv1x1 -> BN``.

    Args:
        in_channels: channels entering the shortcut.
        out_channels: channels leaving it.
        stride: 1 or the block's downsampling stride.

    Returns:
        ``Sequential([AvgPool2d], Conv2d 1x1, BatchNorm2d)``.
    """
    layers: list[nn.Module] = []
    if stride != 1:
        # ceil_mode keeps odd sizes in step with the padded stride-2 3x3 conv of the main path.
        layers.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
    layers += [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """Bottleneck block, ResNet-B/D style: the stride sits on the 3x3 conv, not the first 1x1.

    ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))`` with conv1 1x1
    (to ``width``), conv2 3x3 (stride), conv3 1x1 (to ``width * expansion``). The shortcut is
    :func:`downsample_shortcut` when the shape changes, the identity otherwise.

    Args:
        in_channels: channels of the block's input.
        width: channels of the 1x1 and 3x3 inner convolutions.
        stride: stride of the 3x3 convolution (and of the shortcut's pooling).
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = downsample_shortcut(in_channels, out_channels, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output, ``(B, width * 4, ceil(H / stride), ceil(W / stride))``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


class ResNet50D(StagedResNet):
    """ResNet-50-D: deep stem, ResNet-B bottlenecks and average-pool downsampling shortcuts.

    Stem: three ``conv3x3 -> BN -> ReLU`` (widths 32, 32, 64; the first has stride 2) then a 3x3
    stride-2 max-pool. Four stages of [3, 4, 6, 3] :class:`Bottleneck` blocks (inner widths 64,
    128, 256, 512, expansion 4; strides 1, 2, 2, 2), global average pooling and a linear
    classifier. With the default widths, 3 input channels and 1000 classes it has 25,576,264
    parameters.

    Submodules: ``stem`` (``0``..``8`` conv/BN/ReLU triples, then ``pool``), ``layer1`` ...
    ``layer4``, ``pool``, ``flatten``, ``fc``.

    Args:
        in_channels: channels of the input images.
        num_classes: number of output logits.
        stem_widths: channels of the three stem convolutions. The registry scales (32, 32, 64).
        stage_widths: inner widths of the four stages (outputs are 4x these). The registry scales
            (64, 128, 256, 512).
        blocks_per_stage: bottleneck blocks in each stage; (3, 4, 6, 3) is ResNet-50.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        stem_widths: Sequence[int] = (32, 32, 64),
        stage_widths: Sequence[int] = (64, 128, 256, 512),
        blocks_per_stage: Sequence[int] = (3, 4, 6, 3),
    ) -> None:
        super().__init__()
        if len(stem_widths) != 3:
            raise InputError(f"ResNet50D needs 3 stem widths, got {tuple(stem_widths)}")
        if len(stage_widths) != 4 or len(blocks_per_stage) != 4:
            raise InputError(
                f"ResNet50D needs 4 stage widths and 4 block counts, got {tuple(stage_widths)} "
                f"and {tuple(blocks_per_stage)}"
            )
        stem: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(stem_widths):
            stem += _conv_bn_relu(channels, width, stride=2 if i == 0 else 1)
            channels = width
        self.stem = nn.Sequential(*stem)
        self.stem.add_module("pool", nn.MaxPool2d(3, stride=2, padding=1))
        for stage, (width, n_blocks, stride) in enumerate(
            zip(stage_widths, blocks_per_stage, (1, 2, 2, 2), strict=True), start=1
        ):
            blocks = [Bottleneck(channels, width, stride)]
            channels = width * Bottleneck.expansion
            blocks += [Bottleneck(channels, width) for _ in range(n_blocks - 1)]
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self._finish(channels, num_classes)
