"""Per-sample C on networks the library was not written for, against a one-sample loop (float64).

Three of these returned a wrong number without any sign before the module-type table and the
exactness guard: a weight-standardised conv subclass (5.28 against 9.66), a Linear subclass
whose forward is not Wx + b (4.11 against 5.35), and a decoder tied to the encoder's weight
(0.18 against 0.35).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from test_connectivity import make_batches, naive_per_sample, randomise_norms
from torch import nn

from biasdecay import roles
from biasdecay.sharpness import _per_sample
from biasdecay.sharpness.connectivity import connectivity_sharpness


class StdConv2d(nn.Conv2d):
    """Weight standardisation (BiT, timm's StdConv2d): the forward is not the plain conv."""

    def forward(self, x):
        w = self.weight
        mean = w.mean((1, 2, 3), keepdim=True)
        std = w.std((1, 2, 3), keepdim=True)
        return F.conv2d(x, (w - mean) / (std + 1e-5), self.bias, self.stride, self.padding)


class SquashedLinear(nn.Linear):
    """A Linear subclass whose forward is not Wx + b."""

    def forward(self, x):
        return F.linear(x, torch.tanh(self.weight), self.bias * 2)


class ConvNet(nn.Module):
    def __init__(self, conv: type[nn.Conv2d] = nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class Tied(nn.Module):
    """An autoencoder-style decoder tied to the encoder's weight through F.linear."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(6, 4)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        return self.head(torch.tanh(F.linear(h, self.enc.weight.t())))


class Squashed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = SquashedLinear(6, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))


class Transformer(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.block = nn.TransformerEncoderLayer(width, 2, 2 * width, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        return self.fc(self.block(x).mean(1))


class TiedEmbedding(nn.Module):
    """A language-model head tied to the input embedding (integer inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.norm = nn.LayerNorm(6)

    def forward(self, tokens):
        h = self.norm(self.emb(tokens).mean(1))
        return F.linear(h, self.emb.weight)[:, :3]


class Recurrent(nn.Module):
    """An LSTM and a bidirectional GRU: torch.func cannot transform them (they write into
    tensors of their own in the forward), so per-sample C goes one sample at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 3, batch_first=True)
        self.gru = nn.GRU(3, 2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.gru(self.lstm(x)[0])[0][:, -1])


class Attention(nn.Module):
    """nn.MultiheadAttention called directly: its projections are parameters of its own, not
    modules; without autograd it runs a fused kernel with no forward-mode derivative."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.attn(x, x, x)[0].mean(1))


class RMSNormed(nn.Module):
    """nn.RMSNorm (γ only) over one and over two trailing dims of a token sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.norm = nn.RMSNorm(6)
        self.both = nn.RMSNorm([5, 6], eps=1e-3)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.both(self.norm(torch.tanh(self.embed(x)))).mean(1))


class AttentionCall(nn.Module):
    """nn.MultiheadAttention called with the options the per-sample path must reproduce (or
    refuse): attention weights returned and used, samples second, masks, cross-attention with
    keys and values from a shorter sequence."""

    def __init__(self, *, batch_first=True, need_weights=False, padding=False, causal=False,
                 cross=False, **options) -> None:  # fmt: skip
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=batch_first, **options)
        self.fc = nn.Linear(4, 3)
        self.batch_first, self.need_weights = batch_first, need_weights
        self.padding, self.causal, self.cross = padding, causal, cross

    def forward(self, x):
        B, L, _ = x.shape
        padding = mask = None
        if self.padding:  # padding where the sample says so (a property of each sample)
            padding = x[..., 0] > 0.5
            padding[:, 0] = False  # never a whole sample
        if self.causal:
            mask = nn.Transformer.generate_square_subsequent_mask(L, dtype=x.dtype)
        seq = x if self.batch_first else x.transpose(0, 1)
        key = value = seq
        if self.cross:  # a decoder's: keys and values from another sequence, here shorter
            key = value = 2 * (seq[:, :3] if self.batch_first else seq[:3])
            if self.cross == "three":
                value = torch.tanh(key)
        out, weights = self.attn(
            seq, key, value, key_padding_mask=padding, attn_mask=mask,
            need_weights=self.need_weights, is_causal=self.causal,
        )  # fmt: skip
        if not self.batch_first:  # a view, as user code may take of torch's contiguous output
            out = out.view(-1, out.shape[-1]).view(out.shape).transpose(0, 1)
        pooled = out.mean(1)
        if weights is not None:  # the weights feed the loss too
            pooled = pooled + 0.1 * weights.sum((1, 2)).unsqueeze(-1)
        return self.fc(pooled)


ATTENTION_CALLS = {
    "attention weights used": ({"need_weights": True}, "hooks"),
    "samples second": ({"batch_first": False}, "hooks"),
    "padding mask": ({"padding": True}, "hooks"),
    "causal mask": ({"causal": True}, "hooks"),
    "causal, padding and weights": (
        {"causal": True, "padding": True, "need_weights": True},
        "hooks",
    ),  # fmt: skip
    "no biases": ({"bias": False}, "hooks"),
    "cross-attention": ({"cross": True, "need_weights": True}, "hooks"),
    "cross-attention, samples second": ({"cross": True, "batch_first": False}, "hooks"),
    "query, key and value apart": ({"cross": "three"}, "hooks"),
    "bias_k and bias_v": ({"add_bias_kv": True}, "hooks+vmap"),
}


@pytest.mark.parametrize("case", list(ATTENTION_CALLS))
def test_attention_takes_the_hook_path_where_its_formula_covers_the_call(case) -> None:
    """The packed in-projection is a Linear on the sequence (three, on thirds of its weight, in
    cross-attention) and the output projection a Linear: both take the layer formulas, per
    parameter equal to the loop. A module the formula does not cover goes to torch.func, and
    the report says why."""
    options, method = ATTENTION_CALLS[case]
    torch.manual_seed(0)
    model = AttentionCall(**options).double()
    batches = make_batches((5, 4), 3, [4, 3])
    with torch.no_grad():
        reference = model(batches[0][0])
    report = connectivity_sharpness(model, batches)
    assert report.method == method, report.fallback_reason
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name
    if method != "hooks":
        assert "bias_k" in report.fallback_reason
        # The attention module's parameters (its output projection's too) go to torch.func;
        # the layer after it keeps its formula.
        generic = {n for n, path in report.paths.items() if path == "vmap"}
        assert generic == {n for n in report.paths if n.startswith("attn.")}
        assert report.paths["fc.weight"] == "hooks"
    # The module's own forward is back, and computes what it did.
    assert "forward" not in model.attn.__dict__
    with torch.no_grad():
        assert torch.allclose(model(batches[0][0]), reference, rtol=1e-13, atol=0)


class Convs(nn.Module):
    """Depthwise, grouped and transposed convolutions, and a conv called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.grouped = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.again = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.grouped(torch.relu(self.depthwise(x))))
        x = torch.relu(self.up(x))
        x = torch.relu(self.again(torch.relu(self.again(x))))
        return self.fc(x.mean((2, 3)))


def weight_normed() -> nn.Module:
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    net = ConvNet()
    weight_norm(net.fc)
    spectral_norm(net.conv)
    return net


def partly_frozen() -> nn.Module:
    net = ConvNet()
    net.conv.weight.requires_grad_(False)
    net.bn.bias.requires_grad_(False)
    return net


def tokens(sizes):
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 10, (b, 5), generator=g), torch.randint(0, 3, (b,), generator=g))
            for b in sizes]  # fmt: skip


