"""Adaptive β decay (Section 4.2, Algorithm 1) against hand computations and the fixed policies."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from biasdecay.decay import AdaptiveBetaDecay, decay_policy, param_groups


def net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
        nn.LayerNorm(5),
        nn.Linear(5, 3),
    ).double()
    with torch.no_grad():  # non-zero β so that C(β) is not zero at the first step
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.bias.uniform_(-0.5, 0.5)
                m.weight.uniform_(0.5, 1.5)
    return model


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 2, 6, 6, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (8,), generator=g)


def backward(model: nn.Module, seed: int = 0) -> None:
    x, y = data(seed)
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()


def make_optimizer(name: str, groups):
    if name in ("lamb", "lars"):
        from biasdecay.optim import LAMB, LARS

        if name == "lamb":
            return LAMB(groups, lr=0.01)
        return LARS(groups, lr=0.1, momentum=0.9)
    return {
        "adamw": lambda: torch.optim.AdamW(groups, lr=0.01),
        "sgd": lambda: torch.optim.SGD(groups, lr=0.05, momentum=0.9),
        "adam": lambda: torch.optim.Adam(groups, lr=0.01),
    }[name]()


def test_decisions_equal_hand_computation() -> None:
    model = net()
    backward(model)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))]
    by_hand = []
    for m in norms:  # r_l = Σ|β g_β| / Σ|γ g_γ|, one layer at a time
        c_beta = sum(abs(b * g) for b, g in zip(m.bias.tolist(), m.bias.grad.tolist(), strict=True))
        c_gamma = sum(
            abs(w * g) for w, g in zip(m.weight.tolist(), m.weight.grad.tolist(), strict=True)
        )
        by_hand.append(c_beta / c_gamma)
    threshold = sorted(by_hand)[1]  # between the values: some layers decayed, some not
    groups = param_groups(model, decay_policy("adaptive_beta_decay", threshold=threshold), 0.01)
    optimizer = torch.optim.SGD(groups, lr=0.1)
    controller = AdaptiveBetaDecay(model, optimizer, threshold=threshold, beta_decay=1.0)
    assert controller.layer_names == ["1", "4", "8"]
    decisions = controller.step()
    assert controller.last_ratios.tolist() == pytest.approx(by_hand, rel=1e-12)
    assert decisions.tolist() == [r >= threshold for r in by_hand]
    assert 0 < sum(decisions.tolist()) < len(by_hand)
    # The decision is the weight_decay of each layer's own β group, in the optimiser's state.
    beta_groups = [g for g in optimizer.param_groups if g["adaptive_beta"]]
    assert [g["layer"] for g in beta_groups] == ["1", "4", "8"]
    expected = [1.0 if r >= threshold else 0.0 for r in by_hand]
    assert [g["weight_decay"].item() for g in beta_groups] == expected
    saved = [
        g["weight_decay"] for g in optimizer.state_dict()["param_groups"] if g["adaptive_beta"]
    ]
    assert [w.item() for w in saved] == expected


def run(policy_name: str, optimizer: str, *, threshold: float | None, steps: int = 5):
    """Train ``steps`` steps; with ``threshold`` set, adaptive β decay with that R."""
    model = net()
    if threshold is None:
        policy = decay_policy(policy_name)
    else:
        policy = decay_policy("adaptive_beta_decay", threshold=threshold)
    opt = make_optimizer(optimizer, param_groups(model, policy, weight_decay=0.01))
    controller = (
        AdaptiveBetaDecay(model, opt, threshold=threshold) if threshold is not None else None
    )
    for step in range(steps):
        backward(model, seed=step)
        if controller is not None:
            controller.step()
        opt.step()
    return model, controller


@pytest.mark.parametrize("optimizer", ["lamb", "lars", "adamw", "sgd", "adam"])
def test_threshold_zero_equals_beta_decay(optimizer: str) -> None:
    adaptive, controller = run("", optimizer, threshold=0.0)
    fixed, _ = run("beta_decay", optimizer, threshold=None)
    plain, _ = run("no_bias_decay", optimizer, threshold=None)
    assert all(all(row) for row in controller.history()["decisions"])
    for (name, a), b in zip(adaptive.named_parameters(), fixed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)
    # ... and the decay did something: β differs from no_bias_decay.
    assert not torch.allclose(adaptive[1].bias, plain[1].bias)


@pytest.mark.parametrize("optimizer", ["lamb", "lars", "adamw", "sgd", "adam"])
def test_threshold_infinite_equals_no_bias_decay(optimizer: str) -> None:
    adaptive, controller = run("", optimizer, threshold=math.inf)
    plain, _ = run("no_bias_decay", optimizer, threshold=None)
    assert not any(any(row) for row in controller.history()["decisions"])
    for (name, a), b in zip(adaptive.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("optimizer", ["lamb", "lars", "sgd"])
def test_decisions_survive_an_optimiser_state_dict_round_trip(optimizer: str) -> None:
    """The decay state is group state: a resumed optimiser continues with the same decisions."""
    model = net()
    policy = decay_policy("adaptive_beta_decay", threshold=0.05)
    opt = make_optimizer(optimizer, param_groups(model, policy, 0.01))
    controller = AdaptiveBetaDecay(model, opt, threshold=0.05)
    backward(model)
    controller.step()
    controller.threshold = float(controller.last_ratios.median())  # some decayed, some not
    decisions = controller.step()
    assert 0 < int(decisions.sum()) < len(decisions)  # a mix, so a reset would show
    state = opt.state_dict()
    resumed = make_optimizer(optimizer, param_groups(model, policy, 0.01))
    again = AdaptiveBetaDecay(model, resumed, threshold=controller.threshold)
    resumed.load_state_dict(state)
    got = [g["weight_decay"].item() for g in resumed.param_groups if g["adaptive_beta"]]
    assert got == decisions.double().tolist()
    backward(model, seed=1)  # and the controller writes into the loaded tensors
    new = again.step()
    got = [g["weight_decay"].item() for g in resumed.param_groups if g["adaptive_beta"]]
    assert got == new.double().tolist()


def test_r_of_layers_of_any_shape_and_dtype_equals_a_loop() -> None:
    from biasdecay.decay import bias_utilization_from_grads

    torch.manual_seed(1)
    layers = [nn.LayerNorm((3, 4)), nn.GroupNorm(2, 6), nn.BatchNorm1d(5)]
    for m in layers:
        for p in m.parameters():
            p.data = torch.randn_like(p, dtype=torch.float64)
            p.grad = torch.randn_like(p)
    layers[2].bias.grad = None  # no gradient yet: C(β) = 0
    betas, gammas = [m.bias for m in layers], [m.weight for m in layers]
    with torch.no_grad():
        loop = [
            float((b * (0 if b.grad is None else b.grad)).abs().sum() / (g * g.grad).abs().sum())
            for b, g in zip(betas, gammas, strict=True)
        ]
    assert bias_utilization_from_grads(betas, gammas).tolist() == pytest.approx(loop, rel=1e-12)
    assert loop[2] == 0.0
    half = [p.detach().half().requires_grad_() for p in (*betas, *gammas)]
    for h, p in zip(half, (*betas, *gammas), strict=True):
        h.grad = None if p.grad is None else (p.grad * 1e3).half()  # summed in float32
    ratios = bias_utilization_from_grads(half[:3], half[3:])
    assert ratios.dtype == torch.float32 and ratios.tolist() == pytest.approx(loop, rel=2e-3)


def test_edge_cases_of_r() -> None:
    model = net()
    backward(model)
    bn = model[1]
    bn.weight.grad.zero_()  # C(γ) = 0, C(β) > 0 → r = ∞
    model[4].weight.grad.zero_()
    model[4].bias.grad.zero_()  # both zero → r = 0
    groups = param_groups(model, decay_policy("adaptive_beta_decay"), 0.01)
    controller = AdaptiveBetaDecay(model, torch.optim.SGD(groups, lr=0.1), threshold=0.1)
    decisions = controller.step()
    assert controller.last_ratios[0].item() == math.inf and decisions[0]
    assert controller.last_ratios[1].item() == 0.0 and not decisions[1]


def test_history_and_state_dict_round_trip() -> None:
    model = net()
    groups = param_groups(model, decay_policy("adaptive_beta_decay"), 0.01)
    opt = torch.optim.SGD(groups, lr=0.1)
    controller = AdaptiveBetaDecay(model, opt, threshold=0.05, history_every=2)
    for step in range(5):
        backward(model, seed=step)
        controller.step()
        opt.step()
    history = controller.history()
    assert history["steps"] == [2, 4] and history["layers"] == ["1", "4", "8"]
    assert len(history["ratios"]) == 2 and len(history["ratios"][0]) == 3
    state = controller.state_dict()
    fresh = AdaptiveBetaDecay(model, opt, threshold=0.5, history_every=1)
    fresh.load_state_dict(state)
    assert fresh.threshold == 0.05 and fresh.step_count == 5 and fresh.history() == history
    other = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    other_groups = param_groups(other, decay_policy("adaptive_beta_decay"), 0.01)
    wrong = AdaptiveBetaDecay(other, torch.optim.SGD(other_groups, lr=0.1))
    with pytest.raises(ValueError, match="other layers"):
        wrong.load_state_dict(state)


def test_step_does_not_synchronise_with_the_host(monkeypatch) -> None:
    """No .item(), no bool() of a tensor, no .tolist() inside step()."""
    model = net()
    backward(model)
    for name in ("lamb", "adamw", "sgd"):
        groups = param_groups(model, decay_policy("adaptive_beta_decay"), 0.01)
        controller = AdaptiveBetaDecay(model, make_optimizer(name, groups))

        def forbidden(*args, **kwargs):
            raise AssertionError("host synchronisation inside AdaptiveBetaDecay.step()")

        with monkeypatch.context() as m:
            for attr in ("item", "__bool__", "tolist", "cpu"):
                m.setattr(torch.Tensor, attr, forbidden)
            controller.step()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": -1.0}, r"threshold must be in \[0, inf\]"),
        ({"threshold": math.nan}, r"threshold must be in \[0, inf\]"),
        ({"beta_decay": math.inf}, r"beta_decay must be in \[0, inf\)"),
        ({"history_every": -1}, r"history_every must be in \[0, inf\)"),
        ({"history_every": 1.5}, "history_every must be an int"),
    ],
)
def test_bad_arguments(kwargs, message) -> None:
    model = net()
    opt = torch.optim.SGD(param_groups(model, decay_policy("adaptive_beta_decay"), 0.0), lr=0.1)
    with pytest.raises(ValueError, match=message):
        AdaptiveBetaDecay(model, opt, **kwargs)


def test_models_it_cannot_act_on() -> None:
    plain = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="nothing to act on"):
        AdaptiveBetaDecay(plain, torch.optim.SGD(plain.parameters(), lr=0.1))
    model = net()
    model[1].weight.requires_grad_(False)
    with pytest.raises(ValueError, match="needs a trainable γ.*'1'"):
        AdaptiveBetaDecay(model, torch.optim.SGD(model.parameters(), lr=0.1))
    model = net()
    partial = torch.optim.SGD([p for n, p in model.named_parameters() if n != "4.bias"], lr=0.1)
    with pytest.raises(ValueError, match="β of '4' is not in the optimiser"):
        AdaptiveBetaDecay(model, partial)
    spread = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3, device="meta"))  # two devices
    with pytest.raises(ValueError, match=r"must be on one device; .*\['cpu', 'meta'\]"):
        AdaptiveBetaDecay(spread, torch.optim.SGD(spread.parameters(), lr=0.1))


@pytest.mark.parametrize(
    "build, problem",
    [
        (lambda m: m.parameters(), "shares its param group with 5 other tensors"),
        (
            lambda m: [{"params": [p]} for p in m.parameters()],
            "is in a group whose weight_decay is the number 0.01",
        ),
    ],
)
def test_groups_that_cannot_hold_a_decision_are_refused(build, problem) -> None:
    """A β sharing a group, or with a number for decay, leaves no per-layer decision to write."""
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    )
    optimizer = torch.optim.SGD(build(model), lr=0.1, weight_decay=0.01)
    with pytest.raises(ValueError, match=rf"β of '1' {problem}.*biasdecay.param_groups"):
        AdaptiveBetaDecay(model, optimizer)
