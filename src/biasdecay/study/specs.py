"""The paper's experiments as data: one :class:`Study` per table or figure.

A :class:`Setting` is one training configuration *at the paper's scale* (CIFAR-10 at batch 8k,
ImageNet at 32k, ...). A study is the list of settings it trains, the measures it takes on each
trained network and the report sections that read them. Presets (``presets.py``) translate a
setting to a concrete run on the hardware and data at hand. Settings are compared by value, so two
studies that train the same setting share its run.

Every number here is from the paper: Appendix A (protocol) and the text of Sections 3-4 (grids).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from biasdecay.optim import LAYER_ADAPTATION

__all__ = [
    "PAPER_DATA",
    "STUDIES",
    "PaperData",
    "Setting",
    "Study",
    "get_study",
    "study_names",
]


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


@dataclass(frozen=True)
class Study:
    """What one table or figure of the paper trains, measures and reports.

    Attributes:
        name: the name ``biasdecay sweep`` takes.
        title: the paper's caption, shortened.
        settings: the runs, at the paper's scale.
        measures: measures taken on every trained network (``run.measures``).
        sections: report sections that read the runs (see ``report.py``).
        track: record per-layer sharpness over training (Figures 2-4, the r_l heat map).
    """

    name: str
    title: str
    settings: tuple[Setting, ...]
    measures: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    track: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        keys = [s.key for s in self.settings]
        if len(set(keys)) != len(keys):
            raise ValueError(f"study {self.name}: settings repeat")


def _table1() -> Study:
    # Table 1: SGD (lr 0.1, momentum 0.9, cosine with a 10-epoch warm-up), decay on every parameter.
    settings = tuple(
        Setting(
            "cifar10",
            "resnet18",
            batch,
            optimizer="sgd",
            policy="all_decay",
            weight_decay=wd,
            lr=0.1,
            schedule="cosine",
        )
        for batch in (512, 8192)
        for wd in (0.0, 0.005)
    )
    return Study(
        "table1",
        "Table 1: sharpness vs generalisation of ResNet-18 with SGD, batch x weight decay",
        settings,
        measures=("hessian-trace", "hessian-max"),
        sections=("table1",),
    )


def _figure(name: str, figure: str, dataset: str, model: str) -> Study:
    """Figure 1 and its appendix versions: a base run and its eight one-factor ablations."""
    base = Setting(dataset, model, 8192, weight_decay=0.01, lr=0.02)
    ablations = (
        replace(base, batch=512),
        replace(base, batch=2048),
        replace(base, weight_decay=0.1),
        replace(base, weight_decay=0.001),
        replace(base, lr=0.05),
        replace(base, lr=0.01),
        replace(base, policy="bias_decay", coefficient=0.1),
        replace(base, policy="bias_decay", coefficient=1.0),
    )
    return Study(
        name,
        f"{figure}: sharpness-generalisation of {model} on {PAPER_DATA[dataset].title} "
        "(base run and 8 ablations)",
        (base, *ablations),
        measures=("hessian-trace", "fisher-rao", "connectivity-m"),
        sections=("figure1",),
    )


def _policies(dataset: str, model: str, batch: int) -> tuple[Setting, ...]:
    """Table 3's rows at one data set."""
    s = Setting(dataset, model, batch)
    return (
        s,
        replace(s, policy="bn_frozen"),
        replace(s, policy="gamma_frozen"),
        replace(s, policy="gamma_decay", coefficient=0.01),
        replace(s, policy="beta_frozen"),
        replace(s, policy="beta_decay", coefficient=1.0),
    )


def _adaptive_row(dataset: str, model: str, small: tuple[int, ...], large: int) -> tuple:
    """Tables 4 and 5: small batches, the large batch, + β decay, + adaptive β decay."""
    base = Setting(dataset, model, large)
    return (
        *(replace(base, batch=b) for b in small),
        base,
        replace(base, policy="beta_decay", coefficient=1.0),
        replace(base, policy="adaptive_beta_decay", coefficient=1.0),
    )


