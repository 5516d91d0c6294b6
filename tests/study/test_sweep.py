"""The sweep runner: skip finished runs, resume interrupted ones, go on past diverged ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from biasdecay.study import RunSpec, run_state, sweep

pytest.importorskip("sklearn")

BASE = [
    "model.name=mlp",
    "model.width=0.0625",
    "model.ghost_batch_size=none",
    "data.name=digits",
    "data.augment=none",
    "run.batch_size=128",
    "run.epochs=1",
    "run.checkpoint_every=2",
    "optimizer.name=lamb",
    "optimizer.lr=0.01",
    "run.device=cpu",
]
RUNS = [
    RunSpec("nbd", (*BASE, "policy.name=no_bias_decay"), {"policy": "no bias decay"}),
    RunSpec("beta", (*BASE, "policy.name=beta_decay"), {"policy": "β decay"}),
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def quiet(_msg: str) -> None:
    pass


def test_sweep_runs_everything_then_skips_finished_runs(tmp_path) -> None:
    outcomes = sweep(RUNS, tmp_path, log=quiet, env=ENV)
    assert [(o.name, o.state, o.action) for o in outcomes] == [
        ("nbd", "finished", "started"),
        ("beta", "finished", "started"),
    ]
    index = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["state"] for r in index["runs"]] == ["finished", "finished"]
    assert index["runs"][1]["labels"] == {"policy": "β decay"}
    again = sweep(RUNS, tmp_path, log=quiet, env=ENV)
    assert [o.action for o in again] == ["skipped", "skipped"]


def test_a_diverged_run_is_recorded_and_the_sweep_goes_on(tmp_path) -> None:
    runs = [
        RunSpec("boom", (*BASE, "optimizer.name=sgd", "optimizer.lr=1e8", "run.log_every=1")),
        RunSpec("fine", (*BASE,)),
    ]
    outcomes = sweep(runs, tmp_path, log=quiet, env=ENV)
    assert [o.state for o in outcomes] == ["diverged", "finished"]
    assert outcomes[0].return_code == 3 and outcomes[0].summary["status"] == "diverged"
    assert [o.action for o in sweep(runs, tmp_path, log=quiet, env=ENV)] == ["skipped"] * 2


def test_killing_the_sweep_loses_nothing(tmp_path) -> None:
    """Kill the sweep (and its run) mid-run; the next sweep resumes and ends as if never killed."""
    reference = tmp_path / "reference"
    sweep(RUNS[:1], reference, log=quiet, env=ENV)

    killed = tmp_path / "killed"
    script = (
        "import sys; from biasdecay.study import RunSpec, sweep; "
        f"sweep([RunSpec('nbd', {RUNS[0].overrides!r})], {str(killed)!r}, log=lambda m: None)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=ENV, start_new_session=True)
    deadline = time.time() + 120
    while not list((killed / "nbd" / "checkpoints").glob("step-*.pt")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its training subprocess
    proc.wait()
    assert run_state(killed / "nbd") == "interrupted"
    assert not (killed / "sweep.json").exists() or json.loads((killed / "sweep.json").read_text())

    (outcome,) = sweep(RUNS[:1], killed, log=quiet, env=ENV)
    assert (outcome.state, outcome.action) == ("finished", "resumed")
    a = torch.load(reference / "nbd" / "model.pt", weights_only=True)["model"]
    b = torch.load(killed / "nbd" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dry_run_runs_nothing(tmp_path) -> None:
    lines: list[str] = []
    outcomes = sweep(RUNS, tmp_path, dry_run=True, log=lines.append)
    assert [o.action for o in outcomes] == ["planned-start"] * 2
    assert "would start" in lines[0] and "policy.name=no_bias_decay" in lines[0]
    assert not (tmp_path / "nbd").exists()


def test_bad_sweeps_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="repeated: a"):
        sweep([RunSpec("a"), RunSpec("a")], tmp_path)
    with pytest.raises(ValueError, match="2 jobs need 2 devices"):
        sweep(RUNS, tmp_path, jobs=2, devices=["0"])
    with pytest.raises(ValueError, match="names the run's directory"):
        RunSpec("../escape")
