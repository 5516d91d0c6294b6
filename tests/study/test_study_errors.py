"""Bad study input is a :class:`BiasDecayError` that names the problem and the fix, and the CLI
prints it as one line (exit 2), never a traceback; a sweep that cannot write says where."""

from __future__ import annotations

import errno
import importlib
import json
import os
import sys
import time
from pathlib import Path

import pytest
from test_sweep import BASE, ENV, quiet

from biasdecay.atomic import FileWriteError
from biasdecay.cli import main
from biasdecay.errors import BiasDecayError
from biasdecay.registry import RegistryError
from biasdecay.study.grid import load_grid
from biasdecay.study.plan import PLAN_FILE, check_plan, load_plan, make_plan, save_plan
from biasdecay.study.presets import get_preset
from biasdecay.study.specs import get_study
from biasdecay.study.sweep import RunSpec, SweepError, SweepWriteError, sweep
from biasdecay.train.config import ConfigError, dump_toml, load_config

pytest.importorskip("sklearn")

# The module, not the function ``biasdecay.study.sweep`` that the package exports under its name.
sweep_module = importlib.import_module("biasdecay.study.sweep")


def one_line_error(argv: list[str], capsys) -> str:
    """Run the CLI on bad input: exit 2 and one line on stderr without a traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err


# --------------------------------------------------------------------------- names


def test_unknown_study_and_preset_names_list_the_valid_ones_and_suggest_one() -> None:
    with pytest.raises(RegistryError, match=r"unknown study 'tabel1'; valid names: table1, .*"):
        get_study("tabel1")
    with pytest.raises(RegistryError, match="did you mean 'table1'"):
        make_plan("tabel1", "smoke")
    with pytest.raises(RegistryError, match=r"unknown preset 'smok'; .*did you mean 'smoke'"):
        make_plan("main", "smok")
    assert get_preset("smoke").name == "smoke" and get_study("main").name == "main"


# --------------------------------------------------------------------------- plans


def test_bad_plan_arguments_are_sweep_errors() -> None:
    with pytest.raises(SweepError, match=r"seeds must be >= 1 \(runs per setting\), got 0"):
        make_plan("main", "smoke", seeds=0)
    with pytest.raises(SweepError, match="the first seed must be >= 0, got -1"):
        make_plan("main", "smoke", first_seed=-1)


@pytest.mark.parametrize(
    "extra, message",
    [
        ("run.epochs=0", r"run.epochs must be in \(0, inf\), got 0.0"),
        ("run.epochs=many", "run.epochs: expected float, got 'many'"),
        ("run.epoch=3", "did you mean run.epochs?"),
        ("run.epochs", "expected the form section.key=value"),
    ],
)
def test_extra_overrides_are_checked_as_train_checks_them(extra, message) -> None:
    with pytest.raises(ConfigError, match=message):
        make_plan("main", "smoke", extra=(extra,))


def test_an_extra_epochs_override_is_read_as_the_config_reads_it() -> None:
    plan = make_plan("main", "smoke", extra=(" run.epochs = 3 ", "run.compile=true"))
    assert {r.scaled.epochs for r in plan.runs} == {3.0}


def test_a_directory_that_is_no_sweep_says_how_to_make_one(tmp_path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (tmp_path / "missing", afile):  # afile/study.json: NotADirectoryError
        with pytest.raises(SweepError, match=f"{out} is not a study sweep directory.*--out {out}"):
            load_plan(out)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "is not valid JSON .*; delete it and run the same sweep again"),
        ("[1, 2]", r"is not a study plan \(no study and preset\); delete it"),
        ('{"study": "main", "preset": "smoke", "seeds": "x"}', "seeds and first_seed must be"),
    ],
)
def test_an_unreadable_plan_file_is_refused_with_the_fix(tmp_path, text, message) -> None:
    (tmp_path / PLAN_FILE).write_text(text)
    with pytest.raises(SweepError, match=message):
        load_plan(tmp_path)
    if "seeds" not in text:  # a sweep into the directory reads it too
        with pytest.raises(SweepError, match=message):
            check_plan(make_plan("main", "smoke"), tmp_path)


def test_a_plan_naming_an_unknown_study_lists_the_valid_ones(tmp_path) -> None:
    (tmp_path / PLAN_FILE).write_text('{"study": "tabel2", "preset": "smoke"}')
    with pytest.raises(RegistryError, match="did you mean 'table2'"):
        load_plan(tmp_path)


def test_another_studys_directory_is_refused(tmp_path) -> None:
    save_plan(make_plan("table2", "smoke"), tmp_path)
    with pytest.raises(SweepError, match="holds a sweep of study 'table2', not 'main'.*--out"):
        check_plan(make_plan("main", "smoke"), tmp_path)


# --------------------------------------------------------------------------- grids


def test_a_grid_path_that_cannot_be_read_says_so(tmp_path) -> None:
    with pytest.raises(SweepError, match="does not exist; give the path of a grid TOML file"):
        load_grid(tmp_path / "nope.toml")
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(SweepError, match="dir.toml cannot be read: Is a directory"):
        load_grid(tmp_path / "dir.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(SweepError, match="is not valid TOML"):
        load_grid(tmp_path / "bin.toml")


def test_a_bad_run_name_is_a_sweep_error() -> None:
    with pytest.raises(SweepError, match="names the run's directory"):
        RunSpec("a/b")


# --------------------------------------------------------------------------- reports


def _mislabelled_sweep(out: Path) -> None:
    """A table2 sweep directory whose first run was made with other settings than its plan's."""
    plan = make_plan("table2", "smoke")
    save_plan(plan, out)
    run = plan.runs[0]
    cfg = load_config(None, [*run.spec.overrides, "run.epochs=7"])
    (out / run.name).mkdir()
    (out / run.name / "config.toml").write_text(dump_toml(cfg))


