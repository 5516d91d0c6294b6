"""Eval-mode BatchNorm and GroupNorm layers whose backward forms their per-sample γ and β
gradients (biasdecay.sharpness._fused_norm): the kernels against float64 and autograd, and
per-sample C through them against the one-sample loop, on the shapes and graphs they meet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_connectivity import make_batches, naive_per_sample, randomise_norms
from torch import nn

from biasdecay import roles
from biasdecay.sharpness import _fused_norm, _native
from biasdecay.sharpness.connectivity import connectivity_sharpness

# Without the kernels (no compiler, BIASDECAY_NATIVE=0) the models below are still measured,
# by the unfused formulas, and must still equal the loop.
FUSED = _native.unavailable() is None
needs_kernel = pytest.mark.skipif(
    _native.unavailable() is not None, reason=f"no native kernel here: {_native.unavailable()}"
)


TOLERANCE = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
}
SHAPES = [(5, 4), (4, 4, 7), (3, 4, 5, 6), (2, 4, 32)]  # partial vectors, one position, whole


def per_plane(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(2).sum(2)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("input_gradient", [True, False])
def test_batch_norm_kernel_matches_float64(dtype, shape, input_gradient) -> None:
    g = torch.Generator().manual_seed(len(shape))
    C = shape[1]
    d, x = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(2))
    mean, scale = (torch.randn(C, generator=g, dtype=dtype) for _ in range(2))
    grad_in, sum_d, sum_dx = _native.batch_norm_backward(d, x, mean, scale, input_gradient)
    view = (1, C) + (1,) * (len(shape) - 2)
    d64, x64 = d.double(), x.double()
    tol = TOLERANCE[dtype]
    assert sum_d.dtype == sum_dx.dtype == torch.float64
    assert torch.allclose(sum_d, per_plane(d64.unsqueeze(-1)), **tol)
    assert torch.allclose(
        sum_dx, per_plane((d64 * (x64 - mean.double().view(view))).unsqueeze(-1)), **tol
    )
    if input_gradient:
        assert grad_in.dtype == dtype
        assert torch.allclose(grad_in.double(), d64 * scale.double().view(view), **tol)
    else:
        assert grad_in is None


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_group_norm_kernel_matches_autograd_in_float64(dtype, shape, groups) -> None:
    """The input gradient against autograd's through F.group_norm in float64, the sums against
    their definition; statistics from the forward, of an input far from zero mean."""
    g = torch.Generator().manual_seed(len(shape) + groups)
    N, C = shape[:2]
    x = 3.0 + torch.randn(shape, generator=g, dtype=torch.float64)
    d = torch.randn(shape, generator=g, dtype=torch.float64)
    gamma = 1 + 0.5 * torch.randn(C, generator=g, dtype=torch.float64)
    _, mean, rstd = torch.native_group_norm(x, None, None, N, C, x[0, 0].numel(), groups, 1e-5)
    xr = x.clone().requires_grad_(True)
    F.group_norm(xr, groups, gamma, None, 1e-5).backward(d)
    cast = [t.to(dtype) for t in (d, x, mean, rstd, gamma)]
    grad_in, sum_d, sum_dx = _native.group_norm_backward(*cast, True)
    tol = TOLERANCE[dtype]
    centred = x - mean.repeat_interleave(C // groups, 1).view(N, C, *(1,) * (len(shape) - 2))
    assert torch.allclose(sum_d, per_plane(d.unsqueeze(-1)), **tol)
    assert torch.allclose(sum_dx, per_plane((d * centred).unsqueeze(-1)), **tol)
    # Its terms (size δ γ rstd) cancel to far less in small groups: float32 rounds them.
    terms = d.abs().max() * gamma.abs().max() * rstd.max()
    atol = tol["atol"] if dtype == torch.float64 else 1e-6 * float(terms)
    assert torch.allclose(grad_in.double(), xr.grad, rtol=tol["rtol"], atol=atol)
    assert _native.group_norm_backward(*cast, False)[0] is None


@needs_kernel
def test_kernels_refuse_what_they_cannot_read() -> None:
    d, x = torch.randn(4, 6, 5), torch.randn(4, 6, 5)
    mean, scale = torch.zeros(6), torch.ones(6)
    for bad in (
        (d.transpose(1, 2), x.transpose(1, 2), mean, scale),  # not contiguous
        (d, x, torch.zeros(4), scale),  # one mean per channel
        (d, x.double(), mean, scale),  # one dtype
        (d, x[:2], mean, scale),  # one shape
    ):
        with pytest.raises(ValueError, match="batch_norm_backward"):
            _native.batch_norm_backward(*bad, True)
    stats = torch.zeros(4, 3)
    for bad in (
        (d, x, stats, stats, torch.ones(5)),  # one γ per channel
        (d, x, torch.zeros(4, 4), torch.zeros(4, 4), scale),  # groups that do not divide C
        (d, x, torch.zeros(3, 3), torch.zeros(3, 3), scale),  # one row per sample
        (d, x, stats.t().contiguous().t(), stats, scale),  # not contiguous
    ):
        with pytest.raises(ValueError, match="group_norm_backward"):
            _native.group_norm_backward(*bad, True)


def count_fused(monkeypatch) -> list[str]:
    """Calls of the fused backwards' kernels, named."""
    calls = []

    def spy(kernel, real):
        def counted(*args):
            calls.append(kernel)
            return real(*args)

        return counted

    for kernel in ("batch_norm_backward", "group_norm_backward", "layer_norm_backward"):
        monkeypatch.setattr(_native, kernel, spy(kernel, getattr(_native, kernel)))
    return calls


