"""Training checkpoints: round trip, pruning, atomicity, corrupt files, RNG state, resume checks."""

from __future__ import annotations

import os
import random

import pytest
import torch
from torch import nn

from biasdecay.nn.checkpoint import CheckpointError, save_model
from biasdecay.train import checkpoint as ckpt
from biasdecay.train.checkpoint import (
    FORMAT,
    capture_rng_state,
    check_resumable,
    latest_checkpoint,
    list_checkpoints,
    load_training_checkpoint,
    newest_loadable_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _state(step: int = 0) -> dict:
    """A state like the engine's: model and optimizer state_dicts after a real step, and more."""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss = nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 3, (16,)))
    loss.backward()
    optimizer.step()  # fills the momentum buffers
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "rng": capture_rng_state({"data": torch.Generator().manual_seed(7)}),
        "scheduler": {"last_epoch": step, "base_lrs": [0.1]},
        "extra": {"nested": {"values": [1, 2.5, "x", None, True], "best": float("inf")}},
    }


def _names(run_dir) -> list[str]:
    return [p.name for p in list_checkpoints(run_dir)]


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def test_round_trip_of_a_realistic_state(tmp_path):
    state = _state(step=12)
    path = save_training_checkpoint(tmp_path, 12, state)
    assert path == tmp_path / "checkpoints" / "step-000000012.pt"
    assert "format" not in state and "step" not in state  # the caller's dict is not modified

    loaded = load_training_checkpoint(path)
    assert loaded["format"] == FORMAT and loaded["step"] == 12
    _assert_same({k: v for k, v in loaded.items() if k not in ("format", "step")}, state)

    # The loaded state drives fresh objects.
    model = _model()
    model.load_state_dict(loaded["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    optimizer.load_state_dict(loaded["optimizer"])
    assert optimizer.param_groups[0]["lr"] == 0.1
    assert all("momentum_buffer" in s for s in optimizer.state.values())


def test_conflicting_or_invalid_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="step 5"):
        save_training_checkpoint(tmp_path, 5, {**_state(), "step": 4})
    with pytest.raises(ValueError, match="format"):
        save_training_checkpoint(tmp_path, 5, {**_state(), "format": "other/1"})
    with pytest.raises(ValueError, match="keep"):
        save_training_checkpoint(tmp_path, 5, _state(), keep=0)
    with pytest.raises(ValueError, match="step"):
        save_training_checkpoint(tmp_path, -1, _state())
    assert list_checkpoints(tmp_path) == []


def test_keeps_the_newest_k(tmp_path):
    state = _state()
    for step in range(1, 6):
        save_training_checkpoint(tmp_path, step * 100, state, keep=2)
    assert _names(tmp_path) == ["step-000000400.pt", "step-000000500.pt"]
    save_training_checkpoint(tmp_path, 600, state, keep=3)
    assert _names(tmp_path) == [f"step-000000{s}00.pt" for s in (4, 5, 6)]
    save_training_checkpoint(tmp_path, 700, state, keep=1)
    assert _names(tmp_path) == ["step-000000700.pt"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000000700.pt"


def test_a_resumed_run_discards_checkpoints_of_the_abandoned_continuation(tmp_path):
    state = _state()
    for step in (100, 200, 300):
        save_training_checkpoint(tmp_path, step, state, keep=3)
    save_training_checkpoint(tmp_path, 150, state, keep=3)  # resumed from 100
    assert _names(tmp_path) == ["step-000000100.pt", "step-000000150.pt"]


def test_a_failed_save_leaves_no_partial_file_and_keeps_the_previous_ones(tmp_path, monkeypatch):
    state = _state()
    save_training_checkpoint(tmp_path, 1, state, keep=2)
    save_training_checkpoint(tmp_path, 2, state, keep=2)
    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip archive")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="No space left"):
        save_training_checkpoint(tmp_path, 3, state, keep=2)
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "step-000000001.pt",
        "step-000000002.pt",
    ]
    for path in list_checkpoints(tmp_path):
        load_training_checkpoint(path)


def test_list_ignores_temporary_and_foreign_files(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in (
        "step-000000020.pt",
        "step-000000003.pt",
        "step-1234567890.pt",  # past 9 digits: still ordered by step
        ".step-000000040.pt.x1y2.tmp",  # save_torch's temporary file
        "step-000000050.pt.tmp",
        "step-7.pt",
        "notes.txt",
    ):
        (folder / name).write_bytes(b"")
    (folder / "step-000000060.pt").mkdir()
    assert _names(tmp_path) == ["step-000000003.pt", "step-000000020.pt", "step-1234567890.pt"]
    assert list_checkpoints(tmp_path / "absent") == []
    assert latest_checkpoint(tmp_path / "absent") is None


def _saved(tmp_path, step=1):
    return save_training_checkpoint(tmp_path, step, _state(), keep=10)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:-10], id="tail-cut"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: b"not a torch file at all " * 8, id="garbage"),
    ],
)
def test_a_damaged_file_is_reported_as_corrupt(tmp_path, damage):
    path = _saved(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_training_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_foreign_and_incomplete_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_training_checkpoint(tmp_path / "step-000000001.pt")

    foreign = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a biasdecay training checkpoint.*'format'"):
        load_training_checkpoint(foreign)

    torch.save([torch.ones(2)], foreign)
    with pytest.raises(CheckpointError, match="a list"):
        load_training_checkpoint(foreign)

    torch.save({"format": "someone.else/3"}, foreign)
    with pytest.raises(CheckpointError, match="someone.else/3"):
        load_training_checkpoint(foreign)

    from biasdecay.nn.checkpoint import ModelSpec

    model_file = tmp_path / "model.pt"
    save_model(model_file, nn.Linear(2, 2), ModelSpec("mlp", 1, 2))
    with pytest.raises(CheckpointError, match="model checkpoint"):
        load_training_checkpoint(model_file)

    incomplete = tmp_path / "incomplete.pt"
    torch.save({"format": FORMAT, "step": 3, "model": {}, "epoch": 0}, incomplete)
    with pytest.raises(CheckpointError, match=r"lacks required entries: optimizer, rng") as info:
        load_training_checkpoint(incomplete)
    assert str(incomplete) in str(info.value)


class _Opaque:
    pass


def test_pickled_objects_are_refused_not_executed(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"format": FORMAT, "thing": _Opaque()}, path)
    with pytest.raises(CheckpointError, match="could not be loaded safely"):
        load_training_checkpoint(path)