def test_a_report_of_mislabelled_runs_is_a_sweep_error(tmp_path) -> None:
    from biasdecay.study.report import write_report

    _mislabelled_sweep(tmp_path)
    with pytest.raises(SweepError, match=r"(?s)do not match study.json: .*delete the directories"):
        write_report(tmp_path)


# --------------------------------------------------------------------------- writes


def _fail_mkdir(monkeypatch, name: str, code: int = errno.ENOSPC) -> None:
    """Make creating a directory called ``name`` fail as a full (or read-only) disk does."""
    real = Path.mkdir

    def mkdir(self: Path, *args, **kwargs) -> None:
        if self.name == name:
            raise OSError(code, os.strerror(code), str(self))
        real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def _grid_runs(*names: str) -> list[RunSpec]:
    return [RunSpec(n, (*BASE, "policy.name=no_bias_decay")) for n in names]


def test_a_run_directory_on_a_full_disk_is_one_error_naming_it(tmp_path, monkeypatch) -> None:
    _fail_mkdir(monkeypatch, "nbd")
    with pytest.raises(SweepWriteError) as info:
        sweep(_grid_runs("nbd"), tmp_path, log=quiet, env=ENV)
    err = info.value
    assert isinstance(err, BiasDecayError) and isinstance(err, OSError)
    assert isinstance(err, FileWriteError) and err.errno == errno.ENOSPC
    assert err.filename == str(tmp_path / "nbd")
    assert str(err).startswith(f"cannot write {tmp_path / 'nbd'}: No space left on device; free")
    assert "run the same sweep again" in str(err)


def test_a_train_log_on_a_read_only_disk_is_one_error_naming_it(tmp_path, monkeypatch) -> None:
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(sweep_module, "open", read_only, raising=False)
    with pytest.raises(SweepWriteError, match="train.log: Read-only file system; free space"):
        sweep(_grid_runs("nbd"), tmp_path, log=quiet, env=ENV)


