"""Hessian trace and top eigenvalue against the exact Hessian of tiny float64 networks."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_nets import batches, conv_bn, mlp
from torch import nn
from torch.func import functional_call

from biasdecay.sharpness.hessian import (
    DatasetHessian,
    EigenEstimate,
    TraceEstimate,
    hessian_max_eigenvalue,
    hessian_trace,
)

MODELS = {"mlp": mlp, "conv_bn": conv_bn}


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, targets)


def exact_hessian(model: nn.Module, data, loss_fn=cross_entropy) -> torch.Tensor:
    """Full Hessian of Σ_b (n_b/N)·mean-loss_b over the flat trainable parameters, eval mode."""
    named = [(n, p.detach()) for n, p in model.named_parameters() if p.requires_grad]
    sizes = [p.numel() for _, p in named]
    n_total = sum(x.shape[0] for x, _ in data)
    was_training = model.training
    model.eval()

    def dataset_loss(flat: torch.Tensor) -> torch.Tensor:
        params = {n: t.view_as(p) for (n, p), t in zip(named, flat.split(sizes), strict=True)}
        return sum(
            x.shape[0] / n_total * loss_fn(functional_call(model, params, (x,)), y) for x, y in data
        )

    flat = torch.cat([p.reshape(-1) for _, p in named])
    hessian = torch.autograd.functional.hessian(dataset_loss, flat)
    model.train(was_training)
    return hessian


def hutchinson_stderr(hessian: torch.Tensor, n_probes: int) -> float:
    """Standard error of Rademacher Hutchinson: Var(vᵀHv) = 2(‖H‖²_F − Σ H_ii²)."""
    off_diagonal = hessian.square().sum() - hessian.diagonal().square().sum()
    return math.sqrt(2 * off_diagonal.item() / n_probes)


@pytest.fixture(params=sorted(MODELS))
def case(request):
    model = MODELS[request.param]()
    data = batches(request.param)
    return model, data, exact_hessian(model, data)


# --------------------------------------------------------------------------------------------
# Trace


def test_hutchinson_is_within_three_standard_errors(case):
    model, data, hessian = case
    estimate = hessian_trace(model, data, n_matvecs=60, method="hutchinson", seed=3)
    assert isinstance(estimate, TraceEstimate)
    assert estimate.n_matvecs == 60 and estimate.method == "hutchinson" and estimate.seed == 3
    assert abs(estimate.value - hessian.trace().item()) <= 3 * estimate.stderr
    # The reported stderr is a sample estimate of the known Rademacher standard error.
    expected = hutchinson_stderr(hessian, 60)
    assert 0.5 * expected < estimate.stderr < 2 * expected


def test_hutch_plus_plus_is_within_three_standard_errors(case):
    model, data, hessian = case
    estimate = hessian_trace(model, data, n_matvecs=60, method="hutch++", seed=3)
    assert estimate.n_matvecs == 60 and estimate.method == "hutch++"
    assert estimate.stderr > 0
    assert abs(estimate.value - hessian.trace().item()) <= 3 * estimate.stderr
    # Deflation can only remove Frobenius mass: the residual probes (20 of them) are no noisier
    # than Hutchinson on H itself, up to sampling noise of the standard deviation.
    assert estimate.stderr < 2 * math.sqrt(2 * hessian.square().sum().item() / 20)


def test_hutch_plus_plus_is_exact_when_the_sketch_spans_the_space(case):
    model, data, hessian = case
    budget = 3 * hessian.shape[0]
    estimate = hessian_trace(model, data, n_matvecs=budget, method="hutch++")
    assert estimate.n_matvecs == budget
    assert estimate.value == pytest.approx(hessian.trace().item(), rel=1e-10)
    assert estimate.stderr < 1e-10


@pytest.mark.parametrize(
    ("method", "budget"),
    [("hutchinson", 1), ("hutchinson", 7), ("hutch++", 3), ("hutch++", 31), ("hutch++", 32)],
)
def test_budget_is_honoured_exactly(method, budget):
    estimate = hessian_trace(mlp(), batches("mlp"), n_matvecs=budget, method=method)
    assert estimate.n_matvecs == budget
    assert math.isfinite(estimate.value)
    # A single random probe has no sample standard deviation.
    assert math.isnan(estimate.stderr) == (budget in (1, 3))


def test_trace_is_reproducible_with_the_same_seed():
    model, data = mlp(), batches("mlp")
    first = hessian_trace(model, data, n_matvecs=12, seed=5)
    assert hessian_trace(model, data, n_matvecs=12, seed=5) == first
    assert hessian_trace(model, data, n_matvecs=12, seed=6).value != first.value


def test_one_shot_iterator_is_cached_for_several_passes():
    model, data = mlp(), batches("mlp")
    from_list = hessian_trace(model, data, n_matvecs=12, method="hutch++")
    from_generator = hessian_trace(model, (b for b in data), n_matvecs=12, method="hutch++")
    assert from_generator == from_list


# --------------------------------------------------------------------------------------------
# Largest eigenvalue


def test_max_eigenvalue_matches_exact(case):
    model, data, hessian = case
    eigenvalues, eigenvectors = torch.linalg.eigh(hessian)
    estimate = hessian_max_eigenvalue(model, data, max_iter=40, seed=1)
    assert isinstance(estimate, EigenEstimate)
    assert estimate.converged
    assert estimate.value == pytest.approx(eigenvalues[-1].item(), rel=1e-6)
    assert estimate.residual < 1e-4 * abs(estimate.value)
    assert estimate.n_matvecs <= 41  # Lanczos steps + the residual check
    assert estimate.eigenvector.shape == (hessian.shape[0],)
    assert abs(torch.dot(estimate.eigenvector, eigenvectors[:, -1])).item() > 1 - 1e-6


def test_max_eigenvalue_is_algebraic_not_largest_magnitude():
    model, data = mlp(), batches("mlp")

    def negated(outputs, targets):
        return -cross_entropy(outputs, targets)

    eigenvalues = torch.linalg.eigvalsh(exact_hessian(model, data, negated))
    assert abs(eigenvalues[0]) > 1.1 * abs(eigenvalues[-1]) and eigenvalues[-1] > 0
    estimate = hessian_max_eigenvalue(model, data, negated)
    assert estimate.converged
    assert estimate.value == pytest.approx(eigenvalues[-1].item(), rel=1e-6)


def test_invariant_krylov_space_stops_cleanly():
    # H = diag(2, 2, 1, 1): a start vector's Krylov space has dimension 2, so β₂ = 0.
    model = nn.Linear(4, 1, bias=False).double()
    x = torch.diag(torch.tensor([2.0, 2.0, math.sqrt(2), math.sqrt(2)], dtype=torch.float64))
    data = [(x, torch.zeros(4))]

    def half_mean_square(outputs, targets):
        return outputs.square().mean()

    estimate = hessian_max_eigenvalue(model, data, half_mean_square, max_iter=50, tol=0.0)
    assert estimate.converged
    assert estimate.n_matvecs == 3  # two Lanczos steps, one residual check
    assert estimate.value == pytest.approx(2.0, rel=1e-12)
    assert estimate.residual < 1e-12


def test_max_iter_beyond_dimension_ends_at_an_invariant_space():
    model, data = mlp(), batches("mlp")
    hessian = exact_hessian(model, data)
    estimate = hessian_max_eigenvalue(model, data, max_iter=200, tol=0.0)
    assert estimate.converged
    assert estimate.n_matvecs <= hessian.shape[0] + 1
    assert estimate.value == pytest.approx(torch.linalg.eigvalsh(hessian)[-1].item(), rel=1e-10)


def test_max_eigenvalue_is_reproducible_and_reports_unconverged_runs():
    model, data = mlp(), batches("mlp")
    short = hessian_max_eigenvalue(model, data, max_iter=2, seed=4)
    assert not short.converged and short.n_matvecs == 3
    again = hessian_max_eigenvalue(model, data, max_iter=2, seed=4)
    assert again == short and torch.equal(again.eigenvector, short.eigenvector)


# --------------------------------------------------------------------------------------------
# What θ is, and leaving the model as found


def test_frozen_parameter_is_not_part_of_theta():
    model, data = mlp(), batches("mlp")
    model[0].bias.requires_grad_(False)
    hessian = exact_hessian(model, data)
    assert hessian.shape == (48, 48)  # 53 parameters, 5 of them frozen
    trace = hessian_trace(model, data, n_matvecs=3 * 48, method="hutch++")
    assert trace.value == pytest.approx(hessian.trace().item(), rel=1e-10)
    top = hessian_max_eigenvalue(model, data)
    assert top.value == pytest.approx(torch.linalg.eigvalsh(hessian)[-1].item(), rel=1e-6)
    assert top.eigenvector.shape == (48,)


def test_parameter_unused_by_the_loss_has_zero_curvature():
    """By every product method: Hutch++'s many probes go forward-over-reverse, Lanczos's one
    vector by double backward (which crashed on the unused parameter: its products were
    matched to the used parameters alone)."""
    model, data = mlp(), batches("mlp")
    model.register_parameter("unused", nn.Parameter(torch.ones(2, dtype=torch.float64)))
    used = mlp()
    hessian = exact_hessian(used, data)
    trace = hessian_trace(model, data, n_matvecs=3 * 55, method="hutch++")
    assert trace.value == pytest.approx(hessian.trace().item(), rel=1e-10)
    top = hessian_max_eigenvalue(model, data, max_iter=57, tol=1e-10, seed=0)
    assert top.value == pytest.approx(torch.linalg.eigvalsh(hessian)[-1].item(), rel=1e-8)


def test_model_mode_buffers_and_gradients_are_unchanged():
    model, data = conv_bn(), batches("conv_bn")
    model.train()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    hessian_trace(model, data, n_matvecs=6)
    hessian_max_eigenvalue(model, data, max_iter=5)
    assert all(m.training for m in model.modules())
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]) and p.grad is None, n


def test_works_inside_no_grad_and_in_float32():
    model, data = mlp(), batches("mlp")
    exact = exact_hessian(model, data).trace().item()
    model32 = mlp().float()
    with torch.no_grad():
        estimate = hessian_trace(model32, data, n_matvecs=3 * 53, method="hutch++")
    assert estimate.value == pytest.approx(exact, rel=1e-4)


# --------------------------------------------------------------------------------------------
# Bad input


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown trace method 'lanczos'.*hutchinson.*hutch\+\+"):
        hessian_trace(mlp(), batches("mlp"), method="lanczos")


@pytest.mark.parametrize(("method", "budget"), [("hutch++", 2), ("hutchinson", 0)])
def test_budget_too_small_for_the_method(method, budget):
    with pytest.raises(ValueError, match="too small.*raise n_matvecs"):
        hessian_trace(mlp(), batches("mlp"), n_matvecs=budget, method=method)


def test_max_iter_below_one():
    with pytest.raises(ValueError, match="max_iter>=1"):
        hessian_max_eigenvalue(mlp(), batches("mlp"), max_iter=0)


def test_no_trainable_parameters():
    model = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        hessian_trace(model, batches("mlp"))
    with pytest.raises(ValueError, match="no trainable parameters"):
        hessian_max_eigenvalue(model, batches("mlp"))


def test_empty_data():
    with pytest.raises(ValueError, match="no batches"):
        hessian_trace(mlp(), [], n_matvecs=3)
    with pytest.raises(ValueError, match="no batches"):
        hessian_max_eigenvalue(mlp(), iter([]))


HVP_METHODS = ("forward-over-reverse", "vectorised double backward", "sequential double backward")


@pytest.mark.parametrize("method", HVP_METHODS)
@pytest.mark.parametrize("k", [3, 11, 40])
def test_dataset_hessian_products_are_exact_by_every_method(case, method, k, monkeypatch):
    """H·V and vᵀHv for k vectors equal the exact Hessian's by each way of computing them (3:
    below the forward-over-reverse threshold; 11: one chunk of it; 40: two chunks of it, and
    five of the double backward)."""
    from biasdecay.sharpness import hessian as hessian_module

    model, data, exact = case
    if method == "sequential double backward":
        real_grad = torch.autograd.grad

        def refuse_batched(*args, **kwargs):
            if kwargs.get("is_grads_batched"):
                raise RuntimeError("no batching rule for this op")
            return real_grad(*args, **kwargs)

        monkeypatch.setattr(hessian_module.torch.autograd, "grad", refuse_batched)
    model.eval()
    operator = DatasetHessian(model, data, cross_entropy)
    operator._forward_over_reverse = method == "forward-over-reverse"
    vectors = torch.randn(
        k, operator.dim, dtype=exact.dtype, generator=torch.Generator().manual_seed(3)
    )
    with torch.enable_grad():
        products = operator.apply(vectors)
        forms = operator.quadratic_forms(vectors)
    assert operator._forward_over_reverse is (method == "forward-over-reverse")
    assert operator._batched is (method != "sequential double backward")
    torch.testing.assert_close(products, vectors @ exact, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(forms, ((vectors @ exact) * vectors).sum(1), rtol=1e-9, atol=1e-12)


def test_a_model_torch_func_cannot_transform_falls_back_mid_pass(case, monkeypatch):
    """The first chunk of 32 goes forward-over-reverse; vmap then fails, and the other 8
    vectors, and every later pass, go by double backward: the products stay exact."""
    import torch.func

    model, data, exact = case
    real_vmap, calls = torch.func.vmap, []

    def vmap_failing_after_one_batch_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("Batching rule not implemented for some_op")
        return real_vmap(*args, **kwargs)

    monkeypatch.setattr(torch.func, "vmap", vmap_failing_after_one_batch_chunk)
    model.eval()
    operator = DatasetHessian(model, data, cross_entropy)
    vectors = torch.randn(
        40, operator.dim, dtype=exact.dtype, generator=torch.Generator().manual_seed(4)
    )
    with torch.enable_grad():
        products = operator.apply(vectors)
        forms = operator.quadratic_forms(vectors)
    assert operator._forward_over_reverse is False and len(calls) == 2
    torch.testing.assert_close(products, vectors @ exact, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(forms, ((vectors @ exact) * vectors).sum(1), rtol=1e-9, atol=1e-12)


def test_a_custom_backward_without_a_derivative_is_refused_not_skipped():
    """A custom Function whose backward is @once_differentiable, or detaches unmarked: autograd
    skips it when the gradient is differentiated again, and Tr(H) and λmax came out wrong
    without a sign. The first leaves a node in the graph; the second only an asymmetric
    Hessian. Differentiable, the same Function gives the exact value."""
    from test_fisher_rao import _Custom, _DetachedSoftplus, _OnceSoftplus, _Softplus

    torch.manual_seed(0)
    data = [(torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,)))]
    once = _Custom(_OnceSoftplus).double()
    for measure in (hessian_trace, hessian_max_eigenvalue):
        with pytest.raises(ValueError, match=r"torch::autograd::Error.*once_differentiable"):
            measure(once, data)
    detached = _Custom(_DetachedSoftplus).double()
    for measure in (hessian_trace, hessian_max_eigenvalue):
        with pytest.raises(ValueError, match=r"not symmetric.*uᵀ\(Hv\) and vᵀ\(Hu\) differ"):
            measure(detached, data)
    smooth = _Custom(_Softplus).double()
    smooth.load_state_dict(once.state_dict())
    exact = exact_hessian(smooth, data)
    d = exact.shape[0]
    trace = hessian_trace(smooth, data, n_matvecs=3 * d + 3, seed=0)
    assert trace.value == pytest.approx(exact.trace().item(), rel=1e-9)


def test_an_operation_without_a_double_backward_is_named_with_what_to_do():
    """torch has no derivative of EmbeddingBag's backward: a raw NotImplementedError before."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(10, 4), nn.Linear(4, 3)).double()
    data = [(torch.randint(0, 10, (5, 4)), torch.randint(0, 3, (5,)))]
    for measure in (hessian_trace, hessian_max_eigenvalue):
        with pytest.raises(ValueError, match=r"_embedding_bag_backward.*nn\.Embedding and a sum"):
            measure(model, data)
    model[0].weight.requires_grad_(False)  # what the error suggests: then only the head's
    exact = exact_hessian(model, data)
    trace = hessian_trace(model, data, n_matvecs=3 * exact.shape[0] + 3, seed=0)
    assert trace.value == pytest.approx(exact.trace().item(), rel=1e-9)


class Float32Inside(nn.Module):
    """A float64 network that computes one part in float32, as Hugging Face's RMSNorm does in
    a float64 Llama: its Hessian is symmetric to float32 rounding only."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.tanh(h.float()).to(h.dtype))


def test_a_part_computed_in_float32_passes_the_symmetry_check() -> None:
    """The symmetry check allows float32 rounding whatever the model's dtype (it once refused
    a float64 Llama); a skipped backward is off by a large share of the scale and is still
    refused (test_a_custom_backward_without_a_derivative_is_refused_not_skipped)."""
    torch.manual_seed(0)
    model = Float32Inside().double()
    data = [(torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,)))]
    exact = exact_hessian(model, data)
    d = exact.shape[0]
    trace = hessian_trace(model, data, n_matvecs=3 * d + 3, seed=0)
    assert trace.value == pytest.approx(exact.trace().item(), rel=1e-5)
    top = hessian_max_eigenvalue(model, data)
    assert top.value == pytest.approx(torch.linalg.eigvalsh(exact)[-1].item(), rel=1e-4)
