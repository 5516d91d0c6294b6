"""The study report: every section and plot from run files, numbers equal to the files, "-"."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest

from biasdecay.study.plan import make_plan, save_plan
from biasdecay.study.report import REPORT_SECTIONS, write_report
from biasdecay.study.specs import STUDIES
from biasdecay.study.sweep import RunSpec
from biasdecay.train.metrics import MetricsWriter
from biasdecay.train.summary import write_summary

pytest.importorskip("matplotlib")

LAYERS = [f"layer{i}.bn" for i in range(4)]
TITLES = {
    "table1": "## Table 1",
    "figure1": "## Sharpness vs generalisation",
    "table2": "## Table 2",
    "table3": "## Table 3",
    "table4": "## Table 4",
    "table5": "## Table 5",
    "measures": "## Every measure",
    "invariance": "## Invariance",
    "evolution": "## Figures 2-4",
    "adaptive": "## Adaptive β decay",
    "adaptation": "## Layer adaptation",
    "training": "## Training: loss curves and plateaus",
}
PLOTS = {
    "figure1": "_scatter.png",
    "evolution": "_evolution.png",
    "adaptive": "_decisions.png",
    "adaptation": "_beta.png",
    "training": "_training.png",
}


def _fabricate(run_dir: Path, rng: random.Random, *, diverged: bool = False) -> dict:
    """A finished (or diverged) run directory with every kind of record a report reads."""
    run_dir.mkdir(parents=True)
    with MetricsWriter(run_dir) as metrics:
        for step in range(1, 11):  # 10 steps of training, the last 20% on a plateau
            accuracy = min(0.9, 0.5 + 0.1 * step) + rng.uniform(-0.002, 0.002)
            metrics.log({"kind": "train", "step": step, "loss": 2.0 / step, "accuracy": accuracy})
        for step in (2, 4, 6):
            layers = {
                name: {
                    "c_gamma": rng.uniform(0.1, 1),
                    "c_beta": rng.uniform(0.01, 0.1),
                    "gamma_norm": rng.uniform(1, 5),
                    "beta_norm": rng.uniform(0.1, 1),
                    "r": rng.uniform(0.01, 1),
                }
                for name in LAYERS
            }
            metrics.log(
                {
                    "kind": "sharpness",
                    "step": step,
                    "c_m": 1.0,
                    "c_m_by_role": {},
                    "layers": layers,
                    "beta_decayed": {n: v["r"] >= 0.1 for n, v in layers.items()},
                }
            )
        measures = {
            "kind": "measures",
            "step": 6,
            "epoch": 2,
            "split": "train",
            "samples": 64,
            "connectivity": {
                "total": rng.uniform(0.1, 1),
                "table2": {
                    r: rng.uniform(1e-4, 1e-1) for r in ("Conv", "γ", "β", "FC(w)", "FC(b)")
                },
            },
            "connectivity-m": {"total": rng.uniform(0.01, 1)},
            "hessian-trace": {"value": rng.uniform(1, 100)},
            "hessian-max": {"value": rng.uniform(1, 50)},
            "fisher-rao": {"value": rng.uniform(0.1, 10)},
            "invariance": {
                "incoming": "layer1.0.bn1",
                "outgoing": "layer1.0.conv2",
                "unit": 0,
                "factor": 10.0,
                "output_max_abs_change": 1e-7,
                "original": {"connectivity": 1.0, "hessian_trace": {"value": 10.0}},
                "rescaled": {"connectivity": 1.0 + 1e-9, "hessian_trace": {"value": 14.0}},
                "connectivity_relative_change": 1e-9,
                "hessian_trace_relative_change": 0.4,
            },
        }
        measures["connectivity"]["table2"]["Total"] = measures["connectivity"]["total"]
        if not diverged:
            metrics.log(measures)
    summary = {"status": "diverged"} if diverged else {
        "status": "finished", "test_accuracy": rng.uniform(0.5, 0.95)
    }  # fmt: skip
    write_summary(run_dir, summary)
    return {"summary": summary, "measures": measures}


@pytest.mark.parametrize("study", list(STUDIES))
def test_every_section_and_plot_comes_from_the_run_files(tmp_path, study) -> None:
    plan = make_plan(study, "smoke")
    save_plan(plan, tmp_path)
    rng = random.Random(study)
    diverged = plan.runs[-1].name  # the last setting fails, as some of the paper's do
    files = {
        r.name: _fabricate(tmp_path / r.name, rng, diverged=r.name == diverged) for r in plan.runs
    }
    # What a report killed mid-write leaves behind: half-written figures and report.
    (tmp_path / "plots").mkdir()
    for leftover in (tmp_path / "plots" / ".x.png.0a1b.tmp", tmp_path / ".report.md.q1.tmp"):
        leftover.write_bytes(b"half")
    path, text = write_report(tmp_path)
    assert path.read_text() == text and not list(tmp_path.glob(".report.md.*"))
    assert not list((tmp_path / "plots").glob("*.tmp"))
    for section in (*plan.study.sections, "training"):
        assert TITLES[section] in text
        if section in PLOTS:
            assert list((tmp_path / "plots").glob(f"*{PLOTS[section]}")), section
    # Every finished run's accuracy appears, as the file holds it; the diverged one as "-".
    for name, f in files.items():
        if name != diverged:
            assert f"{100 * f['summary']['test_accuracy']:.2f}%" in text
    assert re.search(r"\| -( \||$)", text, re.M), "the diverged run must show as '-'"
    assert "## Claims: summary" in text or not any(
        REPORT_SECTIONS[s]
        for s in plan.study.sections
        if s in ("table1", "table2", "table3", "table4")
    )
    assert "Preset **smoke**" in text


def test_measures_table_numbers_equal_the_run_files(tmp_path) -> None:
    plan = make_plan("main", "smoke")
    save_plan(plan, tmp_path)
    rng = random.Random(0)
    files = {r.name: _fabricate(tmp_path / r.name, rng) for r in plan.runs}
    _, text = write_report(tmp_path)
    table = text.split("## Every measure")[1].split("##")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == len(plan.runs)
    for run, row in zip(plan.runs, rows, strict=True):
        m = files[run.name]["measures"]
        cells = [c.strip() for c in row.strip("|").split("|")]
        expected = [
            f"{100 * files[run.name]['summary']['test_accuracy']:.2f}%",
            f"{m['connectivity']['total']:.2e}",
            f"{m['connectivity-m']['total']:.2e}",
            f"{m['hessian-trace']['value']:.2e}",
            f"{m['hessian-max']['value']:.2e}",
            f"{m['fisher-rao']['value']:.2e}",
        ]
        assert cells[1:7] == expected
    # The data the measures saw is stated from the records, beside each table that shows them.
    assert table.count("64 training images (a fixed un-augmented subset)") == 1
    assert "test images" not in table


def test_seeds_are_pooled_as_mean_and_std(tmp_path) -> None:
    plan = make_plan("table2", "smoke", seeds=2)
    save_plan(plan, tmp_path)
    rng = random.Random(1)
    accs = {
        r.name: _fabricate(tmp_path / r.name, rng)["summary"]["test_accuracy"] for r in plan.runs
    }
    _, text = write_report(tmp_path)
    nbd = [a for n, a in accs.items() if "no_bias_decay" in n]
    mean = sum(nbd) / 2
    std = abs(nbd[0] - nbd[1]) / 2**0.5
    assert "Seeds per setting: 2 (mean ± sample std)" in text
    c_values = [
        json.loads((tmp_path / n / "metrics.jsonl").read_text().splitlines()[-1])["connectivity"]
        for n in accs
        if "no_bias_decay" in n
    ]
    total = sum(c["total"] for c in c_values) / 2
    assert f"{total:.2e} ± " in text
    assert mean > 0 and std >= 0


def test_unfinished_runs_read_as_not_run(tmp_path) -> None:
    plan = make_plan("table2", "smoke")
    save_plan(plan, tmp_path)
    (tmp_path / plan.runs[0].name / "checkpoints").mkdir(parents=True)
    _, text = write_report(tmp_path)
    assert "not run" in text and "Runs: 2 (2 pending)." in text
    assert "**not tested**" in text


def test_report_of_a_directory_without_a_study_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="not a study sweep directory"):
        write_report(tmp_path)


def _fabricate_tracked(run_dir: Path, beta_first: float, beta_last: float, rising: bool) -> None:
    """A finished run whose β norm grows from ``beta_first`` (step 2) to ``beta_last``."""
    run_dir.mkdir(parents=True)
    with MetricsWriter(run_dir) as metrics:
        for step in range(1, 21):
            accuracy = 0.5 + 0.02 * step if rising else min(0.8, 0.5 + 0.1 * step)
            metrics.log({"kind": "train", "step": step, "loss": 1.0, "accuracy": accuracy})
        for step, beta in ((1, 0.0), (2, beta_first), (20, beta_last)):
            layers = {
                name: {"c_gamma": 1.0, "c_beta": beta, "gamma_norm": 1.0, "beta_norm": beta,
                       "r": beta}
                for name in LAYERS
            }  # fmt: skip
            metrics.log({"kind": "sharpness", "step": step, "layers": layers, "beta_decayed": {}})
    write_summary(run_dir, {"status": "finished", "test_accuracy": 0.8, "steps": 20})


def test_adaptation_says_which_convention_lets_beta_grow_and_which_runs_plateau(tmp_path) -> None:
    plan = make_plan("adaptation", "smoke", seeds=3)
    save_plan(plan, tmp_path)
    for run in plan.runs:
        grows = run.setting.layer_adaptation == "decayed"
        last = 0.01 * (1000 + run.seed) if grows else 0.01 * (1.2 + 0.01 * run.seed)
        rising = run.setting.policy == "beta_frozen"  # these runs are still learning
        _fabricate_tracked(tmp_path / run.name, 0.01, last, rising)
    _, text = write_report(tmp_path)
    section = text.split("## Layer adaptation")[1].split("\n## ")[0]
    assert "Figure 2 (β growing from zero under no bias decay) is reproduced by: `decayed`" in text
    assert re.search(r"\*\*agrees\*\*: Under no bias decay β grows .* 'decayed'", section)
    assert re.search(r"\*\*disagrees\*\*: Under no bias decay β grows .* 'all'", section)
    training = text.split("## Training: loss curves and plateaus")[1].split("\n## ")[0]
    # 6 of the 8 settings are flat over their last 20% (3 seeds each); β frozen ones rise.
    assert "18 of 24 finished runs end on a plateau" in training
    assert list((tmp_path / "plots").glob("adaptation_beta.png"))


def _fabricate_never_decaying(out: Path, plan) -> None:
    """Tracked runs whose adaptive β decay never decayed (no ``beta_decayed`` entries)."""
    for run in plan.runs:
        _fabricate_tracked(out / run.name, 0.01, 10.0, rising=False)


def test_the_threshold_R_is_each_runs_own(tmp_path) -> None:
    plan = make_plan("adaptation", "smoke", extra=("policy.threshold=0.2",))
    save_plan(plan, tmp_path)
    _fabricate_never_decaying(tmp_path, plan)
    _, text = write_report(tmp_path)
    section = text.split("## Adaptive β decay")[1].split("\n## ")[0]
    assert "r_l never reached R = 0.2 in 2 of these runs" in section
    assert "R = 0.1" not in section and "do not share" not in section


def test_runs_made_with_different_thresholds_are_named_not_averaged(tmp_path) -> None:
    plan = make_plan("adaptation", "smoke")
    runs = list(plan.runs)
    i = next(k for k, r in enumerate(runs) if r.setting.policy == "adaptive_beta_decay")
    spec = runs[i].spec
    overrides = (*spec.overrides, "policy.threshold=0.3")
    runs[i] = replace(runs[i], spec=RunSpec(spec.name, overrides, spec.labels))
    plan = replace(plan, runs=tuple(runs))
    save_plan(plan, tmp_path)
    _fabricate_never_decaying(tmp_path, plan)
    _, text = write_report(tmp_path, plan)
    section = text.split("## Adaptive β decay")[1].split("\n## ")[0]
    other = next(r.name for r in plan.runs[i + 1 :] if r.setting.policy == "adaptive_beta_decay")
    shown = f"R, which these runs do not share (0.3 in {spec.name}, 0.1 in {other})"
    assert f"The threshold is {shown}: each heat map marks its own run's R." in section
    assert f"r_l never reached {shown} in 2 of these runs" in section
