"""The paper's Tables 1-5 as data: the settings, what each cell reads, the paper's values, claims.

Each table is written once, here. Its grid of settings is the set of keys of its transcribed
values; the studies train :attr:`PaperTable.settings`, and the report draws the table from its
description (:mod:`biasdecay.study.report.render`). Accuracies are in percent as printed;
``None`` is the paper's "-" (training failed). Settings follow Appendix A unless a table says
otherwise.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import replace

from biasdecay.study.quantities import ACCURACY, LOG_LAMBDA, LOG_TRACE, connectivity_row
from biasdecay.study.settings import PAPER_DATA, Setting, batch_text
from biasdecay.study.table_spec import Block, Cell, Exceeds, Majority, PaperTable, Row
from biasdecay.study.tolerances import TOLERANCES

__all__ = ["FIGURE4", "PAPER_TABLES", "TABLE1", "TABLE2", "TABLE3", "TABLE4", "TABLE5"]


# --------------------------------------------------------------------------------- Table 1

# ResNet-18 on CIFAR-10 with SGD (lr 0.1, momentum 0.9, cosine with a 10-epoch warm-up) and
# weight decay on every parameter: (batch, weight decay) -> accuracy, log Tr(H), log λmax(H).
_TABLE1_PAPER = {
    (512, 0.0): (94.00, 2.63, 5.50),
    (512, 0.005): (94.86, 6.28, 8.51),
    (8192, 0.0): (89.84, 7.13, 9.30),
    (8192, 0.005): (94.17, 5.99, 8.15),
}
_TABLE1_PARTS = (
    ("accuracy", "(a) Test accuracy", ACCURACY),
    ("log Tr(H)", "(b) log Tr(H)", LOG_TRACE),
    ("log λmax", "(c) log λmax(H)", LOG_LAMBDA),
)


def _table1() -> PaperTable:
    batches = tuple(dict.fromkeys(b for b, _ in _TABLE1_PAPER))
    decays = tuple(dict.fromkeys(wd for _, wd in _TABLE1_PAPER))
    cells = {
        (part, batch, wd): Cell(
            Setting(
                "cifar10",
                "resnet18",
                batch,
                optimizer="sgd",
                policy="all_decay",
                weight_decay=wd,
                lr=0.1,
                schedule="cosine",
            ),
            quantity,
            values[i],
        )
        for (batch, wd), values in _TABLE1_PAPER.items()
        for i, (part, _, quantity) in enumerate(_TABLE1_PARTS)
    }
    blocks = tuple(
        Block(
            columns=tuple(f"wd {wd:g}" for wd in decays),
            rows=tuple(Row(batch_text(b), tuple((part, b, wd) for wd in decays)) for b in batches),
            corner="batch",
            caption=f"**{caption}**",
        )
        for part, caption, _ in _TABLE1_PARTS
    )
    small, large = batches[0], batches[-1]
    s, la = batch_text(small), batch_text(large)
    claims: list[Exceeds] = [
        Exceeds(
            f"With weight decay {wd:g}, the small batch generalises better than {la}.",
            (("accuracy", small, wd),),
            (("accuracy", large, wd),),
            f"{{high}} ({s}) vs {{low}} ({la})",
        )
        for wd in decays
    ]
    no_wd, wd = decays
    for part in ("log Tr(H)", "log λmax"):
        claims += [
            Exceeds(
                f"Without weight decay the better (small-batch) model has the lower {part}.",
                ((part, large, no_wd),),
                ((part, small, no_wd),),
                f"{part} {{high}} ({la}) vs {{low}} ({s})",
            ),
            Exceeds(
                "With weight decay the tendency reverses: the small-batch model has the higher "
                f"{part}.",
                ((part, small, wd),),
                ((part, large, wd),),
                f"{part} {{high}} ({s}) vs {{low}} ({la})",
            ),
        ]
    return PaperTable(
        "Table 1: sharpness vs generalisation with SGD (batch x weight decay)",
        cells,
        blocks,
        tuple(claims),
        notes=("Sharpness measured on {measured_on}, BatchNorm in eval mode.",),
    )


# --------------------------------------------------------------------------------- Table 3

# ResNet-18 on CIFAR at 8k and ResNet-50 on ImageNet at 32k, LAMB: (policy, coefficient) ->
# accuracy per data set of _TABLE3_DATA. Table 2 quotes its CIFAR-10 accuracies.
_TABLE3_DATA = (
    ("cifar10", "resnet18", 8192),
    ("cifar100", "resnet18", 8192),
    ("imagenet", "resnet50d", 32768),
)
_TABLE3_PAPER = {
    ("no_bias_decay", None): (94.49, 76.77, 76.56),
    ("bn_frozen", None): (94.64, 77.59, None),
    ("gamma_frozen", None): (94.47, 76.99, 76.57),
    ("gamma_decay", 0.01): (94.46, 77.59, 76.62),
    ("beta_frozen", None): (94.87, 77.81, None),
    ("beta_decay", 1.0): (94.90, 77.99, 76.97),
}
_BASE, _BETA = ("no_bias_decay", None), ("beta_decay", 1.0)


def _table3() -> PaperTable:
    # Data set by data set: the order the study trains them in.
    cells = {
        (policy, coefficient, dataset): Cell(
            Setting(dataset, model, batch, policy=policy, coefficient=coefficient),
            ACCURACY,
            values[i],
        )
        for i, (dataset, model, batch) in enumerate(_TABLE3_DATA)
        for (policy, coefficient), values in _TABLE3_PAPER.items()
    }
    datasets = [d for d, _, _ in _TABLE3_DATA]
    rows = tuple(
        Row(
            Setting("cifar10", "resnet18", 1, policy=p, coefficient=c).policy_text,
            tuple((p, c, d) for d in datasets),
        )
        for p, c in _TABLE3_PAPER
    )
    others = [row for row in _TABLE3_PAPER if row not in (_BASE, _BETA)]
    claims = []
    for d in datasets:
        where = f"({PAPER_DATA[d].title} setting)"
        claims += [
            Exceeds(
                f"β decay (1.0) beats no bias decay {where}.",
                ((*_BETA, d),),
                ((*_BASE, d),),
                "{high} vs {low} on {ours}",
            ),
            Exceeds(
                f"β decay is the best of the six options {where}.",
                ((*_BETA, d),),
                tuple((*row, d) for row in others),
                "β decay {high} vs the best other option {low}",
            ),
        ]
    block = Block(
        columns=tuple(datasets),
        rows=rows,
        corner="policy",
        ours="{ours}, {batch} (ours {our_batch})",
        paper="paper: {paper_data}",
    )
    title = "Table 3: pitfalls of the no-bias-decay heuristic"
    return PaperTable(title, cells, (block,), tuple(claims))


# --------------------------------------------------------------------------------- Table 2

# ResNet-18, CIFAR-10, 8k, LAMB: substructure -> C under (no bias decay, β decay (1.0)).
_TABLE2_PAPER = {
    "Conv": (2.74e-1, 1.80e-1),
    "γ": (3.88e-2, 1.87e-2),
    "β": (1.81e-2, 1.39e-3),
    "FC(w)": (3.32e-3, 3.56e-3),
    "FC(b)": (2.00e-5, 1.14e-7),
    "Total": (3.34e-1, 2.04e-1),
}
_ACCURACY_ROW = "test accuracy"


def _table2() -> PaperTable:
    base = Setting("cifar10", "resnet18", 8192)
    columns = (base, replace(base, policy=_BETA[0], coefficient=_BETA[1]))
    cifar10 = [d for d, _, _ in _TABLE3_DATA].index("cifar10")
    accuracies = [_TABLE3_PAPER[_BASE][cifar10], _TABLE3_PAPER[_BETA][cifar10]]
    cells: dict[Hashable, Cell] = {}
    for row, values in _TABLE2_PAPER.items():
        for setting, value in zip(columns, values, strict=True):
            cells[(setting.policy, row)] = Cell(setting, connectivity_row(row), value)
    for setting, value in zip(columns, accuracies, strict=True):
        cells[(setting.policy, _ACCURACY_ROW)] = Cell(setting, ACCURACY, value)
    rows = tuple(
        Row(row, tuple((s.policy, row) for s in columns)) for row in (*_TABLE2_PAPER, _ACCURACY_ROW)
    )
    block = Block(
        columns=("no bias decay", "β decay (1.0)"),  # as the paper heads them
        rows=rows,
        paper="paper",
        caption="Per-sample C (eq. 4) on {measured_on}, BatchNorm in eval mode, {ours}, batch "
        "{batch}; paper: CIFAR-10, 8k (its accuracies from Table 3).",
    )
    nbd, beta = (s.policy for s in columns)
    substructures = [row for row in _TABLE2_PAPER if row != "Total"]
    lower = sum(a > b for a, b in (_TABLE2_PAPER[r] for r in substructures))
    claims = (
        Exceeds(
            "β decay lowers the connectivity sharpness C of the whole network.",
            ((nbd, "Total"),),
            ((beta, "Total"),),
            "total C {low} (β decay) vs {high}",
        ),
        Exceeds("β decay lowers C(β).", ((nbd, "β"),), ((beta, "β"),), "C(β) {low} vs {high}"),
        Majority(
            "The effect of β decay spreads across the network (paper: "
            f"{lower} of {len(substructures)} rows lower).",
            tuple((row, (nbd, row), (beta, row)) for row in substructures),
            "{agreed} of {n} rows lower under β decay beyond {noise} SE ({agreed_labels}), "
            "{disagreed} higher ({disagreed_labels})",
            needed="spread_rows",
            requires=((nbd, "Total"), (beta, "Total")),
        ),
    )
    return PaperTable(
        "Table 2: connectivity sharpness C by substructure, no bias decay vs β decay",
        cells,
        (block,),
        claims,
    )


# --------------------------------------------------------------------------------- Tables 4, 5

# LAMB, each data set a block: its columns are (batch, policy); β decay and adaptive β decay
# at coefficient 1.0, at the largest batch.
_ADAPTIVE_LABELS = {
    "no_bias_decay": "",
    "beta_decay": " w. β decay (1.0)",
    "adaptive_beta_decay": " w. adaptive β decay",
}
_TABLE4_COLUMNS = (
    (512, "no_bias_decay"),
    (2048, "no_bias_decay"),
    (8192, "no_bias_decay"),
    (8192, "beta_decay"),
    (8192, "adaptive_beta_decay"),
)
_TABLE4_PAPER = {
    "cifar10": (95.12, 94.59, 94.49, 94.90, 95.01),
    "cifar100": (78.09, 78.03, 76.77, 77.99, 78.11),
}
_TABLE5_COLUMNS = (
    (1024, "no_bias_decay"),
    (32768, "no_bias_decay"),
    (32768, "beta_decay"),
    (32768, "adaptive_beta_decay"),
)
_TABLE5_PAPER = {"imagenet": (77.16, 76.56, 76.97, 77.24)}


def _adaptive_claims(dataset: str, columns: tuple[tuple[int, str], ...]) -> list[Exceeds]:
    """Tables 4 and 5's claims on one data set's block."""
    plain = sorted(b for b, p in columns if p == "no_bias_decay")
    small, large = plain[0], plain[-1]
    s, la = batch_text(small), batch_text(large)
    where = f"({PAPER_DATA[dataset].title} setting)"

    def key(batch: int, policy: str) -> tuple[Hashable, ...]:
        return ((dataset, batch, policy),)

    base, adaptive = key(large, "no_bias_decay"), key(large, "adaptive_beta_decay")
    claims = [
        Exceeds(
            f"The smallest batch generalises better than the largest under no bias decay {where}.",
            key(small, "no_bias_decay"),
            base,
            f"{{high}} ({s}) vs {{low}} ({la})",
        ),
        Exceeds(
            f"At {la}, β decay (1.0) beats no bias decay {where}.", key(large, "beta_decay"), base
        ),
        Exceeds(f"At {la}, adaptive β decay beats no bias decay {where}.", adaptive, base),
        Exceeds(
            f"Adaptive β decay at {la} nearly restores the small-batch accuracy (within "
            f"{100 * TOLERANCES.nearly_restores:g} points) {where}.",
            adaptive,
            key(small, "no_bias_decay"),
            f"{{high}} vs {{low}} ({s})",
            margin="nearly_restores",
        ),
    ]
    if dataset == "imagenet":  # Table 5 alone claims it
        claims.append(
            Exceeds(
                f"Adaptive β decay beats fixed β decay {where}.", adaptive, key(large, "beta_decay")
            )
        )
    return claims


def _adaptive_table(
    title: str, model: str, columns: tuple[tuple[int, str], ...], paper: dict[str, tuple]
) -> PaperTable:
    cells, blocks, claims = {}, [], []
    for dataset, values in paper.items():
        for (batch, policy), value in zip(columns, values, strict=True):
            coefficient = None if policy == "no_bias_decay" else 1.0
            setting = Setting(dataset, model, batch, policy=policy, coefficient=coefficient)
            cells[(dataset, batch, policy)] = Cell(setting, ACCURACY, value)
        blocks.append(
            Block(
                columns=tuple(
                    f"{{batch}}{_ADAPTIVE_LABELS[p]} (ours {{our_batch}})" for _, p in columns
                ),
                rows=(Row("", tuple((dataset, b, p) for b, p in columns)),),
                ours="ours: {ours}",
                paper="paper: {paper_data}",
                paper_as="row",
            )
        )
        claims += _adaptive_claims(dataset, columns)
    return PaperTable(title, cells, tuple(blocks), tuple(claims))


# --------------------------------------------------------------------------------- all

TABLE1 = _table1()
TABLE2 = _table2()
TABLE3 = _table3()
TABLE4 = _adaptive_table(
    "Table 4: adaptive β decay, ResNet-18 with LAMB", "resnet18", _TABLE4_COLUMNS, _TABLE4_PAPER
)
TABLE5 = _adaptive_table(
    "Table 5: adaptive β decay, ResNet-50-D with LAMB", "resnet50d", _TABLE5_COLUMNS, _TABLE5_PAPER
)

#: Report section name -> table.
PAPER_TABLES: dict[str, PaperTable] = {
    "table1": TABLE1,
    "table2": TABLE2,
    "table3": TABLE3,
    "table4": TABLE4,
    "table5": TABLE5,
}

#: Section 4.1, on Figure 4 vs Figure 2b: β decay scales γ down by 35% and C(γ) by 25%.
FIGURE4 = {"gamma_change": -0.35, "c_gamma_change": -0.25}
