"""Schedules against their closed forms at the key steps; LR scaling; the scheduler; bad inputs."""

from __future__ import annotations

import math
import pickle
from functools import partial

import pytest
import torch
from torch import nn

from biasdecay.schedules import (
    SCHEDULES,
    LRScheduler,
    constant,
    cosine_warmup,
    get_schedule,
    make_schedule,
    paper_peak_lr,
    polynomial_warmup_decay,
    scale_lr,
    warmup_steps_from_epochs,
)

# ---- polynomial warm-up / decay (Appendix A.1) ------------------------------------------------

T, PEAK = 100, 0.04  # the paper's defaults give W = 30


def poly(step: int, **kwargs) -> float:
    return polynomial_warmup_decay(step, total_steps=T, peak_lr=PEAK, **kwargs)


def test_polynomial_paper_defaults_at_the_key_steps() -> None:
    assert poly(0) == 0.0  # η_init
    assert poly(15) == pytest.approx(PEAK * (15 / 30) ** 2, rel=1e-15)  # middle of warm-up
    assert poly(29) == pytest.approx(PEAK * (29 / 30) ** 2, rel=1e-15)
    assert poly(30) == PEAK  # end of warm-up: the peak, exactly
    assert poly(65) == pytest.approx(PEAK * (1 - 35 / 70) ** 2, rel=1e-15)  # middle of decay
    assert poly(99) == pytest.approx(PEAK * (1 / 70) ** 2, rel=1e-15)  # last update still moves
    assert poly(100) == 0.0  # T: η_final
    assert poly(10_000) == 0.0  # held beyond the end


def test_polynomial_general_form() -> None:
    kw = dict(warmup_steps=20, init_lr=0.01, final_lr=0.001, warmup_power=1.5, decay_power=3.0)
    assert poly(0, **kw) == 0.01
    assert poly(10, **kw) == pytest.approx(0.01 + (PEAK - 0.01) * 0.5**1.5, rel=1e-15)
    assert poly(20, **kw) == PEAK
    assert poly(60, **kw) == pytest.approx(0.001 + (PEAK - 0.001) * 0.5**3, rel=1e-15)
    assert poly(100, **kw) == 0.001
    assert poly(101, **kw) == 0.001


def test_polynomial_warmup_fraction_rounds_and_zero_warmup_starts_at_peak() -> None:
    # W = round(0.25·10) = 2 (half to even): step 2 is the peak.
    assert polynomial_warmup_decay(2, total_steps=10, peak_lr=1.0, warmup_fraction=0.25) == 1.0
    for kwargs in ({"warmup_steps": 0}, {"warmup_fraction": 0.0}):
        assert poly(0, **kwargs) == PEAK
        assert poly(50, **kwargs) == pytest.approx(PEAK * 0.25, rel=1e-15)
        assert poly(100, **kwargs) == 0.0


def test_polynomial_all_warmup_ends_at_final() -> None:
    assert poly(99, warmup_fraction=1.0) == pytest.approx(PEAK * 0.99**2, rel=1e-15)
    assert poly(100, warmup_fraction=1.0) == 0.0
    assert polynomial_warmup_decay(0, total_steps=1, peak_lr=1.0, warmup_steps=0) == 1.0


# ---- cosine with linear warm-up ---------------------------------------------------------------


def cos_lr(step: int, **kwargs) -> float:
    return cosine_warmup(step, total_steps=T, peak_lr=0.1, **{"warmup_steps": 20, **kwargs})


def test_cosine_at_the_key_steps() -> None:
    assert cos_lr(0) == 0.0
    assert cos_lr(10) == pytest.approx(0.05, rel=1e-15)
    assert cos_lr(20) == 0.1
    assert cos_lr(60) == pytest.approx(0.05, rel=1e-15)  # cos(π/2) = 0: halfway
    assert cos_lr(40) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-15)
    assert cos_lr(100) == 0.0
    assert cos_lr(500) == 0.0
    assert cos_lr(60, final_lr=0.02) == pytest.approx(0.06, rel=1e-15)
    assert cos_lr(100, final_lr=0.02) == 0.02
    assert cos_lr(0, warmup_steps=0) == 0.1


def test_warmup_in_epochs() -> None:
    assert warmup_steps_from_epochs(10, 98) == 980  # the paper's SGD warm-up
    assert warmup_steps_from_epochs(0.5, 7) == 4  # round(3.5) half to even
    assert warmup_steps_from_epochs(0, 5) == 0


