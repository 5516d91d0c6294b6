"""A real kill: `biasdecay train` killed with SIGKILL mid-run, resumed, ends bitwise equal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("sklearn")

SETTINGS = [
    "model.name=resnet18",
    "model.width=0.0625",
    "model.ghost_batch_size=32",
    "data.name=digits",
    "data.augment=cifar",
    "run.batch_size=64",  # 22 steps per epoch
    "run.epochs=2",
    "run.checkpoint_every=3",
    "run.keep_checkpoints=2",
    "optimizer.name=lamb",
    "optimizer.lr=0.01",
    "policy.name=adaptive_beta_decay",
    "run.device=cpu",
]


def command(out, *extra: str) -> list[str]:
    sets = [arg for s in SETTINGS for arg in ("--set", s)]
    return [sys.executable, "-m", "biasdecay", "train", "--no-progress", *sets, *extra,
            "--set", f'run.out="{out}"']  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_sigkill_mid_run_then_resume_is_bitwise_equal(tmp_path) -> None:
    full = subprocess.run(command(tmp_path / "full"), env=env(), capture_output=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        command(run), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while not list((run / "checkpoints").glob("step-000000006.pt")):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # wherever it is: mid-step, mid-write, mid-epoch
    proc.wait()
    assert not (run / "model.pt").exists(), "the run finished before the kill"

    resumed = subprocess.run(
        [sys.executable, "-m", "biasdecay", "train", "--no-progress", "--resume", str(run)],
        env=env(), capture_output=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["model"]
    b = torch.load(run / "model.pt", weights_only=True)["model"]
    for key, value in a.items():
        assert torch.equal(b[key], value), key
