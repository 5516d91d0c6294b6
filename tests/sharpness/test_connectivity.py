"""Connectivity sharpness against a naive one-sample-at-a-time oracle (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from biasdecay.roles import Role
from biasdecay.sharpness.connectivity import (
    bias_utilization,
    connection_sensitivity,
    connectivity_sharpness,
)


def naive_per_sample(model: nn.Module, batches) -> dict[str, float]:
    """C split by parameter: one backward per sample, |θ ⊙ g| summed, averaged over samples."""
    model.eval()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sums = {n: 0.0 for n, _ in params}
    count = 0
    for x, y in batches:
        for i in range(x.shape[0]):
            loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
            grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
            for (n, p), g in zip(params, grads, strict=True):
                if g is not None:
                    sums[n] += (g * p).abs().sum().item()
            count += 1
    return {n: s / count for n, s in sums.items()}


def naive_minibatch(model: nn.Module, batches, train: bool) -> dict[str, float]:
    model.train(train)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sums = {n: 0.0 for n, _ in params}
    count = 0
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [p for _, p in params])
        for (n, p), g in zip(params, grads, strict=True):
            sums[n] += (g * p).abs().sum().item()
        count += 1
    return {n: s / count for n, s in sums.items()}


class ConvBNNet(nn.Module):
    def __init__(self, c_in: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(5)
        self.conv3 = nn.Conv2d(5, 6, 1, groups=1, padding="same", padding_mode="reflect")
        self.gn = nn.GroupNorm(2, 6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.gn(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


class Block(nn.Module):
    """A residual block with an in-place shortcut add, as torch ResNets write it."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False, groups=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.short(x)
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.blocks = nn.Sequential(Block(4, 4, 1), Block(4, 6, 2))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.head(self.blocks(x).mean((2, 3)))


class OddConvs(nn.Module):
    """Dilated, grouped, 1-D and strided convolutions: every branch of the conv hook path."""

    def __init__(self) -> None:
        super().__init__()
        self.dilated = nn.Conv2d(2, 4, 3, padding=2, dilation=2)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.rect = nn.Conv2d(4, 3, (1, 3), stride=(2, 1), padding=(0, 1))
        self.conv1d = nn.Conv1d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        x = torch.relu(self.dilated(x))
        x = torch.relu(self.grouped(x))
        x = torch.relu(self.rect(x))
        x = torch.relu(self.conv1d(x.flatten(2)))
        return self.fc(x.mean(2))


def randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial γ, β and running statistics so that no term vanishes by construction."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)
            if not isinstance(m, norms):
                continue  # BatchNorm and InstanceNorm derive from _NormBase
            if m.weight is not None:
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=g))
            if getattr(m, "bias", None) is not None:  # RMSNorm has none
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def make_batches(shape, n_classes, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn((b, *shape), generator=g, dtype=torch.float64),
            torch.randint(0, n_classes, (b,), generator=g),
        )
        for b in sizes
    ]


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 7),
        nn.BatchNorm1d(7),
        nn.ReLU(),
        nn.Linear(7, 5),
        nn.LayerNorm(5),
        nn.ReLU(),
        nn.Linear(5, 3),
    )