# ---- LR scaling (Appendix A.2) ----------------------------------------------------------------


def test_scaling_rules() -> None:
    assert paper_peak_lr(8192) == 0.04
    assert paper_peak_lr(2048) == 0.02
    assert paper_peak_lr(32768, "imagenet") == 0.04
    assert paper_peak_lr(8192, "imagenet") == 0.02
    assert paper_peak_lr(512, "cifar100") == 0.01
    assert scale_lr(0.04, 2048, 8192) == 0.02
    assert scale_lr(0.1, 1024, 256, rule="linear") == 0.4
    assert scale_lr(0.04, 4096, 8192) == pytest.approx(0.04 / math.sqrt(2), rel=1e-15)


# ---- registry ---------------------------------------------------------------------------------


def test_make_schedule_matches_the_functions_and_pickles() -> None:
    schedule = make_schedule("polynomial", total_steps=T, peak_lr=PEAK)
    assert [schedule(t) for t in range(0, 120, 7)] == [poly(t) for t in range(0, 120, 7)]
    assert make_schedule("cosine", total_steps=T, peak_lr=0.1, warmup_steps=20)(40) == cos_lr(40)
    assert make_schedule("constant", lr=0.3)(123) == 0.3 == constant(0, lr=0.3)
    assert pickle.loads(pickle.dumps(schedule))(50) == schedule(50)
    assert "polynomial" in repr(schedule)
    assert get_schedule("cosine") is cosine_warmup is SCHEDULES["cosine"].builder


def test_registry_errors_list_the_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'linear'.*constant, cosine, polynomial"):
        make_schedule("linear", lr=1.0)
    accepted = "valid options: total_steps, peak_lr, warmup_steps, final_lr"
    with pytest.raises(ValueError, match=accepted):
        make_schedule("cosine", total_steps=10, peak_lr=0.1, warmup_step=2)
    with pytest.raises(ValueError, match="warmup_steps"):
        make_schedule("cosine", total_steps=10, peak_lr=0.1)  # missing
    with pytest.raises(ValueError, match="peak_lr must be in"):  # checked at construction
        make_schedule("polynomial", total_steps=10, peak_lr=0.0)


# ---- bad hyper-parameters ---------------------------------------------------------------------

BAD_POLYNOMIAL = [
    ({"step": -1}, "step must be in \\[0, inf\\), got -1"),
    ({"step": 1.5}, "step must be an integer in \\[0, inf\\), got 1.5"),
    ({"total_steps": 0}, "total_steps must be in \\[1, inf\\), got 0"),
    ({"total_steps": True}, "total_steps must be an integer"),
    ({"warmup_steps": 101}, "warmup_steps must be in \\[0, 100\\], got 101"),
    ({"warmup_steps": -1}, "warmup_steps must be in \\[0, 100\\], got -1"),
    ({"warmup_fraction": 1.5}, "warmup_fraction must be in \\[0, 1\\], got 1.5"),
    ({"warmup_fraction": -0.1}, "warmup_fraction must be in \\[0, 1\\], got -0.1"),
    ({"warmup_fraction": 0.3, "warmup_steps": 3}, "not both.*warmup_fraction=0.3.*warmup_steps=3"),
    ({"peak_lr": 0.0}, "peak_lr must be in \\(0, inf\\), got 0.0"),
    ({"peak_lr": -0.1}, "peak_lr must be in \\(0, inf\\), got -0.1"),
    ({"peak_lr": math.nan}, "peak_lr must be in \\(0, inf\\), got nan"),
    ({"peak_lr": math.inf}, "peak_lr must be in \\(0, inf\\), got inf"),
    ({"init_lr": -0.01}, "init_lr must be in \\[0, 0.04\\], got -0.01"),
    ({"final_lr": 0.05}, "final_lr must be in \\[0, 0.04\\], got 0.05"),
    ({"warmup_power": 0.0}, "warmup_power must be in \\(0, inf\\), got 0.0"),
    ({"decay_power": -1.0}, "decay_power must be in \\(0, inf\\), got -1.0"),
]


