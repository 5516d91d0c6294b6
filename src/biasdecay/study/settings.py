"""A training setting at the paper's scale, and the data sets as the paper used them.

A :class:`Setting` is one training configuration *at the paper's scale* (CIFAR-10 at batch 8k,
ImageNet at 32k, ...). Settings are compared by value, so two studies (or two paper tables)
that train the same setting share its run. Presets (``presets.py``) translate a setting to a
concrete run on the hardware and data at hand.

Every number here is from the paper: Appendix A (protocol).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from biasdecay.optim import LAYER_ADAPTATION

__all__ = ["PAPER_DATA", "PaperData", "Setting", "batch_text"]


@dataclass(frozen=True)
class PaperData:
    """A data set as the paper used it (Appendix A.2)."""

    title: str
    train_size: int
    epochs: int
    base_batch: int  # η_peak = 0.04 at this batch, sqrt-scaled to others


PAPER_DATA: dict[str, PaperData] = {
    "cifar10": PaperData("CIFAR-10", 50_000, 200, 8192),
    "cifar100": PaperData("CIFAR-100", 50_000, 200, 8192),
    "imagenet": PaperData("ImageNet", 1_281_167, 90, 32768),
}

# Policies that take a coefficient, and which PolicyConfig field holds it.
_COEFFICIENT_FIELD = {
    "beta_decay": "beta",
    "adaptive_beta_decay": "beta",
    "gamma_decay": "gamma",
    "bias_decay": "bias",
}
_POLICY_TEXT = {
    "no_bias_decay": "no bias decay",
    "all_decay": "weight decay on all parameters",
    "beta_decay": "β decay",
    "gamma_decay": "γ decay",
    "bias_decay": "bias decay",
    "beta_frozen": "β frozen",
    "gamma_frozen": "γ frozen",
    "bn_frozen": "BN frozen",
    "adaptive_beta_decay": "adaptive β decay",
}


@dataclass(frozen=True)
class Setting:
    """One training setting at the paper's scale.

    Attributes:
        dataset: the paper's data set (``cifar10``, ``cifar100``, ``imagenet``).
        model: a model registry name.
        batch: the paper's batch size.
        optimizer: ``lamb`` or ``sgd``.
        policy: a decay policy name.
        coefficient: λ of the role the policy decays (β, γ or biases); None for the others.
        weight_decay: λ_w of the non-normalisation weights.
        lr: fixed peak learning rate; None: 0.04·sqrt(batch / base batch) (Appendix A.2).
        schedule: ``polynomial`` (LAMB, Appendix A.1) or ``cosine`` (SGD, 10-epoch warm-up).
        layer_adaptation: which parameters LAMB gives the trust ratio (``optimizer.
            layer_adaptation``; the paper does not say, design.md §4).
    """

    dataset: str
    model: str
    batch: int
    optimizer: str = "lamb"
    policy: str = "no_bias_decay"
    coefficient: float | None = None
    weight_decay: float = 0.01
    lr: float | None = None
    schedule: str = "polynomial"
    layer_adaptation: str = "decayed"

    def __post_init__(self) -> None:
        if self.dataset not in PAPER_DATA:
            raise ValueError(f"unknown paper data set {self.dataset!r}; valid: {list(PAPER_DATA)}")
        if self.layer_adaptation not in LAYER_ADAPTATION:
            raise ValueError(
                f"unknown layer_adaptation {self.layer_adaptation!r}; valid: {LAYER_ADAPTATION}"
            )
        if self.coefficient is not None and self.policy not in _COEFFICIENT_FIELD:
            raise ValueError(f"policy {self.policy!r} takes no coefficient")

    @property
    def peak_lr(self) -> float:
        """The peak learning rate of the run (Appendix A.2's sqrt rule unless fixed)."""
        if self.lr is not None:
            return self.lr
        return 0.04 * math.sqrt(self.batch / PAPER_DATA[self.dataset].base_batch)

    @property
    def coefficient_field(self) -> str | None:
        """The ``policy.*`` key that holds :attr:`coefficient`."""
        return _COEFFICIENT_FIELD.get(self.policy)

    @property
    def key(self) -> str:
        """A unique, readable name (run directories are named after it)."""
        policy = self.policy if self.coefficient is None else f"{self.policy}{self.coefficient:g}"
        # The default convention adds nothing, so its runs keep their names.
        adaptation = "" if self.layer_adaptation == "decayed" else f"-la{self.layer_adaptation}"
        return (
            f"{self.dataset}-{self.model}-{self.optimizer}-b{self.batch}-wd{self.weight_decay:g}"
            f"-lr{self.peak_lr:.4g}-{policy}{adaptation}"
        )

    @property
    def policy_text(self) -> str:
        """The policy as the paper's tables name it, e.g. ``β decay (1.0)``."""
        text = _POLICY_TEXT.get(self.policy, self.policy)
        return text if self.coefficient is None else f"{text} ({self.coefficient:g})"


def batch_text(batch: int) -> str:
    """``512``, ``2k``, ``8k``, ``32k``: the paper's way of writing batch sizes."""
    return f"{batch // 1024}k" if batch >= 1024 and batch % 1024 == 0 else str(batch)
