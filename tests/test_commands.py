"""The command line's layout: each command owns its parser, the CLI catches exactly BiasDecayError.

The end-to-end runs are in test_cli.py; these cases check the seams: which errors become one
line (and which stay tracebacks), the shared flags, and that each shortcut sets its config key.
"""

from __future__ import annotations

import argparse
import errno

import pytest

from biasdecay import atomic, cli
from biasdecay.cli import build_parser, main
from biasdecay.commands import listing, train
from biasdecay.commands.common import UsageError, user_input
from biasdecay.train.config import config_to_dict, load_config
from biasdecay.train.engine import Diverged, StorageError


def test_every_subcommand_is_a_module_with_its_parser_and_run(capsys) -> None:
    names = []
    for command in cli.COMMANDS:
        assert callable(command.add_parser) and callable(command.run)
        sub = argparse.ArgumentParser().add_subparsers()
        names.append(command.add_parser(sub).prog.split()[-1])
    assert names == ["measure", "train", "sweep", "report", "list"]
    for name in names:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert "usage: biasdecay " + name in capsys.readouterr().out


@pytest.mark.parametrize("command", ["measure", "train"])
def test_progress_flags_are_the_same_everywhere(command) -> None:
    parser = build_parser()
    for flags, expected in (([], None), (["--progress"], True), (["--no-progress"], False)):
        assert parser.parse_args([command, *flags]).progress is expected
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--progress", "--no-progress"])


def test_each_shortcut_sets_the_config_key_it_names(tmp_path) -> None:
    values = {
        "--model": "mlp", "--width": "0.5", "--data": "digits", "--data-root": str(tmp_path),
        "--epochs": "3", "--batch-size": "64", "--micro-batch-size": "32", "--lr": "0.02",
        "--optimizer": "sgd", "--policy": "beta_decay", "--device": "cpu",
        "--out": str(tmp_path / 'a "quoted" run'), "--seed": "7",
    }  # fmt: skip
    assert sorted(values) == sorted(s.flag for s in train.SHORTCUTS)
    argv = ["train", *(x for pair in values.items() for x in pair), "--set", "run.seed=8"]
    cfg = config_to_dict(load_config(None, train.overrides_from(build_parser().parse_args(argv))))
    for shortcut in train.SHORTCUTS:
        section, key = shortcut.key.split(".")
        expected = shortcut.type(values[shortcut.flag])
        if shortcut.flag == "--seed":
            expected = 8  # --set wins over the shortcut
        assert cfg[section][key] == expected, shortcut.flag


def _raising(exc: BaseException):
    def run(args: argparse.Namespace) -> int:
        raise exc

    return run


@pytest.mark.parametrize(
    "exc, status",
    [
        (UsageError("bad --thing; use --other"), 2),
        (StorageError("run r could not write its files (x: No space left on device)"), 2),
        (Diverged("training loss nan"), 3),
    ],
)
def test_input_errors_are_one_line(exc, status, monkeypatch, capsys) -> None:
    monkeypatch.setattr(listing, "run", _raising(exc))
    assert main(["list"]) == status
    assert capsys.readouterr().err == f"biasdecay list: error: {exc}\n"


@pytest.mark.parametrize("exc", [ValueError("a bug"), OSError("a bug"), FloatingPointError()])
def test_other_errors_are_bugs_and_keep_their_traceback(exc, monkeypatch) -> None:
    monkeypatch.setattr(listing, "run", _raising(exc))
    with pytest.raises(type(exc)):
        main(["list"])


def test_an_interrupt_is_status_130(monkeypatch, capsys) -> None:
    monkeypatch.setattr(listing, "run", _raising(KeyboardInterrupt()))
    assert main(["list"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_user_input_turns_refusals_into_usage_errors(tmp_path) -> None:
    with pytest.raises(UsageError, match="^unknown thing 'x'$"):
        with user_input():
            raise ValueError("unknown thing 'x'")
    with pytest.raises(UsageError, match="cannot read .*: Permission denied"):
        with user_input():
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "f"))
    with pytest.raises(TypeError):  # not a refusal of a value: a bug
        with user_input():
            raise TypeError("bug")


def test_a_full_disk_at_the_json_file_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("sklearn")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    out = tmp_path / "m.json"
    argv = ["measure", "--model", "mlp", "--width", "0.0625", "--data", "digits",
            "--measures", "connectivity", "--samples", "8", "--json", str(out),
            "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"error: cannot write {out}: No space left on device\n")
    assert not list(tmp_path.iterdir())


def test_report_of_a_file_or_an_unknown_directory_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    assert main(["report", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err  # a file where a sweep directory should be
    assert "afile is not a study sweep directory" in err and "Traceback" not in err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "is not a study sweep directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "64", "--micro-batch-size", "7"], "does not divide the per-rank batch"),
        (["--batch-size", "100000"], "fewer than one logical batch"),
    ],
)
def test_settings_the_engine_checks_are_one_line(argv, message, tmp_path, capsys) -> None:
    pytest.importorskip("sklearn")
    base = ["train", "--model", "mlp", "--data", "digits", "--device", "cpu", "--no-progress"]
    assert main([*base, *argv, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
