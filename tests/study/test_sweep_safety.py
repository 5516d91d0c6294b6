"""A sweep never mislabels, doubles or orphans a run: checks first, one trainer per directory.

Each case here failed on the code before it: a sweep with other settings skipped finished runs
as its own, bad --set items started doomed runs, --jobs 0 and --devices banana were accepted,
and a killed sweep left its child training beside the next sweep's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep import BASE, ENV, quiet

from biasdecay.cli import main
from biasdecay.study import RunSpec, run_state, sweep
from biasdecay.study.sweep import SweepError, check_devices
from biasdecay.train.process import RunLock, lock_holder

pytest.importorskip("sklearn")


def runs(*extra: str) -> list[RunSpec]:
    return [RunSpec("nbd", (*BASE, "policy.name=no_bias_decay", *extra))]


def tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its modification time (to prove nothing changed)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    (outcome,) = sweep(runs(), out, log=quiet, env=ENV)
    assert outcome.state == "finished"
    return out


def test_a_run_made_by_other_settings_is_refused_not_skipped(finished) -> None:
    before = tree(finished)
    for dry_run in (True, False):
        with pytest.raises(SweepError, match=r"nbd: run.epochs 1.0 \(on disk\) -> 2.0 \(planned\)"):
            sweep(runs("run.epochs=2"), finished, log=quiet, env=ENV, dry_run=dry_run)
    assert tree(finished) == before  # no run skipped into, no index rewritten


def test_settings_that_do_not_change_the_run_are_not_a_mismatch(finished) -> None:
    (outcome,) = sweep(runs("run.tensorboard=true"), finished, log=quiet, env=ENV, dry_run=True)
    assert outcome.action == "skipped" and outcome.state == "finished"


def test_a_result_without_its_config_is_refused(finished, tmp_path) -> None:
    copy = tmp_path / "copy"
    (copy / "nbd").mkdir(parents=True)
    (copy / "nbd" / "summary.json").write_text((finished / "nbd" / "summary.json").read_text())
    with pytest.raises(SweepError, match="holds a result but no config.toml"):
        sweep(runs(), copy, log=quiet, env=ENV)


@pytest.mark.parametrize(
    "extra, message",
    [
        ("run.epoch=1", "did you mean run.epochs?"),
        ("policy.name", "malformed override 'policy.name'"),
        ("optimizer.layer_adaptation=most", "valid: decayed, all, none"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, extra, message) -> None:
    out = tmp_path / "out"
    with pytest.raises(SweepError, match="nothing was started or written") as info:
        sweep([*runs(extra), RunSpec("other", (*BASE, extra))], out, log=quiet, env=ENV)
    assert message in str(info.value) and "(and 1 more runs)" in str(info.value)
    assert not out.exists()


def test_bad_jobs_devices_and_out_are_refused(tmp_path) -> None:
    out = tmp_path / "out"
    with pytest.raises(SweepError, match="jobs must be an integer >= 1"):
        sweep(runs(), out, jobs=0, log=quiet)
    with pytest.raises(SweepError, match="'banana' is not a CUDA device"):
        check_devices(["banana"], 1)
    with pytest.raises(SweepError, match="2 jobs need 2 devices"):
        check_devices(["0"], 2)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(SweepError, match="is a file"):
        sweep(runs(), afile, log=quiet)
    with pytest.raises(SweepError, match="is a file, so"):
        sweep(runs(), afile / "below", log=quiet)
    assert not out.exists()


def test_sweep_command_writes_nothing_for_bad_input(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for argv, message in [
        (["--set", "run.epoch=1"], "did you mean run.epochs?"),
        (["--jobs", "0"], "--jobs 0"),
        (["--devices", "banana"], "'banana' is not a CUDA device"),
    ]:
        code = main(["sweep", "main", "--preset", "smoke", "--out", "D", *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)
        assert not (tmp_path / "D").exists(), argv


def test_a_directory_in_use_is_left_alone(tmp_path) -> None:
    with RunLock(tmp_path / "nbd"):
        assert lock_holder(tmp_path / "nbd") == os.getpid()
        (outcome,) = sweep(runs(), tmp_path, log=quiet, env=ENV)
        assert (outcome.state, outcome.action) == ("busy", "skipped")
        assert run_state(tmp_path / "nbd") == "pending"  # nothing trained there
    assert lock_holder(tmp_path / "nbd") is None


def _start_sweep(out: Path) -> subprocess.Popen:
    # Far more epochs than can pass before the signal lands: with 6, a fast CPU finished the
    # tiny run before the sweep had passed its SIGTERM on (the stop is what is tested).
    spec = runs("run.epochs=600")[0]
    script = (
        "from biasdecay.study import RunSpec, sweep; "
        f"sweep([RunSpec('nbd', {spec.overrides!r})], {str(out)!r}, log=lambda m: None)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=ENV, start_new_session=True)
    deadline = time.time() + 120
    while lock_holder(out / "nbd") is None or not (out / "nbd" / "checkpoints").is_dir():
        assert proc.poll() is None and time.time() < deadline, "the run never started"
        time.sleep(0.02)
    return proc


def _wait_free(run_dir: Path, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while lock_holder(run_dir) is not None:
        assert time.time() < deadline, f"a trainer still holds {run_dir} after the sweep ended"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stopping_the_sweep_stops_its_run(tmp_path, how) -> None:
    """Signal the sweep's PID alone (not its group): its child must not train on alone."""
    proc = _start_sweep(tmp_path)
    child = lock_holder(tmp_path / "nbd")
    assert child is not None and child != proc.pid
    proc.send_signal(getattr(signal, how))
    proc.wait(timeout=60)
    _wait_free(tmp_path / "nbd")
    with pytest.raises(ProcessLookupError):  # the trainer is gone, not just unlocked
        for _ in range(100):
            os.kill(child, 0)
            time.sleep(0.05)
    if how == "SIGTERM":
        index = json.loads((tmp_path / "sweep.json").read_text())
        assert index["runs"][0]["state"] == "stopped"
    log = (tmp_path / "nbd" / "train.log").read_text()
    assert "stopped by SIGTERM" in log and log.count("finished:") == 0


def test_a_report_refuses_runs_its_plan_did_not_make(tmp_path) -> None:
    from biasdecay.study.plan import make_plan, save_plan
    from biasdecay.study.report import write_report
    from biasdecay.train.config import dump_toml, load_config

    plan = make_plan("table2", "smoke")
    save_plan(plan, tmp_path)
    run = plan.runs[0]
    cfg = load_config(None, [*run.spec.overrides, "run.epochs=7"])  # not what the plan says
    (tmp_path / run.name).mkdir()
    (tmp_path / run.name / "config.toml").write_text(dump_toml(cfg))
    with pytest.raises(
        SweepError, match=r"(?s)do not match study.json: .*run.epochs 7.0 \(on disk\) -> 2.0"
    ):
        write_report(tmp_path)