CASES = {
    "mlp": (mlp, (3, 4)),
    "conv_bn": (ConvBNNet, (2, 6, 6)),
    "resnet": (TinyResNet, (1, 8, 8)),
    "odd_convs": (OddConvs, (2, 7, 6)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_per_sample_matches_naive_loop(case: str, method: str) -> None:
    torch.manual_seed(0)
    build, shape = CASES[case]
    model = build().double()
    randomise_norms(model)
    batches = make_batches(shape, 3, [5, 3])
    report = connectivity_sharpness(model, batches, method=method, chunk_size=2)
    expected = naive_per_sample(model, batches)
    assert report.method == method
    assert report.n_samples == 8 and report.batch_sizes == (5, 3)
    for name, value in expected.items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10, abs=1e-300), name
    assert report.total == pytest.approx(sum(expected.values()), rel=1e-10)


def test_auto_uses_hooks_and_sends_only_unknown_modules_to_vmap() -> None:
    model = mlp().double()
    batches = make_batches((3, 4), 3, [4])
    assert connectivity_sharpness(model, batches).method == "hooks"

    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.s = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

        def forward(self, x):
            # through exp: not the plain broadcast a layer scale is (which the hook path
            # takes, test_exactness_zoo.py), so no path but torch.func's
            return x * self.s.exp()

    odd = nn.Sequential(mlp(), Scale()).double()
    report = connectivity_sharpness(odd, batches)
    # The Scale's parameter alone goes to torch.func; the layers keep their formulas.
    assert report.method == "hooks+vmap" and "'1' (Scale) has no known operation" in (
        report.fallback_reason
    )
    assert {n for n, p in report.paths.items() if p != "hooks"} == {"1.s"}
    expected = naive_per_sample(odd, batches)
    for name, value in expected.items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name
    with pytest.raises(ValueError, match=r"method='hooks' cannot handle.*1\.s \(its module"):
        connectivity_sharpness(odd, batches, method="hooks")
    only_odd = Scale().double()
    report = connectivity_sharpness(only_odd, [(torch.randn(4, 3).double(), torch.arange(4) % 3)])
    assert report.method == "vmap" and "no per-sample formula covers s" in report.fallback_reason


def test_layer_called_twice_falls_back_exactly() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.out = nn.Linear(4, 3)

        def forward(self, x):
            return self.out(torch.relu(self.fc(torch.relu(self.fc(x)))))

    model = Twice().double()
    batches = make_batches((4,), 3, [6])
    report = connectivity_sharpness(model, batches)
    assert report.method == "vmap"
    expected = naive_per_sample(model, batches)
    assert report.total == pytest.approx(sum(expected.values()), rel=1e-10)


@pytest.mark.parametrize("train", [False, True])
def test_minibatch_matches_naive(train: bool) -> None:
    torch.manual_seed(1)
    model = TinyResNet().double()
    randomise_norms(model)
    batches = make_batches((1, 8, 8), 3, [6, 4])
    report = connectivity_sharpness(model, batches, per_sample=False, train_mode=train)
    expected = naive_minibatch(_copy(model), batches, train)
    assert report.measure == "C_m" and report.train_mode is train
    for name, value in expected.items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


def _copy(model: nn.Module) -> nn.Module:
    clone = TinyResNet().double()
    clone.load_state_dict(model.state_dict())
    return clone


def test_parts_sum_to_total_and_table2_rows() -> None:
    model = ConvBNNet().double()
    randomise_norms(model)
    report = connectivity_sharpness(model, make_batches((2, 6, 6), 3, [4]))
    assert math.fsum(report.by_parameter.values()) == pytest.approx(report.total, rel=1e-12)
    assert math.fsum(report.by_module.values()) == pytest.approx(report.total, rel=1e-12)
    assert math.fsum(report.by_role.values()) == pytest.approx(report.total, rel=1e-12)
    rows = report.table2()
    assert list(rows) == ["Conv", "γ", "β", "FC(w)", "FC(b)", "other", "Total"]
    assert rows["other"] is None  # no parameter of another kind: absent, not zero
    parts = [v for k, v in rows.items() if k != "Total"]
    assert math.fsum(v for v in parts if v is not None) == pytest.approx(rows["Total"])
    assert rows["Conv"] == pytest.approx(
        sum(v for n, v in report.by_parameter.items() if n.startswith("conv"))
    )
    assert report.roles["bn1.bias"] is Role.NORM_SHIFT
    assert report.to_dict()["table2"]["Total"] == report.total


def test_model_mode_and_buffers_unchanged() -> None:
    model = TinyResNet()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = make_batches((1, 8, 8), 3, [4])
    batches = [(x.float(), y) for x, y in batches]
    connectivity_sharpness(model, batches)
    connectivity_sharpness(model, batches, per_sample=False, train_mode=True)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_frozen_parameters_are_ignored() -> None:
    model = mlp().double()
    model[1].weight.requires_grad_(False)
    batches = make_batches((3, 4), 3, [4])
    report = connectivity_sharpness(model, batches)
    assert "1.weight" not in report.by_parameter
    expected = naive_per_sample(model, batches)
    assert report.total == pytest.approx(sum(expected.values()), rel=1e-10)


def test_scale_invariance_identity_eq_14_16() -> None:
    """Train mode: Σ_j θ_jk ∂L/∂θ_jk (+ b_k ∂L/∂b_k) = 0 per channel of a layer before BN."""
    torch.manual_seed(2)
    model = ConvBNNet().double()
    randomise_norms(model)
    # BN's ε breaks exact scale invariance (N(cx) = N(x) only for ε → 0; torch refuses ε = 0 in
    # training): with ε = 1e-5 the sums are off by O(ε/var) ≈ 1e-6, with ε = 1e-30 they vanish.
    model.bn1.eps = model.bn2.eps = 1e-30
    ((x, y),) = make_batches((2, 6, 6), 3, [8])
    sens = connection_sensitivity(model, x, y, train_mode=True)
    conv1 = sens["conv1.weight"].sum((1, 2, 3))  # no bias, followed by bn1
    conv2 = sens["conv2.weight"].sum((1, 2, 3)) + sens["conv2.bias"]  # bias, followed by bn2
    scale = sens["conv1.weight"].abs().sum() + sens["conv2.weight"].abs().sum()
    assert scale > 1e-6
    assert conv1.abs().max() < 1e-12 * scale
    assert conv2.abs().max() < 1e-12 * scale
    # In eval mode (fixed statistics) the identity does not hold: the test can fail.
    sens_eval = connection_sensitivity(model, x, y, train_mode=False)
    assert sens_eval["conv1.weight"].sum((1, 2, 3)).abs().max() > 1e-6


def test_bias_utilization_ratios_and_edge_cases() -> None:
    model = ConvBNNet().double()
    randomise_norms(model)
    report = connectivity_sharpness(model, make_batches((2, 6, 6), 3, [4]))
    r = bias_utilization(report, model)
    assert list(r) == ["bn1", "bn2", "gn"]
    assert r["bn1"] == pytest.approx(
        report.by_parameter["bn1.bias"] / report.by_parameter["bn1.weight"]
    )
    # C(γ)=0 with C(β)>0 is infinite; both zero is zero.
    edited = dict(report.by_parameter, **{"bn1.weight": 0.0, "bn2.weight": 0.0, "bn2.bias": 0.0})
    from dataclasses import replace

    r2 = bias_utilization(replace(report, by_parameter=edited))
    assert r2["bn1"] == math.inf and r2["bn2"] == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train_mode": True}, "eval mode"),
        ({"method": "fast"}, "valid methods"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        connectivity_sharpness(mlp(), make_batches((3, 4), 3, [2]), **kwargs)


def test_bad_data() -> None:
    with pytest.raises(ValueError, match="no batches"):
        connectivity_sharpness(mlp(), [])
    with pytest.raises(TypeError, match="pairs"):
        connectivity_sharpness(mlp(), [torch.zeros(2, 12)])
    several_inputs = [({"input_ids": torch.zeros(2, 12)}, torch.zeros(2, dtype=torch.long))]
    with pytest.raises(TypeError, match=r"got dict and Tensor.*LogitsOf"):
        connectivity_sharpness(mlp(), several_inputs)
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        connectivity_sharpness(frozen, make_batches((3, 4), 3, [2]))


def test_hooks_refuses_unsupported_model() -> None:
    prelu = nn.Sequential(nn.Linear(4, 4), nn.PReLU(4)).double()
    with pytest.raises(ValueError, match=r"method='hooks' cannot.*'1' \(PReLU\)"):
        connectivity_sharpness(prelu, make_batches((4,), 3, [2]), method="hooks")


@pytest.mark.parametrize("method", ["auto", "hooks", "vmap", "loop"])
@pytest.mark.parametrize("image", [False, True])
def test_batch_norm_without_running_statistics_has_no_per_sample_c(method, image) -> None:
    """Its eval forward normalises with the batch's statistics. torch.func and the loop, which
    run one sample alone, returned a number for the image model (each sample normalised with
    its own statistics, another function) and a raw torch error for the other."""
    if image:
        layers = [nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, track_running_stats=False), nn.Flatten()]
        shape, width = (2, 5, 5), 27
    else:
        layers = [nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False)]
        shape, width = (4,), 4
    model = nn.Sequential(*layers, nn.Linear(width, 3)).double()
    batches = make_batches(shape, 3, [4])
    with pytest.raises(ValueError, match=r"BatchNorm '1'.*no running statistics.*per_sample=False"):
        connectivity_sharpness(model, batches, method=method)
    assert connectivity_sharpness(model, batches, per_sample=False).total > 0