def test_loading_never_modifies_the_run_directory(tmp_path):
    _saved(tmp_path, 1)
    bad = _saved(tmp_path, 2)
    bad.write_bytes(bad.read_bytes()[:100])

    def snapshot():
        return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))

    before = snapshot()
    with pytest.raises(CheckpointError):
        load_training_checkpoint(bad)
    with pytest.raises(CheckpointError):
        check_resumable(tmp_path)
    newest_loadable_checkpoint(tmp_path)
    assert snapshot() == before


def test_rng_capture_and_restore_reproduce_the_draws(tmp_path):
    extra = {"data": torch.Generator().manual_seed(3), "augment": torch.Generator().manual_seed(4)}
    random.gauss(0.0, 1.0)  # leaves a cached second normal in python's state

    def draws():
        return (
            torch.rand(5),
            torch.randn(3),
            [random.random() for _ in range(3)],
            random.gauss(0.0, 1.0),
            torch.randperm(10, generator=extra["data"]),
            torch.rand(2, generator=extra["augment"]),
        )

    state = capture_rng_state(extra)
    first = draws()
    assert not torch.equal(draws()[0], first[0])  # the generators moved on

    # Through a real file, loaded with weights_only=True.
    path = save_training_checkpoint(
        tmp_path, 1, {"model": {}, "optimizer": {}, "epoch": 0, "rng": state}
    )
    restore_rng_state(load_training_checkpoint(path)["rng"], extra)
    _assert_same(draws(), first)

    restore_rng_state(state, extra)
    _assert_same(draws(), first)


def test_restore_names_a_generator_without_saved_state():
    state = capture_rng_state({"data": torch.Generator()})
    with pytest.raises(CheckpointError, match="augment.*saved: data"):
        restore_rng_state(state, {"augment": torch.Generator()})
    with pytest.raises(CheckpointError, match="capture_rng_state"):
        restore_rng_state({"python": {}}, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_states_round_trip(tmp_path):
    torch.cuda.init()
    state = capture_rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    first = torch.rand(4, device="cuda")
    path = save_training_checkpoint(
        tmp_path, 1, {"model": {}, "optimizer": {}, "epoch": 0, "rng": state}
    )
    torch.rand(4, device="cuda")
    restore_rng_state(load_training_checkpoint(path, map_location="cuda")["rng"])
    assert torch.equal(torch.rand(4, device="cuda"), first)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_states_without_cuda_warn_and_restore_the_rest():
    state = capture_rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    first = torch.rand(3)
    with pytest.warns(UserWarning, match="1 CUDA device.*not restored"):
        restore_rng_state(state)
    assert torch.equal(torch.rand(3), first)


def test_check_resumable_missing_and_empty_run_directories(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*without --resume"):
        check_resumable(tmp_path / "no-such-run")
    with pytest.raises(CheckpointError, match="nothing to resume.*without --resume"):
        check_resumable(tmp_path)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        newest_loadable_checkpoint(tmp_path)


def test_check_resumable_returns_the_newest_checkpoint(tmp_path):
    _saved(tmp_path, 10)
    newest = _saved(tmp_path, 20)
    assert check_resumable(tmp_path) == newest
    path, skipped, state = newest_loadable_checkpoint(tmp_path)
    assert (path, skipped) == (newest, []) and state["step"] == int(newest.stem.split("-")[1])


def test_a_corrupt_newest_checkpoint_is_reported_with_the_previous_loadable_one(tmp_path):
    _saved(tmp_path, 10)
    previous = _saved(tmp_path, 20)
    newest = _saved(tmp_path, 30)
    newest.write_bytes(newest.read_bytes()[:200])

    with pytest.raises(CheckpointError) as info:
        check_resumable(tmp_path)
    message = str(info.value)
    assert str(newest) in message and "truncated or corrupt" in message
    assert "step-000000020.pt (step 20)" in message and "move step-000000030.pt" in message

    path, skipped, _ = newest_loadable_checkpoint(tmp_path)
    assert path == previous
    assert [p for p, _ in skipped] == [newest]
    assert "truncated or corrupt" in skipped[0][1]


def test_no_loadable_checkpoint_at_all(tmp_path):
    for step in (1, 2):
        path = _saved(tmp_path, step)
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no older checkpoint loads either"):
        check_resumable(tmp_path)
    with pytest.raises(CheckpointError, match="none of the 2 checkpoints"):
        newest_loadable_checkpoint(tmp_path)


def test_checkpoint_paths():
    assert ckpt.checkpoint_path("run", 7).as_posix() == "run/checkpoints/step-000000007.pt"
