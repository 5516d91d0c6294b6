"""Pieces the subcommands share: their error, devices, data preparation and path checks."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from biasdecay.data import DeviceLoader, ImageDataset, subset
from biasdecay.errors import BiasDecayError
from biasdecay.nn.checkpoint import ModelSpec
from biasdecay.nn.models import min_image_size


class UsageError(BiasDecayError, ValueError):
    """Bad command-line input; the message says what is wrong and how to fix it."""


@contextlib.contextmanager
def user_input() -> Iterator[None]:
    """Turn the library's refusal of a value the user gave into a :class:`UsageError`.

    The library's look-ups and checks (an unknown model, data set, measure, study or preset
    name, a batch that does not split) raise ``ValueError``, as a library should, and a path
    that cannot be read raises ``OSError``; the command knows that the value came from the
    command line. Wrap only calls that look up or check such values before the work starts: an
    exception from inside the work is a bug and keeps its traceback.

    Raises:
        UsageError: with the library's message (the original exception is its cause).
    """
    try:
        yield
    except BiasDecayError:
        raise
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot read {os_error_text(exc)}") from exc


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; an unavailable CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available; use cpu")
    return device


def pad_for(model_name: str, dataset: ImageDataset) -> int | None:
    """The square size to pad inputs to for ``model_name`` (VGG needs 32x32), or None."""
    need = min_image_size(model_name)
    return need if dataset.image_size < need else None


def model_spec_for(name: str, dataset: ImageDataset, width: float) -> ModelSpec:
    """The spec of model ``name`` sized for ``dataset`` (channels, classes, padded image size)."""
    return ModelSpec(
        name=name,
        in_channels=dataset.in_channels,
        num_classes=dataset.num_classes,
        width=width,
        image_size=max(dataset.image_size, min_image_size(name)),
    )


def measurement_batches(
    dataset: ImageDataset,
    *,
    samples: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    pad_to: int | None,
    dtype: torch.dtype,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed, seeded evaluation subset as a list of batches (re-iterable, no augmentation)."""
    if samples < 1 or batch_size < 1:
        raise UsageError("--samples and --batch-size must be >= 1")
    chosen = subset(dataset, min(samples, len(dataset)), seed=seed)
    loader = DeviceLoader(
        chosen, batch_size, shuffle=False, device=device, pad_to=pad_to, dtype=dtype
    )
    return list(loader)


def os_error_text(exc: OSError) -> str:
    """``"<path>: <cause>"`` for an OSError, without the errno noise of its default text."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename if exc.filename is not None else ""
    return f"{where}: {cause}" if where else cause


def writable_dir(path: str | Path, flag: str) -> Path:
    """Prove, before any work starts, that ``path`` can be created or written; create nothing.

    Args:
        path: the directory a command will write into.
        flag: how the user gave it (e.g. ``--out``), for the message.

    Returns:
        The path.

    Raises:
        UsageError: it is a file, lies below a file, or cannot be written (the cause is named).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file; give a directory")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {path} cannot be written: {existing} is a file")
    try:  # a real write: permissions alone miss read-only file systems for root
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(
            f"{flag} {path} cannot be written ({os_error_text(exc)}); give a directory you can "
            "write to"
        ) from None
    return path


def writable_file(path: str | Path, flag: str) -> Path:
    """Refuse, before any work starts, a file path the command could not write at the end.

    Args:
        path: the file a command will write.
        flag: how the user gave it (e.g. ``--json``), for the message.

    Returns:
        The path.

    Raises:
        UsageError: it is a directory, or its directory cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(
            f"{flag} {path} is a directory; give a file name, e.g. {path / 'out.json'}"
        )
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, so {path} cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {existing} is not writable; give a path you can write")
    return path
