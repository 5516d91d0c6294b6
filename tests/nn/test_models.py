"""Model registry: shapes, exact parameter counts, init, float64, fx tracing and argument errors."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from biasdecay.nn.models import MODELS, build_model, model_names, scale_width

THIN = 0.125  # 8 base channels for ResNet-18: every test stays a few milliseconds per forward


def _input_size(name: str) -> int:
    return 32 if name.startswith("vgg") else 28


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _count_on_meta(name: str, **kwargs) -> int:
    # Meta tensors have shapes but no storage: full-width models are counted without allocating.
    with torch.device("meta"):
        return _n_params(build_model(name, **kwargs))


# ---- hand counts from the architecture definitions -----------------------------------------


def _conv(c_in: int, c_out: int, k: int, bias: bool) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def _bn(c: int) -> int:
    return 2 * c  # γ and β


def _linear(f_in: int, f_out: int) -> int:
    return f_in * f_out + f_out


def _vgg_count(config: list, batch_norm: bool, in_channels: int, num_classes: int) -> int:
    total, c = 0, in_channels
    for item in config:
        if item == "M":
            continue
        total += _conv(c, item, 3, bias=True) + (_bn(item) if batch_norm else 0)
        c = item
    return total + _linear(c, num_classes)


def _resnet50d_count(in_channels: int, num_classes: int) -> int:
    total = _conv(in_channels, 32, 3, False) + _conv(32, 32, 3, False) + _conv(32, 64, 3, False)
    total += _bn(32) + _bn(32) + _bn(64)
    c = 64
    for width, n_blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        for b in range(n_blocks):
            out = 4 * width
            total += _conv(c, width, 1, False) + _bn(width)
            total += _conv(width, width, 3, False) + _bn(width)
            total += _conv(width, out, 1, False) + _bn(out)
            if b == 0:  # projection shortcut (the avg-pool has no parameters)
                total += _conv(c, out, 1, False) + _bn(out)
            c = out
    return total + _linear(c, num_classes)


VGG_A = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
VGG_E = [64, 64, "M", 128, 128, "M"] + [256] * 4 + ["M"] + ([512] * 4 + ["M"]) * 2


def test_registry_names():
    assert model_names() == ["mlp", "resnet18", "vgg11", "vgg19_bn", "resnet50d"]
    assert list(MODELS) == model_names()


def test_resnet18_exact_parameter_count():
    assert _count_on_meta("resnet18", in_channels=3, num_classes=10) == 11_173_962


def test_vgg_and_resnet50d_parameter_counts_match_hand_counts():
    assert _vgg_count(VGG_A, False, 3, 10) == 9_225_610
    assert _vgg_count(VGG_E, True, 3, 10) == 20_040_522
    assert _resnet50d_count(3, 1000) == 25_576_264  # the well-known ≈ 25.6M of ResNet-50-D
    assert _count_on_meta("vgg11") == 9_225_610
    assert _count_on_meta("vgg19_bn") == 20_040_522
    assert _count_on_meta("resnet50d", num_classes=1000) == 25_576_264
    assert _count_on_meta("resnet50d", in_channels=1, num_classes=10) == _resnet50d_count(1, 10)


def test_mlp_parameter_count_and_width():
    n = _count_on_meta("mlp", in_channels=1, image_size=28, width=0.5)
    assert n == _linear(784, 256) + _linear(256, 256) + _linear(256, 10)
    n_bn = _count_on_meta("mlp", in_channels=1, image_size=28, width=0.5, batch_norm=True)
    assert n_bn == n + 2 * _bn(256)


def test_width_multiplier_scales_every_hidden_width():
    model = build_model("resnet18", width=0.25)
    assert model.stem.conv.out_channels == 16
    assert model.fc.in_features == 128
    assert scale_width(64, 0.001) == 1


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_shape(name, in_channels):
    size = _input_size(name)
    model = build_model(name, in_channels=in_channels, num_classes=7, width=THIN, image_size=size)
    out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name", model_names())
def test_norm_layers_start_at_unit_gamma_zero_beta(name):
    extra = {"batch_norm": True} if name == "mlp" else {}
    model = build_model(name, width=THIN, image_size=_input_size(name), **extra)
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if name != "vgg11":  # VGG-11 (config A) has no BatchNorm, as in the original
        assert norms
    for bn in norms:
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


@pytest.mark.parametrize("name", model_names())
def test_float64_and_fx_trace(name):
    size = _input_size(name)
    model = build_model(name, width=THIN, image_size=size).double().eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    out = model(x)
    assert out.dtype == torch.float64
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), out, rtol=0, atol=0)


def test_vgg_batch_norm_placement_and_conv_bias():
    vgg11 = build_model("vgg11", width=THIN)
    vgg19 = build_model("vgg19_bn", width=THIN)
    assert not any(isinstance(m, _BatchNorm) for m in vgg11.modules())
    convs19 = [m for m in vgg19.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs19) == 16 and all(c.bias is not None for c in convs19)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in vgg19.modules()) == 16


def test_resnet50d_shortcuts_pool_then_project():
    model = build_model("resnet50d", width=THIN)
    down = model.layer2[0].shortcut
    assert isinstance(down[0], nn.AvgPool2d) and down[0].ceil_mode
    assert down[1].stride == (1, 1) and down[1].kernel_size == (1, 1)
    assert model.layer2[0].conv2.stride == (2, 2)  # ResNet-B: stride on the 3x3
    assert model.layer2[0].conv1.stride == (1, 1)
    assert isinstance(model.layer1[0].shortcut[0], nn.Conv2d)  # stride-1 projection: no pool


@pytest.mark.parametrize("name", ["vgg11", "vgg19_bn"])
def test_vgg_rejects_inputs_below_32(name):
    with pytest.raises(ValueError, match=r"28x28.*pad"):
        build_model(name, width=THIN, image_size=28)
    model = build_model(name, width=THIN)
    with pytest.raises(ValueError, match=r"at least 32x32.*pad"):
        model(torch.randn(1, 3, 28, 28))


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet19'") as info:
        build_model("resnet19")
    for name in model_names():
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("argument", "value"),
    [("width", 0.0), ("width", -1.0), ("width", float("nan")), ("num_classes", 0),
     ("in_channels", 0), ("image_size", 0), ("in_channels", 1.5)],
)  # fmt: skip
def test_bad_numbers_name_the_argument(argument, value):
    with pytest.raises(ValueError, match=argument):
        build_model("resnet18", **{argument: value})


def test_unknown_kwargs_are_named():
    with pytest.raises(TypeError, match="dropout") as info:
        build_model("resnet18", dropout=0.1)
    assert "in_channels" in str(info.value)
    with pytest.raises(TypeError, match="depth") as info:
        build_model("mlp", depth=3)
    assert "hidden_sizes" in str(info.value) and "batch_norm" in str(info.value)