def measure_against_the_loop(monkeypatch, model: nn.Module, shape, frozen) -> list[str]:
    """Per-sample C of ``model`` (float64, eval, its norm layers randomised, their ``frozen``
    parameter frozen) equals the one-sample loop to 1e-10, and in float32 the guard passes
    every parameter; returns the fused kernels called, per batch."""
    calls = count_fused(monkeypatch)
    model = model.double().eval()
    randomise_norms(model)
    if frozen is not None:
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                if getattr(m, frozen) is not None:
                    getattr(m, frozen).requires_grad_(False)
    batches = make_batches(shape, 3, [5, 3])
    report = connectivity_sharpness(model, batches, strict=True)
    per_batch = calls[: len(calls) // len(batches)]
    assert calls == per_batch * len(batches)
    expected = naive_per_sample(model, batches)
    assert set(report.by_parameter) == set(expected)
    for name, value in expected.items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name
    model.float()
    report = connectivity_sharpness(model, [(x.float(), y) for x, y in batches], strict=True)
    assert set(report.paths.values()) == {"hooks"}  # float32: the guard sees no error either
    return per_batch


class Block(nn.Module):
    """Conv, BN, in-place ReLU, a shortcut that reads the BN's input too, and a BatchNorm1d on
    (B, C) and on (B, C, L)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)
        self.seq = nn.Conv1d(4, 3, 1)
        self.bn_seq = nn.BatchNorm1d(3)
        self.bn_flat = nn.BatchNorm1d(3)
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        h = self.conv(x)
        h = self.relu(self.bn(h)) + h  # the BN's input is also the shortcut
        h = self.bn2(self.conv2(h) + 1.0)  # its input comes from an add, not a layer
        s = self.bn_seq(self.seq(h.flatten(2)))
        return self.fc(self.bn_flat(torch.tanh(s).mean(2)))


@pytest.mark.parametrize("frozen", [None, "weight", "bias"])
def test_fused_batch_norm_equals_the_loop(monkeypatch, frozen) -> None:
    torch.manual_seed(0)
    calls = measure_against_the_loop(monkeypatch, Block(), (2, 5, 5), frozen)
    assert calls == ["batch_norm_backward"] * 4 * FUSED  # each of them, each batch


def test_a_batch_norm_on_the_input_itself_is_not_fused(monkeypatch) -> None:
    """Nothing below it needs its input gradient: its terms come from its output's gradient."""
    calls = count_fused(monkeypatch)
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 9, 3)).double().eval()
    randomise_norms(model)
    batches = make_batches((2, 3, 3), 3, [4])
    report = connectivity_sharpness(model, batches, strict=True)
    assert calls == []
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


class ShiftedBatchNorm(nn.BatchNorm2d):
    """A subclass registered as a standard BatchNorm whose forward is not: its output is not
    the standard kernel's, so it must not be fused (and the guard must still catch it)."""

    def forward(self, x):
        return super().forward(x) * 2.0


@pytest.fixture
def shifted_registered():
    roles.register_module_type(ShiftedBatchNorm, "norm", "batch_norm")
    yield
    del roles._MODULE_TYPES[ShiftedBatchNorm]


def test_a_batch_norm_whose_output_is_not_the_kernels_is_left_to_the_guard(
    monkeypatch, shifted_registered
) -> None:
    calls = count_fused(monkeypatch)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), ShiftedBatchNorm(3), nn.Flatten(), nn.Linear(3, 3)
    ).double()
    model.eval()
    randomise_norms(model)
    batches = make_batches((2, 3, 3), 3, [4])
    report = connectivity_sharpness(model, batches)
    assert calls == []
    assert report.paths["1.weight"] == "vmap" and report.paths["1.bias"] == "vmap"
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


def test_a_batch_norm_in_training_mode_is_not_fused() -> None:
    bn = nn.BatchNorm2d(3)
    a = torch.randn(4, 3, 2, 2, requires_grad=True) * 1.0
    assert _fused_norm.fused_backward(bn, a, bn(a), 4) is None  # training: batch statistics
    bn.eval()
    out = bn(a)
    assert _fused_norm.fused_backward(bn, a, out, 5) is None  # not one row per sample
    assert _fused_norm.fused_backward(bn, a, out.detach() * 1.0, 4) is None  # not its output
    expected = None if _native.unavailable(a) is not None else callable
    assert (_fused_norm.fused_backward(bn, a, out, 4) is None) == (expected is None)


