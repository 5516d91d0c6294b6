"""Pieces the subcommands share: devices, data preparation and atomic JSON output."""

from __future__ import annotations

import enum
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from biasdecay.data import DeviceLoader, ImageDataset, subset
from biasdecay.errors import BiasDecayError
from biasdecay.nn.checkpoint import ModelSpec
from biasdecay.nn.models import min_image_size


class UsageError(BiasDecayError, ValueError):
    """Bad command-line input; the message says what is wrong and how to fix it."""


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


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_strict(obj), f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _strict(obj: Any) -> Any:
    """Strict JSON values: inf/nan become the strings "inf"/"-inf"/"nan", enums their value."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(getattr(k, "value", k)): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


def show_progress(flag: bool | None) -> bool:
    """Progress bars only on an interactive terminal unless forced on/off."""
    return sys.stderr.isatty() if flag is None else flag
