"""The one atomic writer: all or nothing, on disk, readable, and a failure that names the file."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch

from biasdecay import atomic
from biasdecay.atomic import FileWriteError, save_torch, write_bytes, write_json, write_text
from biasdecay.errors import BiasDecayError


def _temporaries(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_writes_replace_the_file_and_leave_no_temporary(tmp_path) -> None:
    path = tmp_path / "new" / "deeper" / "out.txt"  # missing folders are made
    write_text(path, "first\r\n")
    write_text(path, "second é\n")
    assert path.read_bytes() == "second é\n".encode()  # UTF-8, newlines as given
    write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert _temporaries(path.parent) == []


def test_files_are_readable_by_everyone_whatever_the_umask(tmp_path) -> None:
    old = os.umask(0o077)
    try:
        write_text(tmp_path / "a.txt", "x")
        save_torch({"w": torch.ones(2)}, tmp_path / "a.pt")
    finally:
        os.umask(old)
    for name in ("a.txt", "a.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_data_are_fsynced_before_the_rename(tmp_path, monkeypatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(
        atomic.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))
    )
    write_text(tmp_path / "a.txt", "x")
    assert events == ["fsync", "replace"]


def _full_disk(fd: int) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    "write",
    [
        lambda p: write_text(p, "new"),
        lambda p: write_json(p, {"a": 1}),
        lambda p: save_torch({"w": torch.zeros(3)}, p),
    ],
    ids=["text", "json", "torch"],
)
def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch, write) -> None:
    path = tmp_path / "result"
    path.write_text("old")
    monkeypatch.setattr(atomic.os, "fsync", _full_disk)
    with pytest.raises(FileWriteError) as info:
        write(path)
    err = info.value
    # Both an OSError (callers that handle a full disk keep working) and an input error.
    assert isinstance(err, OSError) and isinstance(err, BiasDecayError)
    assert err.errno == errno.ENOSPC and err.filename == str(path)
    assert str(err) == f"cannot write {path}: No space left on device"
    assert path.read_text() == "old"
    assert _temporaries(tmp_path) == []


def test_a_destination_below_a_file_is_a_write_error(tmp_path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileWriteError, match="cannot write .*afile/out.json"):
        write_json(tmp_path / "afile" / "out.json", {})


def test_an_interrupted_write_removes_its_temporary_and_stays_an_interrupt(
    tmp_path, monkeypatch
) -> None:
    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text(tmp_path / "a.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_save_torch_round_trips_with_weights_only(tmp_path) -> None:
    obj = {"model": {"w": torch.arange(4.0)}, "step": 3}
    save_torch(obj, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=True)
    assert back["step"] == 3 and torch.equal(back["model"]["w"], obj["model"]["w"])


def test_write_json_is_strict_indented_and_ends_in_a_newline(tmp_path) -> None:
    write_json(tmp_path / "a.json", {"loss": float("nan"), "x": [1, 2]})
    text = (tmp_path / "a.json").read_text()
    assert text == '{\n  "loss": "nan",\n  "x": [\n    1,\n    2\n  ]\n}\n'
    with pytest.raises(TypeError, match=r"a\.json\.model: cannot write a Linear"):
        write_json(tmp_path / "a.json", {"model": torch.nn.Linear(1, 1)})
    with pytest.raises(TypeError, match=r"^summary\.w"):
        write_json(tmp_path / "a.json", {"w": torch.ones(2)}, where="summary")
    assert (tmp_path / "a.json").read_text() == text  # a refused object writes nothing
