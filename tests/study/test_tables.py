"""The paper tables as data: one description per table, named tolerances, one renderer."""

from __future__ import annotations

import ast
import inspect
import math
import random
from dataclasses import fields
from pathlib import Path

import pytest

from biasdecay.study import tolerances
from biasdecay.study.paper_tables import PAPER_TABLES, TABLE1, TABLE2, TABLE3, TABLE4, TABLE5
from biasdecay.study.plan import make_plan, save_plan
from biasdecay.study.quantities import ACCURACY
from biasdecay.study.report import REPORT_SECTIONS, write_report
from biasdecay.study.settings import Setting
from biasdecay.study.specs import STUDIES
from biasdecay.study.table_spec import Block, Cell, Exceeds, Majority, PaperTable, Row
from biasdecay.study.tolerances import TOLERANCES, Tolerances, tolerance
from biasdecay.train.metrics import MetricsWriter
from biasdecay.train.summary import write_summary


@pytest.mark.parametrize("name", list(PAPER_TABLES))
def test_a_table_study_trains_exactly_the_settings_its_table_reads(name) -> None:
    assert STUDIES[name].settings == PAPER_TABLES[name].settings
    assert name in STUDIES[name].sections and name in REPORT_SECTIONS


def test_the_grids_and_values_are_the_papers() -> None:
    assert len(TABLE1.settings) == 4 and len(TABLE3.settings) == 18
    assert len(TABLE4.settings) == 10 and len(TABLE5.settings) == 4
    assert [s.policy for s in TABLE2.settings] == ["no_bias_decay", "beta_decay"]
    sgd = {(s.batch, s.weight_decay) for s in TABLE1.settings}
    assert sgd == {(512, 0.0), (512, 0.005), (8192, 0.0), (8192, 0.005)}
    assert TABLE1.cells[("accuracy", 8192, 0.0)].paper == 89.84
    assert TABLE1.cells[("log λmax", 512, 0.005)].paper == 8.51
    assert TABLE2.cells[("beta_decay", "FC(b)")].paper == 1.14e-7
    # Table 2 quotes Table 3's CIFAR-10 accuracies: written once, the same numbers.
    for policy, coefficient in (("no_bias_decay", None), ("beta_decay", 1.0)):
        quoted = TABLE2.cells[(policy, "test accuracy")].paper
        assert quoted == TABLE3.cells[(policy, coefficient, "cifar10")].paper
    assert TABLE3.cells[("bn_frozen", None, "imagenet")].paper is None  # the paper's "-"
    assert TABLE4.cells[("cifar100", 8192, "adaptive_beta_decay")].paper == 78.11
    assert TABLE5.cells[("imagenet", 32768, "adaptive_beta_decay")].paper == 77.24


def test_every_tolerance_has_a_docstring_and_claims_name_known_ones() -> None:
    tree = ast.parse(inspect.getsource(Tolerances))
    body = tree.body[0].body
    documented = {
        node.target.id
        for node, after in zip(body, body[1:], strict=False)
        if isinstance(node, ast.AnnAssign)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
        and len(after.value.value.split()) > 10
    }
    assert documented == {f.name for f in fields(Tolerances)}
    named = {
        name
        for table in PAPER_TABLES.values()
        for claim in table.claims
        if (name := getattr(claim, "margin", None) or getattr(claim, "needed", None))
    }
    assert named == {"nearly_restores", "spread_rows"}
    assert all(tolerance(n) == getattr(TOLERANCES, n) for n in named)
    assert tolerances.TOLERANCES.noise_factor == 2.0


def test_an_unknown_tolerance_or_cell_is_refused_where_it_is_written() -> None:
    with pytest.raises(ValueError, match="unknown tolerance 'halfpoint'; known tolerances: noise"):
        tolerance("halfpoint")
    with pytest.raises(ValueError, match="unknown tolerance"):
        Exceeds("x", ("a",), ("b",), margin="halfpoint")
    with pytest.raises(ValueError, match="unknown tolerance"):
        Majority("x", (("r", "a", "b"),), "{agreed}", needed="most")
    with pytest.raises(ValueError, match="needs cells on both sides"):
        Exceeds("x", (), ("b",))
    with pytest.raises(ValueError, match="row 'r' has 1 cells for 2 columns"):
        Block(("c1", "c2"), (Row("r", ("a",)),))
    cell = Cell(Setting("cifar10", "resnet18", 8192), ACCURACY, 90.0)
    with pytest.raises(ValueError, match=r"unknown cell keys \['b'\]"):
        PaperTable(
            "T", {"a": cell}, (Block(("c",), (Row("r", ("a",)),)),), (Exceeds("x", ("a",), ("b",)),)
        )


def _finished(run_dir: Path, accuracy: float, trace: float, lam: float) -> None:
    run_dir.mkdir(parents=True)
    with MetricsWriter(run_dir) as metrics:
        metrics.log(
            {
                "kind": "measures",
                "step": 1,
                "split": "train",
                "samples": 64,
                "hessian-trace": {"value": trace},
                "hessian-max": {"value": lam},
            }
        )
    write_summary(run_dir, {"status": "finished", "test_accuracy": accuracy})


def _cells(text: str, caption: str) -> list[list[str]]:
    table = text.split(caption)[1].split("\n\n")[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_the_renderer_sets_each_runs_number_beside_the_papers(tmp_path) -> None:
    plan = make_plan("table1", "smoke")
    save_plan(plan, tmp_path)
    rng = random.Random(3)
    runs = {}
    for run in plan.runs:
        values = (rng.uniform(0.5, 0.9), rng.uniform(1, 100), rng.uniform(1, 50))
        _finished(tmp_path / run.name, *values)
        runs[(run.setting.batch, run.setting.weight_decay)] = values
    _, text = write_report(tmp_path)
    for caption, i, ours, paper in (
        ("**(a) Test accuracy**", 0, lambda v: f"{100 * v:.2f}%", lambda v: f"{v:.2f}%"),
        ("**(b) log Tr(H)**", 1, lambda v: f"{math.log(v):.2f}", lambda v: f"{v:.2f}"),
        ("**(c) log λmax(H)**", 2, lambda v: f"{math.log(v):.2f}", lambda v: f"{v:.2f}"),
    ):
        part = ("accuracy", "log Tr(H)", "log λmax")[i]
        rows = _cells(text, caption)
        assert [r[0] for r in rows] == ["512", "8k"]
        for row, batch in zip(rows, (512, 8192), strict=True):
            expected = []
            for wd in (0.0, 0.005):
                expected += [
                    ours(runs[(batch, wd)][i]),
                    paper(TABLE1.cells[(part, batch, wd)].paper),
                ]
            assert row[1:] == expected
    assert "| batch | wd 0: ours | wd 0: paper | wd 0.005: ours | wd 0.005: paper |" in text
    assert "Sharpness measured on 64 training images" in text
    # Six claims, each tested on the cells it names.
    section = text.split("## Table 1")[1].split("\n## ")[0]
    assert section.count("- **inconclusive (1 seed, no noise estimate)**") == 6
