"""Multi-layer perceptron: the network of the paper's analysis (Section 3, eq. 1)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs, eq. 1 of the paper.

    Each hidden layer is ``Linear -> ReLU`` (or ``Linear -> BatchNorm1d -> ReLU`` with
    ``batch_norm=True``); a final ``Linear`` gives the logits. ReLU is positively homogeneous
    (eq. 2), so the reparameterisation of eq. 9 leaves the function unchanged.

    Submodule names are stable so they can be passed to ``rescale_neuron`` by name:
    ``hidden.fc1``, ``hidden.bn1``, ``hidden.relu1``, ..., ``classifier``.

    Args:
        in_features: number of input features after flattening (``C * H * W`` for images).
        num_classes: number of output logits.
        hidden_sizes: width of every hidden layer, input side first.
        batch_norm: insert a ``BatchNorm1d`` between each hidden ``Linear`` and its ReLU.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_sizes: Sequence[int] = (512, 512),
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        fan_in = in_features
        for i, size in enumerate(hidden_sizes, start=1):
            layers[f"fc{i}"] = nn.Linear(fan_in, size)
            if batch_norm:
                layers[f"bn{i}"] = nn.BatchNorm1d(size)
            layers[f"relu{i}"] = nn.ReLU()
            fan_in = size
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(layers)
        self.classifier = nn.Linear(fan_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(batch, num_classes)`` for inputs of shape ``(batch, ...)``."""
        return self.classifier(self.hidden(self.flatten(x)))
