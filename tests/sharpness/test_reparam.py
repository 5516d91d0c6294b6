"""Reparameterisations: ρ_{c,l,k} of eq. 9 and BatchNorm folding keep the network function."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from biasdecay.nn.models import build_model
from biasdecay.sharpness.reparam import fold_batchnorm, rescale_neuron

THIN = 0.125


def _assert_same_function(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    # Relative to the output scale: a few logits may sit near zero.
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics, γ and β, so folding has something to get wrong."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, _BatchNorm):
                n = bn.num_features
                kw = {"generator": gen, "dtype": bn.running_mean.dtype}
                bn.running_mean.copy_(torch.randn(n, **kw) * 0.5)
                bn.running_var.copy_(torch.rand(n, **kw) * 1.5 + 0.5)
                bn.weight.copy_(torch.rand(n, **kw) + 0.5)
                bn.bias.copy_(torch.randn(n, **kw) * 0.5)


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---- rescale_neuron ------------------------------------------------------------------------


def test_rescale_mlp_linear_to_linear():
    torch.manual_seed(0)
    model = build_model("mlp", in_channels=1, image_size=8, width=1 / 16).double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    reference = model(x)
    before = _snapshot(model)
    rescale_neuron(model, "hidden.fc1", "hidden.fc2", 3, 7.5)
    _assert_same_function(model(x), reference, rtol=1e-10)
    assert _changed(before, model) == {"hidden.fc1.weight", "hidden.fc1.bias", "hidden.fc2.weight"}
    torch.testing.assert_close(model.hidden.fc1.weight[3], before["hidden.fc1.weight"][3] * 7.5)
    torch.testing.assert_close(model.hidden.fc1.weight[4], before["hidden.fc1.weight"][4])
    torch.testing.assert_close(
        model.hidden.fc2.weight[:, 3], before["hidden.fc2.weight"][:, 3] / 7.5
    )


@pytest.mark.parametrize("groups", [1, 2])
def test_rescale_conv_to_conv(groups):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, groups=groups),
        nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 2),
    ).double()  # fmt: skip
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    reference = model(x)
    before = _snapshot(model)
    rescale_neuron(model, model[0], model[3], 3, 0.2)
    _assert_same_function(model(x), reference, rtol=1e-10)
    assert _changed(before, model) == {"0.weight", "0.bias", "3.weight"}
    if groups == 2:  # input channel 3 belongs to the second group: the first group is untouched
        torch.testing.assert_close(model[3].weight[:3], before["3.weight"][:3], rtol=0, atol=0)


def test_rescale_batchnorm_to_conv_inside_resnet18():
    torch.manual_seed(0)
    model = build_model("resnet18", width=THIN).double()
    _randomise_batchnorm(model)
    model.eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    reference = model(x)
    before = _snapshot(model)
    block = model.layer2[1]
    rescale_neuron(model, block.bn1, "layer2.1.conv2", 5, 3.0)
    _assert_same_function(model(x), reference, rtol=1e-10)
    assert _changed(before, model) == {
        "layer2.1.bn1.weight",
        "layer2.1.bn1.bias",
        "layer2.1.conv2.weight",
    }


@pytest.mark.parametrize("pooled", [False, True])
def test_rescale_conv_to_linear_after_flatten(pooled):
    torch.manual_seed(0)
    pool = nn.AdaptiveAvgPool2d(1) if pooled else nn.Identity()
    fan_in = 4 if pooled else 4 * 6 * 6
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), pool, nn.Flatten(), nn.Linear(fan_in, 3)
    ).double()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    reference = model(x)
    before = _snapshot(model)
    rescale_neuron(model, "0", "4", 2, 11.0)
    _assert_same_function(model(x), reference, rtol=1e-10)
    span = fan_in // 4
    columns = slice(2 * span, 3 * span)
    torch.testing.assert_close(model[4].weight[:, columns], before["4.weight"][:, columns] / 11.0)
    torch.testing.assert_close(model[4].weight[:, : 2 * span], before["4.weight"][:, : 2 * span])


@pytest.mark.parametrize("c", [0.0, -1.0, float("inf"), float("nan")])
def test_rescale_rejects_non_positive_or_non_finite_c(c):
    model = build_model("mlp", in_channels=1, image_size=4, width=1 / 64)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="c must be a finite number > 0"):
        rescale_neuron(model, "hidden.fc1", "hidden.fc2", 0, c)
    assert not _changed(before, model)


@pytest.mark.parametrize("index", [8, -1])
def test_rescale_rejects_index_out_of_range(index):
    model = build_model("mlp", in_channels=1, image_size=4, width=1 / 64)  # 8 hidden units
    with pytest.raises(ValueError, match=r"out of range.*0 <= index < 8"):
        rescale_neuron(model, "hidden.fc1", "hidden.fc2", index, 2.0)


def test_rescale_rejects_mismatched_shapes_unsupported_types_and_unknown_names():
    model = build_model("mlp", in_channels=1, image_size=4, width=1 / 64)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="in_features=16"):  # fc1 -> fc1: 16 inputs, 8 outputs
        rescale_neuron(model, "hidden.fc1", "hidden.fc1", 0, 2.0)
    assert not _changed(before, model)  # nothing is half-applied
    with pytest.raises(ValueError, match="ReLU.*supported"):
        rescale_neuron(model, "hidden.relu1", "hidden.fc2", 0, 2.0)
    with pytest.raises(ValueError, match="not a submodule"):
        rescale_neuron(model, "hidden.fc9", "hidden.fc2", 0, 2.0)
    with pytest.raises(ValueError, match="not a submodule"):
        rescale_neuron(model, nn.Linear(2, 2), "hidden.fc2", 0, 2.0)


# ---- fold_batchnorm ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "size", "extra"),
    [
        ("resnet18", 16, {}),
        ("vgg19_bn", 32, {}),
        ("resnet50d", 28, {}),
        ("mlp", 6, {"batch_norm": True}),
    ],
)
def test_fold_batchnorm_preserves_eval_function(name, size, extra):
    torch.manual_seed(0)
    model = build_model(name, width=THIN, image_size=size, **extra).double()
    _randomise_batchnorm(model)
    model.eval()
    before = _snapshot(model)
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    folded = fold_batchnorm(model)
    assert type(folded) is type(model)
    assert not any(isinstance(m, _BatchNorm) for m in folded.modules())
    _assert_same_function(folded(x), model(x), rtol=1e-9)
    assert not _changed(before, model)  # the input model is untouched
    assert any(isinstance(m, _BatchNorm) for m in model.modules())


def test_fold_batchnorm_adds_bias_and_keeps_dtype():
    torch.manual_seed(0)
    model = build_model("resnet18", width=THIN)
    _randomise_batchnorm(model)
    model.eval()
    assert model.stem.conv.bias is None
    folded = fold_batchnorm(model)
    assert folded.stem.conv.bias is not None and folded.stem.conv.bias.dtype == torch.float32
    assert isinstance(folded.stem.bn, nn.Identity)
    x = torch.randn(2, 3, 16, 16)
    _assert_same_function(folded(x), model(x), rtol=1e-4)


def test_fold_batchnorm_rejects_pre_activation():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match=r"BatchNorm '0'.*pre-activation"):
        fold_batchnorm(model)
    after_relu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"BatchNorm '2'.*ReLU"):
        fold_batchnorm(after_relu)


class _ConvUsedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.bn(self.conv(x))
        return x


def test_fold_batchnorm_rejects_shared_output_and_untraceable_models():
    with pytest.raises(ValueError, match=r"BatchNorm 'bn'.*'conv' is also used elsewhere"):
        fold_batchnorm(_ConvUsedTwice())
    with pytest.raises(ValueError, match="fx-traceable"):
        fold_batchnorm(_Untraceable())


@pytest.mark.parametrize("name", ["resnet18", "vgg11", "vgg19_bn", "resnet50d", "mlp"])
def test_every_rescalable_pair_preserves_the_function(name) -> None:
    from biasdecay.sharpness.reparam import rescalable_pairs

    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=5, width=0.0625, image_size=32).double()
    model.eval()
    for m in model.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, _BatchNorm):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2), m.bias.data.uniform_(-1, 1)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    if name == "mlp":
        x = x.flatten(1)[:, : model.hidden.fc1.in_features]
    pairs = rescalable_pairs(model)
    assert pairs
    reference = model(x)
    for incoming, outgoing in pairs:
        copy_ = copy.deepcopy(model)
        with torch.no_grad():
            rescale_neuron(copy_, incoming, outgoing, 0, 7.0)
        torch.testing.assert_close(copy_(x), reference, rtol=1e-10, atol=1e-10)


def test_rescalable_pairs_skip_activations_a_residual_branch_also_reads() -> None:
    from biasdecay.sharpness.reparam import rescalable_pairs

    model = build_model("resnet18", in_channels=3, num_classes=5, width=0.0625, image_size=32)
    pairs = rescalable_pairs(model)
    assert ("layer1.0.bn1", "layer1.0.conv2") in pairs
    # bn2's output meets the shortcut in the residual sum; the stem's ReLU feeds two branches.
    assert all(not a.endswith("bn2") and a != "stem.bn" for a, _ in pairs)
