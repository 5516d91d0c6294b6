"""Hugging Face Transformers: sharpness tracking and adaptive β decay as Trainer callbacks.

Install with ``pip install 'biasdecay[transformers]'``::

    from transformers import Trainer
    from biasdecay.integrations.transformers import (
        AdaptiveBetaDecayTrainerCallback, SharpnessMonitorCallback, lamb_for)

    optimizer = lamb_for(model, lr=1e-3, policy="adaptive_beta_decay")
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None))
    add_callbacks(trainer, SharpnessMonitorCallback(every=10), AdaptiveBetaDecayTrainerCallback())

Both callbacks act in ``on_pre_optimizer_step``: once per optimiser step, after gradient
accumulation and clipping, before the update, which is where the paper's tracking and
Algorithm 1 read the gradients. Hugging Face models keep their β in LayerNorm; there r_l is a
ratio of sensitivities summed over the features of each token, and eq. 17's closed form (exact
for activation-wise normalisation) does not hold (``docs/integrations.md``).

Roles: LayerNorm weight and bias are γ and β, ``nn.Embedding`` tables are embeddings (decayed
like weights, as BERT's LAMB recipe does), ``nn.Linear`` and GPT-2's ``Conv1D`` are linear layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from biasdecay.extras import import_extra

# lamb_for (re-exported): LAMB for a Hugging Face model, for ``Trainer(optimizers=(lamb_for(model,
# lr=...), None))``; the same builder as Lightning's configure_lamb.
from biasdecay.integrations._common import (
    DeferredBetaDecay,
    check_every,
    flatten_record,
    lamb_for,
    start_tracker,
)
from biasdecay.train.monitors import SharpnessTracker

# The extra is optional; without it, importing this module says what to install.
TrainerCallback = import_extra(
    "transformers",
    "transformers",
    "biasdecay.integrations.transformers",
    note=" (its Trainer also needs accelerate: pip install accelerate)",
).TrainerCallback

__all__ = [
    "AdaptiveBetaDecayTrainerCallback",
    "LogitsOf",
    "SharpnessMonitorCallback",
    "add_callbacks",
    "lamb_for",
]


def add_callbacks(trainer: Any, *callbacks: TrainerCallback) -> None:
    """Put ``callbacks`` first in ``trainer``'s list, ahead of its logging integrations.

    The Trainer calls callbacks in list order and appends those given to it after its loggers
    (TensorBoard, W&B, ...), so the loggers would see a log before the monitor had added its
    metrics to it. Placed first, the monitor's scalars reach every logger.

    Args:
        trainer: a ``transformers.Trainer``.
        *callbacks: the callbacks, in the order they should run.
    """
    handler = trainer.callback_handler
    for callback in reversed(callbacks):
        handler.callbacks.insert(0, callback)


class SharpnessMonitorCallback(TrainerCallback):
    """Record C_m per role and per normalisation layer, ‖β_l‖, ‖γ_l‖ and r_l every ``every`` steps.

    The values come from the step's own gradients (no extra forward or backward), as
    ``biasdecay train``'s ``run.track_every`` records them; steps 1 and 2 are always recorded.
    The process of rank 0 records. Each record is kept in :attr:`records` and its scalars are
    added to the next log the Trainer writes, and to its ``state.log_history``; add the callback
    with :func:`add_callbacks` so that they reach the loggers (TensorBoard, W&B, ...) too.

    Args:
        every: optimiser steps between records (>= 1).
        prefix: the logged metrics' namespace.

    Attributes:
        records: every record taken, as dicts.
    """

    def __init__(self, every: int = 50, *, prefix: str = "sharpness") -> None:
        check_every(every)
        self.every = every
        self.prefix = prefix
        self.records: list[dict[str, Any]] = []
        self._tracker: SharpnessTracker | None = None
        self._unlogged: dict[str, float] = {}

    def on_train_begin(self, args, state, control, model: nn.Module | None = None, **kwargs):
        self._tracker = start_tracker(type(self).__name__, model, self.every)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        step = state.global_step + 1  # the step this update makes, counted from 1
        if self._tracker is None or not state.is_world_process_zero:
            return
        if not self._tracker.due(step):
            return
        record = self._tracker.record(step)
        self.records.append(record)
        self._unlogged.update(flatten_record(record, self.prefix))

    def on_log(self, args, state, control, logs: Mapping[str, Any] | None = None, **kwargs):
        if logs is not None and self._unlogged:
            logs.update(self._unlogged)  # the Trainer passes this dict on to later callbacks
            if state.log_history:  # the Trainer appended its copy of this log before on_log
                state.log_history[-1].update(self._unlogged)
            self._unlogged = {}


class AdaptiveBetaDecayTrainerCallback(DeferredBetaDecay, TrainerCallback):
    """Adaptive β decay (Section 4.2, Algorithm 1) in a Hugging Face Trainer.

    Builds :class:`biasdecay.AdaptiveBetaDecay` for the model and the Trainer's optimiser at the
    first step and runs it before every optimiser step (on every process: data-parallel
    training gives every rank the same gradients, so every rank takes the same decisions). Use
    it with ``lamb_for(model, policy="adaptive_beta_decay", ...)`` (or any torch optimiser over
    :func:`biasdecay.param_groups` with that policy), which gives each layer's β a group whose
    decay the controller sets. The Trainer's default AdamW is refused: it puts every β in one
    shared group, and a group added later would escape the Trainer's learning-rate schedule.

    Args:
        threshold: R (decay β_l where r_l >= R).
        beta_decay: λ_β.

    Attributes:
        controller: the controller, once built (None before the first step, or when the model
            has no normalisation layer with trainable β: then a warning and no decay).
    """

    def on_pre_optimizer_step(
        self, args, state, control, model: nn.Module | None = None, optimizer=None, **kwargs
    ):
        self._decay_step(model, optimizer)  # Accelerate wraps the optimiser


class LogitsOf(nn.Module):
    """A Hugging Face model as ``inputs -> logits``, the form the measures take.

    ``biasdecay.connectivity_sharpness(LogitsOf(model), [(input_ids, labels)])`` then measures
    the model on its token inputs, with the default cross-entropy on the logits.

    Args:
        model: the Hugging Face model.
        input_name: the keyword its forward takes the inputs by (``input_ids``,
            ``pixel_values``, ...).
    """

    def __init__(self, model: nn.Module, input_name: str = "input_ids") -> None:
        super().__init__()
        self.model = model
        self.input_name = input_name

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.input_name: inputs}).logits
