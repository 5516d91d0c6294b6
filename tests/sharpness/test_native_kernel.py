"""The per-sample kernels (``per_sample_kernels.c``) against float64 references, and how they
are built, found and refused.

The conv and sequence routes that call it are checked against the one-sample loop in
test_conv_routes.py; here the kernel itself, on layouts those routes do not produce: strided
output gradients, row and column counts that leave partial tiles, guards longer than the batch.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile

import pytest
import torch
from torch import nn

from biasdecay.sharpness import _native
from biasdecay.sharpness import _per_sample_products as products

needs_kernel = pytest.mark.skipif(
    _native.unavailable() is not None, reason=f"no fused kernel here: {_native.unavailable()}"
)


def test_the_kernel_builds_wherever_there_is_a_compiler() -> None:
    """Without this, every fused-route test would skip unseen on a machine that should run it."""
    if shutil.which("cc") is None and not os.environ.get("CC"):
        pytest.skip("no C compiler on PATH")
    if os.environ.get(_native.DISABLE_ENV) == "0":
        pytest.skip(f"{_native.DISABLE_ENV}=0")
    assert _native.unavailable() is None


def reference(d, u, w_abs, guard):
    """Per-sample Σ|W ⊙ d_n u_n| and Σ_n guard_n d_n u_n, in float64 from whole gradients."""
    g = torch.einsum("nol,nlk->nok", d.double(), u.double())
    sums = (g.abs() * w_abs.double()).sum((1, 2))
    s = min(guard.numel(), g.shape[0])
    return sums, (g[:s] * guard[:s].double().view(-1, 1, 1)).sum(0)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rows", [1, 13])  # partial row tiles
@pytest.mark.parametrize("vectors", [1, 2, 3, 4, 7])  # partial column strips
@pytest.mark.parametrize("guarded", [0, 3, 40])  # none, some, more than the batch
# Output gradients laid out (n, L, O) and read as (n, O, L), as a Linear's are (the kernel's
# unit-stride case), or laid out (n, O, L), as a conv's are.
@pytest.mark.parametrize("linear_layout", [True, False])
def test_kernel_matches_float64_einsum(dtype, rows, vectors, guarded, linear_layout) -> None:
    width = _native.lanes(dtype)
    n, L, K = 21, 5, vectors * width
    g = torch.Generator().manual_seed(rows * 100 + vectors)
    if linear_layout:
        d = torch.randn(n, L, rows, generator=g, dtype=dtype).transpose(1, 2)
    else:
        d = torch.randn(n, rows, L, generator=g, dtype=dtype)
    # Each sample's rows are 3 vectors apart in a wider buffer: offsets, not a dense matrix.
    buffer = torch.randn(n, L, K + 3 * width, generator=g, dtype=dtype)
    u = buffer[..., :K]
    columns = _native.Columns.of(
        torch.arange(L) * buffer.stride(1), torch.arange(0, K, width), width
    )
    w_abs = torch.randn(rows, K, generator=g, dtype=dtype).abs()
    guard = torch.arange(1, guarded + 1)
    grad = torch.zeros(rows, K, dtype=dtype)
    sums = _native.abs_products(d, buffer, columns, w_abs, guard, grad)
    want_sums, want_grad = reference(d, u, w_abs, guard)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    assert sums.dtype == dtype
    torch.testing.assert_close(sums.double(), want_sums, rtol=rtol, atol=0)
    scale = want_grad.abs().max().item() if guarded else 1.0
    torch.testing.assert_close(grad.double(), want_grad, rtol=0, atol=rtol * scale)


@needs_kernel
def test_kernel_refuses_offsets_past_the_input() -> None:
    width = _native.lanes(torch.float32)
    d, x = torch.randn(4, 3, 2), torch.randn(4, 2, width)
    w_abs, grad = torch.ones(3, width), torch.zeros(3, width)
    past = _native.Columns.of(torch.tensor([0, width]), torch.tensor([width]), width)
    with pytest.raises(ValueError, match="every window inside x"):
        _native.abs_products(d, x, past, w_abs, torch.ones(0), grad)
    inside = _native.Columns.of(torch.tensor([0, 0]), torch.tensor([0]), width)
    with pytest.raises(ValueError, match="grad is"):
        _native.abs_products(d, x, inside, w_abs, torch.ones(0), grad[:2])
    with pytest.raises(ValueError, match="negative"):
        _native.Columns.of(torch.tensor([-1, 0]), torch.tensor([0]), width)
    # A planar input: the threads' copies must fit their buffer, and the input be 4-D.
    planar = _native.Planar(torch.randn(4, 3, 1, 2), (0, 0), width)
    with pytest.raises(ValueError, match="every window inside x"):
        _native.abs_products(d, planar, inside, w_abs, torch.ones(0), grad, torch.zeros(width))
    with pytest.raises(ValueError, match="planar input is"):
        flat = _native.Planar(torch.randn(4, 3, 2), (0, 0), width)
        _native.abs_products(d, flat, inside, w_abs, torch.ones(0), grad)


@needs_kernel
def test_fused_conv_route_in_float32_agrees_with_float64() -> None:
    """The routes are exact in float64 (test_conv_routes.py); float32 only rounds."""
    torch.manual_seed(0)
    layer = nn.Conv2d(20, 12, 3, stride=2, padding=1, dilation=1)  # 20 channels: padded to 32
    a, work = torch.randn(9, 20, 7, 7), products.Workspace()
    delta = torch.randn_like(layer(a))
    guard = torch.arange(1, 5)
    plan = products.ConvPlan("fused", 4)
    sums, grad = products.conv_weight_terms(layer, a, delta, guard, work, plan)
    want_sums, want_grad = products.conv_weight_terms(
        layer.double(), a.double(), delta.double(), guard, work, products.ConvPlan("grouped", 2)
    )
    torch.testing.assert_close(sums.double(), want_sums, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), want_grad, rtol=0, atol=1e-5 * want_grad.abs().max())


@pytest.fixture
def unloaded(monkeypatch):
    """The kernel as if not yet looked for in this process, with an empty cache."""
    monkeypatch.setattr(_native, "_loaded", {})
    monkeypatch.setattr(_native, "_LANES", {})


def test_the_switch_turns_the_kernel_off(unloaded, monkeypatch) -> None:
    monkeypatch.setenv(_native.DISABLE_ENV, "0")
    assert _native.unavailable() == f"{_native.DISABLE_ENV}=0"
    conv = nn.Conv2d(16, 16, 3)
    assert "fused" not in products.routes_for(conv)
    assert "fused" not in {p.route for p in products.candidate_plans(conv, 64, 9, 16 * 25)}
    u = torch.randn(2, 3, 16)
    assert products.sequence_routes(u.transpose(1, 2), u) == ("bmm",)


def test_a_missing_compiler_is_named(unloaded, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(_native.DISABLE_ENV, raising=False)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv(_native.CACHE_ENV, str(tmp_path / "cache"))
    assert "no-such-cc" in _native.unavailable()
    assert "fused" not in products.routes_for(nn.Conv2d(16, 16, 3))


def test_extra_flags_reach_the_compiler(unloaded, monkeypatch, tmp_path) -> None:
    if shutil.which("cc") is None and not os.environ.get("CC"):
        pytest.skip("no C compiler on PATH")
    monkeypatch.delenv(_native.DISABLE_ENV, raising=False)
    monkeypatch.setenv(_native.FLAGS_ENV, "--no-such-flag-here")
    monkeypatch.setenv(_native.CACHE_ENV, str(tmp_path))
    assert "no-such-flag-here" in _native.unavailable()
    assert list(tmp_path.iterdir()) == []  # nothing half-built left behind


def test_the_kernel_is_refused_for_other_dtypes_and_devices() -> None:
    assert "float32 and float64" in _native.unavailable(torch.zeros(1, dtype=torch.bfloat16))
    assert "CPU" in _native.unavailable(torch.zeros(1, device="meta"))


@needs_kernel
def test_a_build_lands_whole_in_the_cache(unloaded, monkeypatch, tmp_path) -> None:
    """A fresh cache gets one finished library and no temporary file, and a second process
    (here: a second lookup) loads it without compiling."""
    monkeypatch.setenv(_native.CACHE_ENV, str(tmp_path))
    assert _native.unavailable() is None
    built = sorted(p.name for p in tmp_path.iterdir())
    assert (
        len(built) == 1 and built[0].startswith("per_sample_kernels-") and built[0].endswith(".so")
    )
    monkeypatch.setattr(_native, "_loaded", {})
    monkeypatch.setattr(_native, "_compile", lambda *args: pytest.fail("compiled again"))
    assert _native.unavailable() is None


@needs_kernel
def test_an_unwritable_cache_falls_back_to_the_temporary_directory(
    unloaded, monkeypatch, tmp_path
) -> None:
    blocked = tmp_path / "a-file-not-a-directory"
    blocked.write_text("")
    monkeypatch.setenv(_native.CACHE_ENV, str(blocked))
    fallback = tmp_path / "tmp"
    fallback.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fallback))
    assert _native.unavailable() is None
    assert [p.name.startswith("per_sample_kernels-") for p in fallback.iterdir()] == [True]


@needs_kernel
@pytest.mark.parametrize("layout", ["channels_last", "strided view"])
def test_fused_route_reads_inputs_of_any_layout(layout: str) -> None:
    """The kernel copies each block of samples from the input's own strides: a channels-last
    input, or a view that skips every other column, give the exact values."""
    torch.manual_seed(1)
    layer = nn.Conv2d(5, 7, 3, padding=(1, 2), dilation=(1, 2)).double()
    wide = torch.randn(19, 5, 6, 14, dtype=torch.float64)
    a = wide.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else None
    a = wide[..., ::2] if a is None else a
    delta = torch.randn_like(layer(a))
    guard, work = torch.arange(1, 6), products.Workspace()
    sums, grad = products.conv_weight_terms(
        layer, a, delta, guard, work, products.ConvPlan("fused", 8)
    )
    want_sums, want_grad = products.conv_weight_terms(
        layer, a.contiguous(), delta, guard, work, products.ConvPlan("grouped", 2)
    )
    torch.testing.assert_close(sums, want_sums, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_guard_extremes_match_torch(dtype) -> None:
    """Tensors smaller than a vector, of several chunks, and one without a formula."""
    g = torch.Generator().manual_seed(0)
    sizes = [(3,), (5, 7), (3 * _native.GUARD_CHUNK + 11,), (0,), (16, 16)]
    thetas = [torch.randn(s, generator=g, dtype=dtype) for s in sizes]
    truths = [torch.randn(s, generator=g, dtype=dtype) for s in sizes]
    formulas = [t + 1e-3 * torch.randn(t.shape, generator=g, dtype=dtype) for t in truths]
    formulas[1] = None
    pairs = _native.guard_extremes(thetas, truths, formulas)
    for theta, truth, formula, (scale, error) in zip(thetas, truths, formulas, pairs, strict=True):
        p = (theta * truth).double()
        e = p - (0 if formula is None else (theta * formula).double())
        expect = (0.0, 0.0) if p.numel() == 0 else (p.abs().max().item(), e.abs().max().item())
        # float32 rounds θg and θf before their difference: an error of ~1e-7 of max |θg|
        tol = {"rel": 1e-12} if dtype == torch.float64 else {"rel": 1e-6, "abs": 1e-6 * expect[0]}
        assert (scale, error) == pytest.approx(expect, **tol)


@needs_kernel
def test_guard_extremes_carry_a_nan_and_refuse_mixed_operands() -> None:
    theta, truth = torch.ones(2 * _native.GUARD_CHUNK), torch.ones(2 * _native.GUARD_CHUNK)
    formula = truth.clone()
    formula[-1] = float("nan")
    scale, error = _native.guard_extremes([theta], [truth], [formula])[0]
    assert scale == 1.0 and math.isnan(error)
    for bad in (
        ([theta], [truth.double()], [None]),  # one dtype
        ([theta], [truth[::2]], [None]),  # contiguous and of θ's shape
        ([theta], [truth], []),  # one formula (or None) per parameter
    ):
        with pytest.raises(ValueError, match="guard_extremes"):
            _native.guard_extremes(*bad)