def images(shape, sizes):
    return lambda: make_batches(shape, 3, sizes)


ZOO = {
    # name: (build, batches, the report's method: the paths taken)
    "weight-standardised conv": (
        lambda: ConvNet(StdConv2d),
        images((2, 5, 5), [4, 3]),
        "hooks+vmap",
    ),  # fmt: skip
    "linear subclass": (Squashed, images((6,), [4, 3]), "hooks+vmap"),
    "tied decoder": (Tied, images((6,), [4, 3]), "hooks+vmap"),
    "weight_norm and spectral_norm": (weight_normed, images((2, 5, 5), [4]), "hooks+vmap"),
    "transformer block": (Transformer, images((4, 8), [3, 2]), "hooks"),
    "attention module": (Attention, images((3, 4), [3, 2]), "hooks"),
    "LSTM and GRU": (Recurrent, images((5, 4), [3, 2]), "hooks+loop"),
    "RMSNorm": (RMSNormed, images((5, 4), [3, 2]), "hooks"),
    "tied embedding": (TiedEmbedding, lambda: tokens([4, 2]), "hooks+vmap"),
    "depthwise, grouped, transposed, twice": (Convs, images((4, 4, 4), [3]), "vmap"),
    "partly frozen": (partly_frozen, images((2, 5, 5), [4, 3]), "hooks"),
}


@pytest.mark.parametrize("case", list(ZOO))
def test_per_sample_c_is_exact_on_models_we_did_not_write(case: str) -> None:
    build, data, method = ZOO[case]
    torch.manual_seed(0)
    model = build().double()
    randomise_norms(model)
    batches = data()
    report = connectivity_sharpness(model, batches, chunk_size=2)
    expected = naive_per_sample(model, batches)
    assert report.method == method, report.fallback_reason
    for name, value in expected.items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10, abs=1e-300), name
    assert set(report.paths) == set(expected)
    assert {n for n, path in report.paths.items() if path != "hooks"} == OFF_THE_HOOK_PATH[case]


# The parameters each model sends to the generic path: those of modules without a formula
# (a subclass with its own forward, a parametrised module, a recurrent layer) and those the
# guard rejects (a tied weight); every model's other parameters keep their layer formulas. A
# layer called twice sends every parameter there.
OFF_THE_HOOK_PATH = {
    "weight-standardised conv": {"conv.weight", "conv.bias"},
    "linear subclass": {"fc.weight", "fc.bias"},
    "tied decoder": {"enc.weight"},
    "weight_norm and spectral_norm": {
        "conv.parametrizations.weight.original",
        "conv.bias",
        "fc.bias",
        "fc.parametrizations.weight.original0",
        "fc.parametrizations.weight.original1",
    },  # fmt: skip
    "transformer block": set(),
    "attention module": set(),
    "LSTM and GRU": {
        f"{rnn}.{kind}_{part}_l0{rev}"
        for rnn, revs in (("lstm", [""]), ("gru", ["", "_reverse"]))
        for kind in ("weight", "bias")
        for part in ("ih", "hh")
        for rev in revs
    },  # fmt: skip
    "RMSNorm": set(),
    "tied embedding": {"emb.weight"},
    "depthwise, grouped, transposed, twice": {
        f"{m}.{p}"
        for m in ("depthwise", "grouped", "up", "again", "fc")
        for p in ("weight", "bias")
    },
    "partly frozen": set(),
}


def test_the_guard_names_the_tied_weight_and_only_it() -> None:
    torch.manual_seed(0)
    model = Tied().double()
    report = connectivity_sharpness(model, make_batches((6,), 3, [4, 3]))
    assert report.paths == {
        "enc.weight": "vmap", "enc.bias": "hooks", "head.weight": "hooks", "head.bias": "hooks"
    }  # fmt: skip
    assert "enc.weight" in report.fallback_reason and "guard" in report.fallback_reason
    with pytest.raises(ValueError, match=r"strict: .*enc\.weight: θ⊙Σ_n g_n differs"):
        connectivity_sharpness(model, make_batches((6,), 3, [4]), strict=True)