class GroupNormBlock(nn.Module):
    """GroupNorm on (B, C, H, W) after a conv, on (B, C, L) after an add, on (B, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.gn = nn.GroupNorm(3, 6)
        self.gn_seq = nn.GroupNorm(2, 6)
        self.gn_flat = nn.GroupNorm(1, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.gn(self.conv(x)))
        s = self.gn_seq(h.flatten(2) + 2.0)
        return self.fc(self.gn_flat(torch.tanh(s).mean(2)))


@pytest.mark.parametrize("frozen", [None, "weight", "bias"])
def test_fused_group_norm_equals_the_loop(monkeypatch, frozen) -> None:
    torch.manual_seed(0)
    calls = measure_against_the_loop(monkeypatch, GroupNormBlock(), (2, 5, 5), frozen)
    assert calls == ["group_norm_backward"] * 3 * FUSED


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("shape", "normalized"),
    [((4, 3, 5), (5,)), ((4, 2, 32), (32,)), ((3, 37), (37,)), ((3, 2, 4, 5), (4, 5))],
    ids=["partial-vector", "whole-vectors", "one-row", "two-dims"],
)
def test_layer_norm_kernel_matches_autograd_in_float64(dtype, shape, normalized) -> None:
    g = torch.Generator().manual_seed(len(shape))
    x = 2.0 + torch.randn(shape, generator=g, dtype=torch.float64)
    d = torch.randn(shape, generator=g, dtype=torch.float64)
    gamma = 1 + 0.5 * torch.randn(normalized, generator=g, dtype=torch.float64)
    _, mean, rstd = torch.native_layer_norm(x, normalized, None, None, 1e-5)
    xr = x.clone().requires_grad_(True)
    F.layer_norm(xr, normalized, gamma, None, 1e-5).backward(d)
    cast = [t.to(dtype) for t in (d, x, mean, rstd, gamma)]
    grad_in, g_gamma, g_beta = _native.layer_norm_backward(*cast, True)
    tol = TOLERANCE[dtype]
    rows = tuple(range(1, len(shape) - len(normalized)))
    x_hat = (x - mean) * rstd
    per_sample = (shape[0], -1)
    assert g_gamma.dtype == g_beta.dtype == dtype
    expect_gamma = (d * x_hat).sum(rows) if rows else d * x_hat
    expect_beta = d.sum(rows) if rows else d
    assert torch.allclose(g_gamma.double(), expect_gamma.reshape(per_sample), **tol)
    assert torch.allclose(g_beta.double(), expect_beta.reshape(per_sample), **tol)
    assert torch.allclose(grad_in.double(), xr.grad, **tol)
    assert _native.layer_norm_backward(*cast, False)[0] is None


@needs_kernel
def test_the_layer_norm_kernel_refuses_what_it_cannot_read() -> None:
    d, x = torch.randn(4, 3, 6), torch.randn(4, 3, 6)
    stats = torch.zeros(4, 3, 1)
    for bad in (
        (d, x, stats, stats, torch.ones(5)),  # γ that does not tile the rows
        (d, x, torch.zeros(4, 2, 1), stats, torch.ones(6)),  # one mean per row
        (d.transpose(1, 2), x.transpose(1, 2), stats, stats, torch.ones(3)),  # not contiguous
        (d, x, stats, stats, torch.ones(6, dtype=torch.float64)),  # one dtype
    ):
        with pytest.raises(ValueError, match="layer_norm_backward"):
            _native.layer_norm_backward(*bad, True)


class Transformerish(nn.Module):
    """LayerNorm on the model's input (not fused), on a residual stream, without a bias, and
    over two dims."""

    def __init__(self) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(6)
        self.fc1, self.fc2 = nn.Linear(6, 6), nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.norm_nobias = nn.LayerNorm(6, bias=False)
        self.norm_2d = nn.LayerNorm((4, 6))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.fc1(self.norm_in(x))
        h = h + self.fc2(torch.tanh(self.norm(h)))
        h = self.norm_2d(self.norm_nobias(h) * 1.5)
        return self.head(h.mean(1))


@pytest.mark.parametrize("frozen", [None, "weight", "bias"])
def test_fused_layer_norm_equals_the_loop(monkeypatch, frozen) -> None:
    torch.manual_seed(0)
    calls = measure_against_the_loop(monkeypatch, Transformerish(), (4, 6), frozen)
    # norm, norm_2d and norm_nobias (which has nothing to measure with a frozen weight);
    # norm_in has nothing below it
    assert calls == ["layer_norm_backward"] * (2 if frozen == "weight" else 3) * FUSED
