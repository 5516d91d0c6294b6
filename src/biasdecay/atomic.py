"""Atomic file writes: every file biasdecay writes goes through a temporary file and a rename.

A reader (a sweep polling a run's summary, a report, a resumed run) sees either the old file or
the new one, never half of one, and a kill or a full disk in the middle of a write leaves the
previous version in place. The bytes are written by :func:`write_bytes` alone; the text, JSON
and torch helpers only turn their argument into bytes first.

Guarantees of every write:

- the temporary file lies in the destination's directory (``.NAME.XXXX.tmp``), so the rename
  never crosses file systems, and it is removed whenever the write fails;
- the data reach the disk (``fsync``) before the rename makes them visible;
- the file is readable by everyone (0644), like any result file, not 0600 as ``mkstemp`` makes it;
- a failure (a full disk, a read-only file system, a directory that is a file) raises
  :class:`FileWriteError` naming the destination, not the temporary file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from biasdecay.errors import BiasDecayError
from biasdecay.strict_json import to_json_data

__all__ = ["FileWriteError", "save_torch", "write_bytes", "write_json", "write_text"]

FILE_MODE = 0o644  # results are for everyone who reads the run directory


class FileWriteError(BiasDecayError, OSError):
    """A file could not be written; ``filename`` is the destination, ``strerror`` the cause.

    It is an :class:`OSError` (``errno``, ``strerror`` and ``filename`` are set), so code that
    handles a full disk as an ``OSError`` keeps working.
    """

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def write_bytes(path: str | Path, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, ``fsync``, rename).

    Args:
        path: the destination; missing parent directories are created.
        data: the file's whole content.

    Raises:
        FileWriteError: the file could not be written (e.g. ``ENOSPC``); it names ``path``.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, FileWriteError):
            raise FileWriteError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, as UTF-8 with its newlines unchanged.

    Args:
        path: the destination.
        text: the file's whole content.

    Raises:
        FileWriteError: as :func:`write_bytes`.
    """
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, *, where: str | None = None) -> None:
    """Write ``obj`` to ``path`` atomically as indented strict JSON, ending in a newline.

    Args:
        path: the destination.
        obj: plain data; tensors and numpy scalars, enums and paths are converted, and non-finite
            floats become the strings "nan", "inf", "-inf" (see :mod:`biasdecay.strict_json`).
        where: how to name ``obj`` in a conversion error (default: the file name).

    Raises:
        TypeError: a value cannot be written as JSON (its place in ``obj`` is named).
        FileWriteError: as :func:`write_bytes`.
    """
    data = to_json_data(obj, where or Path(path).name)
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically.

    The object is serialised in memory and the bytes written by :func:`write_bytes`: torch's own
    writer turns a failed write (a full disk) into a ``RuntimeError`` about stream positions,
    whereas writing the bytes here raises the error that names the file and the cause.

    Args:
        obj: anything ``torch.save`` takes (checkpoints are dicts of tensors and plain data).
        path: the destination.

    Raises:
        FileWriteError: as :func:`write_bytes`.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getbuffer())