class ViewGradients(nn.Module):
    """Parameters whose gradients autograd returns as views: two weights used only through
    their sum (both gradients are one tensor) and a bias summed into one logit (an expanded,
    stride-0 gradient). The guard once crashed writing to these in place."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)
        self.register_buffer("first", torch.tensor([1.0, 0.0, 0.0]))

    def forward(self, x):
        out = F.linear(x, self.a.weight + self.b.weight) + self.head(x)
        return out + self.b.bias.sum() * self.first


def test_the_guard_copes_with_gradients_that_are_views() -> None:
    torch.manual_seed(0)
    model = ViewGradients().double()
    batches = make_batches((4,), 3, [5, 3])
    report = connectivity_sharpness(model, batches)
    assert {n for n, path in report.paths.items() if path == "vmap"} == {
        "a.weight", "b.weight", "b.bias"
    }  # fmt: skip
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10, abs=1e-12), name


@pytest.fixture()
def wrongly_registered():
    """StdConv2d declared to be a plain conv: the table trusts it, the guard must not."""
    roles.register_module_type(StdConv2d, "conv", "conv2d")
    yield
    del roles._MODULE_TYPES[StdConv2d]


def test_a_wrong_registration_is_caught_by_the_guard(wrongly_registered) -> None:
    torch.manual_seed(0)
    model = ConvNet(StdConv2d).double()
    randomise_norms(model)
    batches = make_batches((2, 5, 5), 3, [4, 3])
    report = connectivity_sharpness(model, batches)
    assert report.method == "hooks+vmap" and report.paths["conv.weight"] == "vmap"
    # The bias enters the plain way, so its formula passes and it stays on the hook path.
    assert report.paths["conv.bias"] == "hooks"
    expected = naive_per_sample(model, batches)
    assert report.total == pytest.approx(sum(expected.values()), rel=1e-10)


def test_the_guard_passes_every_plain_layer_in_float32() -> None:
    """No false alarms from float32 summation order on a network the formulas do fit."""
    from test_connectivity import TinyResNet

    torch.manual_seed(0)
    model = TinyResNet()
    randomise_norms(model)
    batches = [(x.float(), y) for x, y in make_batches((1, 8, 8), 3, [16, 16])]
    report = connectivity_sharpness(model, batches)
    assert report.method == "hooks" and set(report.paths.values()) == {"hooks"}


def bias_before_instance_norm(norm: str) -> nn.Module:
    """A conv with a bias followed by a norm that subtracts each channel's mean (the generators
    of CycleGAN and pix2pix): the bias's gradient is zero on every sample, to rounding."""
    layer = nn.InstanceNorm2d(4, affine=True) if norm == "instance" else nn.GroupNorm(4, 4)
    return nn.Sequential(nn.Conv2d(2, 4, 3), layer, nn.ReLU(), nn.Flatten(), nn.Linear(36, 3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("norm", ["instance", "group of one channel"])
def test_a_gradient_that_vanishes_to_rounding_is_not_a_guard_failure(norm, dtype) -> None:
    """θ⊙g and the formula's θ⊙Σ_n g_n are both rounding noise there, O(1) apart relative to
    each other. The guard once rejected the bias's (right) formula: strict=True raised on a
    standard model, and without it the bias went to torch.func, with a report saying the
    formula was wrong."""
    torch.manual_seed(0)
    model = bias_before_instance_norm(norm).to(dtype)
    randomise_norms(model)
    batches = [(x.to(dtype), y) for x, y in make_batches((2, 5, 5), 3, [6, 5])]
    report = connectivity_sharpness(model, batches, method="hooks", strict=True)
    assert report.method == "hooks"
    expected = naive_per_sample(model.double(), [(x.double(), y) for x, y in batches])
    rel = 1e-10 if dtype == torch.float64 else 1e-5
    assert report.total == pytest.approx(sum(expected.values()), rel=rel)
    # The bias's share of C is rounding on both counts.
    level = _per_sample.vanishing_level(dtype)
    assert abs(report.by_parameter["0.bias"]) < level * report.total
    assert expected["0.bias"] < 1e-12 * report.total


@pytest.mark.parametrize(
    ("dtype", "shrink", "most"), [(torch.float64, 1e-7, 1e-6), (torch.float32, 3e-3, 1e-2)]
)
def test_a_misused_parameter_with_a_small_share_of_c_is_still_caught(dtype, shrink, most) -> None:
    """The tied weight, shrunk until its share of C is small but above rounding: the guard
    must still reject its formula (the vanishing rule is for rounding, not for small)."""
    torch.manual_seed(0)
    model = Tied().to(dtype)
    with torch.no_grad():
        model.enc.weight.mul_(shrink)
    batches = [(x.to(dtype), y) for x, y in make_batches((6,), 3, [4, 3])]
    report = connectivity_sharpness(model, batches)
    assert report.paths["enc.weight"] == "vmap", report.fallback_reason
    share = report.by_parameter["enc.weight"] / report.total
    assert _per_sample.vanishing_level(dtype) < share < most


def test_ghost_batch_norm_has_the_batch_norm_formula() -> None:
    from biasdecay.nn.ghost_bn import GhostBatchNorm2d

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), GhostBatchNorm2d(4, ghost_batch_size=2), nn.Flatten(), nn.Linear(36, 3)
    ).double()
    randomise_norms(model)
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 1.5)
    batches = make_batches((2, 5, 5), 3, [4])
    report = connectivity_sharpness(model, batches, method="hooks", strict=True)
    expected = naive_per_sample(model, batches)
    assert report.total == pytest.approx(sum(expected.values()), rel=1e-10)


def test_a_compiled_model_is_measured_as_the_module_it_wraps() -> None:
    """torch.compile's wrapper: same parameters and names as the eager model, no compilation."""
    from biasdecay.sharpness.fisher_rao import fisher_rao_norm
    from biasdecay.sharpness.hessian import hessian_trace

    torch.manual_seed(0)
    model = ConvNet().double()
    randomise_norms(model)
    batches = make_batches((2, 5, 5), 3, [4, 3])
    compiled = torch.compile(model)
    eager, wrapped = (connectivity_sharpness(m, batches) for m in (model, compiled))
    assert wrapped.by_parameter == eager.by_parameter and wrapped.method == "hooks"
    assert fisher_rao_norm(compiled, batches).value == fisher_rao_norm(model, batches).value
    a, b = (hessian_trace(m, batches, n_matvecs=6, seed=0).value for m in (model, compiled))
    assert a == b


# The Hessian and Fisher-Rao measures on the same zoo, against the exact Hessian of each network
# and an explicit per-sample, per-class Fisher loop. The transformer block comes 4 wide instead
# of 8 (190 parameters instead of 700, whose exact Hessian would be the slowest part of the
# suite). It is not plain autograd: torch's fused attention kernel has no double backward and
# the encoder's fast path no forward-mode derivative, so both measures raised on it before
# they ran attention in its composite form (exact_higher_order).
HESSIAN_ZOO = {case: entry for case, entry in ZOO.items() if case != "transformer block"}
HESSIAN_ZOO["transformer block, 4 wide"] = (
    lambda: Transformer(width=4),
    images((3, 4), [3, 2]),
    "hooks",
)


