"""One trainer per run directory, and trainers that end with the sweep that started them.

Two processes training one directory would interleave their checkpoints and metrics, so a
trainer holds an exclusive ``flock`` on ``RUN/.lock`` for as long as it runs. The kernel
releases the lock when the process ends, however it ends (``kill -9`` included), so a lock is
never left stale and never needs deleting by hand.

A sweep starts each run as a child process; a child that outlived a killed sweep would keep
training while a restarted sweep starts the same run again. :func:`end_with_parent` asks Linux
to send the child SIGTERM when its parent dies.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import TracebackType

from biasdecay.errors import BiasDecayError

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks, the lock is a no-op
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_FILE",
    "RunDirectoryBusy",
    "RunLock",
    "end_with_parent",
    "lock_holder",
    "stop_on_sigterm",
]

LOCK_FILE = ".lock"
# Set by a sweep in its children's environment: the sweep's PID.
PARENT_ENV = "BIASDECAY_SWEEP_PID"


class RunDirectoryBusy(BiasDecayError, ValueError):
    """Another live process trains this run directory."""


class RunLock:
    """An exclusive, non-blocking lock on a run directory (a context manager).

    Args:
        run_dir: the run directory (created when missing).

    Raises:
        RunDirectoryBusy: on entering, when another process holds the lock.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if fcntl is None or self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = lock_holder(self.run_dir)
            who = f"process {holder}" if holder else "another process"
            raise RunDirectoryBusy(
                f"run directory {self.run_dir} is being trained by {who}: two trainers in one "
                "directory would mix their checkpoints. Wait for it to end (or stop it), or "
                "choose another run.out (--out)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_holder(run_dir: str | Path) -> int | None:
    """The PID of the live process that holds ``run_dir``'s lock, or None when it is free.

    Probes with a non-blocking shared lock, so asking never disturbs a running trainer.
    """
    if fcntl is None:
        return None
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None  # no lock file: never trained, or trained before locks existed
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def end_with_parent() -> None:
    """When started by a sweep, receive SIGTERM as soon as the sweep dies (Linux only).

    A no-op outside a sweep or off Linux. If the sweep already died before this call, the
    process terminates itself at once.
    """
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit():
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return  # not Linux: the sweep's own signal handling still stops its children
    if os.getppid() != int(parent):  # the sweep died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


def stop_on_sigterm(message: str) -> None:
    """Turn SIGTERM into ``SystemExit(143)`` after printing ``message`` to stderr.

    The exception unwinds the trainer like Ctrl-C does: files being written atomically are
    removed half-way, and the run stays resumable from its last checkpoint.
    """

    def stop(signum: int, _frame: object) -> None:
        signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
