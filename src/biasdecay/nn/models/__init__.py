"""The paper's networks: MLP, ResNet-18 (CIFAR), VGG-11, VGG-19-BN and ResNet-50-D.

Build them by name with :func:`build_model`; :func:`model_names` lists the registry.
"""

from biasdecay.nn.models.mlp import MLP
from biasdecay.nn.models.registry import (
    MODELS,
    build_model,
    min_image_size,
    model_names,
    scale_width,
)
from biasdecay.nn.models.resnet import BasicBlock, ResNet18
from biasdecay.nn.models.resnet_d import Bottleneck, ResNet50D
from biasdecay.nn.models.vgg import VGG, VGG_CONFIGS

__all__ = [
    "MLP",
    "MODELS",
    "VGG",
    "VGG_CONFIGS",
    "BasicBlock",
    "Bottleneck",
    "ResNet18",
    "ResNet50D",
    "build_model",
    "min_image_size",
    "model_names",
    "scale_width",
]