def test_output_gradients_through_in_place_ops_and_residuals() -> None:
    """Each layer's output gradient, taken by a hook as the backward pass forms it, is the one
    of the value the layer returned, through in-place ReLUs and residual additions."""
    torch.manual_seed(0)
    model = TinyResNet().double()
    randomise_norms(model)
    batches = make_batches((1, 8, 8), 3, [9])
    report = connectivity_sharpness(model, batches, method="hooks", strict=True)
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10, abs=1e-300), name


class TwoBranches(nn.Module):
    """Two stems read the input side by side; a head reads both."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Linear(4, 3), nn.Linear(4, 3)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.left(x).relu(), self.right(x).tanh()], 1))


def test_the_backward_asks_autograd_for_the_lowest_layers_alone() -> None:
    """Autograd is asked for the gradients at the layers with no other layer below them (every
    other layer's node lies above one of them and runs); a layer above one is not asked for."""
    from biasdecay.sharpness._per_sample import lowest_layers

    def edges(model: nn.Module, x: torch.Tensor) -> dict[str, object]:
        found: dict[str, object] = {}
        for name, m in model.named_children():
            m.register_forward_hook(
                lambda _m, _a, out, name=name: found.__setitem__(
                    name, torch.autograd.graph.get_gradient_edge(out)
                )
            )
        model(x)
        return found

    x = torch.randn(5, 4)
    assert lowest_layers(edges(TwoBranches(), x)) == ["left", "right"]
    chain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    found = edges(chain, x)
    assert lowest_layers({k: v for k, v in found.items() if k != "1"}) == ["0"]
    # The two-branch model is exact on the hook path too.
    torch.manual_seed(0)
    model = TwoBranches().double()
    batches = make_batches((4,), 2, [6])
    report = connectivity_sharpness(model, batches, method="hooks", strict=True)
    for name, value in naive_per_sample(model, batches).items():
        assert report.by_parameter[name] == pytest.approx(value, rel=1e-10), name


def test_the_backward_frees_each_layer_output_gradient_once_its_terms_are_formed() -> None:
    """By the time the lowest layer's gradient arrives, the gradients of the layers above it
    are gone: the hook path never holds every layer's output gradient at once."""
    import weakref

    import torch.nn.functional as F

    from biasdecay.sharpness._per_sample import HookedPerSample

    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(5))).eval()
    hooked = HookedPerSample(model, F.cross_entropy)
    taken, alive_at_last = [], []
    formulas = hooked.recorder.on_gradient

    def watch(name: str, grad: torch.Tensor) -> None:
        if name == "0.0":  # the lowest layer: its gradient comes last
            alive_at_last.append(sum(ref() is not None for ref in taken))
        taken.append(weakref.ref(grad))
        formulas(name, grad)

    hooked.recorder.on_gradient = watch
    x, y = torch.randn(6, 8), torch.randint(0, 8, (6,))
    terms, failures = hooked(x, y)
    hooked.close()
    assert not failures and len(terms) == 10 and len(taken) == 5
    assert alive_at_last == [0]