@pytest.mark.parametrize("case", list(HESSIAN_ZOO))
def test_hessian_and_fisher_rao_are_exact_on_the_zoo(case: str) -> None:
    from test_fisher_rao import explicit_fisher_rao
    from test_hessian import exact_hessian

    from biasdecay.sharpness._autodiff import exact_higher_order
    from biasdecay.sharpness.fisher_rao import fisher_rao_norm
    from biasdecay.sharpness.hessian import hessian_max_eigenvalue, hessian_trace

    build, data, _ = HESSIAN_ZOO[case]
    torch.manual_seed(0)
    model = build().double()
    randomise_norms(model)
    batches = data()
    with exact_higher_order():  # the oracle too needs weight_norm's composite (see below)
        hessian = exact_hessian(model, batches)
    assert torch.allclose(hessian, hessian.T, atol=1e-12)
    d = hessian.shape[0]
    # Hutch++ with a sketch of d vectors spans the whole space: the estimate is exact.
    trace = hessian_trace(model, batches, n_matvecs=3 * d + 3, seed=0)
    assert trace.value == pytest.approx(hessian.trace().item(), rel=1e-8, abs=1e-10)
    top = hessian_max_eigenvalue(model, batches, max_iter=d, tol=1e-10, seed=0)
    assert top.value == pytest.approx(torch.linalg.eigvalsh(hessian)[-1].item(), rel=1e-6)
    for labels in ("model", "empirical"):
        fr = fisher_rao_norm(model, batches, labels=labels).value
        assert fr == pytest.approx(explicit_fisher_rao(model, batches, labels), rel=1e-9), labels


