"""Scales a study runs at: the paper's own, one GPU on Fashion-MNIST, or a 2-core CPU.

A preset maps each of the paper's data sets to one available here and fixes what must shrink
with the hardware: model width, epochs and the training subset. What carries over unchanged is
the protocol (optimiser, schedule shape, peak learning rates, decay policies, ghost batch 32) and
the *ratio of batch size to training-set size*, so "8k on CIFAR-10" (16% of the data per step)
stays a large batch on a smaller data set and gives the same number of steps per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from biasdecay.registry import Registry
from biasdecay.study.specs import PAPER_DATA, Setting

__all__ = ["GHOST_BATCH", "PRESETS", "Budget", "Preset", "ScaledRun", "get_preset", "preset_names"]

GHOST_BATCH = 32  # Appendix A.2; every batch is a whole number of ghost batches


@dataclass(frozen=True)
class ScaledRun:
    """A :class:`Setting` as it runs at a preset."""

    dataset: str  # a data registry name
    train_size: int  # training samples actually used
    batch: int
    micro_batch: int | None
    epochs: float
    width: float
    warmup_epochs: float  # cosine schedules only (10 of 200 epochs in the paper)
    augment: str | None = "cifar"  # data.augment (None: none)


@dataclass(frozen=True)
class Budget:
    """What a preset spends on measuring and recording each run (the ``run.*`` settings).

    Attributes:
        samples: training samples the final measures see (``run.measure_samples``).
        matvecs: Hessian-vector products of the trace estimate (``run.measure_matvecs``).
        lanczos_iters: Lanczos iterations of λmax (``run.measure_lanczos_iters``).
        track_records: about how many tracking records a run writes over its training.
        eval_points: about how many test-set evaluations a run makes (one at the end at least).
    """

    samples: int
    matvecs: int
    lanczos_iters: int
    track_records: int = 60
    eval_points: int = 10


@dataclass(frozen=True)
class Preset:
    """How the paper's settings are scaled to the hardware and data at hand.

    Attributes:
        name: the name ``--preset`` takes.
        description: one line for ``--help`` and the report.
        datasets: paper data set -> data registry name (None: not run at this preset).
        full_size: size of each stand-in's whole train split, for the batch ratio.
        epochs: paper data set -> epochs.
        width: model width multiplier.
        budget: the measures' budgets and how often a run records and evaluates.
        train_size: paper data set -> training samples used (missing or None: the whole train
            split, whose size is ``full_size``).
        micro_batch_cap: largest micro-batch (None: the whole batch at once).
        augment: the batched augmentation of the CIFAR stand-ins (``data.augment``; None:
            none). ImageNet's own pipeline augments as it decodes.
        augment_note: why a preset departs from the paper's augmentation, for the report.
    """

    name: str
    description: str
    datasets: dict[str, str | None]
    full_size: dict[str, int]
    epochs: dict[str, float]
    width: float
    budget: Budget
    train_size: dict[str, int | None] = field(default_factory=dict)
    micro_batch_cap: int | None = None
    augment: str | None = "cifar"  # the paper's: random crop with padding 4, then flip
    augment_note: str = ""

    def scale(self, setting: Setting) -> ScaledRun | None:
        """The run of ``setting`` at this preset (None: its data set is not run here)."""
        ours = self.datasets.get(setting.dataset)
        if ours is None:
            return None
        paper = PAPER_DATA[setting.dataset]
        n = self.train_size.get(setting.dataset) or self.full_size[ours]
        if self.name == "paper":
            batch = setting.batch
        else:  # keep batch / training-set size
            share = setting.batch * n / paper.train_size
            batch = max(GHOST_BATCH, GHOST_BATCH * round(share / GHOST_BATCH))
        epochs = self.epochs[setting.dataset]
        return ScaledRun(
            dataset=ours,
            train_size=n,
            batch=batch,
            micro_batch=_micro_batch(batch, self.micro_batch_cap),
            epochs=epochs,
            width=self.width,
            warmup_epochs=10.0 * epochs / paper.epochs,
            augment=None if ours == "imagenet" else self.augment,
        )


def _micro_batch(batch: int, cap: int | None) -> int | None:
    """The largest whole number of ghost batches that divides ``batch`` and is at most ``cap``."""
    if cap is None or batch <= cap:
        return None
    ghosts = batch // GHOST_BATCH
    for k in range(cap // GHOST_BATCH, 0, -1):
        if ghosts % k == 0:
            return k * GHOST_BATCH
    return GHOST_BATCH


_FASHION_SIZE = {"fashion-mnist": 60_000}
# The smallest CIFAR stand-in that keeps the paper's batch sizes apart once rounded to whole
# ghost batches of 32: 512 -> 32, 2k -> 96, 8k -> 320 (1.6%, 4.7%, 15.6% of it per step).
_CPU_TRAIN_SIZE: dict[str, int | None] = {"cifar10": 2_048, "cifar100": 2_048, "imagenet": 20_480}

_CPU = Preset(
    "cpu",
    "real Fashion-MNIST on a few CPU cores, for findings: a 2,048-image training subset "
    "(20,480 for ImageNet's runs), eighth-width models, 60 epochs (4 for ImageNet's "
    "runs: 360 steps at 8k, 30% of the paper's 1,221), no augmentation (so every run is "
    "trained to a plateau), batch sizes kept in proportion to the data set",
    datasets={"cifar10": "fashion-mnist", "cifar100": None, "imagenet": "fashion-mnist"},
    train_size=_CPU_TRAIN_SIZE,
    full_size=_FASHION_SIZE,
    epochs={"cifar10": 60, "cifar100": 60, "imagenet": 4},
    width=0.125,
    micro_batch_cap=512,
    # 4 evaluations: each one of the 10k test images costs about 5 epochs of 2,048
    budget=Budget(256, 12, 10, track_records=40, eval_points=4),
    augment=None,
    augment_note=(
        "With the paper's crop-and-flip augmentation the eighth-width network does not "
        "fit the 2,048 images in 60 epochs: its train accuracy still rose 2.5-2.8 "
        "points over the last 20% of training at every batch size "
        "(docs/results/table4-augmented). Without it the networks fit their training "
        "set, as the paper's do in 200 epochs; the training section shows the plateaus"
    ),
)


#: Every preset by name, from the paper's scale down (``--preset``).
PRESETS: Registry[Preset] = Registry(
    "preset",
    [
        Preset(
            "paper",
            "Appendix A exactly: CIFAR-10/100 (200 epochs) and ImageNet (90 epochs) from "
            "--data-root, full-width models, the paper's batch sizes; GPUs, torchrun",
            datasets={"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet"},
            full_size={"cifar10": 50_000, "cifar100": 50_000, "imagenet": 1_281_167},
            epochs={"cifar10": 200, "cifar100": 200, "imagenet": 90},
            width=1.0,
            budget=Budget(5000, 60, 30, track_records=200, eval_points=20),
        ),
        Preset(
            "fashion",
            "the same protocol on real Fashion-MNIST (stand-in for CIFAR-10 and ImageNet; "
            "CIFAR-100 has none), half-width models, 40 epochs (15 for ImageNet's runs), "
            "batch sizes kept in proportion to the data set; one GPU",
            datasets={"cifar10": "fashion-mnist", "cifar100": None, "imagenet": "fashion-mnist"},
            full_size=_FASHION_SIZE,
            epochs={"cifar10": 40, "cifar100": 40, "imagenet": 15},
            width=0.5,
            budget=Budget(2048, 30, 20, track_records=100),
        ),
        _CPU,
        replace(
            _CPU,
            name="quick",
            description="the main job's scale: the cpu preset's data and models, with the "
            "paper's augmentation, for a third of its epochs (20; 120 steps at 8k) and smaller "
            "measure budgets, so a study with 3 seeds takes minutes on 2 cores; its runs are not "
            "trained to a plateau (the report's training section shows how far they got)",
            epochs={"cifar10": 20, "cifar100": 20, "imagenet": 2},
            budget=Budget(128, 8, 8, track_records=30, eval_points=2),
            augment="cifar",
            augment_note="",
        ),
        Preset(
            "smoke",
            "a pipeline check in about a minute: scikit-learn's 8x8 digits (always installed) "
            "for every data set, sixteenth-width models, 2 epochs; numbers mean nothing",
            datasets={"cifar10": "digits", "cifar100": "digits", "imagenet": "digits"},
            full_size={"digits": 1_438},  # the digits train split (80% of 1,797)
            epochs={"cifar10": 2, "cifar100": 2, "imagenet": 2},
            width=0.0625,
            budget=Budget(64, 4, 4, track_records=4, eval_points=1),
        ),
    ],
)

#: The preset called ``name``; an unknown name raises :class:`~biasdecay.registry.RegistryError`
#: listing the valid ones.
get_preset = PRESETS.entry

#: Names ``--preset`` accepts.
preset_names = PRESETS.names


def steps_per_epoch(scaled: ScaledRun) -> int:
    """Optimiser steps per epoch (the train loader drops the last partial batch)."""
    return max(1, scaled.train_size // scaled.batch)


def total_steps(scaled: ScaledRun) -> int:
    """Optimiser steps of the whole run."""
    return max(1, math.ceil(scaled.epochs * steps_per_epoch(scaled)))
