"""A run directory holds one run: never overwritten, resumed only as itself, written or refused.

Each case failed on the code before it: a resume with --epochs 5 silently retrained a 2-epoch
run for 110 steps, a fresh start overwrote a finished run whose checkpoints were deleted, two
trainers shared a directory, a full disk at the final save was a traceback, and a resume after
the final checkpoint wrote the final evaluation twice.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from biasdecay.cli import main
from biasdecay.nn.checkpoint import CheckpointError
from biasdecay.train import engine as engine_module
from biasdecay.train.checkpoint import list_checkpoints
from biasdecay.train.config import load_config
from biasdecay.train.engine import StorageError, Trainer
from biasdecay.train.metrics import read_metrics
from biasdecay.train.process import RunDirectoryBusy, RunLock

pytest.importorskip("sklearn")

SETTINGS = [
    "model.name=mlp",
    "model.width=0.0625",
    "model.ghost_batch_size=none",
    "data.name=digits",
    "data.augment=none",
    "run.batch_size=128",  # 11 steps per epoch
    "run.epochs=2",
    "run.log_every=2",
    "run.measure_epochs=[2]",
    'run.measures=["connectivity"]',
    "run.measure_samples=32",
    "optimizer.name=lamb",
    "optimizer.lr=0.01",
    "run.device=cpu",
]


def quiet(_msg: str) -> None:
    pass


def config(out: Path, *extra: str):
    return load_config(None, [*SETTINGS, *extra, f'run.out="{out}"'])


def train_argv(out: Path, *extra: str) -> list[str]:
    sets = [arg for s in SETTINGS for arg in ("--set", s)]
    return ["train", "--no-progress", *sets, *extra, "--out", str(out)]


@pytest.fixture()
def finished(tmp_path) -> Path:
    out = tmp_path / "run"
    assert Trainer(config(out), log=quiet).fit()["status"] == "finished"
    return out


def test_resume_refuses_a_setting_that_changes_the_run(finished, capsys) -> None:
    code = main(["train", "--resume", str(finished), "--epochs", "5", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "run.epochs 2.0 (config.toml) -> 5.0 (asked)" in err
    assert "Traceback" not in err
    # Where it runs, or how far this invocation goes, may change.
    assert main(["train", "--resume", str(finished), "--set", "run.max_steps=3"]) == 0


def test_a_hand_edited_config_does_not_resume_a_checkpoint(finished) -> None:
    summary = finished / "summary.json"
    summary.unlink()  # as if killed before the end, so the resume has work to do
    with pytest.raises(CheckpointError, match=r"run.epochs 2.0 \(checkpoint\) -> 3.0 \(now\)"):
        Trainer(config(finished, "run.epochs=3"), log=quiet).fit(resume=True)


def test_a_finished_run_is_never_overwritten(finished, capsys) -> None:
    for path in list_checkpoints(finished):
        path.unlink()
    before = (finished / "model.pt").read_bytes()
    code = main(train_argv(finished, "--set", "model.width=0.125"))
    err = capsys.readouterr().err
    assert code == 2 and "a run that ended is never overwritten" in err
    assert (finished / "model.pt").read_bytes() == before


def test_a_second_trainer_is_refused(tmp_path) -> None:
    out = tmp_path / "run"
    with RunLock(out), pytest.raises(RunDirectoryBusy, match="is being trained by process"):
        Trainer(config(out), log=quiet).fit()


def test_resuming_after_the_final_checkpoint_logs_the_final_records_once(finished) -> None:
    reference = read_metrics(finished)
    (finished / "summary.json").unlink()  # killed after the final checkpoint, before the end
    (finished / "model.pt").unlink()
    summary = Trainer(config(finished), log=quiet).fit(resume=True)
    assert summary["status"] == "finished"
    again = read_metrics(finished)
    last = summary["steps"]
    assert sum(r["kind"] == "eval" and r["step"] == last for r in again) == 1
    assert sum(r["kind"] == "measures" and r["step"] == last for r in again) == 1
    assert len(again) == len(reference)


def test_a_failed_final_save_keeps_the_last_checkpoint_and_says_so(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = engine_module.save_training_checkpoint

    def full_disk(run_dir, step, state, **kw):
        if step == 22:  # the final checkpoint
            raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "x.pt"))
        return real(run_dir, step, state, **kw)

    monkeypatch.setattr(engine_module, "save_training_checkpoint", full_disk)
    with pytest.raises(StorageError) as info:
        Trainer(config(out), log=quiet).fit()
    message = str(info.value)
    assert "No space left on device" in message and "step-000000011.pt, is kept" in message
    assert f"biasdecay train --resume {out}" in message
    monkeypatch.setattr(engine_module, "save_training_checkpoint", real)
    summary = Trainer(config(out), log=quiet).fit(resume=True)
    assert summary["status"] == "finished" and summary["steps"] == 22
    assert sum(r["kind"] == "eval" and r["step"] == 22 for r in read_metrics(out)) == 1


def test_unwritable_paths_are_one_line_before_any_work(tmp_path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (train_argv(afile / "run"), "cannot be written"),
        (train_argv(afile), "is a file; give a directory"),
        (["measure", "--model", "mlp", "--data", "digits", "--json", str(tmp_path)],
         "is a directory; give a file name"),
        (["measure", "--model", "mlp", "--data", "digits", "--json", str(afile / "m.json")],
         "is a file, so"),
        (["sweep", "main", "--preset", "smoke", "--out", str(afile)], "is a file"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert message in captured.err and "Traceback" not in captured.err, (argv, captured.err)
        assert "..." not in captured.err  # refused before any measure started


@pytest.mark.parametrize(
    "model, pad, message",
    [
        ("vgg11", 16, "data.pad_to = 16 is too small for vgg11, which needs inputs of at least 32"),
        ("mlp", 4, "data.pad_to = 4 is smaller than the 8x8 images of digits"),
    ],
)
def test_a_bad_pad_is_refused_with_nothing_written(tmp_path, capsys, model, pad, message):
    out = tmp_path / "run"
    argv = train_argv(out, "--set", f"model.name={model}", "--set", f"data.pad_to={pad}")
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture()
def small_disk(tmp_path):
    """A 5.5 MB tmpfs (root only): two 2.2 MB checkpoints fit, a third does not."""
    import os
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=5500k", "none", str(mount)], capture_output=True
        ).returncode
    ):
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_disk_at_the_final_save_keeps_the_last_checkpoint(small_disk) -> None:
    import subprocess

    out = small_disk / "run"
    big = ("model.name=resnet18", "model.width=0.125", "run.epochs=3")  # 33 steps
    with pytest.raises(StorageError) as info:
        Trainer(config(out, *big, "run.measure_epochs=[]"), log=quiet).fit()
    message = str(info.value)
    assert "step-000000033.pt: No space left on device" in message
    assert "step-000000022.pt, is kept" in message
    assert not list(out.rglob("*.tmp"))  # the half-written file went
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    summary = Trainer(config(out, *big, "run.measure_epochs=[]"), log=quiet).fit(resume=True)
    assert summary["status"] == "finished" and summary["steps"] == 33
