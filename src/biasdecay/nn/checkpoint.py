"""Model checkpoints: the weights plus the spec needed to rebuild the network.

A checkpoint is a plain dict (loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "biasdecay.model/1", "spec": {...ModelSpec...}, "model": state_dict, "meta": {...}}

A bare ``state_dict`` saved by any other code is accepted too; the model then has to be named.
Writes go through :func:`biasdecay.atomic.save_torch` (a temporary file in the same directory,
then a rename), so a crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biasdecay.atomic import save_torch
from biasdecay.errors import BiasDecayError
from biasdecay.nn.models import build_model

FORMAT = "biasdecay.model/1"


class CheckpointError(BiasDecayError, ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything :func:`biasdecay.nn.models.build_model` needs to rebuild a network."""

    name: str
    in_channels: int
    num_classes: int
    width: float = 1.0
    image_size: int = 32

    def build(self) -> nn.Module:
        """A freshly initialised model of this spec."""
        return build_model(
            self.name,
            in_channels=self.in_channels,
            num_classes=self.num_classes,
            width=self.width,
            image_size=self.image_size,
        )

    def describe(self) -> str:
        return (
            f"{self.name} (width {self.width:g}, {self.in_channels} input channels, "
            f"{self.num_classes} classes, {self.image_size}x{self.image_size} inputs)"
        )


def save_model(
    path: str | Path, model: nn.Module, spec: ModelSpec, meta: dict[str, Any] | None = None
) -> None:
    """Save ``model``'s weights with its spec (atomically).

    Args:
        path: destination file.
        model: the trained network.
        spec: how to rebuild it.
        meta: JSON-like extra information (data set, metrics, ...).

    Raises:
        FileWriteError: the file could not be written (a full disk: ``ENOSPC``), with its path.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch(
        {"format": FORMAT, "spec": dataclasses.asdict(spec), "model": state, "meta": meta or {}},
        path,
    )


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelSpec | None, dict]:
    """Read a checkpoint safely (``weights_only=True``).

    Returns:
        ``(state_dict, spec or None for a bare state_dict, meta)``.

    Raises:
        CheckpointError: missing, unreadable or of an unknown layout.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (check the path)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/unsafe files
        raise CheckpointError(
            f"checkpoint {path} could not be read as a safe torch file ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); it may be truncated, corrupt, or "
            "contain pickled objects other than tensors (only weights are loaded)"
        ) from exc
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        try:
            spec = ModelSpec(**obj["spec"])
        except TypeError as exc:
            raise CheckpointError(f"checkpoint {path} has a malformed model spec: {exc}") from exc
        return obj["model"], spec, dict(obj.get("meta", {}))
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None, {}
    raise CheckpointError(
        f"checkpoint {path} is neither a biasdecay model checkpoint nor a state_dict of tensors"
    )


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` strictly, or raise naming every mismatched key.

    Raises:
        CheckpointError: missing keys, unexpected keys or shape mismatches, each listed.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        ):
            if keys:
                shown = ", ".join(keys[:8]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 8 else ""
                )
                parts.append(f"{label}: {shown}")
        raise CheckpointError(
            f"checkpoint {source} does not fit the model: " + "; ".join(parts) + ". Check the "
            "model name, --width, and the data set's channels/classes it was trained with."
        )
    model.load_state_dict(state, strict=True)


def load_model(
    path: str | Path, spec: ModelSpec | None = None
) -> tuple[nn.Module, ModelSpec, dict]:
    """Rebuild and load a model from a checkpoint.

    Args:
        path: the checkpoint.
        spec: the model to build; defaults to the spec stored in the checkpoint (required for a
            bare state_dict).

    Returns:
        ``(model in eval mode, the spec used, meta)``.
    """
    state, stored, meta = read_checkpoint(path)
    spec = spec or stored
    if spec is None:
        raise CheckpointError(
            f"checkpoint {path} is a bare state_dict without a model spec: name the model "
            "(e.g. --model resnet18 --width 0.25)"
        )
    model = spec.build()
    load_weights(model, state, str(path))
    return model.eval(), spec, meta