def test_torch_fused_weight_norm_has_a_wrong_hessian_and_the_composite_a_right_one() -> None:
    """Why the Hessian and Fisher measures swap torch._weight_norm for its composite.

    The Hessian through torch's fused kernel is not symmetric; through the composite it equals
    the Hessian of g·v/‖v‖ written out by hand. If torch fixes its kernel, the first assertion
    fails: then biasdecay.sharpness._autodiff.exact_higher_order can go.
    """
    from biasdecay.sharpness._autodiff import exact_higher_order

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (5,), generator=g)
    flat = torch.cat(
        [torch.randn(12, generator=g, dtype=torch.float64), torch.rand(3).double() + 0.5]
    )

    def loss(weight_of):
        def f(theta):
            v, gain = theta[:12].view(3, 4), theta[12:].view(3, 1)
            return F.cross_entropy(x @ weight_of(v, gain).t(), y)

        return f

    def fused(v, gain):
        return torch._weight_norm(v, gain, 0)

    def by_hand(v, gain):
        return gain * v / v.norm(dim=1, keepdim=True)

    hessian = torch.autograd.functional.hessian
    wrong = hessian(loss(fused), flat)
    assert (wrong - wrong.T).abs().max() > 1e-3, "torch fixed _weight_norm's double backward"
    with exact_higher_order():
        patched = hessian(loss(fused), flat)
    torch.testing.assert_close(patched, hessian(loss(by_hand), flat), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("measure", ["C", "C_m", "Tr(H)"])
def test_a_summed_loss_is_refused_with_the_reason(measure: str) -> None:
    from biasdecay.sharpness.hessian import hessian_trace

    def summed(logits, targets):
        return F.cross_entropy(logits, targets, reduction="sum")

    model = ConvNet().double()
    batches = make_batches((2, 5, 5), 3, [4])
    run = {
        "C": lambda: connectivity_sharpness(model, batches, summed),
        "C_m": lambda: connectivity_sharpness(model, batches, summed, per_sample=False),
        "Tr(H)": lambda: hessian_trace(model, batches, summed, n_matvecs=3),
    }[measure]
    with pytest.raises(ValueError, match=r"does not average over the batch.*reduction='sum'"):
        run()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_model_passes_the_mean_check_and_a_summed_loss_does_not(dtype) -> None:
    """The batch-mean check allows 16-bit rounding (a mean loss in bfloat16 once failed it at
    1e-4) and still tells a sum from a mean."""
    torch.manual_seed(0)
    model = ConvNet()
    batches = make_batches((2, 5, 5), 3, [20])
    reference = connectivity_sharpness(model, batches).total
    low = [(x.to(dtype), y) for x, y in batches]
    report = connectivity_sharpness(model.to(dtype), low)
    assert report.method == "hooks"
    assert report.total == pytest.approx(reference, rel=2e-2)

    def summed(logits, targets):
        return F.cross_entropy(logits, targets, reduction="sum")

    with pytest.raises(ValueError, match=r"does not average over the batch.*reduction='sum'"):
        connectivity_sharpness(model, low, summed)


def test_per_sample_c_in_train_mode_says_why_and_what_instead() -> None:
    with pytest.raises(ValueError, match=r"eval mode.*per_sample=False for C_m"):
        connectivity_sharpness(ConvNet(), make_batches((2, 5, 5), 3, [4]), train_mode=True)


@pytest.mark.parametrize(
    ("groups", "shape"), [(1, (6, 5)), (3, (6, 4, 4)), (6, (6, 3, 3)), (2, (6,))]
)
def test_group_norm_of_any_shape_equals_the_loop(groups, shape) -> None:
    """Per-sample C of GroupNorm of several shapes and group counts, far from zero mean too."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.GroupNorm(groups, shape[0])
            self.head = nn.Linear(math.prod(shape), 3)

        def forward(self, x):
            return self.head(self.norm(x + 20.0).flatten(1))  # a mean of 20: the centring counts

    torch.manual_seed(0)
    model = Net().double()
    randomise_norms(model)
    batches = make_batches(shape, 3, [5, 3])
    report = connectivity_sharpness(model, batches)
    assert report.method == "hooks", report.fallback_reason
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name
    model.float()
    report = connectivity_sharpness(model, [(x.float(), y) for x, y in batches])
    assert set(report.paths.values()) == {"hooks"}  # float32: the guard sees no error either


def test_group_norm_reuses_the_statistics_its_forward_saved(monkeypatch) -> None:
    """The per-sample γ terms of a GroupNorm use the mean and 1/std its own forward saved for
    autograd (no second pass over the input), and still equal the loop. (A GroupNorm on the
    model's input: nothing below it, so its backward is not fused, see test_fused_norm.py.)"""
    taken = []

    def spy(node, layer, a):
        out = real(node, layer, a)
        taken.append(out is not None)
        return out

    real = _per_sample._saved_group_statistics
    monkeypatch.setattr(_per_sample, "_saved_group_statistics", spy)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.GroupNorm(2, 4), nn.Conv2d(4, 6, 3), nn.Flatten(), nn.Linear(6 * 9, 3)
    ).double()
    randomise_norms(model)
    batches = make_batches((4, 5, 5), 3, [6, 4])
    report = connectivity_sharpness(model, batches, strict=True)
    assert taken and all(taken)
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


@pytest.mark.parametrize("frozen", ["weight", "bias", None])
@pytest.mark.parametrize(
    ("norm", "shape"),
    [
        (lambda: nn.BatchNorm2d(6), (6, 3, 3)),
        (lambda: nn.BatchNorm1d(6), (6, 4)),
        (lambda: nn.GroupNorm(3, 6), (6, 3, 3)),
        (lambda: nn.LayerNorm(4), (6, 4)),
        (lambda: nn.InstanceNorm2d(6, affine=True), (6, 3, 3)),
        (lambda: nn.InstanceNorm1d(6, affine=True, track_running_stats=True), (6, 4)),
    ],
    ids=["bn2d", "bn1d-sequence", "gn", "ln-tokens", "in2d", "in1d-running-stats"],
)
def test_norm_layers_with_a_frozen_affine_parameter_equal_the_loop(norm, shape, frozen) -> None:
    """γ and β of each norm layer are formed only when trainable, and each equals the loop."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = norm()
            self.head = nn.Linear(math.prod(shape), 3)

        def forward(self, x):
            return self.head(torch.tanh(self.norm(x + 3.0)).flatten(1))

    torch.manual_seed(0)
    model = Net().double().eval()
    randomise_norms(model)
    if frozen is not None:
        getattr(model.norm, frozen).requires_grad_(False)
    batches = make_batches(shape, 3, [5, 3])
    report = connectivity_sharpness(model, batches)
    assert report.method == "hooks", report.fallback_reason
    expected = naive_per_sample(model, batches)
    assert set(report.by_parameter) == set(expected)
    assert f"norm.{frozen}" not in report.by_parameter
    for name, value in expected.items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


class Bag(nn.Module):
    """An embedding of every token (repeats within a sample included), mean-pooled."""

    def __init__(self, padding_idx: int | None = None, **options) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6, padding_idx=padding_idx, **options)
        self.fc = nn.Linear(6, 3)

    def forward(self, tokens):
        return self.fc(torch.tanh(self.emb(tokens)).flatten(1, -2).mean(1))


@pytest.mark.parametrize(
    "options", [{}, {"padding_idx": 2}, {"sparse": True}, {"max_norm": 1.5}],
    ids=["plain", "padding", "sparse", "max_norm"],
)  # fmt: skip
@pytest.mark.parametrize("shape", [(5,), (3, 4)], ids=["sequence", "grid"])
def test_an_embedding_takes_the_fast_path_and_equals_the_loop(options, shape) -> None:
    torch.manual_seed(0)
    model = Bag(**options).double()
    with torch.no_grad():  # a non-zero padding row: its gradient must still be left out
        model.emb.weight.normal_()
    g = torch.Generator().manual_seed(3)
    # 10 tokens drawn 5 or 12 times per sample: repeats within a sample are certain in a grid
    batches = [(torch.randint(0, 10, (b, *shape), generator=g), torch.randint(0, 3, (b,)))
               for b in (11, 4)]  # fmt: skip
    report = connectivity_sharpness(model, batches, strict=True)
    assert report.method == "hooks", report.fallback_reason
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


def test_an_embedding_scaled_by_token_frequency_takes_vmap_and_says_why() -> None:
    """The batch's token frequencies scale its gradient: per sample they are the sample's own.
    The table alone goes to torch.func."""
    torch.manual_seed(0)
    model = Bag(scale_grad_by_freq=True).double()
    batches = tokens([4, 3])
    report = connectivity_sharpness(model, batches)
    assert report.method == "hooks+vmap"
    assert {n for n, path in report.paths.items() if path == "vmap"} == {"emb.weight"}
    assert "Embedding 'emb', scales its gradient" in report.fallback_reason
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


class Scaled(nn.Module):
    """A module of its own with a parameter that it uses through exp, not as the plain broadcast
    a layer scale is: no formula, so its parameter goes to torch.func."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x * self.scale.exp()


def test_a_model_torch_func_cannot_transform_goes_one_sample_at_a_time_and_says_so() -> None:
    """A max_norm embedding renormalises its table in place, which vmap refuses: "auto" warns
    and computes the per-sample gradients of the parameter without a formula one sample at a
    time (the layers keep their formulas); "vmap" raises, naming what works instead."""
    torch.manual_seed(0)
    model = nn.Sequential(Bag(max_norm=1.0), Scaled()).double()
    batches = tokens([4, 3])
    with pytest.raises(ValueError, match=r"torch\.func cannot transform.*method='loop'"):
        connectivity_sharpness(model, batches, method="vmap")
    with pytest.warns(UserWarning, match=r"one sample at a time.*per_sample=False"):
        report = connectivity_sharpness(model, batches)
    assert report.method == "hooks+loop"
    assert {n for n, path in report.paths.items() if path != "hooks"} == {"1.scale"}
    assert report.paths["1.scale"] == "loop"
    assert "torch.func cannot transform" in report.fallback_reason
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


def finite_difference_per_sample(model: nn.Module, batches, step: float = 1e-6) -> float:
    """C by central differences of each sample's loss, one parameter entry at a time: an
    oracle that shares no code path with autograd (float64)."""
    params = [p for p in model.parameters() if p.requires_grad]
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            for i in range(x.shape[0]):
                xi, yi = x[i : i + 1], y[i : i + 1]
                for p in params:
                    flat = p.view(-1)
                    for j in range(flat.numel()):
                        kept = flat[j].item()
                        flat[j] = kept + step
                        up = F.cross_entropy(model(xi), yi).item()
                        flat[j] = kept - step
                        down = F.cross_entropy(model(xi), yi).item()
                        flat[j] = kept
                        total += abs(kept * (up - down) / (2 * step))
                count += 1
    return total / count


@pytest.mark.parametrize("method", ["auto", "loop"])
def test_recurrent_layers_match_central_differences(method) -> None:
    """The LSTM and GRU take the one-sample-at-a-time path (the Linear after them keeps its
    formula under "auto"); checked against an oracle that does not use autograd at all."""
    torch.manual_seed(0)
    model = Recurrent().double().eval()
    batches = make_batches((5, 4), 3, [2, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error" if method == "loop" else "ignore")
        report = connectivity_sharpness(model, batches, method=method)
    assert report.method == {"auto": "hooks+loop", "loop": "loop"}[method]
    assert report.total == pytest.approx(finite_difference_per_sample(model, batches), rel=1e-7)


def test_the_loop_path_equals_the_hook_path_on_a_network_both_take() -> None:
    torch.manual_seed(0)
    model = ConvNet().double()
    randomise_norms(model)
    batches = make_batches((2, 5, 5), 3, [4, 3])
    hooks, loop = (connectivity_sharpness(model, batches, method=m) for m in ("hooks", "loop"))
    assert loop.method == "loop" and loop.fallback_reason == "method='loop' requested"
    for name, value in hooks.by_parameter.items():
        assert loop.by_parameter[name] == pytest.approx(value, rel=1e-12), name


class Positions(nn.Module):
    """Token embeddings plus a position table looked up once for the whole batch and broadcast
    (``use`` says what the model does with the table's output)."""

    def __init__(self, use=lambda pos: pos) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(10, 6), nn.Embedding(5, 6)
        self.fc = nn.Linear(6, 3)
        self.use = use

    def forward(self, ids):
        where = torch.arange(ids.shape[1])
        pos = self.use(self.positions(where))
        return self.fc(torch.tanh(self.tokens(ids) + pos).mean(1))


@pytest.mark.parametrize("lookup", ["(T,)", "(1, T)"])
def test_a_table_looked_up_once_for_the_batch_takes_the_hook_path(lookup) -> None:
    """Handed to the model expanded over the batch, the table's output broadcasts as before and
    its gradient is per sample (positions(arange(T)) as in many ViT and GPT codes, and the
    (1, T) position ids of Hugging Face's BERT)."""

    class Net(Positions):
        def forward(self, ids):
            where = torch.arange(ids.shape[1])
            where = where if lookup == "(T,)" else where.unsqueeze(0)
            return self.fc(torch.tanh(self.tokens(ids) + self.positions(where)).mean(1))

    torch.manual_seed(0)
    model = Net().double()
    batches = tokens([4, 5])
    report = connectivity_sharpness(model, batches, strict=True)
    assert report.method == "hooks", report.fallback_reason
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


def test_a_table_whose_shape_the_model_relies_on_is_named_and_recomputed() -> None:
    """Viewed as (T, D), the expanded table breaks the forward: it runs again as it is, and the
    table, looked up once for the batch, goes to torch.func with the reason."""
    torch.manual_seed(0)
    model = Positions(use=lambda pos: pos.view(5, 6)).double()
    batches = tokens([4, 5])  # a batch of 5 = the 5 positions: the guard's case, not the shape's
    report = connectivity_sharpness(model, batches)
    assert {n for n, path in report.paths.items() if path == "vmap"} == {"positions.weight"}
    assert "module 'positions' ran on an input of shape (5,)" in report.fallback_reason
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name
    with pytest.raises(ValueError, match=r"strict: .*positions\.weight: its module 'positions'"):
        connectivity_sharpness(model, tokens([4]), strict=True)


def test_a_table_the_model_reduces_instead_of_broadcasting_is_caught_by_the_guard() -> None:
    """Summed over its first dimension, the expanded table gives other numbers without an
    error: the guard, which runs the model untouched, rejects what that pass recorded."""
    torch.manual_seed(0)
    model = Positions(use=lambda pos: pos.sum(0)).double()
    batches = tokens([4, 3])
    report = connectivity_sharpness(model, batches)
    assert report.paths["positions.weight"] == "vmap"
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


class SequenceFirst(nn.Module):
    """A Linear applied to a (tokens, batch, features) tensor: its dim 0 is not the sample."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.fc = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, x):  # (batch, tokens, 3)
        return self.fc(torch.tanh(self.proj(x.transpose(0, 1))).mean(0))


@pytest.mark.parametrize("batch", [2, 4])
def test_a_layer_whose_rows_are_not_samples_is_caught_when_tokens_equal_the_batch(batch) -> None:
    """As many tokens as samples: the shapes look batched. The guard's subset of the samples
    tells: a sum over the whole batch let the formula through, wrong."""
    torch.manual_seed(0)
    model = SequenceFirst().double()
    batches = make_batches((batch, 3), 2, [batch])
    report = connectivity_sharpness(model, batches)
    assert {n for n, path in report.paths.items() if path == "vmap"} == {"proj.weight", "proj.bias"}
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


def swap_halves_in_pairs(t: torch.Tensor) -> torch.Tensor:
    """Swap the second half of the tokens between samples 2k and 2k+1 (its own inverse); a
    batch of odd size (one sample, in the loop and in torch.func) is left as it is."""
    B, T = t.shape[:2]
    if B % 2:
        return t
    partner = t.view(B // 2, 2, *t.shape[1:]).flip(1).reshape(t.shape)
    return torch.cat([t[:, : T // 2], partner[:, T // 2 :]], dim=1)


class PairMixer(nn.Module):
    """A token-wise Linear run on rows that mix two samples' tokens, unmixed afterwards: the
    model computes the plain function, but the Linear's rows are not samples."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.fc = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, x):  # (batch, tokens, 3)
        h = swap_halves_in_pairs(torch.tanh(self.proj(swap_halves_in_pairs(x))))
        return self.fc(h.mean(1))


def test_the_guard_weighs_its_samples_so_rows_mixed_within_them_are_caught() -> None:
    """The guard's 8 samples are 4 whole pairs: their plain sum of gradients is right even with
    each pair's tokens mixed, and only distinct weights per sample tell."""
    torch.manual_seed(0)
    model = PairMixer().double()
    batches = make_batches((4, 3), 2, [10])
    report = connectivity_sharpness(model, batches)
    assert {n for n, path in report.paths.items() if path == "vmap"} == {"proj.weight", "proj.bias"}
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


class Tokens(nn.Module):
    """A vision transformer's stem as timm and Hugging Face write it: a class token and a
    position table held by the model itself (no layer of their own), then a transformer block
    and a head whose weight is the same Parameter as the patch projection's (tied by sharing)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Linear(4, 4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.randn(1, 6, 4))
        self.block = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True)
        self.mix = nn.Linear(4, 4)
        self.mix.weight = self.patch.weight  # one Parameter, two modules
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = self.patch(x)
        h = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), h], 1) + self.pos_embed
        h = self.mix(torch.tanh(self.block(h)))
        return self.head(h[:, 0])


def test_parameters_without_a_formula_alone_leave_the_hook_path() -> None:
    """No formula covers the class token and position table (their module, the model, has
    none) or the parameter shared by two Linear layers. The two shaped (1, tokens, features)
    are measured on the hook path all the same, handed to the model expanded over the batch;
    the shared one goes to torch.func, with its reason. Every other parameter keeps its layer
    formula, and every one equals the loop."""
    torch.manual_seed(0)
    model = Tokens().double()
    assert _per_sample.parameters_without_formula(model).keys() == {
        "cls_token", "pos_embed", "patch.weight",
    }  # fmt: skip
    batches = make_batches((5, 4), 3, [4, 3])
    report = connectivity_sharpness(model, batches)
    assert report.method == "hooks+vmap"
    assert {n for n, path in report.paths.items() if path != "hooks"} == {"patch.weight"}
    assert "shared by modules 'patch' and 'mix'" in report.fallback_reason
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name
    with pytest.raises(ValueError, match="cannot handle this model.*cls_token, pos_embed"):
        connectivity_sharpness(model, batches, method="hooks")


class HeldTokens(nn.Module):
    """Token-shaped parameters (1, tokens, features) that the model may not simply broadcast
    over the batch: ``use`` says what it does with them."""

    def __init__(self, use: str) -> None:
        super().__init__()
        self.use = use
        self.fc = nn.Linear(4, 4)
        self.shift = nn.Parameter(torch.randn(1, 2, 4))
        self.gate = nn.Parameter(torch.randn(1, 1, 4))
        self.head = nn.Linear(4, 3)
        self.kept: torch.Tensor | None = None

    def forward(self, x):  # x: (B, 2 tokens, 4)
        h = torch.tanh(self.fc(x))
        if self.use == "first row":  # the same values, but every sample's gradient in row 0
            h = h + self.shift[0]
        elif self.use == "flattened":  # (B, 2, 4) expanded flattens to 8B values: an error
            h = h + self.shift.reshape(-1, 4).view(2, 4)
        elif self.use == "summed over dim 0":  # B times the values: another function
            h = h + self.shift.sum(0)
        elif self.use == "kept":  # kept for inspection, as models keep attention maps
            h = h + self.shift
            self.kept = h
        else:
            h = h + self.shift
        return self.head((h * torch.sigmoid(self.gate)).mean(1))


@pytest.mark.parametrize("use", ["broadcast", "first row", "flattened", "summed over dim 0"])
def test_held_parameters_expanded_over_the_batch_or_sent_to_torch_func(use: str) -> None:
    """Broadcast, the held parameters take the hook path. Where the model indexes them (every
    sample's gradient lands in row 0) the guard rejects them; where it reshapes them (an error)
    or sums them (other outputs, which the guard's pass of the model as it is shows) the batch
    is measured again without expansion. In every case the numbers equal the loop."""
    torch.manual_seed(0)
    model = HeldTokens(use).double()
    batches = make_batches((2, 4), 3, [5, 3])
    report = connectivity_sharpness(model, batches)
    generic = {n for n, path in report.paths.items() if path != "hooks"}
    if use == "broadcast":
        assert report.method == "hooks" and not generic, report.fallback_reason
    elif use == "first row":
        assert generic == {"shift"}, report.fallback_reason
        assert "exactness guard" in report.fallback_reason
    else:
        assert generic == {"shift", "gate"}, report.fallback_reason
        assert "does not take it expanded over the batch" in report.fallback_reason
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


class Flattened(nn.Module):
    """Layers run on k rows per sample: a feed-forward on (B·T, d) as OPT runs it, and a
    Linear on windows (B·windows, tokens, d) as Swin runs it; ``token_major`` flattens the
    feed-forward's rows token by token instead, (T·B, d)."""

    def __init__(self, token_major: bool = False) -> None:
        super().__init__()
        self.token_major = token_major
        self.up, self.norm, self.down = nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 4)
        self.window = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):  # x: (B, 4 tokens, 4)
        B, T, D = x.shape
        rows = x.transpose(0, 1) if self.token_major else x
        h = self.down(torch.tanh(self.norm(self.up(rows.reshape(-1, D)))))
        h = h.view(T, B, D).transpose(0, 1) if self.token_major else h.view(B, T, D)
        windows = self.window(h.reshape(B * 2, T // 2, D))  # two windows per sample
        return self.fc(torch.tanh(windows).view(B, T, D).mean(1))


@pytest.mark.parametrize("token_major", [False, True], ids=["sample by sample", "token by token"])
def test_layers_run_on_several_rows_per_sample(token_major: bool) -> None:
    """Rows flattened sample by sample take the layer formulas, grouped k rows per sample; rows
    flattened token by token do not group that way, the guard's weighted check says so, and
    those layers go to torch.func. Both equal the loop."""
    torch.manual_seed(0)
    model = Flattened(token_major).double()
    randomise_norms(model)  # β = 0 would make its terms zero on either grouping
    batches = make_batches((4, 4), 3, [5, 3])
    report = connectivity_sharpness(model, batches)
    generic = {n for n, path in report.paths.items() if path != "hooks"}
    if token_major:
        assert generic == {f"{m}.{p}" for m in ("up", "norm", "down") for p in ("weight", "bias")}
        assert "exactness guard" in report.fallback_reason
    else:
        assert report.method == "hooks" and not generic, report.fallback_reason
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


def test_a_model_that_keeps_what_its_forward_computed_is_warned_about() -> None:
    """A model that keeps a tensor computed from a token parameter (an attention map, or a
    cache its next forward would reuse) keeps the expanded leaf alive past the measured pass:
    the parameters go to torch.func from then on, with a warning."""
    torch.manual_seed(0)
    model = HeldTokens("kept").double()
    batches = make_batches((2, 4), 3, [5, 3])
    with pytest.warns(UserWarning, match=r"kept a tensor computed from shift, gate"):
        report = connectivity_sharpness(model, batches)
    assert {n for n, path in report.paths.items() if path != "hooks"} == {"shift", "gate"}
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


def test_only_token_shaped_parameters_are_expanded() -> None:
    """A (1, n) table or a (1,) scale held by the model is not taken for a token sequence."""
    torch.manual_seed(0)
    model = HeldTokens("broadcast").double()
    model.scale = nn.Parameter(torch.ones(1, 3))
    without = _per_sample.parameters_without_formula(model)
    hooked = _per_sample.HookedPerSample(model, F.cross_entropy, without=without)
    try:
        assert list(hooked.broadcast) == ["shift", "gate"] and hooked.elsewhere == {"scale"}
    finally:
        hooked.close()


class LayerScaled(nn.Module):
    """Layer-scale parameters held by the model itself, as ConvNeXt, CaiT and DINOv2 hold them;
    ``use`` says how the model applies ``gamma`` (d,)."""

    def __init__(self, use: str) -> None:
        super().__init__()
        self.use = use
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 4)
        self.gamma = nn.Parameter(torch.rand(4) + 0.5)
        self.channel_scale = nn.Parameter(torch.rand(4, 1, 1) + 0.5)  # on (B, C, H, W)
        self.mask_token = nn.Parameter(torch.randn(4))  # used on masked samples alone
        self.head = nn.Linear(4, 3)

    def forward(self, x):  # x: (B, 3, 4, 4)
        if self.use == "refuses the probe" and torch._C._is_torch_function_mode_enabled():
            raise RuntimeError("this model does not run under a TorchFunctionMode")
        h = torch.tanh(self.conv(x)) * self.channel_scale
        tokens = self.fc(h.flatten(2).transpose(1, 2))  # (B, 16, 4)
        if self.use == "channels last":  # (B, H, W, C), as ConvNeXt's blocks
            tokens = tokens.view(-1, 4, 4, 4) * self.gamma
        elif self.use in ("tokens", "refuses the probe"):  # (B, T, d), as DINOv2's LayerScale
            tokens = self.gamma * tokens
        elif self.use == "in place":  # timm's LayerScale(inplace=True)
            tokens = tokens.mul_(self.gamma)
        elif self.use == "reshaped":  # timm's ConvNeXt: gamma.reshape(1, -1, 1, 1)
            tokens = tokens.transpose(1, 2).reshape(-1, 4, 4, 4) * self.gamma.reshape(1, -1, 1, 1)
        elif self.use == "also a matmul":
            tokens = tokens * self.gamma + tokens @ torch.diag(self.gamma)
        elif self.use == "token major":  # (T, B, d) with T = 4 tokens, as many as the probe's
            tokens = (tokens[:, :4].transpose(0, 1) * self.gamma).transpose(0, 1)
        if self.use == "masked later":  # samples with a large entry are masked out
            masked = x.flatten(1).abs().amax(1) > 50
            if masked.any():
                tokens = torch.where(masked[:, None, None], self.mask_token, tokens)
        return self.head(torch.tanh(tokens).flatten(1, -2).mean(1))


@pytest.mark.parametrize(
    "use",
    [
        "channels last", "tokens", "in place", "reshaped", "also a matmul", "token major",
        "refuses the probe", "masked later",
    ],
)  # fmt: skip
def test_layer_scale_parameters_take_the_hook_path_where_the_model_only_broadcasts_them(
    use: str,
) -> None:
    """A parameter that one forward uses only in elementwise arithmetic with activations of one
    row per sample is handed to the model expanded over the batch, and takes the hook path.
    One it reshapes, or also uses another way, goes to torch.func. Handed over where its
    broadcast does not follow the samples (a token-major layout whose tokens number the
    probe's samples), the measured pass fails and runs again without expansion. A model that
    cannot run under the probe keeps them on torch.func. A parameter the probe saw unused (a
    mask token) has zero terms on the hook path, until a batch uses it: the gradient that the
    backward then forms says so, and that batch's go to torch.func. All equal the loop."""
    torch.manual_seed(0)
    model = LayerScaled(use).double()
    batches = make_batches((3, 4, 4), 3, [5, 6])
    batches[1][0][-1] *= 100  # the last sample of the second batch is masked
    if use == "masked later":  # `if masked.any()` is control flow that torch.func refuses
        with pytest.warns(UserWarning, match="one sample at a time"):
            report = connectivity_sharpness(model, batches)
    else:
        report = connectivity_sharpness(model, batches)
    generic = {n for n, path in report.paths.items() if path != "hooks"}
    if use in ("channels last", "tokens", "in place"):
        assert report.method == "hooks" and not generic, report.fallback_reason
        assert report.by_parameter["mask_token"] == 0.0
    elif use == "masked later":
        assert generic == {"mask_token"} and report.by_parameter["mask_token"] > 0
        assert "mask_token (the model used it, and the first batch's probe" in (
            report.fallback_reason
        )
    elif use == "token major":  # all handed over, all measured again as the model is
        assert generic == {"gamma", "channel_scale", "mask_token"}, report.fallback_reason
        assert "does not take it expanded over the batch" in report.fallback_reason
    elif use == "refuses the probe":
        assert generic == {"gamma", "channel_scale", "mask_token"}, report.fallback_reason
        assert "no per-sample formula covers gamma, channel_scale" in report.fallback_reason
    else:
        assert generic == {"gamma"}, report.fallback_reason
        assert "no per-sample formula covers gamma" in report.fallback_reason
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


class DataFormatLayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the last dim, or over dim 1 of (B, C, H, W) with
    ``data_format="channels_first"``, as ConvNeXt's LayerNorm is written."""

    def __init__(self, channels: int, data_format: str) -> None:
        super().__init__(channels)
        self.data_format = data_format

    def forward(self, x):
        if self.data_format == "channels_first":
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return super().forward(x)


class ChannelsFirstNormed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.first = DataFormatLayerNorm(4, "channels_first")
        self.last = DataFormatLayerNorm(4, "channels_last")
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.first(self.conv(x)))
        return self.head(self.last(h.permute(0, 2, 3, 1)).mean((1, 2)))


@pytest.fixture()
def data_format_layer_norm():
    """DataFormatLayerNorm registered as Hugging Face's ConvNeXt LayerNorm is."""
    roles.register_module_type(DataFormatLayerNorm, "norm", "layer_norm")
    yield
    del roles._MODULE_TYPES[DataFormatLayerNorm]


@pytest.mark.parametrize("registered", [True, False])
def test_a_channels_first_layer_norm_has_a_formula_once_registered(
    registered: bool, request
) -> None:
    """Registered, both data formats take the hook path (dim 1 for channels_first, as op_of
    says); unregistered, the subclass goes to torch.func. Both equal the loop."""
    if registered:
        request.getfixturevalue("data_format_layer_norm")
    torch.manual_seed(0)
    model = ChannelsFirstNormed().double()
    randomise_norms(model)
    assert roles.op_of(model.first) == ("layer_norm_channels_first" if registered else None)
    batches = make_batches((3, 4, 4), 3, [5, 3])
    report = connectivity_sharpness(model, batches)
    generic = {n for n, path in report.paths.items() if path != "hooks"}
    if registered:
        assert report.method == "hooks" and not generic, report.fallback_reason
    else:
        assert generic == {f"{m}.{p}" for m in ("first", "last") for p in ("weight", "bias")}
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name
