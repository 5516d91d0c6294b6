"""Grid files and `biasdecay sweep` on them."""

from __future__ import annotations

import json

import pytest

from biasdecay.cli import main
from biasdecay.study.grid import load_grid
from biasdecay.study.sweep import SweepError

pytest.importorskip("sklearn")

GRID = """
set = ["model.name=mlp", "model.width=0.0625", "model.ghost_batch_size=none",
       "data.name=digits", "data.augment=none", "run.batch_size=256", "run.epochs=1",
       "run.device=cpu", "optimizer.name=lamb", "optimizer.lr=0.01"]

[runs.nbd]
set = ["policy.name=no_bias_decay"]
labels = { policy = "no bias decay" }

[runs.beta]
set = ["policy.name=beta_decay"]
labels = { policy = "β decay (1.0)", batch = 256 }
"""


def test_grid_file_gives_runs_with_shared_settings_first(tmp_path) -> None:
    (tmp_path / "grid.toml").write_text(GRID)
    base, runs = load_grid(tmp_path / "grid.toml")
    assert base is None and [r.name for r in runs] == ["nbd", "beta"]
    assert runs[1].overrides[0] == "model.name=mlp" and runs[1].overrides[-1].endswith("beta_decay")
    assert runs[1].labels == {"policy": "β decay (1.0)", "batch": 256}


@pytest.mark.parametrize(
    "text, message",
    [
        ("[runs]\n", "no runs"),
        (
            "bse = 'x.toml'\n[runs.a]\n",
            r"unknown key\(s\) bse; valid top-level keys: base, set, runs",
        ),
        ("base = 'missing.toml'\n[runs.a]\n", "base config 'missing.toml' not found"),
        ("[runs.a]\nset = 'run.epochs=1'\n", r"\[runs.a\] set must be a list"),
        ("[runs.a]\nsett = []\n", r"unknown key\(s\) sett; valid: set, labels"),
        ("[runs.a\n", "not valid TOML"),
        ("base = 3\n[runs.a]\n", "base must be the path of a config TOML file, got 3"),
        ('[runs."../up"]\n', r"run name '../up' must be non-empty letters"),
        ("[runs.a]\nlabels = 3\n", "labels must be a table, got 3"),
    ],
)
def test_bad_grid_files(tmp_path, text, message) -> None:
    (tmp_path / "grid.toml").write_text(text)
    with pytest.raises(SweepError, match=message):
        load_grid(tmp_path / "grid.toml")


def test_sweep_command_runs_then_skips(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "grid.toml").write_text(GRID)
    argv = ["sweep", str(tmp_path / "grid.toml"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "sweep: 2 finished" in capsys.readouterr().out
    index = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [r["state"] for r in index["runs"]] == ["finished", "finished"]
    assert main(argv) == 0
    assert capsys.readouterr().out.count("skipped") == 2
    assert main(["sweep", str(tmp_path / "nope.toml"), "--out", "x"]) == 2
