"""LARS: a hand-written float64 reference, foreach against single-tensor, and its contracts."""

from __future__ import annotations

import io

import pytest
import torch
from stepping import build_groups, lr_at, make_grads, make_params, run, scheduled_decay
from torch import nn

from biasdecay.optim import LARS

BASE = {
    "lr": 0.5,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "trust_coefficient": 0.02,
    "eps": 1e-8,
    "nesterov": False,
    "layer_adaptation": "decayed",  # the local rate exactly where the step's decay is non-zero
}
ALL = [0, 1, 2, 3, 4, 5]
CONFIGS = {
    "decay-trust": [{"idx": ALL, "weight_decay": 5e-3}],
    "nesterov-decay-trust": [{"idx": ALL, "weight_decay": 5e-3, "nesterov": True}],
    "no-momentum": [{"idx": ALL, "weight_decay": 1e-2, "momentum": 0.0}],
    "no-decay-no-trust": [{"idx": ALL, "layer_adaptation": "none"}],
    "decayed-without-decay": [{"idx": ALL}],  # nothing decays, so nothing is adapted
    "mixed-groups": [
        {"idx": [0], "weight_decay": 5e-4, "nesterov": True},
        {"idx": [1, 2], "weight_decay": 0.0, "layer_adaptation": "all"},
        {
            "idx": [3],
            "weight_decay": 1e-2,
            "layer_adaptation": "none",
            "nesterov": True,
            "lr": 0.05,
        },
        {"idx": [4, 5], "weight_decay": 1e-3, "momentum": 0.0, "trust_coefficient": 0.1},
    ],
    # Decay switched on and off between steps through tensors; the local rate follows it.
    "decayed-switching": [
        {"idx": [0, 1, 2], "weight_decay": 0.0},
        {"idx": [3, 4, 5], "weight_decay": 2e-3, "nesterov": True},
    ],
}
# Per config: parameter index -> its tensor λ at step t (rewritten in place before the step).
OVERRIDES = {
    "decayed-switching": {
        1: lambda t: 0.1 if t % 2 else 0.0,
        2: lambda t: 0.0 if t < 3 else 0.1,
        4: lambda t: 0.0 if t in (2, 5) else 0.05,
    },
}


def reference_lars(groups, grads_per_step, overrides=None):
    """LARS written out per tensor in float64, sharing no code with the implementation."""
    overrides = overrides or {}
    params = [p.detach().clone() for p in make_params()]
    buffers: list[torch.Tensor | None] = [None] * len(params)
    history = []
    for t, grads in enumerate(grads_per_step, start=1):
        for spec in groups:
            h = {**BASE, **spec}
            lr, mu = lr_at(h["lr"], t), h["momentum"]
            for i in spec["idx"]:
                g, p = grads[i], params[i]
                wd = overrides[i](t) if i in overrides else h["weight_decay"]
                adapted = {"all": True, "none": False, "decayed": wd != 0}[h["layer_adaptation"]]
                d = g + wd * p
                p_norm, g_norm = float(p.norm()), float(g.norm())
                if adapted and p_norm > 0 and g_norm > 0:
                    r = h["trust_coefficient"] * p_norm / (g_norm + wd * p_norm + h["eps"])
                else:
                    r = 1.0
                if mu == 0:
                    step = r * d
                else:
                    buffers[i] = r * d if buffers[i] is None else mu * buffers[i] + r * d
                    step = r * d + mu * buffers[i] if h["nesterov"] else buffers[i]
                params[i] = p - lr * step
        history.append([p.clone() for p in params])
    return history


