"""Theorem 3.1: C is invariant under the neuron rescaling ρ_{c,l,k} (eq. 9); Tr(H), λmax are not."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import biasdecay as bd

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)
    ).double()


def conv_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 3),
    ).double()


def batches(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn((n, *shape), generator=g, dtype=torch.float64), torch.randint(0, 3, (n,)))
        for n in (6, 4)
    ]


# (model, data shape, [(incoming, outgoing, index)] rescaled by c)
CASES = {
    "mlp": (mlp, (6,), [("1", "3", 2), ("3", "5", 0)]),
    "conv_bn": (conv_net, (1, 5, 5), [("0", "2", 1), ("3", "5", 2), ("5", "8", 0)]),
}


def rescaled(model: nn.Module, moves, c: float) -> nn.Module:
    other = copy.deepcopy(model)
    for incoming, outgoing, index in moves:
        bd.rescale_neuron(other, incoming, outgoing, index, c)
    return other


@pytest.mark.parametrize("case", sorted(CASES))
def test_connectivity_and_fisher_rao_are_invariant(case: str) -> None:
    build, shape, moves = CASES[case]
    model, data = build().eval(), batches(shape)
    if case == "conv_bn":  # non-trivial BN statistics and affine parameters
        bn = model[3]
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    other = rescaled(model, moves, 10.0)
    x = data[0][0]
    torch.testing.assert_close(other(x), model(x), rtol=1e-10, atol=1e-12)  # same function
    assert any(
        not torch.allclose(a, b)
        for a, b in zip(model.parameters(), other.parameters(), strict=True)
    )
    for per_sample in (True, False):
        a = bd.connectivity_sharpness(model, data, per_sample=per_sample)
        b = bd.connectivity_sharpness(other, data, per_sample=per_sample)
        assert b.total == pytest.approx(a.total, rel=1e-8)
        for name, value in a.by_parameter.items():  # each parameter's share, not only the sum
            assert b.by_parameter[name] == pytest.approx(value, rel=1e-8, abs=1e-14), name
    fr_a, fr_b = bd.fisher_rao_norm(model, data), bd.fisher_rao_norm(other, data)
    assert fr_b.value == pytest.approx(fr_a.value, rel=1e-8)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hessian_measures_are_not_invariant(case: str) -> None:
    build, shape, moves = CASES[case]
    model, data = build().eval(), batches(shape)
    other = rescaled(model, moves, 10.0)
    dim = sum(p.numel() for p in model.parameters())
    # Hutch++ with a budget of 3·dim spans the whole space: the trace is exact.
    tr_a = bd.hessian_trace(model, data, n_matvecs=3 * dim).value
    tr_b = bd.hessian_trace(other, data, n_matvecs=3 * dim).value
    eig_a = bd.hessian_max_eigenvalue(model, data, max_iter=dim, tol=1e-8).value
    eig_b = bd.hessian_max_eigenvalue(other, data, max_iter=dim, tol=1e-8).value
    assert abs(tr_b - tr_a) > 0.1 * abs(tr_a)
    assert abs(eig_b - eig_a) > 0.1 * abs(eig_a)


def test_the_invariance_measure_reports_c_unchanged_and_the_trace_moved() -> None:
    from biasdecay.sharpness.suite import MeasureOptions, run_measures

    model = conv_net().eval()
    torch.manual_seed(2)
    data = [(torch.randn(6, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (6,)))]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_measures(model, data, ["invariance"], MeasureOptions(hessian_matvecs=8))
    r = result["invariance"]
    assert (r["incoming"], r["outgoing"], r["factor"]) == ("0", "2", 10.0)
    assert r["output_max_abs_change"] < 1e-12
    assert r["original"]["connectivity"] == pytest.approx(
        bd.connectivity_sharpness(model, data).total, rel=1e-12
    )
    assert r["connectivity_relative_change"] < 1e-10
    assert r["hessian_trace_relative_change"] > 1e-2
    # The model the measure was given is untouched (the rescaling happens on a copy).
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_invariance_check_reuses_the_measures_run_before_it() -> None:
    from biasdecay.sharpness.suite import MeasureOptions, run_measures

    model = conv_net().eval()
    torch.manual_seed(2)
    data = [(torch.randn(6, 1, 5, 5, dtype=torch.float64), torch.randint(0, 3, (6,)))]
    options = MeasureOptions(hessian_matvecs=8)
    alone = run_measures(model, data, ["invariance"], options)["invariance"]
    together = run_measures(model, data, ["connectivity", "hessian-trace", "invariance"], options)
    reused = together["invariance"]
    assert alone["reused"] == [] and reused["reused"] == ["connectivity", "hessian-trace"]
    assert reused["original"]["connectivity"] == together["connectivity"]["total"]
    assert reused["original"]["hessian_trace"]["value"] == together["hessian-trace"]["value"]
    # Reusing changes no number: the same data, options and probe seed.
    for key in ("connectivity_relative_change", "hessian_trace_relative_change"):
        assert reused[key] == pytest.approx(alone[key], rel=1e-12)


def test_the_invariance_measure_needs_a_rescalable_pair() -> None:
    from biasdecay.sharpness.suite import run_measures

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    data = [(torch.randn(2, 4, dtype=torch.float64), torch.tensor([0, 1]))]
    with pytest.raises(ValueError, match="found no rescalable layer pair"):
        run_measures(model, data, ["invariance"])
