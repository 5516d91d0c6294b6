"""Fisher-Rao norm (eq. 8) against an explicit per-sample, per-class loop in float64."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_nets import batches, mlp
from tiny_nets import conv_bn as tiny_conv_bn
from torch import nn

from biasdecay.sharpness.fisher_rao import FisherRaoNorm, fisher_rao_norm

# torch's forward-mode AD scripts its JVP decompositions on first use (torch internals, not ours).
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)


def conv_bn() -> nn.Module:
    return tiny_conv_bn(nn.ReLU)


MODELS = {"mlp": mlp, "conv_bn": conv_bn}


def explicit_fisher_rao(model: nn.Module, data, labels: str) -> float:
    """E_x Σ_c w_c (θ·∇_θ log p_c)², one backward per sample and class, in eval mode.

    w_c = p_c for the model Fisher; w_c = [c = y] for the empirical one.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in data:
        for n in range(x.shape[0]):
            log_probs = torch.log_softmax(model(x[n : n + 1]), dim=1)[0]
            for c in range(log_probs.shape[0]):
                weight = log_probs[c].exp().item() if labels == "model" else float(c == y[n])
                if weight == 0.0:
                    continue
                grads = torch.autograd.grad(log_probs[c], params, retain_graph=True)
                directional = sum((g * p).sum() for g, p in zip(grads, params, strict=True))
                total += weight * directional.item() ** 2
            count += 1
    model.train(was_training)
    return total / count


@pytest.mark.parametrize("labels", ["model", "empirical"])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_matches_the_explicit_per_sample_per_class_loop(model_name, labels):
    model, data = MODELS[model_name](), batches(model_name)
    result = fisher_rao_norm(model, data, labels=labels)
    assert isinstance(result, FisherRaoNorm)
    assert result.value == pytest.approx(explicit_fisher_rao(model, data, labels), rel=1e-10)
    assert result.norm == pytest.approx(math.sqrt(result.value), rel=1e-15)
    assert result.labels == labels and result.n_samples == 11


def test_frozen_parameter_is_not_part_of_theta():
    model, data = conv_bn(), batches("conv_bn")
    everything = fisher_rao_norm(model, data).value
    model[1].bias.requires_grad_(False)  # BN β: held fixed, so neither a coordinate nor tangent
    frozen = fisher_rao_norm(model, data)
    assert frozen.value == pytest.approx(explicit_fisher_rao(model, data, "model"), rel=1e-10)
    assert frozen.value != pytest.approx(everything, rel=1e-3)


def test_bias_free_relu_network_obeys_the_homogeneity_identity():
    # For a bias-free ReLU net of depth L, θ·∇_θ f = L·f, so θ·∇ log p_c = L·(f_c − Σ_j p_j f_j)
    # and the model Fisher-Rao norm is E_x[L² Var_{c~p}(f_c)] (Liang et al., 2019, Lemma 2.1).
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 4, bias=False)
    ).double()
    x = torch.randn(32, 6, dtype=torch.float64)
    data = [(x, torch.zeros(32, dtype=torch.long))]
    with torch.no_grad():
        logits = model(x)
        probs = logits.softmax(dim=1)
        variance = (probs * logits.square()).sum(1) - (probs * logits).sum(1).square()
    expected = (2**2 * variance).mean().item()
    assert fisher_rao_norm(model, data).value == pytest.approx(expected, rel=1e-10)


def test_model_mode_and_buffers_are_unchanged():
    model, data = conv_bn(), batches("conv_bn")
    model.train()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    fisher_rao_norm(model, data, labels="empirical")
    assert all(m.training for m in model.modules())
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert all(p.grad is None for p in model.parameters())


def test_unknown_labels_lists_the_valid_options():
    with pytest.raises(ValueError, match=r"unknown labels 'true'.*model.*empirical"):
        fisher_rao_norm(mlp(), batches("mlp"), labels="true")


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="no trainable parameters"):
        fisher_rao_norm(mlp().requires_grad_(False), batches("mlp"))
    with pytest.raises(ValueError, match="no batches"):
        fisher_rao_norm(mlp(), [])
    with pytest.raises(ValueError, match=r"\(batch, classes\)"):
        fisher_rao_norm(nn.Conv2d(1, 2, 3).double(), batches("conv_bn"))
    no_statistics = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(ValueError, match=r"one sample at a time: BatchNorm '1'.*running"):
        fisher_rao_norm(no_statistics.double(), [(torch.randn(3, 4), torch.zeros(3).long())])
    x, _ = batches("mlp")[0]
    with pytest.raises(ValueError, match="class-index targets"):
        fisher_rao_norm(mlp(), [(x, torch.zeros(7, dtype=torch.float64))], labels="empirical")


class _Softplus(torch.autograd.Function):
    """softplus with a backward of its own and no forward-mode rule (no ``jvp``, no
    ``setup_context``), as in many third-party fused operations."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return nn.functional.softplus(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


class _OnceSoftplus(_Softplus):
    """The same with a backward that cannot itself be differentiated."""

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


class _Custom(nn.Module):
    def __init__(self, function) -> None:
        super().__init__()
        self.a, self.b, self.function = nn.Linear(4, 5), nn.Linear(5, 3), function

    def forward(self, x):
        return self.b(self.function.apply(self.a(x)))


@pytest.mark.parametrize("labels", ["model", "empirical"])
def test_an_operation_without_forward_mode_takes_two_backward_passes(labels):
    torch.manual_seed(0)
    model = _Custom(_Softplus).double()
    data = [(torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))) for _ in range(2)]
    result = fisher_rao_norm(model, data, labels=labels)
    assert result.method == "double-vjp"
    assert result.value == pytest.approx(explicit_fisher_rao(model, data, labels), rel=1e-10)
    assert fisher_rao_norm(mlp(), batches("mlp")).method == "jvp"


class _DetachedSoftplus(_Softplus):
    """The same with a backward that detaches, unmarked: its graph is cut without a sign."""

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return (grad * torch.sigmoid(x)).detach()


@pytest.mark.parametrize(
    ("function", "says"),
    [
        (_OnceSoftplus, r"a node without one \(torch::autograd::Error\).*once_differentiable"),
        (_DetachedSoftplus, r"rᵀ\(Jθ\) differs from ⟨Jᵀr, θ⟩"),
    ],
)
def test_a_backward_without_its_own_derivative_is_refused(function, says):
    """Without these checks the double backward gives a wrong norm for both, without a sign:
    autograd skips what has no derivative."""
    model = _Custom(function).double()
    data = [(torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,)))]
    with pytest.raises(ValueError, match=says):
        fisher_rao_norm(model, data)


def test_a_model_that_fails_on_its_input_raises_its_own_error():
    """Not the message about forward mode and double backward: neither is the problem."""
    data = [(torch.randn(4, 6, dtype=torch.float64), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        fisher_rao_norm(nn.Linear(5, 3).double(), data)