def test_an_index_that_cannot_be_written_is_one_error_naming_it(tmp_path, monkeypatch) -> None:
    (run,) = _grid_runs("nbd")
    run_dir = tmp_path / "nbd"
    run_dir.mkdir()  # a finished run: the sweep skips it, then writes its index
    cfg = load_config(None, [*run.overrides, f"run.out={json.dumps(str(run_dir))}"])
    (run_dir / "config.toml").write_text(dump_toml(cfg))
    (run_dir / "summary.json").write_text('{"status": "finished"}')

    def full(path, _text):
        raise FileWriteError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(sweep_module, "write_text", full)
    with pytest.raises(SweepWriteError, match=r"sweep.json: No space left on device; free"):
        sweep([run], tmp_path, log=quiet, env=ENV)


def test_a_failed_write_stops_the_other_live_runs_at_once(tmp_path, monkeypatch) -> None:
    _fail_mkdir(monkeypatch, "first")
    real = sweep_module.train_command

    def command(run, run_dir, base_config, *, resume):
        if run.name == "second":  # a long run the failure must not wait for
            return [sys.executable, "-c", "import time; time.sleep(120)"]
        return real(run, run_dir, base_config, resume=resume)

    monkeypatch.setattr(sweep_module, "train_command", command)
    start = time.monotonic()
    with pytest.raises(SweepWriteError, match="first: No space left on device"):
        sweep(_grid_runs("first", "second"), tmp_path, jobs=2, log=quiet, env=ENV)
    assert time.monotonic() - start < 60


# --------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tabel1", "--preset", "smoke"], "unknown study 'tabel1'"),
        (["main", "--preset", "smok"], "did you mean 'smoke'?"),
        (["main", "--preset", "smoke", "--seeds", "0"], "seeds must be >= 1"),
        (["main", "--preset", "smoke", "--first-seed", "-2"], "first seed must be >= 0"),
        (["main", "--preset", "smoke", "--set", "run.epochs=0"], "run.epochs must be in (0, inf)"),
    ],
)
def test_sweep_command_bad_study_input_is_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = one_line_error(["sweep", *argv, "--out", "D"], capsys)
    assert err.startswith("biasdecay sweep: error: ") and message in err, err
    assert not (tmp_path / "D").exists()


@pytest.mark.parametrize(
    "plan_text, message",
    [("{not json", "is not valid JSON"), ('{"study": "table2"}', "is not a study plan")],
)
def test_commands_refuse_an_unreadable_plan_in_one_line(plan_text, message, tmp_path, capsys):
    (tmp_path / "D").mkdir()
    (tmp_path / "D" / PLAN_FILE).write_text(plan_text)
    out = str(tmp_path / "D")
    assert message in one_line_error(["report", out], capsys)
    assert message in one_line_error(["sweep", "main", "--preset", "smoke", "--out", out], capsys)


def test_report_command_on_a_file_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    err = one_line_error(["report", str(tmp_path / "afile")], capsys)
    assert "is not a study sweep directory" in err and "biasdecay sweep STUDY" in err


def test_report_command_on_mislabelled_runs_is_an_error_not_a_traceback(tmp_path, capsys):
    _mislabelled_sweep(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "whose runs do not match study.json" in err, err


def test_sweep_command_bad_grid_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "grid.toml").write_text('[runs."a b"]\n')
    err = one_line_error(["sweep", str(tmp_path / "grid.toml"), "--out", "D"], capsys)
    assert "run name 'a b' must be" in err


def test_sweep_command_on_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    grid = "\n".join(
        ["set = [" + ", ".join(json.dumps(item) for item in BASE) + "]", "[runs.nbd]", ""]
    )
    (tmp_path / "grid.toml").write_text(grid)
    _fail_mkdir(monkeypatch, "nbd")
    out = tmp_path / "out"
    err = one_line_error(["sweep", str(tmp_path / "grid.toml"), "--out", str(out)], capsys)
    assert f"cannot write {out / 'nbd'}: No space left on device; free space" in err
