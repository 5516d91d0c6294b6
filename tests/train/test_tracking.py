"""Observing a run: metrics.jsonl, TensorBoard mirror, summaries, run info and progress."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
import torch

from biasdecay.train import run_info
from biasdecay.train.metrics import MetricsWriter, read_metrics
from biasdecay.train.progress import Progress
from biasdecay.train.run_info import environment_info, write_run_info
from biasdecay.train.summary import write_summary


def _lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_records_are_json_lines_on_disk_as_soon_as_logged(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.log({"step": 1, "kind": "train", "loss": 2.3, "lr": torch.tensor(0.1)})
    writer.log({"step": 1, "kind": "sharpness", "r_l": {"layer1.bn1": 0.25}, "note": None})
    # Read before close: a killed run keeps what it logged.
    assert _lines(tmp_path) == [
        {"step": 1, "kind": "train", "loss": 2.3, "lr": pytest.approx(0.1)},
        {"step": 1, "kind": "sharpness", "r_l": {"layer1.bn1": 0.25}, "note": None},
    ]
    writer.close()
    writer.close()  # harmless
    with pytest.raises(ValueError, match="closed"):
        writer.log({"step": 2, "kind": "train"})


def test_non_finite_values_are_strings(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.log(
            {
                "step": 7,
                "kind": "train",
                "loss": float("nan"),
                "grad_norm": torch.tensor(float("inf")),
                "sharpness": [1.0, -math.inf],
            }
        )
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert _lines(tmp_path) == [
        {"step": 7, "kind": "train", "loss": "nan", "grad_norm": "inf", "sharpness": [1.0, "-inf"]}
    ]
    (record,) = read_metrics(tmp_path)
    assert math.isnan(record["loss"]) and record["grad_norm"] == math.inf
    assert record["sharpness"] == [1.0, -math.inf]


def test_malformed_records_are_refused(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="'step'"):
            writer.log({"kind": "train", "loss": 1.0})
        with pytest.raises(ValueError, match="'step'"):
            writer.log({"step": 1.5, "kind": "train"})
        with pytest.raises(ValueError, match="'kind'"):
            writer.log({"step": 1, "loss": 1.0})
        with pytest.raises(TypeError, match=r"record\.weights.*shape \(3,\)"):
            writer.log({"step": 1, "kind": "train", "weights": torch.ones(3)})
        with pytest.raises(TypeError, match=r"record\.model.*Linear"):
            writer.log({"step": 1, "kind": "train", "model": torch.nn.Linear(1, 1)})
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_truncate_after_drops_later_steps_so_a_resumed_run_has_no_duplicates(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        for step in range(1, 6):
            writer.log({"step": step, "kind": "train", "loss": 1.0 / step})
            writer.log({"step": step, "kind": "eval", "acc": 0.1 * step})
    # A kill in the middle of a write leaves a partial last line.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "kind": "tr')

    with MetricsWriter(tmp_path) as writer:
        assert writer.truncate_after(3) == 5  # steps 4 and 5 (2 records each) + the partial line
        for step in range(4, 6):
            writer.log({"step": step, "kind": "train", "loss": 0.5})
    records = read_metrics(tmp_path)
    steps = [(r["step"], r["kind"]) for r in records]
    assert len(steps) == len(set(steps))
    assert [r["step"] for r in read_metrics(tmp_path, kind="train")] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in read_metrics(tmp_path, kind="eval")] == [1, 2, 3]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_partial_last_line_does_not_swallow_the_next_record(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "kind": "train"}\n{"step": 2, "ki')
    with MetricsWriter(tmp_path) as writer:
        writer.log({"step": 2, "kind": "train", "loss": 0.1})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_a_disabled_writer_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    with MetricsWriter(run_dir, enabled=False, tensorboard=True) as writer:
        writer.log({"step": 1, "kind": "train", "loss": 1.0})
        assert writer.truncate_after(0) == 0
        writer.flush()
    assert not run_dir.exists()


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsWriter(tmp_path, tensorboard=True) as writer:
        for step in range(1, 4):
            writer.log({"step": step, "kind": "train", "loss": 1.0 / step, "name": "x"})
        writer.log({"step": 3, "kind": "sharpness", "r_l": {"bn1": 0.5}, "flag": True})
    event_files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert event_files

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["sharpness/r_l/bn1", "train/loss"]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]


def test_tensorboard_missing_says_what_to_install(tmp_path, monkeypatch):
    # None in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        MetricsWriter(tmp_path, tensorboard=True)
    MetricsWriter(tmp_path, enabled=False, tensorboard=True).close()  # other ranks never need it


def test_summary_json_and_csv(tmp_path):
    summary = {
        "status": "diverged",
        "steps": 1200,
        "epochs": 3.5,
        "seconds": 61.2,
        "final": {"test_acc": 0.1, "test_loss": float("nan")},
        "diverged_at": 1180,
        "best_epoch": None,
        "lr_history": [0.1, 0.2],
    }
    write_summary(tmp_path, summary)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["status"] == "diverged" and data["final"]["test_loss"] == "nan"
    assert data["lr_history"] == [0.1, 0.2]

    with open(tmp_path / "summary.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 2
    header, values = rows
    assert header == [
        "status",
        "steps",
        "epochs",
        "seconds",
        "final.test_acc",
        "final.test_loss",
        "diverged_at",
        "best_epoch",
    ]
    assert values == ["diverged", "1200", "3.5", "61.2", "0.1", "nan", "1180", ""]

    write_summary(tmp_path, {"status": "finished", "steps": 1300})  # replaced, not appended
    assert json.loads((tmp_path / "summary.json").read_text()) == {
        "status": "finished",
        "steps": 1300,
    }
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_run_info_files(tmp_path):
    env = environment_info("cpu", world_size=1)
    write_run_info(
        tmp_path / "run",
        config_toml='[train]\noptimizer = "lamb"',
        environment=env,
        groups_summary="conv weight  decay 5e-4\nBN beta  no decay\n",
    )
    run_dir = tmp_path / "run"
    assert (run_dir / "config.toml").read_text() == '[train]\noptimizer = "lamb"\n'
    assert json.loads((run_dir / "environment.json").read_text())["torch"] == torch.__version__
    assert (run_dir / "param_groups.txt").read_text().startswith("conv weight")
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.toml",
        "environment.json",
        "param_groups.txt",
    ]


def test_environment_info_fields(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a git checkout
    env = environment_info(torch.device("cpu"), world_size=4)
    assert env["world_size"] == 4 and env["device"] == "cpu" and env["device_name"] is None
    assert env["torch"] == torch.__version__ and env["python"].count(".") == 2
    assert env["git_commit"] is None
    for key in ("time", "hostname", "platform", "cuda", "cudnn", "torch_threads"):
        assert key in env
    json.dumps(env, allow_nan=False)


def test_git_commit_when_available_and_silently_none_otherwise(monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"

    def fake_run(args, **kwargs):
        assert args == ["git", "rev-parse", "HEAD"]
        return subprocess.CompletedProcess(args, 0, stdout=commit + "\n", stderr="")

    monkeypatch.setattr(run_info.subprocess, "run", fake_run)
    assert environment_info("cpu", 1)["git_commit"] == commit

    def no_git(args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(run_info.subprocess, "run", no_git)
    assert environment_info("cpu", 1)["git_commit"] is None


def test_progress_without_a_terminal_logs_lines():
    lines: list[str] = []
    with Progress(10, enabled=True, log_every=3, log=lines.append, tty=False) as progress:
        for step in range(10):
            progress.update(loss=1.0 / (step + 1))
            if step == 4:
                progress.write("eval: acc 0.5")
    assert [line.split(" |")[0] for line in lines] == [
        "train 3/10 (30%)",
        "eval: acc 0.5",
        "train 6/10 (60%)",
        "train 9/10 (90%)",
        "train 10/10 (100%)",
    ]
    assert "loss 0.3333" in lines[0] and "steps/s" in lines[0] and "eta" in lines[0]
    assert "loss 0.1" in lines[-1] and "took" in lines[-1]


def test_progress_resumed_stopped_early_and_disabled():
    lines: list[str] = []
    progress = Progress(100, enabled=True, initial=40, desc="cifar", log=lines.append, tty=False)
    progress.update(3, loss=float("nan"))  # diverged: the run stops before a logging step
    progress.close()
    assert lines and lines[-1].startswith("cifar 43/100 (43%) | loss nan")

    silent: list[str] = []
    progress = Progress(10, enabled=False, log=silent.append, tty=False)
    for _ in range(10):
        progress.update(loss=1.0)
    progress.write("hello")
    progress.close()
    assert silent == []


def test_progress_bar_in_a_terminal(capsys):
    with Progress(5, enabled=True, tty=True, desc="train") as progress:
        for _ in range(5):
            progress.update(loss=0.5)
        progress.write("an event")
    err = capsys.readouterr().err
    assert "an event" in err and "5/5" in err
