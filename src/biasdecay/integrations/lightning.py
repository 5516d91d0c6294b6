"""PyTorch Lightning: sharpness tracking and adaptive β decay as callbacks, LAMB in one call.

Install with ``pip install 'biasdecay[lightning]'``::

    import lightning.pytorch as pl
    from biasdecay.integrations.lightning import (
        AdaptiveBetaDecayCallback, SharpnessMonitor, configure_lamb)

    class Net(pl.LightningModule):
        def configure_optimizers(self):
            return configure_lamb(self, policy="adaptive_beta_decay", lr=0.01)

    trainer = pl.Trainer(callbacks=[SharpnessMonitor(every=10), AdaptiveBetaDecayCallback()])

Both callbacks act in ``on_before_optimizer_step``: once per optimiser step, after gradient
accumulation, with the gradients Lightning has already unscaled under AMP, and before the
update, which is where the paper's tracking and Algorithm 1 read them. The monitor logs through
the trainer's own logger from rank 0; the controller runs on every rank (DDP gives every rank the
same gradients, so every rank takes the same decisions).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from biasdecay.errors import InputError
from biasdecay.extras import import_extra
from biasdecay.integrations._common import (
    DeferredBetaDecay,
    check_every,
    flatten_record,
    lamb_for,
    start_tracker,
)
from biasdecay.train.monitors import SharpnessTracker

# The extra is optional; without it, importing this module says what to install.
pl = import_extra(
    "lightning.pytorch", "lightning", "biasdecay.integrations.lightning", package="lightning"
)

__all__ = ["AdaptiveBetaDecayCallback", "SharpnessMonitor", "configure_lamb", "flatten_record"]


class SharpnessMonitor(pl.Callback):
    """Log C_m per role and per normalisation layer, ‖β_l‖, ‖γ_l‖ and r_l every ``every`` steps.

    The values come from the step's own gradients (no extra forward or backward), exactly as
    ``biasdecay train``'s ``run.track_every`` records them. Steps 1 and 2 are always recorded:
    the network at initialisation and after its first update. A step it does not record costs a
    modulo. At ``measure_epochs`` it also runs the full measures (per-sample C by substructure,
    Tr(H), λmax, the Fisher-Rao norm) on ``measure_data``, a fixed training subset you pass.

    Args:
        every: optimiser steps between records (>= 1).
        measure_epochs: epochs (counted from 1, at their end) of the full measures.
        measure_data: batches ``[(inputs, targets), ...]`` for those measures.
        measures: which ones (``biasdecay list measures``).
        prefix: the logged metrics' namespace.

    Attributes:
        records: every record taken on rank 0, as dicts (also logged).
        measured: ``(epoch, results)`` of every full measurement on rank 0.
    """

    def __init__(
        self,
        every: int = 50,
        *,
        measure_epochs: Sequence[int] = (),
        measure_data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
        measures: Sequence[str] = ("connectivity", "hessian-trace", "fisher-rao"),
        prefix: str = "sharpness",
    ) -> None:
        check_every(every)
        if measure_epochs and measure_data is None:
            raise InputError(
                "measure_epochs needs measure_data: pass a fixed training subset as a list of "
                "(inputs, targets) batches"
            )
        self.every = every
        self.measure_epochs = tuple(measure_epochs)
        self.measure_data = list(measure_data) if measure_data is not None else None
        self.measures = tuple(measures)
        self.prefix = prefix
        self.records: list[dict[str, Any]] = []
        self.measured: list[tuple[int, dict[str, Any]]] = []
        self._tracker: SharpnessTracker | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tracker = start_tracker(type(self).__name__, pl_module, self.every)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step + 1  # the step this update makes, counted from 1
        if self._tracker is None or not trainer.is_global_zero or not self._tracker.due(step):
            return
        record = self._tracker.record(step)
        self.records.append(record)
        if trainer.logger is not None:
            trainer.logger.log_metrics(flatten_record(record, self.prefix), step=step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch not in self.measure_epochs or not trainer.is_global_zero:
            return
        from biasdecay.sharpness.suite import MeasureOptions, run_measures

        results = run_measures(pl_module, self.measure_data, list(self.measures), MeasureOptions())
        self.measured.append((epoch, results))
        if trainer.logger is not None:
            scalars = {
                f"{self.prefix}/measures/{name}": float(value)
                for name, value in _scalars(results).items()
            }
            trainer.logger.log_metrics(scalars, step=trainer.global_step)


def _scalars(results: Mapping[str, Any]) -> dict[str, float]:
    """The headline number of each measure: C's total, Tr(H)'s and λmax's value, FR's value."""
    out = {}
    for name, result in results.items():
        if isinstance(result, Mapping):
            value = result.get("total", result.get("value"))
            if isinstance(value, (int, float)):
                out[name] = value
    return out


class AdaptiveBetaDecayCallback(DeferredBetaDecay, pl.Callback):
    """Adaptive β decay (Section 4.2, Algorithm 1) in a Lightning loop.

    Builds :class:`biasdecay.AdaptiveBetaDecay` for the module and its optimiser at the first
    step and runs it before every optimiser step. Use it with :func:`configure_lamb`'s
    ``policy="adaptive_beta_decay"`` (β in its own group without decay), or with any optimiser
    over :func:`biasdecay.param_groups`.

    Args:
        threshold: R (decay β_l where r_l >= R).
        beta_decay: λ_β.

    Attributes:
        controller: the controller, once built (None before the first step, or when the model
            has no normalisation layer with trainable γ and β: then a warning and no decay).
    """

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._decay_step(pl_module, optimizer)  # a LightningOptimizer wraps the optimiser


def configure_lamb(module: nn.Module, *, scheduler: Any = None, **settings: Any) -> Any:
    """What ``configure_optimizers`` returns for LAMB under a role-based decay policy.

    Args:
        module: the LightningModule (or any network).
        scheduler: optional ``lambda optimizer: torch.optim.lr_scheduler.LRScheduler``; it is
            stepped every optimiser step.
        **settings: ``lr`` (required), ``policy``, ``weight_decay``, ``layer_adaptation``,
            ``betas``, ``eps`` and the policy's own options, with the defaults of
            :func:`biasdecay.integrations._common.lamb_for`. With ``policy=
            "adaptive_beta_decay"``, add :class:`AdaptiveBetaDecayCallback`.

    Returns:
        The optimiser, or ``{"optimizer": ..., "lr_scheduler": {"scheduler": ..., "interval":
        "step"}}`` with a scheduler.
    """
    optimizer = lamb_for(module, **settings)
    if scheduler is None:
        return optimizer
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler(optimizer), "interval": "step"},
    }