def _build() -> dict[str, Study]:
    resnet8k = Setting("cifar10", "resnet18", 8192)
    studies = [
        _table1(),
        _figure("figure1", "Figure 1", "cifar10", "vgg11"),
        _figure("figure5", "Figure 5", "cifar100", "vgg11"),
        _figure("figure6", "Figure 6", "cifar10", "vgg19_bn"),
        _figure("figure7", "Figure 7", "cifar100", "vgg19_bn"),
        Study(
            "evolution",
            "Figures 2-4: β, γ, C(β), C(γ) per layer over training, ResNet-18, CIFAR-10, 8k",
            (
                resnet8k,
                replace(resnet8k, policy="beta_decay", coefficient=1.0),
                replace(resnet8k, policy="gamma_decay", coefficient=0.01),
                replace(resnet8k, policy="all_decay"),
            ),
            measures=("connectivity",),
            sections=("evolution", "table2"),  # its first two settings are Table 2's
            track=True,
        ),
        Study(
            "table2",
            "Table 2: C by substructure of ResNet-18, no bias decay vs β decay (CIFAR-10, 8k)",
            (resnet8k, replace(resnet8k, policy="beta_decay", coefficient=1.0)),
            measures=("connectivity",),
            sections=("table2",),
        ),
        Study(
            "table3",
            "Table 3: pitfalls of no bias decay (frozen and decayed β, γ)",
            _policies("cifar10", "resnet18", 8192)
            + _policies("cifar100", "resnet18", 8192)
            + _policies("imagenet", "resnet50d", 32768),
            sections=("table3",),
        ),
        Study(
            "table4",
            "Table 4: adaptive β decay, ResNet-18 on CIFAR-10/100 with LAMB",
            _adaptive_row("cifar10", "resnet18", (512, 2048), 8192)
            + _adaptive_row("cifar100", "resnet18", (512, 2048), 8192),
            sections=("table4", "adaptive"),
            track=True,
        ),
        Study(
            "table5",
            "Table 5: adaptive β decay, ResNet-50-D on ImageNet with LAMB",
            _adaptive_row("imagenet", "resnet50d", (1024,), 32768),
            sections=("table5", "adaptive"),
            track=True,
        ),
        Study(
            "adaptation",
            "Layer adaptation: which parameters take LAMB's trust ratio, and whether β grows "
            "from zero as in Figure 2 (ResNet-18, CIFAR-10, 8k)",
            tuple(
                replace(resnet8k, policy=policy, coefficient=coefficient, layer_adaptation=mode)
                for mode in ("decayed", "all")
                for policy, coefficient in (
                    ("no_bias_decay", None),
                    ("beta_decay", 1.0),
                    ("adaptive_beta_decay", 1.0),
                    ("beta_frozen", None),
                )
            ),
            measures=("connectivity",),
            # Its decayed-convention runs include Table 2's pair and Figure 2's and 3a's.
            sections=("adaptation", "table2", "evolution", "adaptive"),
            track=True,
        ),
        Study(
            "main",
            "The central question: small vs large batch under no bias decay, β decay and "
            "adaptive β decay, with every measure and the invariance check",
            _adaptive_row("cifar10", "resnet18", (512,), 8192),
            measures=(
                "connectivity",
                "connectivity-m",
                "hessian-trace",
                "hessian-max",
                "fisher-rao",
                "invariance",
            ),
            sections=("table4", "table2", "measures", "invariance", "adaptive", "evolution"),
            track=True,
        ),
    ]
    return {s.name: s for s in studies}


STUDIES: dict[str, Study] = _build()


def study_names() -> list[str]:
    """Names ``biasdecay sweep`` accepts."""
    return list(STUDIES)


def get_study(name: str) -> Study:
    """The study called ``name``; an unknown name lists the valid ones."""
    try:
        return STUDIES[name]
    except KeyError:
        raise ValueError(
            f"unknown study {name!r}; valid studies: {', '.join(STUDIES)} "
            "(or the path of a grid TOML file)"
        ) from None
