"""The robustness tally: bad input refused in one line, kills survived, nothing lost or doubled.

Every case runs the real command line (``python -m biasdecay ...``) in a scratch directory, on
scikit-learn's digits (always installed), and is checked for what a user must get:

* **bad input**: exit status 2, one ``error:`` line naming the problem (the expected words),
  no traceback, and nothing written where the case says so;
* **kills and disks**: ``biasdecay train`` killed with SIGKILL at random steps and resumed each
  time ends bitwise equal to an uninterrupted run; a sweep killed (SIGKILL or SIGTERM, its PID
  alone) leaves no trainer running, and the next sweep resumes its run to the same result; a resume
  after the final checkpoint writes its final records once; a disk that fills at the final
  checkpoint (a small tmpfs, when run as root) stops the run with one message naming the kept
  checkpoint, and the run resumes from it once there is room.

Prints one row per case, then the totals; docs/robustness.md keeps the output with the machine.

    python benchmarks/robustness_tally.py             # everything
    python benchmarks/robustness_tally.py --kills 0   # bad input only
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_name  # noqa: E402
from biasdecay.train.process import lock_holder  # noqa: E402

TINY = [
    "--set", "model.name=mlp", "--set", "model.width=0.0625", "--set",
    "model.ghost_batch_size=none", "--set", "data.name=digits", "--set", "data.augment=none",
    "--set", "run.batch_size=128", "--set", "run.device=cpu", "--set", "optimizer.lr=0.01",
]  # fmt: skip
KILLABLE = [  # 44 steps, a checkpoint every 2: enough room to kill it anywhere
    *TINY, "--set", "run.epochs=4", "--set", "run.checkpoint_every=2", "--set",
    "run.log_every=1", "--set", "data.augment=cifar", "--set", "model.name=resnet18",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class Case:
    """One bad input: the command, words its error must contain, and a path it must not write."""

    name: str
    argv: list[str]
    expect: str
    untouched: str | None = None  # relative to the scratch directory
    prepare: Callable[[Path], None] | None = None


def biasdecay(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "biasdecay", *argv],
        cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


# ----------------------------------------------------------------------------- fixtures


def _file(name: str, text: str = "x") -> Callable[[Path], None]:
    def make(root: Path) -> None:
        (root / name).write_text(text)

    return make


def _evil_cifar(root: Path) -> None:
    """A CIFAR-10 directory whose test batch runs a command when unpickled naively."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'PAYLOAD-RAN'}",))

    directory = root / "cifar" / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    for i in range(5):
        (directory / f"data_batch_{i + 1}").write_bytes(pickle.dumps(good))
    (directory / "test_batch").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    names = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    (directory / "batches.meta").write_bytes(pickle.dumps(names))


def _finished_run(root: Path) -> None:
    done = biasdecay(["train", "--no-progress", *TINY, "--epochs", "1", "--out", "done"], root)
    assert done.returncode == 0, done.stderr


def _finished_run_without_checkpoints(root: Path) -> None:
    _finished_run(root)
    for path in (root / "done" / "checkpoints").glob("*.pt"):
        path.unlink()


def _finished_sweep(root: Path) -> None:
    done = biasdecay(["sweep", "main", "--preset", "smoke", "--out", "S", "--no-report"], root)
    assert done.returncode == 0, done.stderr