@pytest.mark.parametrize(("override", "message"), BAD_POLYNOMIAL)
def test_polynomial_rejects_bad_hyper_parameters(override: dict, message: str) -> None:
    kwargs = {"step": 0, "total_steps": T, "peak_lr": PEAK, **override}
    with pytest.raises(ValueError, match=message):
        polynomial_warmup_decay(**kwargs)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"step": -3}, "step must be in \\[0, inf\\), got -3"),
        ({"total_steps": 0}, "total_steps must be in \\[1, inf\\), got 0"),
        ({"warmup_steps": 11}, "warmup_steps must be in \\[0, 10\\], got 11"),
        ({"peak_lr": 0}, "peak_lr must be in \\(0, inf\\), got 0.0"),
        ({"final_lr": 0.2}, "final_lr must be in \\[0, 0.1\\], got 0.2"),
    ],
)
def test_cosine_rejects_bad_hyper_parameters(override: dict, message: str) -> None:
    kwargs = {"step": 0, "total_steps": 10, "peak_lr": 0.1, "warmup_steps": 2, **override}
    with pytest.raises(ValueError, match=message):
        cosine_warmup(**kwargs)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: scale_lr(0.1, 512, 256, rule="cubic"), "rule must be one of.*'cubic'"),
        (lambda: scale_lr(0.1, 0, 256), "batch_size must be in \\[1, inf\\), got 0"),
        (lambda: scale_lr(0.1, 512, 0), "base_batch_size must be in \\[1, inf\\), got 0"),
        (lambda: scale_lr(0.0, 512, 256), "base_lr must be in \\(0, inf\\), got 0.0"),
        (lambda: paper_peak_lr(0), "batch_size must be in \\[1, inf\\), got 0"),
        (lambda: paper_peak_lr(512, "mnist"), "dataset must be one of.*'mnist'"),
        (lambda: warmup_steps_from_epochs(-1, 10), "epochs must be in \\[0, inf\\), got -1.0"),
        (lambda: warmup_steps_from_epochs(1, 0), "steps_per_epoch must be in \\[1, inf\\), got 0"),
        (lambda: constant(0, lr=-1.0), "lr must be in \\(0, inf\\), got -1.0"),
    ],
)
def test_scaling_and_helpers_reject_bad_inputs(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ---- the scheduler ----------------------------------------------------------------------------


def _optimizer() -> torch.optim.Optimizer:
    model = nn.Linear(2, 2)
    return torch.optim.SGD(
        [
            {"params": [model.weight]},
            {"params": [model.bias], "lr_scale": 0.5},
        ],
        lr=123.0,  # overwritten by the scheduler, never read
    )


def test_scheduler_sets_every_group_respecting_lr_scale() -> None:
    optimizer = _optimizer()
    schedule = partial(polynomial_warmup_decay, total_steps=10, peak_lr=1.0, warmup_steps=4)
    scheduler = LRScheduler(optimizer, schedule)
    for t in range(12):  # after construction the groups hold the rate of update 0
        expected = schedule(t)
        assert [g["lr"] for g in optimizer.param_groups] == [expected, 0.5 * expected]
        assert scheduler.get_last_lr() == [expected, 0.5 * expected]
        assert scheduler.last_step == t
        optimizer.step()
        scheduler.step()


def test_scheduler_state_dict_round_trip() -> None:
    schedule = make_schedule("cosine", total_steps=20, peak_lr=0.1, warmup_steps=5)
    optimizer = _optimizer()
    scheduler = LRScheduler(optimizer, schedule)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert "schedule" not in state and "optimizer" not in state
    state = pickle.loads(pickle.dumps(state))

    fresh_optimizer = _optimizer()  # a fresh optimiser too: the rate is re-derived from the step
    resumed = LRScheduler(fresh_optimizer, schedule)
    resumed.load_state_dict(state)
    assert resumed.last_step == scheduler.last_step == 7
    assert [g["lr"] for g in fresh_optimizer.param_groups] == [schedule(7), 0.5 * schedule(7)]
    for _ in range(3):
        for opt, sched in ((optimizer, scheduler), (fresh_optimizer, resumed)):
            opt.step()
            sched.step()
        assert resumed.get_last_lr() == scheduler.get_last_lr()


def test_scheduler_resumes_from_last_step_and_rejects_bad_arguments() -> None:
    optimizer = _optimizer()
    LRScheduler(optimizer, partial(constant, lr=0.2), last_step=4)
    assert [g["lr"] for g in optimizer.param_groups] == [0.2, 0.1]
    with pytest.raises(ValueError, match="last_step must be in \\[-1, inf\\), got -2"):
        LRScheduler(_optimizer(), partial(constant, lr=0.2), last_step=-2)
    with pytest.raises(TypeError, match="schedule must be callable"):
        LRScheduler(_optimizer(), 0.1)