def build(groups, params, foreach, tensor_decay=None):
    return LARS(
        build_groups(groups, params, tensor_decay),
        lr=BASE["lr"],
        momentum=BASE["momentum"],
        trust_coefficient=BASE["trust_coefficient"],
        foreach=foreach,
    )


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_hand_written_reference(config, foreach):
    grads = make_grads()
    expected = reference_lars(CONFIGS[config], grads, OVERRIDES.get(config))
    params = make_params()
    tensors, before_step = scheduled_decay(params, OVERRIDES.get(config))
    optimizer = build(CONFIGS[config], params, foreach, tensors)
    got = run(optimizer, params, grads, before_step)
    for step, (want_step, got_step) in enumerate(zip(expected, got, strict=True)):
        for i, (want, have) in enumerate(zip(want_step, got_step, strict=True)):
            torch.testing.assert_close(
                have, want, rtol=0, atol=1e-12, msg=lambda m, s=step, i=i: f"step {s} p{i}: {m}"
            )
    assert got[-1][2].abs().sum() > 0  # the zero-initialised β moved (r = 1 while ‖θ‖ = 0)
    assert got[-1][5].abs().sum() == 0


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_without_trust_ratio_it_is_torch_sgd(nesterov, foreach):
    grads = make_grads()
    params_a = make_params()
    sgd = torch.optim.SGD(params_a, lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=nesterov)
    want = run(sgd, params_a, grads)[-1]
    params_b = make_params()
    lars = LARS(
        params_b, lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=nesterov,
        layer_adaptation="none", foreach=foreach,
    )  # fmt: skip
    got = run(lars, params_b, grads)[-1]
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_foreach_matches_single_tensor(config, dtype):
    grads = make_grads()
    results = []
    for foreach in (False, True):
        params = make_params(dtype)
        tensors, before_step = scheduled_decay(params, OVERRIDES.get(config))
        tensors[0] = torch.tensor(0.3, dtype=dtype)
        tensors[5] = torch.tensor(0.0, dtype=dtype)
        optimizer = build(CONFIGS[config], params, foreach, tensors)
        results.append(run(optimizer, params, grads, before_step)[-1])
    tol = {"rtol": 0, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    for single, multi in zip(*results, strict=True):
        torch.testing.assert_close(multi, single, **tol)


def test_all_adapts_without_weight_decay():
    param = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    optimizer = LARS(
        [param], lr=1.0, momentum=0.0, trust_coefficient=0.01, eps=0.0, layer_adaptation="all"
    )
    param.grad = torch.tensor([30.0, -40.0], dtype=torch.float64)
    before = param.detach().clone()
    optimizer.step()
    # r = 0.01·5/50, so the step is r·‖g‖ = 0.01·‖θ‖ whatever the gradient's scale.
    assert float((param.detach() - before).norm()) == pytest.approx(0.05, rel=1e-12)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_state_dict_round_trip_is_bitwise(foreach):
    groups = CONFIGS["mixed-groups"]
    grads = make_grads()
    params_a = make_params()
    opt_a = build(groups, params_a, foreach)
    run(opt_a, params_a, grads[:3])

    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    params_b = [nn.Parameter(p.detach().clone()) for p in params_a]
    opt_b = build(groups, params_b, foreach)
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))

    for t, step_grads in enumerate(grads[3:], start=4):
        for opt, params in ((opt_a, params_a), (opt_b, params_b)):
            for group, spec in zip(opt.param_groups, groups, strict=True):
                group["lr"] = lr_at(spec.get("lr", BASE["lr"]), t)
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(params_a, params_b, strict=True):
        assert torch.equal(a, b)
        if "momentum_buffer" in opt_a.state[a]:
            assert torch.equal(opt_a.state[a]["momentum_buffer"], opt_b.state[b]["momentum_buffer"])


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_step_never_synchronises_with_the_host(nesterov, foreach, forbid_host_reads):
    params = make_params(torch.float32)
    optimizer = LARS(
        [
            {"params": params[:1], "weight_decay": 0.01},
            {"params": params[1:2], "weight_decay": torch.tensor(0.2)},
            {"params": params[2:3], "weight_decay": torch.tensor(0.0)},  # "decayed": rate off
            {"params": params[3:4], "weight_decay": torch.tensor(0.2), "layer_adaptation": "none"},
            {"params": params[4:5], "layer_adaptation": "none"},
            {"params": params[5:], "momentum": 0.0, "nesterov": False},
        ],
        lr=0.1,
        nesterov=nesterov,
        foreach=foreach,
    )
    for p in params:
        p.grad = torch.randn_like(p)

    forbid_host_reads()
    with pytest.raises(AssertionError):
        bool(torch.ones(()))
    optimizer.step()  # creates the buffers
    optimizer.step()  # updates them


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("config", ["nesterov-decay-trust", "no-momentum", "no-decay-no-trust"])
def test_tensor_decay_equals_number_decay_bitwise(config, foreach):
    grads = make_grads()
    groups_decay = [{**CONFIGS[config][0], "weight_decay": 0.05}]
    params_a = make_params()
    want = run(build(groups_decay, params_a, foreach), params_a, grads)[-1]
    params_b = make_params()
    tensors = {i: torch.tensor(0.05, dtype=torch.float64) for i in range(4)}  # a mix
    got = run(build(groups_decay, params_b, foreach, tensors), params_b, grads)[-1]
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_tensor_decay_is_read_every_step_and_saved(foreach):
    grads = make_grads()
    groups = [{"idx": ALL, "weight_decay": 0.05, "nesterov": True}]

    params_a = make_params()
    opt_a = build(groups, params_a, foreach)

    def set_group_decay(t):
        opt_a.param_groups[0]["weight_decay"] = 0.0 if t < 4 else 0.5

    want = run(opt_a, params_a, grads, set_group_decay)[-1]

    params_b = make_params()
    lam = torch.zeros((), dtype=torch.float64)
    opt_b = build(groups, params_b, foreach, dict.fromkeys(ALL, lam))

    def rewrite_in_place(t):
        if t == 4:
            lam.fill_(0.5)

    got = run(opt_b, params_b, grads, rewrite_in_place)[-1]
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)
    saved = opt_b.state_dict()["param_groups"]
    assert all(g["weight_decay"].item() == 0.5 for g in saved)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0}, r"lr must be in \[0, inf\)"),
        ({"momentum": -0.1}, r"momentum must be in \[0, 1\)"),
        ({"weight_decay": -1e-4}, r"weight_decay must be in \[0, inf\)"),
        ({"eps": -1.0}, r"eps must be in \[0, inf\)"),
        ({"trust_coefficient": 0.0}, r"trust_coefficient must be in \(0, inf\)"),
        ({"momentum": 0.0, "nesterov": True}, r"nesterov=True needs momentum in \(0, 1\)"),
        ({"layer_adaptation": "some"}, r"layer_adaptation must be one of 'decayed', 'all'"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LARS(make_params(), **{"lr": 0.1, **kwargs})


def test_bad_group_hyperparameter_raises():
    params = make_params()
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        LARS([{"params": params[:2]}, {"params": params[2:], "momentum": -0.5}], lr=0.1)
    with pytest.raises(ValueError, match="trust_ratio was replaced by layer_adaptation"):
        LARS([{"params": params, "trust_ratio": False}], lr=0.1)


def test_sparse_gradients_raise():
    embedding = nn.Embedding(10, 3, sparse=True)
    optimizer = LARS(embedding.parameters(), lr=0.1)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        optimizer.step()


def test_reduces_the_loss_of_a_small_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(64, 10)
    y = torch.randint(0, 4, (64,))
    optimizer = LARS(model.parameters(), lr=1.0, weight_decay=1e-4, trust_coefficient=0.02)
    losses = []
    for _ in range(50):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