def _truncated_checkpoint(root: Path) -> None:
    _finished_run(root)
    data = (root / "done" / "model.pt").read_bytes()
    (root / "cut.pt").write_bytes(data[: len(data) // 2])


def _bad_grid(root: Path) -> None:
    (root / "grid.toml").write_text('[runs.a]\nset = "policy.name=beta_decay"\n')


CASES = [
    Case("unknown key", ["train", "--set", "run.epoch=2"], "did you mean run.epochs?"),
    Case("wrong type", ["train", "--set", "run.epochs=two"], "run.epochs"),
    Case("out of range", ["train", "--lr", "-1"], "optimizer.lr must be in (0, inf)"),
    Case("unknown model", ["train", "--model", "resnet19"], "valid: mlp"),
    Case("unknown data set", ["train", "--data", "cifar11"], "valid: cifar10"),
    Case("unknown policy", ["train", "--policy", "no_decay"], "policy.name: unknown value"),
    Case("old trust_ratio", ["train", "--set", "optimizer.trust_ratio=true"], "layer_adaptation"),
    Case("bad layer_adaptation", ["train", "--set", "optimizer.layer_adaptation=most"],
         "valid: decayed, all, none"),
    Case("bad measure_split", ["train", "--set", "run.measure_split=val"], "valid: train, test"),
    Case("malformed override", ["train", "--set", "policy.name"], "malformed override"),
    Case("bad device", ["train", "--set", "run.device=tpu"], "run.device: unknown value"),
    Case("micro > batch", ["train", "--batch-size", "64", "--micro-batch-size", "128"],
         "must be <= run.batch_size"),
    Case("missing config", ["train", "--config", "nope.toml"], "config file not found"),
    Case("invalid TOML", ["train", "--config", "bad.toml"], "invalid TOML in bad.toml",
         prepare=_file("bad.toml", "[run\nepochs = 2\n")),
    Case("batch > data", ["train", *TINY, "--set", "run.batch_size=4096", "--out", "big"],
         "fewer than one logical batch", untouched="big"),
    Case("vgg pad too small", ["train", *TINY, "--set", "model.name=vgg11", "--set",
         "data.pad_to=16", "--out", "vgg"], "data.pad_to = 16 is too small for vgg11",
         untouched="vgg"),
    Case("out is a file", ["train", *TINY, "--out", "afile"], "is a file", prepare=_file("afile")),
    Case("out below a file", ["train", *TINY, "--out", "afile/run"], "cannot be written",
         prepare=_file("afile")),
    Case("resume nowhere", ["train", "--resume", "nowhere"], "no config.toml there"),
    Case("resume with a change", ["train", "--resume", "done", "--epochs", "5"],
         "run.epochs 1.0 (config.toml) -> 5.0 (asked)", prepare=_finished_run),
    Case("overwrite a finished run", ["train", *TINY, "--out", "done", "--set",
         "model.name=resnet18"], "never overwritten", prepare=_finished_run_without_checkpoints),
    Case("CIFAR missing", ["train", "--data", "cifar10", "--set", "data.root=empty"],
         "cifar", prepare=lambda r: (r / "empty").mkdir()),
    Case("CIFAR with code in it", ["measure", "--model", "resnet18", "--data", "cifar10",
         "--data-root", "cifar", "--measures", "connectivity"], "refused",
         prepare=_evil_cifar),
    Case("unknown measure", ["measure", "--checkpoint", "x.pt", "--measures", "sharpness"],
         "valid measures"),
    Case("missing checkpoint", ["measure", "--checkpoint", "missing.pt", "--data", "digits"],
         "missing.pt does not"),
    Case("truncated checkpoint", ["measure", "--checkpoint", "cut.pt", "--data", "digits"],
         "cut.pt", prepare=_truncated_checkpoint),
    Case("width without model", ["measure", "--checkpoint", "x.pt", "--width", "0.5"],
         "without --model"),
    Case("json is a directory", ["measure", "--model", "mlp", "--data", "digits", "--json", "."],
         "is a directory"),
    Case("json below a file", ["measure", "--model", "mlp", "--data", "digits", "--json",
         "afile/m.json"], "is a file, so", prepare=_file("afile")),
    Case("sweep without preset", ["sweep", "main", "--out", "S"], "needs --preset",
         untouched="S"),
    Case("unknown study", ["sweep", "tabel4", "--preset", "smoke", "--out", "S"], "table4",
         untouched="S"),
    Case("unknown preset", ["sweep", "main", "--preset", "gpu", "--out", "S"], "unknown preset",
         untouched="S"),
    Case("sweep bad key", ["sweep", "main", "--preset", "smoke", "--out", "S", "--set",
         "run.epoch=1"], "did you mean run.epochs?", untouched="S"),
    Case("sweep malformed override", ["sweep", "main", "--preset", "smoke", "--out", "S",
         "--set", "policy.name"], "malformed override", untouched="S"),
    Case("sweep --jobs 0", ["sweep", "main", "--preset", "smoke", "--out", "S", "--jobs", "0"],
         "--jobs 0", untouched="S"),
    Case("sweep --devices banana", ["sweep", "main", "--preset", "smoke", "--out", "S",
         "--devices", "banana"], "not a CUDA device", untouched="S"),
    Case("sweep out is a file", ["sweep", "main", "--preset", "smoke", "--out", "afile"],
         "is a file", prepare=_file("afile")),
    Case("sweep over other settings", ["sweep", "main", "--preset", "smoke", "--out", "S",
         "--set", "run.epochs=1"], "(on disk) -> 1.0 (planned)", prepare=_finished_sweep),
    Case("sweep other preset", ["sweep", "main", "--preset", "quick", "--out", "S"],
         "one directory holds one study", prepare=_finished_sweep),
    Case("bad grid file", ["sweep", "grid.toml", "--out", "G"], "grid.toml", untouched="G",
         prepare=_bad_grid),
    Case("report without a study", ["report", "."], "not a study sweep directory"),
]  # fmt: skip


def run_case(case: Case) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        if case.prepare is not None:
            case.prepare(root)
        before = _files(root)
        done = biasdecay(case.argv, root)
        err = done.stderr.strip()
        message = err[err.find("error: ") :] if "error: " in err else err
        problems = []
        if done.returncode != 2:
            problems.append(f"exit {done.returncode}")
        if "Traceback" in err or err.count("error: ") != 1:
            problems.append("not one error message")
        if case.expect not in message:
            problems.append(f"message {message[:120]!r}")
        if case.untouched and (root / case.untouched).exists():
            problems.append(f"wrote {case.untouched}")
        if (root / "PAYLOAD-RAN").exists():
            problems.append("the payload ran")
        if case.prepare is _finished_sweep and _files(root) != before:
            problems.append("changed the sweep directory")
        shown = message.removeprefix("error: ").replace("\n", " ")[:100]
        return not problems, "; ".join(problems) or shown


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- kills


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def _equal(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def kill_train(root: Path, reference: Path, kills: int, rng: random.Random) -> tuple[int, str]:
    """Kill one run ``kills`` times at random steps, resuming each time; equal to the reference.

    Returns:
        The number of kills that landed (-1: the result was not the reference's), and a line.
    """
    run = root / "killed"
    survived = 0
    for _ in range(kills):
        target = _last_step(run) + rng.randrange(1, 6)  # a few steps past the last one
        argv = ["--resume", str(run)] if (run / "config.toml").exists() else [*KILLABLE, "--out",
                                                                             str(run)]  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "biasdecay", "train", "--no-progress", *argv],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if _last_step(run) >= target:
                break
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            survived += 1
        proc.wait()
    done = biasdecay(["train", "--no-progress", "--resume", str(run)], root)
    ok = done.returncode == 0 and _equal(reference, run / "model.pt")
    evals = [r for r in _records(run) if r.get("kind") == "eval"]
    steps = [r["step"] for r in evals]
    ok = ok and len(steps) == len(set(steps))
    return (survived if ok else -1), f"{survived} SIGKILLs at random steps, resumed: " + (
        "bitwise equal, no record twice" if ok else f"NOT equal or doubled ({done.stderr[-200:]})"
    )


def _records(run: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError):
        return []


def _last_step(run: Path) -> int:
    records = _records(run)
    return max((r.get("step", 0) for r in records if r.get("kind") == "train"), default=0)


def kill_sweep(root: Path, reference: Path, how: signal.Signals) -> tuple[bool, str]:
    out = root / f"sweep-{how.name}"
    argv = [a for a in KILLABLE if a != "--set"]
    script = (
        "from biasdecay.study import RunSpec, sweep; "
        f"sweep([RunSpec('r', {tuple(argv)!r})], {str(out)!r}, log=lambda m: None)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=ENV, start_new_session=True)
    deadline = time.time() + 120
    while _last_step(out / "r") < 10 and time.time() < deadline:
        time.sleep(0.01)
    trainer = lock_holder(out / "r")
    proc.send_signal(how)  # the sweep's PID alone, not its process group
    proc.wait()
    stopped = True
    for _ in range(200):
        try:
            os.kill(trainer, 0) if trainer else None
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        stopped = trainer is None
    again = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True)
    ok = stopped and again.returncode == 0 and _equal(reference, out / "r" / "model.pt")
    finished = (out / "r" / "train.log").read_text().count("finished:")
    ok = ok and finished == 1
    return ok, f"sweep {how.name}: trainer {'stopped' if stopped else 'LEFT RUNNING'}; " + (
        "next sweep resumed it, bitwise equal, one trainer" if ok else "NOT as expected"
    )


FULL_DISK = [  # 33 steps; 2.2 MB checkpoints at steps 11, 22 and 33: the third one does not fit
    *TINY, "--set", "model.name=resnet18", "--set", "model.width=0.125", "--set",
    "run.epochs=3",
]  # fmt: skip


def full_disk(root: Path) -> tuple[bool | None, str]:
    """A disk that fills up at the final checkpoint: one message, the last one kept, resumable."""
    if os.geteuid() != 0:
        return None, "skipped: mounting a small tmpfs needs root"
    mount = root / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5500k", "none", str(mount)]).returncode:
        return None, "skipped: this machine cannot mount a tmpfs"
    try:
        run = mount / "run"
        first = biasdecay(["train", "--no-progress", *FULL_DISK, "--out", str(run)], root)
        message = first.stderr.strip().splitlines()[-1] if first.stderr.strip() else ""
        kept = sorted(p.name for p in (run / "checkpoints").glob("*.pt"))
        ok = (
            first.returncode == 2
            and "No space left on device" in message
            and "step-000000022.pt, is kept" in message
            and "Traceback" not in first.stderr
            and kept[-1:] == ["step-000000022.pt"]
        )
        subprocess.run(["mount", "-o", "remount,size=20m", str(mount)], check=True)
        again = biasdecay(["train", "--no-progress", "--resume", str(run)], root)
        reference = biasdecay(["train", "--no-progress", *FULL_DISK, "--out", "roomy"], root)
        evals = [r["step"] for r in _records(run) if r.get("kind") == "eval"]
        ok = ok and again.returncode == 0 and reference.returncode == 0
        ok = ok and len(evals) == len(set(evals))
        ok = ok and _equal(root / "roomy" / "model.pt", run / "model.pt")
        return ok, (
            "disk full at the final checkpoint: one message naming it, step 22 kept; resumed "
            "once freed, bitwise equal, no record twice"
            if ok
            else f"NOT as expected: {message[:160]!r}"
        )
    finally:
        subprocess.run(["umount", str(mount)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs of one training run")
    parser.add_argument("--cases", type=int, default=None, help="only the first N bad inputs")
    parser.add_argument("--seed", type=int, default=0, help="where the kills land")
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}")
    rows, passed = [], 0
    cases = CASES[: args.cases] if args.cases is not None else CASES
    for case in cases:
        ok, what = run_case(case)
        passed += ok
        rows.append((case.name, "ok" if ok else "FAIL", what))
        print(f"{'ok ' if ok else 'FAIL'} {case.name:28s} {what}", flush=True)
    kill_ok = kill_total = survived = 0
    if args.kills:
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            done = biasdecay(["train", "--no-progress", *KILLABLE, "--out", "ref"], root)
            assert done.returncode == 0, done.stderr
            reference = root / "ref" / "model.pt"
            n, what = kill_train(root, reference, args.kills, random.Random(args.seed))
            kill_total += 1
            kill_ok += n >= 0
            survived += max(n, 0)
            print(f"{'ok ' if n >= 0 else 'FAIL'} {'train killed':28s} {what}", flush=True)
            ok, what = full_disk(root)
            if ok is not None:
                kill_total += 1
                kill_ok += ok
            print(f"{'ok ' if ok else 'skip' if ok is None else 'FAIL'} {'full disk':28s} {what}")
            for how in (signal.SIGKILL, signal.SIGTERM):
                ok, what = kill_sweep(root, reference, how)
                kill_total += 1
                kill_ok += ok
                survived += ok
                print(f"{'ok ' if ok else 'FAIL'} {'sweep ' + how.name:28s} {what}", flush=True)
    print(
        f"\ntally: {passed}/{len(cases)} bad inputs refused with one error message and nothing "
        f"written; {kill_ok}/{kill_total} kill and disk scenarios ({survived} kills) survived "
        f"with nothing lost ({time.perf_counter() - start:.0f} s)"
    )
    return 0 if passed == len(cases) and kill_ok == kill_total else 1


if __name__ == "__main__":
    sys.exit(main())
