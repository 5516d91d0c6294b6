"""Model checkpoints: round trip, safe loading, and errors that name the problem."""

from __future__ import annotations

import pytest
import torch

from biasdecay.nn.checkpoint import (
    CheckpointError,
    ModelSpec,
    load_model,
    read_checkpoint,
    save_model,
)


class UnsafeObject:
    """Any pickled class: weights_only loading must refuse it."""


SPEC = ModelSpec("resnet18", in_channels=1, num_classes=10, width=0.125, image_size=8)


def test_round_trip_restores_weights_and_spec(tmp_path) -> None:
    model = SPEC.build()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    save_model(tmp_path / "m.pt", model, SPEC, meta={"accuracy": 0.5})
    loaded, spec, meta = load_model(tmp_path / "m.pt")
    assert spec == SPEC and meta == {"accuracy": 0.5} and not loaded.training
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_bare_state_dict_needs_a_spec(tmp_path) -> None:
    torch.save(SPEC.build().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="--model"):
        load_model(tmp_path / "sd.pt")
    model, spec, _ = load_model(tmp_path / "sd.pt", SPEC)
    assert spec == SPEC


def test_mismatch_names_the_keys(tmp_path) -> None:
    save_model(tmp_path / "m.pt", SPEC.build(), SPEC)
    wider = ModelSpec("resnet18", in_channels=1, num_classes=10, width=0.25, image_size=8)
    with pytest.raises(CheckpointError, match=r"shape mismatches: stem\.conv\.weight"):
        load_model(tmp_path / "m.pt", wider)
    mlp = ModelSpec("mlp", in_channels=1, num_classes=10, width=0.125, image_size=8)
    with pytest.raises(CheckpointError, match="missing keys: .*unexpected keys: "):
        load_model(tmp_path / "m.pt", mlp)


def test_missing_truncated_and_unsafe_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
    save_model(tmp_path / "m.pt", SPEC.build(), SPEC)
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt could not be read"):
        read_checkpoint(tmp_path / "cut.pt")

    torch.save({"x": UnsafeObject()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="unsafe.pt"):
        read_checkpoint(tmp_path / "unsafe.pt")
