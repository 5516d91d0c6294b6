"""The paper's experiments as data: one :class:`Study` per table or figure.

A study is the list of settings (:class:`~biasdecay.study.settings.Setting`, at the paper's
scale) it trains, the measures it takes on each trained network and the report sections that
read them. The studies of Tables 1-5 train the settings their table's description reads
(:mod:`biasdecay.study.paper_tables`), so a table's grid is written once. Presets
(``presets.py``) translate a setting to a concrete run on the hardware and data at hand.
Settings are compared by value, so two studies that train the same setting share its run.

Every number here is from the paper: Appendix A (protocol) and the text of Sections 3-4 (grids).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from biasdecay.registry import Registry
from biasdecay.study.paper_tables import TABLE1, TABLE2, TABLE3, TABLE4, TABLE5
from biasdecay.study.settings import PAPER_DATA, PaperData, Setting, batch_text

__all__ = [
    "PAPER_DATA",
    "STUDIES",
    "PaperData",
    "Setting",
    "Study",
    "batch_text",
    "get_study",
    "study_names",
]


@dataclass(frozen=True)
class Study:
    """What one table or figure of the paper trains, measures and reports.

    Attributes:
        name: the name ``biasdecay sweep`` takes.
        title: the paper's caption, shortened.
        settings: the runs, at the paper's scale.
        measures: measures taken on every trained network (``run.measures``).
        sections: report sections that read the runs (``REPORT_SECTIONS`` of ``report``).
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
    # SGD (lr 0.1, momentum 0.9, cosine with a 10-epoch warm-up), decay on every parameter.
    return Study(
        "table1",
        "Table 1: sharpness vs generalisation of ResNet-18 with SGD, batch x weight decay",
        TABLE1.settings,
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


def _build() -> list[Study]:
    resnet8k = Setting("cifar10", "resnet18", 8192)
    return [
        _table1(),
        _figure("figure1", "Figure 1", "cifar10", "vgg11"),
        _figure("figure5", "Figure 5", "cifar100", "vgg11"),
        _figure("figure6", "Figure 6", "cifar10", "vgg19_bn"),
        _figure("figure7", "Figure 7", "cifar100", "vgg19_bn"),
        Study(
            "evolution",
            "Figures 2-4: β, γ, C(β), C(γ) per layer over training, ResNet-18, CIFAR-10, 8k",
            (
                *TABLE2.settings,
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
            TABLE2.settings,
            measures=("connectivity",),
            sections=("table2",),
        ),
        Study(
            "table3",
            "Table 3: pitfalls of no bias decay (frozen and decayed β, γ)",
            TABLE3.settings,
            sections=("table3",),
        ),
        Study(
            "table4",
            "Table 4: adaptive β decay, ResNet-18 on CIFAR-10/100 with LAMB",
            TABLE4.settings,
            sections=("table4", "adaptive"),
            track=True,
        ),
        Study(
            "table5",
            "Table 5: adaptive β decay, ResNet-50-D on ImageNet with LAMB",
            TABLE5.settings,
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
            # Table 4's CIFAR-10 columns without the middle batch (2k).
            tuple(s for s in TABLE4.settings if s.dataset == "cifar10" and s.batch != 2048),
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


#: Every study by name, in the paper's order (``biasdecay sweep STUDY``).
STUDIES: Registry[Study] = Registry("study", _build())

#: The study called ``name``; an unknown name raises :class:`~biasdecay.registry.RegistryError`
#: listing the valid ones.
get_study = STUDIES.entry

#: Names ``biasdecay sweep`` accepts.
study_names = STUDIES.names
