"""Learning-rate schedules: pure ``step -> lr`` functions, LR scaling rules and a scheduler.

The paper (Appendix A.1) trains with LAMB under the polynomial warm-up/decay schedule of
Nado et al. (2021) with ``p_warmup = p_decay = 2``, ``η_init = η_final = 0`` and 30% of the steps
as warm-up; its SGD runs use cosine decay with a 10-epoch linear warm-up (He et al., 2019b).
Appendix A.2 scales the peak with the square root of the batch size:
``η_peak = 0.04·sqrt(B/8192)`` on CIFAR and ``0.04·sqrt(B/32768)`` on ImageNet.

Step convention (all schedules here): steps are counted from 0 and ``schedule(t)`` is the learning
rate used by the update of step ``t``. A run of ``total_steps = T`` updates uses ``t = 0 .. T-1``;
``schedule(T)`` is the final value, reached as training ends, so the last update still moves the
weights; for ``t > T`` the final value is held.

Every hyper-parameter of every schedule is checked exactly (init2winit style): a bad one raises
``InputError`` (a ``ValueError``) naming the argument, its value and the valid range. The static
part of each range is the parameter's annotation (``Annotated[float, Range(...)]``), which the
registry, the config and the help text read; bounds that depend on another argument
(``init_lr <= peak_lr``) are checked in the body.

Usage::

    from functools import partial
    schedule = partial(polynomial_warmup_decay, total_steps=T, peak_lr=paper_peak_lr(B))
    scheduler = LRScheduler(optimizer, schedule)   # or make_schedule("polynomial", ...)
    for batch in data:
        ...; optimizer.step(); scheduler.step()
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

import torch
from torch.optim.lr_scheduler import LRScheduler as _TorchLRScheduler

from biasdecay.constraints import Range
from biasdecay.errors import InputError
from biasdecay.registry import Entry, Registry

__all__ = [
    "PAPER_BASE_BATCH_SIZE",
    "PAPER_BASE_LR",
    "PAPER_SGD_WARMUP_EPOCHS",
    "PAPER_WARMUP_FRACTION",
    "SCALING_RULES",
    "SCHEDULES",
    "LRScheduler",
    "constant",
    "cosine_warmup",
    "get_schedule",
    "make_schedule",
    "paper_peak_lr",
    "polynomial_warmup_decay",
    "scale_lr",
    "warmup_steps_from_epochs",
]

# Appendix A.1: 30% of the optimisation steps warm up (LAMB runs).
PAPER_WARMUP_FRACTION = 0.3
# Appendix A.1: SGD runs warm up linearly for 10 epochs.
PAPER_SGD_WARMUP_EPOCHS = 10
# Appendix A.2: η_peak = 0.04 at batch 8k (CIFAR) or 32k (ImageNet), sqrt scaling around it.
PAPER_BASE_LR = 0.04
PAPER_BASE_BATCH_SIZE = {"cifar": 8192, "imagenet": 32768}
# Names a user may reasonably pass for the paper's datasets (the data registry's names).
_DATASET_ALIASES = {
    "cifar": "cifar",
    "cifar10": "cifar",
    "cifar100": "cifar",
    "imagenet": "imagenet",
}
SCALING_RULES = ("sqrt", "linear")


# --------------------------------------------------------------------------- argument ranges

_STEP = Range(0, integer=True)  # a step t, counted from 0
_STEPS = Range(1, integer=True)  # a number of steps
_POSITIVE = Range(0.0, low_open=True)
_NONNEGATIVE = Range(0.0)
_FRACTION = Range(0.0, 1.0, high_open=False)


def _up_to(total_steps: int) -> Range:
    """Steps ``W`` in ``[0, T]``: a warm-up no longer than the run."""
    return Range(0, total_steps, high_open=False, integer=True)


def _at_most(peak: float) -> Range:
    """A rate in ``[0, η_peak]``: warm-up starts and decay ends no higher than the peak."""
    return Range(0.0, peak, high_open=False)


def _checked_run(
    step: int, total_steps: int, peak_lr: float, final_lr: float
) -> tuple[int, int, float, float]:
    """The arguments every warm-up-and-decay schedule shares, checked: ``(t, T, peak, final)``."""
    peak = _POSITIVE.check("peak_lr", peak_lr)
    return (
        _STEP.check("step", step),
        _STEPS.check("total_steps", total_steps),
        peak,
        _at_most(peak).check("final_lr", final_lr),
    )


def _resolve_warmup_steps(
    total_steps: int, warmup_fraction: float | None, warmup_steps: int | None
) -> int:
    if warmup_fraction is not None and warmup_steps is not None:
        raise InputError(
            f"give warmup_fraction or warmup_steps, not both "
            f"(got warmup_fraction={warmup_fraction!r}, warmup_steps={warmup_steps!r})"
        )
    if warmup_steps is not None:
        return _up_to(total_steps).check("warmup_steps", warmup_steps)
    fraction = PAPER_WARMUP_FRACTION if warmup_fraction is None else warmup_fraction
    fraction = _FRACTION.check("warmup_fraction", fraction)
    # Python's round (half to even): W = round(0.3·T) as the paper's "30% of the steps".
    return round(fraction * total_steps)


# --------------------------------------------------------------------------- schedules


def polynomial_warmup_decay(
    step: Annotated[int, _STEP],
    *,
    total_steps: Annotated[int, _STEPS],
    peak_lr: Annotated[float, _POSITIVE],
    warmup_fraction: Annotated[float | None, _FRACTION] = None,
    warmup_steps: Annotated[int | None, _STEP] = None,
    init_lr: Annotated[float, _NONNEGATIVE] = 0.0,
    final_lr: Annotated[float, _NONNEGATIVE] = 0.0,
    warmup_power: Annotated[float, _POSITIVE] = 2.0,
    decay_power: Annotated[float, _POSITIVE] = 2.0,
) -> float:
    """Polynomial warm-up then polynomial decay, the paper's LAMB schedule (Appendix A.1).

    From Nado et al. (2021), "A large batch optimizer reality check", as in MLPerf.

    With ``T = total_steps`` and ``W`` warm-up steps::

        t < W:       η_init + (η_peak − η_init)·(t/W)^p_warmup
        W ≤ t ≤ T:   η_final + (η_peak − η_final)·(1 − (t − W)/(T − W))^p_decay
        t > T:       η_final

    so ``schedule(0) = η_init``, ``schedule(W) = η_peak`` and ``schedule(T) = η_final``. Steps count
    from 0 and ``schedule(t)`` is the learning rate of the update of step ``t`` (the ``T`` updates
    use ``t = 0 .. T-1``; the last one still has a non-zero rate when ``η_final = 0``).
    The defaults are the paper's: ``p = 2`` both, 30% warm-up, ``η_init = η_final = 0``.

    Args:
        step: the step ``t ≥ 0``.
        total_steps: ``T ≥ 1``, the number of updates of the run.
        peak_lr: ``η_peak > 0`` (see :func:`paper_peak_lr`).
        warmup_fraction: warm-up as a fraction of ``T`` in ``[0, 1]``; ``W = round(fraction·T)``.
            ``None`` (default) means the paper's 0.3 unless ``warmup_steps`` is given.
        warmup_steps: ``W`` in ``[0, T]`` directly; not together with ``warmup_fraction``.
        init_lr: ``η_init`` in ``[0, η_peak]``.
        final_lr: ``η_final`` in ``[0, η_peak]``.
        warmup_power: ``p_warmup > 0``.
        decay_power: ``p_decay > 0``.

    Returns:
        The learning rate of step ``step``.
    """
    t, T, peak, final = _checked_run(step, total_steps, peak_lr, final_lr)
    init = _at_most(peak).check("init_lr", init_lr)
    p_warmup = _POSITIVE.check("warmup_power", warmup_power)
    p_decay = _POSITIVE.check("decay_power", decay_power)
    W = _resolve_warmup_steps(T, warmup_fraction, warmup_steps)

    if t >= T:  # checked first: with W == T there is no decay phase to divide by
        return final
    if t < W:
        return init + (peak - init) * (t / W) ** p_warmup
    return final + (peak - final) * (1.0 - (t - W) / (T - W)) ** p_decay


def cosine_warmup(
    step: Annotated[int, _STEP],
    *,
    total_steps: Annotated[int, _STEPS],
    peak_lr: Annotated[float, _POSITIVE],
    warmup_steps: Annotated[int, _STEP],
    final_lr: Annotated[float, _NONNEGATIVE] = 0.0,
) -> float:
    """Linear warm-up from 0, then cosine decay, the paper's SGD schedule (Appendix A.1).

    From He et al. (2019b), "Bag of tricks for image classification".

    With ``T = total_steps`` and ``W = warmup_steps``::

        t < W:       η_peak·t/W
        W ≤ t ≤ T:   η_final + (η_peak − η_final)·(1 + cos(π·(t − W)/(T − W)))/2
        t > T:       η_final

    Same step convention as :func:`polynomial_warmup_decay`. Appendix A.1 warms up for 10 epochs:
    ``warmup_steps=warmup_steps_from_epochs(10, steps_per_epoch)``.

    Args:
        step: the step ``t ≥ 0``.
        total_steps: ``T ≥ 1``.
        peak_lr: ``η_peak > 0`` (the paper's SGD runs: 0.1).
        warmup_steps: ``W`` in ``[0, T]``.
        final_lr: ``η_final`` in ``[0, η_peak]``.

    Returns:
        The learning rate of step ``step``.
    """
    t, T, peak, final = _checked_run(step, total_steps, peak_lr, final_lr)
    W = _up_to(T).check("warmup_steps", warmup_steps)

    if t >= T:
        return final
    if t < W:
        return peak * t / W
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * (t - W) / (T - W)))


def constant(step: Annotated[int, _STEP], *, lr: Annotated[float, _POSITIVE]) -> float:
    """A constant learning rate (baselines, debugging).

    Args:
        step: the step ``t ≥ 0`` (checked, otherwise unused).
        lr: the learning rate, ``> 0``.

    Returns:
        ``lr``.
    """
    _STEP.check("step", step)
    return _POSITIVE.check("lr", lr)


def warmup_steps_from_epochs(epochs: float, steps_per_epoch: int) -> int:
    """Warm-up length in steps from a length in epochs (Appendix A.1: 10 epochs for SGD).

    Args:
        epochs: warm-up epochs, ``≥ 0`` (fractions allowed).
        steps_per_epoch: optimiser steps per epoch, ``≥ 1``.

    Returns:
        ``round(epochs·steps_per_epoch)``.
    """
    epochs = _NONNEGATIVE.check("epochs", epochs)
    steps_per_epoch = _STEPS.check("steps_per_epoch", steps_per_epoch)
    return round(epochs * steps_per_epoch)


# --------------------------------------------------------------------------- LR scaling


def scale_lr(base_lr: float, batch_size: int, base_batch_size: int, rule: str = "sqrt") -> float:
    """Scale a learning rate tuned at ``base_batch_size`` to ``batch_size``.

    ``"sqrt"``: ``base_lr·sqrt(B/B₀)`` (the paper's rule for LAMB, Appendix A.2);
    ``"linear"``: ``base_lr·B/B₀`` (Goyal et al., 2017, for SGD).

    Args:
        base_lr: the learning rate at ``base_batch_size``, ``> 0``.
        batch_size: ``B ≥ 1``.
        base_batch_size: ``B₀ ≥ 1``.
        rule: ``"sqrt"`` or ``"linear"``.

    Returns:
        The scaled learning rate.
    """
    if rule not in SCALING_RULES:
        raise InputError(f"rule must be one of {SCALING_RULES}, got {rule!r}")
    base_lr = _POSITIVE.check("base_lr", base_lr)
    batch_size = _STEPS.check("batch_size", batch_size)
    base_batch_size = _STEPS.check("base_batch_size", base_batch_size)
    ratio = batch_size / base_batch_size
    # math.sqrt rather than ** 0.5: correctly rounded, so 0.04 at B₀ and 0.02 at B₀/4 exactly.
    return base_lr * (math.sqrt(ratio) if rule == "sqrt" else ratio)


def paper_peak_lr(batch_size: int, dataset: str = "cifar") -> float:
    """The paper's LAMB peak learning rate: ``0.04·sqrt(B/8192)`` (CIFAR) or ``/32768`` (ImageNet).

    Args:
        batch_size: ``B ≥ 1``.
        dataset: ``"cifar"`` (also ``"cifar10"``, ``"cifar100"``) or ``"imagenet"``.

    Returns:
        ``η_peak`` of Appendix A.2.
    """
    if dataset not in _DATASET_ALIASES:
        raise InputError(f"dataset must be one of {sorted(_DATASET_ALIASES)}, got {dataset!r}")
    base_batch_size = PAPER_BASE_BATCH_SIZE[_DATASET_ALIASES[dataset]]
    return scale_lr(PAPER_BASE_LR, batch_size, base_batch_size, rule="sqrt")


# --------------------------------------------------------------------------- registry

Schedule = Callable[[int], float]

#: Every schedule by name: a ``step -> lr`` function whose keyword arguments are its options.
SCHEDULES: Registry[Entry] = Registry(
    "schedule",
    [
        Entry(
            "polynomial",
            polynomial_warmup_decay,
            description="polynomial warm-up and decay (Appendix A.1, the paper's LAMB runs)",
            fixed=("step",),
        ),
        Entry(
            "cosine",
            cosine_warmup,
            description="linear warm-up, then cosine decay (Appendix A.1, the paper's SGD runs)",
            fixed=("step",),
        ),
        Entry("constant", constant, description="a constant rate (baselines)", fixed=("step",)),
    ],
    sort=True,
)


def get_schedule(name: str) -> Callable[..., float]:
    """The schedule function registered under ``name``.

    Raises:
        RegistryError: for an unknown name, listing the known ones (a ``ValueError``).
    """
    return SCHEDULES.entry(name).builder


class _BoundSchedule:
    """A registered schedule with its hyper-parameters bound: picklable, with a readable repr."""

    def __init__(self, name: str, fn: Callable[..., float], kwargs: dict[str, Any]) -> None:
        self.name, self.fn, self.kwargs = name, fn, dict(kwargs)

    def __call__(self, step: int) -> float:
        return self.fn(step, **self.kwargs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"make_schedule({self.name!r}, {args})"


def make_schedule(name: str, **kwargs: Any) -> Schedule:
    """A ``step -> lr`` function from the registry, its hyper-parameters checked now.

    Args:
        name: ``"polynomial"``, ``"cosine"`` or ``"constant"`` (see :data:`SCHEDULES`).
        **kwargs: the keyword arguments of that schedule (everything but ``step``).

    Returns:
        A picklable callable ``schedule(step) -> lr``.

    Raises:
        ValueError: unknown name (listing the known ones), unknown or missing arguments (listing
            the accepted ones), or a bad hyper-parameter.
    """
    schedule = _BoundSchedule(name, get_schedule(name), SCHEDULES.bind(name, **kwargs))
    schedule(0)  # fail at construction, not at the first step, on a bad hyper-parameter
    return schedule


# --------------------------------------------------------------------------- scheduler


class LRScheduler(_TorchLRScheduler):
    """Set every param group's lr to ``schedule(t)·group.get("lr_scale", 1)`` at step ``t``.

    A torch ``LRScheduler``: construct it after the optimiser, call :meth:`step` after each
    ``optimizer.step()``. On construction the groups get ``schedule(last_step + 1)``, the rate of
    the next update (``schedule(0)`` for a fresh run). The group's own ``lr`` is overwritten, never
    read: per-group multipliers go in ``lr_scale`` (e.g. a smaller rate for BN parameters).

    :meth:`state_dict` holds the step counter but not the schedule (a lambda cannot be pickled);
    rebuild the scheduler with the same schedule and load the state into it.

    Args:
        optimizer: the optimiser whose groups are driven.
        schedule: ``step -> lr``, e.g. ``functools.partial(polynomial_warmup_decay, ...)`` or
            :func:`make_schedule`.
        last_step: the last step already taken (``-1`` for a fresh run).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        *,
        last_step: int = -1,
    ) -> None:
        if not callable(schedule):
            raise TypeError(f"schedule must be callable step -> lr, got {schedule!r}")
        last_step = Range(-1, integer=True).check("last_step", last_step)
        self.schedule = schedule
        # torch's base class insists on "initial_lr" when resuming; our rates never use it.
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        super().__init__(optimizer, last_epoch=last_step)

    @property
    def last_step(self) -> int:
        """The step whose update the current learning rates are for, minus one."""
        return self.last_epoch

    def get_lr(self) -> list[float]:
        """The learning rate of every group for step ``last_epoch``."""
        lr = float(self.schedule(self.last_epoch))
        return [lr * group.get("lr_scale", 1.0) for group in self.optimizer.param_groups]

    # step(epoch) (deprecated in torch) jumps to a step: the schedule is closed form anyway.
    _get_closed_form_lr = get_lr

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state without the optimiser and the schedule."""
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "schedule")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; the schedule given at construction is kept."""
        state = {k: v for k, v in state_dict.items() if k not in ("optimizer", "schedule")}
        self.__dict__.update(state)
        # The rate is a pure function of the step, so re-applying it makes a fresh optimiser (one
        # whose state was not loaded) resume at the right rate too.
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [
            lr.clone() if isinstance(lr, torch.Tensor) else lr
            for lr in (group["lr"] for group in self.optimizer.param_groups)
        ]
