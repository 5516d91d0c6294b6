"""Both routes of per-sample conv weight gradients, against a one-sample loop in float64.

A conv layer's per-sample weight gradients are formed either by the backend's grouped
weight-gradient kernel (samples as groups) or by im2col and a batched matmul; which one depends
on the layer's shape (``conv_route``). Each layer below is chosen to exercise one route with one
kind of geometry, and the batch is longer than one chunk so that chunk boundaries are crossed.
"""

from __future__ import annotations

import pytest
import torch
from test_connectivity import naive_per_sample
from torch import nn

from biasdecay.sharpness import _per_sample
from biasdecay.sharpness._per_sample import GUARD_SAMPLES, conv_route
from biasdecay.sharpness.connectivity import connectivity_sharpness

# (layer, input shape of one sample, the route it must take)
LAYERS = {
    "grouped: plain 3x3": (lambda: nn.Conv2d(8, 6, 3, padding=1), (8, 5, 5), "grouped"),
    "grouped: stride 2, no bias": (
        lambda: nn.Conv2d(8, 6, 3, stride=2, padding=1, bias=False),
        (8, 7, 7),
        "grouped",
    ),
    "grouped: dilation, groups 2": (
        lambda: nn.Conv2d(16, 4, 3, padding=2, dilation=2, groups=2),
        (16, 6, 6),
        "grouped",
    ),
    "grouped: 'same', reflect": (
        lambda: nn.Conv2d(8, 3, (3, 4), padding="same", padding_mode="reflect"),
        (8, 6, 5),
        "grouped",
    ),
    "grouped: 1-D, stride 2": (lambda: nn.Conv1d(24, 5, 3, stride=2), (24, 11), "grouped"),
    "im2col: small fan-in": (lambda: nn.Conv2d(3, 4, 3, padding=1), (3, 5, 5), "im2col"),
    "im2col: depthwise": (lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6), (6, 5, 5), "im2col"),
    "im2col: 1-D 'same'": (lambda: nn.Conv1d(3, 4, 4, padding="same"), (3, 9), "im2col"),
    "im2col: large per-sample gradient": (
        lambda: nn.Conv2d(128, 128, 3, padding=1, bias=False),
        (128, 2, 2),
        "im2col",
    ),
}


class ConvHead(nn.Module):
    def __init__(self, conv: nn.Module, sample_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.conv = conv
        with torch.no_grad():
            features = conv(torch.zeros(1, *sample_shape)).numel()
        self.fc = nn.Linear(features, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def test_every_route_is_exercised() -> None:
    assert {route for _, _, route in LAYERS.values()} == {"grouped", "im2col"}


@pytest.mark.parametrize("small_chunks", [False, True])
@pytest.mark.parametrize("case", sorted(LAYERS))
def test_conv_route_matches_loop(case: str, small_chunks: bool, monkeypatch) -> None:
    if small_chunks:  # many chunks per batch, the guard's samples split across two of them
        monkeypatch.setattr(_per_sample, "_CHUNK_ELEMENTS", 1 << 10)
        monkeypatch.setattr(_per_sample, "_GROUPED_CHUNK_ELEMENTS", 1 << 10)
        monkeypatch.setattr(_per_sample, "_GROUPED_MAX_CHUNK", 5)
    build, shape, route = LAYERS[case]
    torch.manual_seed(0)
    model = ConvHead(build(), shape).double().eval()
    assert conv_route(model.conv) == route
    g = torch.Generator().manual_seed(1)
    # More samples than a grouped chunk (32) and than the guard's samples.
    batch = 37
    assert batch > GUARD_SAMPLES
    x = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (batch,), generator=g)
    report = connectivity_sharpness(model, [(x, y)], method="hooks", strict=True)
    expected = naive_per_sample(model, [(x, y)])
    assert report.paths["conv.weight"] == "hooks"
    for name, value in expected.items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name
