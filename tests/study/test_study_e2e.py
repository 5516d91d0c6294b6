"""A whole study through the command line at the smoke preset: sweep, kill, report, resume.

Real training (ResNet-18 at 1/16 width on scikit-learn's digits, a few steps per run), so these
tests check the pieces together: the plan's configs train, measures and tracking land in the run
files, the report reads them, and a sweep killed mid-run picks up where it stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from biasdecay.study.plan import make_plan, save_plan
from biasdecay.study.report import write_report
from biasdecay.study.specs import Setting, Study
from biasdecay.study.sweep import run_state, sweep

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "biasdecay", *args], env=ENV, capture_output=True, text=True
    )


def _measures_rows(text: str) -> list[list[str]]:
    table = text.split("## Every measure")[1].split("\n## ")[0]
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| ") and "ours" in line
    ]


def test_main_study_survives_a_kill_and_reports_what_its_runs_hold(tmp_path) -> None:
    out = tmp_path / "study"
    command = [sys.executable, "-m", "biasdecay", "sweep", "main", "--preset", "smoke"]
    proc = subprocess.Popen(
        [*command, "--out", str(out)],
        env=ENV,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    plan = make_plan("main", "smoke")
    second = out / plan.runs[1].name  # kill while the second run is mid-way
    deadline = time.time() + 180
    while not list((second / "checkpoints").glob("step-*.pt")):
        assert proc.poll() is None and time.time() < deadline, "the sweep ended before the kill"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run_state(out / plan.runs[0].name) == "finished"
    assert run_state(second) == "interrupted"

    # A report written now reads the finished run and shows the killed one as not run.
    report = _cli("report", str(out), "--quiet")
    assert report.returncode == 0, report.stderr
    text = (out / "report.md").read_text()
    assert "not run" in text and "1 finished" in text

    again = _cli("sweep", "main", "--preset", "smoke", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert "skipped" in again.stdout and "resuming" in again.stdout
    assert "sweep: 4 finished" in again.stdout

    text = (out / "report.md").read_text()
    rows = _measures_rows(text)
    assert len(rows) == 4
    for run, cells in zip(plan.runs, rows, strict=True):
        summary = json.loads((out / run.name / "summary.json").read_text())
        records = [json.loads(line) for line in (out / run.name / "metrics.jsonl").open()]
        measures = [r for r in records if r["kind"] == "measures"][-1]
        assert cells[1] == f"{100 * summary['test_accuracy']:.2f}%"
        assert cells[2] == f"{measures['connectivity']['total']:.2e}"
        assert cells[4] == f"{measures['hessian-trace']['value']:.2e}"
        assert any(r["kind"] == "sharpness" for r in records)
    assert "C is invariant under the rescaling" in text
    for plot in ("main_evolution.png", "main_gamma_vs_c.png"):
        assert (out / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "plots").glob("*_decisions.png"))

    third = _cli("sweep", "main", "--preset", "smoke", "--out", str(out))
    assert third.stdout.count("skipped") == 4


def test_a_diverged_run_is_a_hyphen_and_the_sweep_goes_on(tmp_path) -> None:
    base = Setting("cifar10", "resnet18", 8192)
    study = Study(
        "tiny",
        "Table 2 on two runs",
        (base, replace(base, policy="beta_decay", coefficient=1.0)),
        measures=("connectivity",),
        sections=("table2",),
    )
    plan = make_plan(study, "smoke")
    boom = plan.runs[0]
    runs = [replace(boom.spec, overrides=(*boom.spec.overrides, "run.divergence_loss=1e-3"))]
    runs.append(plan.runs[1].spec)
    outcomes = sweep(runs, tmp_path, log=lambda _m: None, env=ENV)
    assert [o.state for o in outcomes] == ["diverged", "finished"]
    # The report's plan must say what made each run: it refuses run directories it did not plan.
    with pytest.raises(ValueError, match="run.divergence_loss"):
        write_report(tmp_path, plan)
    made = replace(plan, runs=(replace(boom, spec=runs[0]), plan.runs[1]))
    _, text = write_report(tmp_path, made)
    conv = next(line for line in text.splitlines() if line.startswith("| Conv"))
    cells = [c.strip() for c in conv.strip("|").split("|")]
    assert cells[1] == "-" and cells[3] not in ("-", "not run", "n/a")
    assert "Runs: 2 (1 diverged, 1 finished)." in text


def test_sweep_command_errors_and_dry_run(tmp_path) -> None:
    missing = _cli("sweep", "main", "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "a study needs --preset: one of paper" in missing.stderr
    unknown = _cli("sweep", "table9", "--preset", "cpu", "--out", str(tmp_path / "x"))
    assert (
        unknown.returncode == 2 and "unknown study 'table9'; valid names: table1" in unknown.stderr
    )
    bad_root = _cli("sweep", "main", "--preset", "cpu", "--out", "x", "--data-root", "cifar10")
    assert bad_root.returncode == 2 and "expected NAME=DIR" in bad_root.stderr
    dry = _cli("sweep", "table3", "--preset", "cpu", "--out", str(tmp_path / "t3"), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would start") == 12 and not Path(tmp_path / "t3").exists()
    assert "12 runs" in dry.stdout
    save_plan(make_plan("table2", "cpu"), tmp_path / "t2")
    clash = _cli("sweep", "table2", "--preset", "smoke", "--out", str(tmp_path / "t2"))
    assert clash.returncode == 2 and "holds a sweep of preset 'cpu'" in clash.stderr
    helped = _cli("sweep", "--help")
    assert "table4" in helped.stdout and "fashion" in helped.stdout
