"""Ghost BatchNorm equals BatchNorm run chunk by chunk over ghost batches (float64, exact)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from biasdecay.nn.ghost_bn import (
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    convert_to_ghost_batchnorm,
)
from biasdecay.roles import Role, param_roles

F64 = torch.float64
TIGHT = {"rtol": 0.0, "atol": 1e-12}


def _pair(ghost_cls, bn_cls, channels: int, **kwargs):
    """A ghost layer and a BatchNorm with the same random γ, β and running statistics."""
    ghost = ghost_cls(channels, dtype=F64, **kwargs)
    bn = bn_cls(channels, dtype=F64, **{k: v for k, v in kwargs.items() if k in _BN_KWARGS})
    with torch.no_grad():
        if ghost.affine:
            ghost.weight.uniform_(0.5, 1.5)
            ghost.bias.normal_()
        if ghost.track_running_stats:
            ghost.running_mean.normal_()
            ghost.running_var.uniform_(0.5, 2.0)
    bn.load_state_dict(ghost.state_dict())
    return ghost, bn


_BN_KWARGS = ("eps", "momentum", "affine", "track_running_stats")


def _chunk_loop(bn: nn.Module, x: torch.Tensor, ghost_batch_size: int) -> torch.Tensor:
    """The reference: BatchNorm applied to each ghost batch in turn."""
    return torch.cat([bn(chunk) for chunk in x.split(ghost_batch_size)])


def _assert_same_step(ghost, bn, x: torch.Tensor, ghost_batch_size: int) -> None:
    """Outputs, input/γ/β gradients and running statistics agree after a forward+backward."""
    x_ghost = x.detach().clone().requires_grad_()
    x_loop = x.detach().clone().requires_grad_()
    out_ghost = ghost(x_ghost)
    out_loop = _chunk_loop(bn, x_loop, ghost_batch_size)
    torch.testing.assert_close(out_ghost, out_loop, **TIGHT)
    # A loss that weighs every output differently, so no gradient is trivially zero.
    upstream = torch.randn_like(out_loop)
    (out_ghost * upstream).sum().backward()
    (out_loop * upstream).sum().backward()
    torch.testing.assert_close(x_ghost.grad, x_loop.grad, **TIGHT)
    for p_ghost, p_loop in zip(ghost.parameters(), bn.parameters(), strict=True):
        torch.testing.assert_close(p_ghost.grad, p_loop.grad, **TIGHT)
    for (name, b_ghost), (_, b_loop) in zip(ghost.named_buffers(), bn.named_buffers(), strict=True):
        torch.testing.assert_close(b_ghost, b_loop, **TIGHT, msg=name)


# ---- equality with a chunk-by-chunk BatchNorm loop ----------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"momentum": None},  # cumulative average over all ghost batches seen
        {"momentum": 0.3, "eps": 1e-3},
        {"affine": False},
        {"track_running_stats": False},
    ],
    ids=["default", "cumulative", "momentum0.3", "no-affine", "no-running-stats"],
)
def test_2d_matches_chunk_loop(options: dict) -> None:
    torch.manual_seed(0)
    ghost, bn = _pair(GhostBatchNorm2d, nn.BatchNorm2d, 6, ghost_batch_size=8, **options)
    for _ in range(2):  # the second step starts from running statistics the first one updated
        _assert_same_step(ghost, bn, torch.randn(40, 6, 3, 5, dtype=F64) * 3 + 1, 8)
    if ghost.track_running_stats:
        assert int(ghost.num_batches_tracked) == 10  # one per ghost batch, as the loop counts


@pytest.mark.parametrize("shape", [(64, 5), (64, 5, 7)], ids=["NC", "NCL"])
def test_1d_matches_chunk_loop(shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    ghost, bn = _pair(GhostBatchNorm1d, nn.BatchNorm1d, 5, ghost_batch_size=16)
    _assert_same_step(ghost, bn, torch.randn(*shape, dtype=F64), 16)


def test_default_ghost_size_is_the_papers_32() -> None:
    assert GhostBatchNorm2d(4).ghost_batch_size == 32
    torch.manual_seed(2)
    ghost, bn = _pair(GhostBatchNorm2d, nn.BatchNorm2d, 4)
    _assert_same_step(ghost, bn, torch.randn(128, 4, 2, 2, dtype=F64), 32)


def test_batch_up_to_the_ghost_size_is_one_ghost_batch() -> None:
    torch.manual_seed(3)
    for batch in (32, 20):  # equal to and smaller than the ghost size: plain BatchNorm
        ghost, bn = _pair(GhostBatchNorm2d, nn.BatchNorm2d, 3)
        _assert_same_step(ghost, bn, torch.randn(batch, 3, 4, 4, dtype=F64), batch)
        assert int(ghost.num_batches_tracked) == 1


def test_gradient_accumulation_over_multiples_of_the_ghost_size_is_exact() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        GhostBatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10),
    ).to(F64)
    micro_model = copy.deepcopy(model)
    x = torch.randn(128, 3, 6, 6, dtype=F64)
    y = torch.randint(0, 10, (128,))

    nn.functional.cross_entropy(model(x), y).backward()
    for x_micro, y_micro in zip(x.split(32), y.split(32), strict=True):
        # Sum of the micro-batch mean losses, scaled by 1/4: the full batch's mean loss.
        (nn.functional.cross_entropy(micro_model(x_micro), y_micro) / 4).backward()

    for p, q in zip(model.parameters(), micro_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, **TIGHT)
    for b, c in zip(model.buffers(), micro_model.buffers(), strict=True):
        torch.testing.assert_close(b, c, **TIGHT)


# ---- memory format and dtypes --------------------------------------------------------------------


def test_channels_last_gives_the_same_values_and_keeps_the_format() -> None:
    torch.manual_seed(5)
    ghost, bn = _pair(GhostBatchNorm2d, nn.BatchNorm2d, 6, ghost_batch_size=8)
    x = torch.randn(32, 6, 5, 3, dtype=F64)
    x_last = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    x_plain = x.clone().requires_grad_()
    out, reference = ghost(x_last), _chunk_loop(bn, x_plain, 8)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, reference, **TIGHT)
    out.square().sum().backward()
    reference.square().sum().backward()
    assert x_last.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x_last.grad, x_plain.grad, **TIGHT)
    torch.testing.assert_close(ghost.running_var, bn.running_var, **TIGHT)

    # Contiguous input stays contiguous.
    assert GhostBatchNorm2d(6, 8, dtype=F64)(x).is_contiguous()


def test_low_precision_input_with_float32_parameters() -> None:
    # What autocast produces: bf16 activations, float32 γ, β and running statistics.
    torch.manual_seed(6)
    ghost, bn = GhostBatchNorm2d(4, 8), nn.BatchNorm2d(4)
    x = torch.randn(32, 4, 3, 3).to(torch.bfloat16)
    out = ghost(x)
    assert out.dtype == torch.bfloat16 and ghost.running_mean.dtype == torch.float32
    torch.testing.assert_close(out, _chunk_loop(bn, x, 8))
    torch.testing.assert_close(ghost.running_mean, bn.running_mean)
    torch.testing.assert_close(ghost.running_var, bn.running_var)

    conv = nn.Conv2d(3, 4, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ghost(conv(torch.randn(32, 3, 3, 3)))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_double_backward_for_hessian_measures() -> None:
    # The sharpness baselines differentiate twice through the network in train mode.
    torch.manual_seed(7)
    ghost = GhostBatchNorm2d(2, 4, dtype=F64, track_running_stats=False)
    x = torch.randn(8, 2, 2, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(ghost, (x,))
    assert torch.autograd.gradgradcheck(ghost, (x,))


# ---- partial ghost batches -----------------------------------------------------------------------


def test_partial_batch_is_an_error_naming_the_sizes_and_the_fix() -> None:
    ghost = GhostBatchNorm2d(3, 32)
    with pytest.raises(ValueError) as info:
        ghost(torch.randn(100, 3, 2, 2))
    message = str(info.value)
    for part in ("100 samples", "ghost_batch_size=32", "multiple of 32", "partial='last'"):
        assert part in message


def test_partial_last_normalises_the_trailing_samples_on_their_own() -> None:
    torch.manual_seed(8)
    ghost, bn = _pair(GhostBatchNorm2d, nn.BatchNorm2d, 3, ghost_batch_size=8, partial="last")
    _assert_same_step(ghost, bn, torch.randn(27, 3, 2, 2, dtype=F64), 8)
    assert int(ghost.num_batches_tracked) == 4  # 3 full ghost batches and the partial one


# ---- eval, roles, state_dict ---------------------------------------------------------------------


def test_eval_is_batchnorm() -> None:
    torch.manual_seed(9)
    for track in (True, False):  # without running statistics BatchNorm uses the whole batch
        ghost, bn = _pair(GhostBatchNorm2d, nn.BatchNorm2d, 3, track_running_stats=track)
        ghost.eval(), bn.eval()
        x = torch.randn(64, 3, 2, 2, dtype=F64)
        torch.testing.assert_close(ghost(x), bn(x), **TIGHT)
        torch.testing.assert_close(ghost(x[:5]), bn(x[:5]), **TIGHT)  # any batch size in eval


def test_param_roles_see_gamma_and_beta() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), GhostBatchNorm2d(4), nn.Flatten(), nn.Linear(4, 4), GhostBatchNorm1d(4)
    )
    roles = param_roles(model)
    assert roles["1.weight"] == roles["4.weight"] == Role.NORM_SCALE
    assert roles["1.bias"] == roles["4.bias"] == Role.NORM_SHIFT
    assert roles["0.bias"] == Role.CONV_BIAS and roles["3.bias"] == Role.LINEAR_BIAS


def test_state_dict_is_batchnorms() -> None:
    bn = nn.BatchNorm2d(5)
    ghost = GhostBatchNorm2d(5)
    assert list(ghost.state_dict()) == list(bn.state_dict())
    bn.running_mean.fill_(0.5)
    ghost.load_state_dict(bn.state_dict(), strict=True)
    assert torch.equal(ghost.running_mean, bn.running_mean)
    bn.load_state_dict(ghost.state_dict(), strict=True)
    old = {k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"}
    GhostBatchNorm2d(5).load_state_dict(old)  # pre-1.0 checkpoints without the counter


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ghost_batch_size": 0}, "ghost_batch_size must be in \\[1, inf\\), got 0"),
        ({"ghost_batch_size": 3.0}, "ghost_batch_size must be an integer"),
        ({"partial": "drop"}, "partial: unknown value 'drop'; valid: error, last"),
        ({"momentum": 1.5}, "momentum must be in \\[0, 1\\], got 1.5"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GhostBatchNorm2d(4, **kwargs)


def test_input_dimensions_are_checked() -> None:
    with pytest.raises(ValueError, match="expected 4D input"):
        GhostBatchNorm2d(3)(torch.randn(4, 3))
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        GhostBatchNorm1d(3)(torch.randn(4, 3, 2, 2))


# ---- conversion ----------------------------------------------------------------------------------


def _bn_model() -> nn.Module:
    shared = nn.BatchNorm2d(4)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        shared,
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 1), shared),  # the same layer twice: stays shared
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6),
        nn.BatchNorm1d(6, momentum=None, eps=1e-3),
    ).to(F64)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return model


def test_conversion_keeps_state_and_eval_output() -> None:
    torch.manual_seed(10)
    model = _bn_model().eval()
    x = torch.randn(64, 3, 4, 4, dtype=F64)
    before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gamma = model[1].weight
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    assert convert_to_ghost_batchnorm(model, ghost_batch_size=16) is model
    assert isinstance(model[1], GhostBatchNorm2d) and model[3][1] is model[1]
    assert isinstance(model[6], GhostBatchNorm1d)
    assert model[6].momentum is None and model[6].eps == 1e-3 and model[1].ghost_batch_size == 16
    assert model[1].weight is gamma  # the optimiser built before still trains it
    assert any(p is model[1].weight for p in optimizer.param_groups[0]["params"])
    assert not model[1].training and model[1].weight.dtype == F64
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    torch.testing.assert_close(model(x), before, rtol=0.0, atol=0.0)

    # Idempotent: a second conversion changes nothing.
    layers = list(model.modules())
    convert_to_ghost_batchnorm(model, ghost_batch_size=16)
    assert list(model.modules()) == layers


def test_conversion_leaves_sync_batchnorm_alone_with_a_warning() -> None:
    model = nn.Sequential(nn.SyncBatchNorm(3), nn.BatchNorm3d(3), nn.BatchNorm2d(3))
    with pytest.warns(UserWarning, match="0 \\(SyncBatchNorm\\), 1 \\(BatchNorm3d\\)"):
        convert_to_ghost_batchnorm(model)
    assert type(model[0]) is nn.SyncBatchNorm and type(model[1]) is nn.BatchNorm3d
    assert isinstance(model[2], GhostBatchNorm2d)
    plain = nn.Sequential(nn.BatchNorm1d(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_to_ghost_batchnorm(plain)


def test_converting_a_bare_batchnorm_returns_its_replacement() -> None:
    bn = nn.BatchNorm1d(3)
    ghost = convert_to_ghost_batchnorm(bn, 8, partial="last")
    assert isinstance(ghost, GhostBatchNorm1d) and ghost.weight is bn.weight
    assert ghost.partial == "last" and "ghost_batch_size=8" in repr(ghost)
