"""LAMB: a hand-written float64 reference, foreach against single-tensor, and its contracts."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from stepping import STEPS, build_groups, lr_at, make_grads, make_params, run, scheduled_decay
from torch import nn

from biasdecay.optim import LAMB

# Group settings: which parameters, and the options that differ from the defaults. The default
# layer_adaptation is "decayed": the trust ratio exactly where the step's weight decay is non-zero.
CONFIGS = {
    "one-group-decay-trust": ([{"idx": [0, 1, 2, 3, 4, 5], "weight_decay": 0.01}], None),
    "no-decay-no-trust": ([{"idx": [0, 1, 2, 3, 4, 5], "layer_adaptation": "none"}], None),
    "all-without-decay": ([{"idx": [0, 1, 2, 3, 4, 5], "layer_adaptation": "all"}], None),
    "mixed-groups-clipped": (
        [
            {"idx": [0], "weight_decay": 0.01},
            {"idx": [1, 2], "weight_decay": 0.0, "layer_adaptation": "all"},
            {"idx": [3], "weight_decay": 0.1, "layer_adaptation": "none", "lr": 0.02},
            {
                "idx": [4, 5],
                "weight_decay": 0.0,
                "layer_adaptation": "all",
                "bias_correction": False,
                "betas": (0.8, 0.99),
                "eps": 1e-3,
            },
        ],
        0.5,
    ),
    "decay-trust-clip-inactive": (
        [{"idx": [0, 2, 4], "weight_decay": 0.05}, {"idx": [1, 3, 5], "weight_decay": 0.0}],
        1e6,
    ),
    # Decay that switches on and off between steps through tensors (as adaptive β decay does):
    # under "decayed" the trust ratio follows it; p2 starts at zero like a BN β.
    "decayed-switching": (
        [{"idx": [0, 1, 2], "weight_decay": 0.0}, {"idx": [3, 4, 5], "weight_decay": 0.02}],
        None,
    ),
}
# Per config: parameter index -> its tensor λ at step t (rewritten in place before the step).
OVERRIDES = {
    "decayed-switching": {
        1: lambda t: 1.0 if t % 2 else 0.0,
        2: lambda t: 0.0 if t < 3 else 1.0,
        4: lambda t: 0.0 if t in (2, 5) else 0.5,
    },
}
BASE = {
    "lr": 0.01,
    "betas": (0.9, 0.999),
    "eps": 1e-6,
    "weight_decay": 0.0,
    "layer_adaptation": "decayed",
    "bias_correction": True,
}


def reference_lamb(groups, max_grad_norm, grads_per_step, overrides=None):
    """LAMB written out per tensor in float64, sharing no code with the implementation.

    Returns the parameters after every step and how many steps were clipped.
    """
    overrides = overrides or {}
    params = [p.detach().clone() for p in make_params()]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    history, clipped = [], 0
    for t, grads in enumerate(grads_per_step, start=1):
        if max_grad_norm is not None:
            total = math.sqrt(sum(float((g * g).sum()) for g in grads))
            c = min(1.0, max_grad_norm / (total + 1e-6))
            clipped += c < 1.0
            grads = [g * c for g in grads]
        for spec in groups:
            h = {**BASE, **spec}
            beta1, beta2 = h["betas"]
            lr = lr_at(h["lr"], t)
            for i in spec["idx"]:
                g = grads[i]
                decay = overrides[i](t) if i in overrides else h["weight_decay"]
                adapted = {"all": True, "none": False, "decayed": decay != 0}[h["layer_adaptation"]]
                m[i] = beta1 * m[i] + (1 - beta1) * g
                v[i] = beta2 * v[i] + (1 - beta2) * g * g
                if h["bias_correction"]:
                    m_hat = m[i] / (1 - beta1**t)
                    v_hat = v[i] / (1 - beta2**t)
                else:
                    m_hat, v_hat = m[i], v[i]
                u = m_hat / (v_hat.sqrt() + h["eps"]) + decay * params[i]
                p_norm = float(params[i].norm())
                u_norm = float(u.norm())
                r = p_norm / u_norm if adapted and p_norm > 0 and u_norm > 0 else 1.0
                params[i] = params[i] - lr * r * u
        history.append([p.clone() for p in params])
    return history, clipped


def build(groups, max_grad_norm, params, foreach, tensor_decay=None):
    return LAMB(
        build_groups(groups, params, tensor_decay),
        lr=BASE["lr"],
        max_grad_norm=max_grad_norm,
        foreach=foreach,
    )


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_hand_written_reference(config, foreach):
    groups, max_grad_norm = CONFIGS[config]
    grads = make_grads(scale=1.0)
    expected, clipped = reference_lamb(groups, max_grad_norm, grads, OVERRIDES.get(config))
    if config == "mixed-groups-clipped":
        assert clipped == STEPS  # the clipping branch is really exercised
    params = make_params()
    tensors, before_step = scheduled_decay(params, OVERRIDES.get(config))
    optimizer = build(groups, max_grad_norm, params, foreach, tensors)
    got = run(optimizer, params, grads, before_step)
    for step, (want_step, got_step) in enumerate(zip(expected, got, strict=True)):
        for i, (want, have) in enumerate(zip(want_step, got_step, strict=True)):
            torch.testing.assert_close(
                have, want, rtol=0, atol=1e-12, msg=lambda m, s=step, i=i: f"step {s} p{i}: {m}"
            )
    # The zero-initialised parameter moved (r = 1 at the first step), the dead one did not.
    assert got[-1][2].abs().sum() > 0
    assert got[-1][5].abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_foreach_matches_single_tensor(config, dtype):
    groups, max_grad_norm = CONFIGS[config]
    grads = make_grads()
    results = []
    for foreach in (False, True):
        params = make_params(dtype)
        tensors, before_step = scheduled_decay(params, OVERRIDES.get(config))
        # Tensor decays on two more tensors, to cover the per-tensor decay path of both.
        tensors[0] = torch.tensor(0.3, dtype=dtype)
        tensors[5] = torch.tensor(0.0, dtype=dtype)
        optimizer = build(groups, max_grad_norm, params, foreach, tensors)
        results.append(run(optimizer, params, grads, before_step)[-1])
    tol = {"rtol": 0, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    for single, multi in zip(*results, strict=True):
        torch.testing.assert_close(multi, single, **tol)


def test_all_adapts_without_weight_decay_and_decayed_does_not():
    # With λ = 0, "all" still applies the ratio (the step is η‖θ‖ in norm); "decayed" and "none"
    # take the plain Adam step η·m̂/(√v̂ + ε), whose first value is η·sign(g) elementwise.
    steps = {}
    for mode in ("all", "decayed", "none"):
        param = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
        optimizer = LAMB([param], lr=0.1, weight_decay=0.0, eps=0.0, layer_adaptation=mode)
        param.grad = torch.tensor([1e-3, -2e-3], dtype=torch.float64)
        before = param.detach().clone()
        optimizer.step()
        steps[mode] = param.detach() - before
    assert float(steps["all"].norm()) == pytest.approx(0.1 * 5.0, rel=1e-12)
    for mode in ("decayed", "none"):
        torch.testing.assert_close(steps[mode], torch.tensor([-0.1, 0.1], dtype=torch.float64))


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_a_zero_initialised_beta_grows_only_without_the_ratio(foreach):
    # The mechanism docs/design.md §4 names: with the ratio on, β starting at 0 takes one plain
    # step, then grows by at most a factor (1 + η) per step; without it, by about η per step.
    norms = {}
    for mode in ("all", "decayed"):
        beta = nn.Parameter(torch.zeros(8, dtype=torch.float64))
        optimizer = LAMB([beta], lr=0.01, layer_adaptation=mode, foreach=foreach)
        for _ in range(50):
            beta.grad = torch.full_like(beta, -1e-3)
            optimizer.step()
        norms[mode] = float(beta.detach().norm())
    first_step = 0.01 * math.sqrt(8)
    assert norms["all"] <= first_step * 1.01**49 * (1 + 1e-9)
    assert norms["decayed"] == pytest.approx(50 * first_step, rel=1e-3)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_state_dict_round_trip_is_bitwise(foreach):
    groups, max_grad_norm = CONFIGS["mixed-groups-clipped"]
    grads = make_grads()
    params_a = make_params()
    opt_a = build(groups, max_grad_norm, params_a, foreach)
    run(opt_a, params_a, grads[:3])

    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)  # through bytes, as a checkpoint would be
    buffer.seek(0)
    params_b = [nn.Parameter(p.detach().clone()) for p in params_a]
    opt_b = build(groups, max_grad_norm, params_b, foreach)
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    assert opt_b.state[params_b[0]]["step"] == 3

    for t, step_grads in enumerate(grads[3:], start=4):
        for opt, params in ((opt_a, params_a), (opt_b, params_b)):
            for group in opt.param_groups:
                group["lr"] = lr_at(0.01, t)
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(params_a, params_b, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(params_a, params_b, strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_a.state[a][key], opt_b.state[b][key])


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_step_never_synchronises_with_the_host(foreach, forbid_host_reads):
    params = make_params(torch.float32)
    optimizer = LAMB(
        [
            {"params": params[:1], "weight_decay": 0.01},
            # Under "decayed", tensor decays decide the ratio on the device: one on, one off.
            {"params": params[1:2], "weight_decay": torch.tensor(0.2)},
            {"params": params[2:3], "weight_decay": torch.tensor(0.0)},
            {"params": params[3:5], "layer_adaptation": "none"},
            {"params": params[5:], "layer_adaptation": "all"},
        ],
        max_grad_norm=0.5,
        foreach=foreach,
    )
    for p in params:
        p.grad = torch.randn_like(p)

    forbid_host_reads()
    with pytest.raises(AssertionError):  # the trap is armed
        bool(torch.ones(()))
    optimizer.step()
    optimizer.step()


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_tensor_decay_equals_number_decay_bitwise(foreach):
    grads = make_grads()
    specs = [{"idx": [0, 1, 2, 3, 4, 5], "weight_decay": 0.05}]

    params_a = make_params()
    want = run(build(specs, None, params_a, foreach), params_a, grads)[-1]

    params_b = make_params()
    tensors = {i: torch.tensor(0.05, dtype=torch.float64) for i in (0, 2, 3)}  # a mix
    got = run(build(specs, None, params_b, foreach, tensors), params_b, grads)[-1]
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_tensor_decay_is_read_every_step(foreach):
    grads = make_grads()
    specs = [{"idx": [0, 1, 2, 3, 4, 5], "weight_decay": 0.05}]

    # Reference: the group's decay, a number, changes at step 4 (0 before, 0.5 from then on).
    params_a = make_params()
    opt_a = build(specs, None, params_a, foreach)

    def set_group_decay(t):
        opt_a.param_groups[0]["weight_decay"] = 0.0 if t < 4 else 0.5

    want = run(opt_a, params_a, grads, set_group_decay)[-1]

    # One tensor shared by every group, 0 at first, then rewritten in place to 0.5.
    params_b = make_params()
    lam = torch.zeros((), dtype=torch.float64)
    opt_b = build(specs, None, params_b, foreach, dict.fromkeys(range(6), lam))

    def rewrite_in_place(t):
        if t == 4:
            lam.fill_(0.5)

    got = run(opt_b, params_b, grads, rewrite_in_place)[-1]
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)

    # And the in-place change mattered.
    params_c = make_params()
    zero = torch.zeros((), dtype=torch.float64)
    unchanged = run(
        build(specs, None, params_c, foreach, dict.fromkeys(range(6), zero)), params_c, grads
    )[-1]
    assert not torch.equal(unchanged[0], got[0])


def test_tensor_decay_is_saved_with_its_group():
    params = make_params()
    optimizer = LAMB(
        [
            {"params": params[:1], "weight_decay": torch.tensor(0.5, dtype=torch.float64)},
            {"params": params[1:]},
        ]
    )
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)  # through bytes, as a checkpoint would be
    buffer.seek(0)
    fresh = LAMB(
        [
            {"params": params[:1], "weight_decay": torch.zeros((), dtype=torch.float64)},
            {"params": params[1:]},
        ]
    )
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.param_groups[0]["weight_decay"].item() == 0.5


def test_pickled_copy_keeps_clipping_and_tensor_decay():
    params = make_params()
    optimizer = LAMB(
        [{"params": params, "weight_decay": torch.tensor(0.5, dtype=torch.float64)}],
        max_grad_norm=2.0,
    )
    clone = copy.deepcopy(optimizer)
    assert clone.max_grad_norm == 2.0
    assert clone.param_groups[0]["weight_decay"].item() == 0.5


def test_tensor_decay_on_another_dtype_is_converted_and_bad_ones_are_refused():
    params = make_params()
    for p in params:
        p.grad = torch.ones_like(p)
    float32 = LAMB([{"params": params, "weight_decay": torch.tensor(0.5, dtype=torch.float32)}])
    float32.step()  # used at the parameters' dtype (0.5 is exact in both)
    for bad, match in [
        (torch.tensor([0.5]), "0-dim floating tensor"),
        (torch.tensor(1), "0-dim floating tensor"),
        (torch.tensor(-0.5), r"weight_decay must be in \[0, inf\), got -0.5"),
    ]:
        with pytest.raises(ValueError, match=match):
            LAMB([{"params": params, "weight_decay": bad}])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0}, r"lr must be in \[0, inf\)"),
        ({"eps": -1e-8}, r"eps must be in \[0, inf\)"),
        ({"weight_decay": -0.1}, r"weight_decay must be in \[0, inf\)"),
        ({"betas": (1.0, 0.999)}, r"betas\[0\] must be in \[0, 1\)"),
        ({"betas": (0.9, -0.1)}, r"betas\[1\] must be in \[0, 1\)"),
        ({"betas": (0.9,)}, r"betas must be a pair"),
        ({"max_grad_norm": 0.0}, r"max_grad_norm must be in \(0, inf\)"),
        ({"layer_adaptation": "sometimes"}, r"layer_adaptation must be one of 'decayed', 'all'"),
        ({"layer_adaptation": True}, r"layer_adaptation must be one of"),
        ({"bias_correction": 1}, r"bias_correction must be a bool"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LAMB(make_params(), **kwargs)


def test_bad_group_hyperparameter_raises():
    params = make_params()
    with pytest.raises(ValueError, match=r"weight_decay must be in \[0, inf\)"):
        LAMB([{"params": params[:2]}, {"params": params[2:], "weight_decay": -1.0}])
    with pytest.raises(ValueError, match="trust_ratio was replaced by layer_adaptation"):
        LAMB([{"params": params[:2]}, {"params": params[2:], "trust_ratio": True}])


def test_tensor_lr_is_refused():
    with pytest.raises(TypeError, match="lr must be a Python float"):
        LAMB(make_params(), lr=torch.tensor(0.1))


def test_sparse_gradients_raise():
    embedding = nn.Embedding(10, 3, sparse=True)
    optimizer = LAMB(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        optimizer.step()


def test_parameters_without_gradients_are_left_alone():
    params = make_params()
    optimizer = LAMB(params, weight_decay=0.1)
    params[0].grad = torch.ones_like(params[0])
    before = params[1].detach().clone()
    optimizer.step()
    assert torch.equal(params[1], before)
    assert params[1] not in optimizer.state


def test_closure_loss_is_returned():
    param = nn.Parameter(torch.ones(3))
    optimizer = LAMB([param])

    def closure():
        optimizer.zero_grad()
        loss = (param**2).sum()
        loss.backward()
        return loss

    assert float(optimizer.step(closure).detach()) == pytest.approx(3.0)


def test_reduces_the_loss_of_a_small_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(64, 10)
    y = torch.randint(0, 4, (64,))
    optimizer = LAMB(model.parameters(), lr=5e-2, weight_decay=1e-4)
    losses = []
    for _ in range(50):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_works_with_torch_lr_schedulers():
    param = nn.Parameter(torch.ones(3))
    optimizer = LAMB([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    for _ in range(3):
        param.grad = torch.ones(3)
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
