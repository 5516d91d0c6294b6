"""The command line end to end on real bundled data (scikit-learn digits), and its errors."""

from __future__ import annotations

import json

import pytest
import torch

from biasdecay.cli import main
from biasdecay.data import load_dataset, subset
from biasdecay.nn.checkpoint import load_model
from biasdecay.sharpness.connectivity import connectivity_sharpness

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("run")
    code = main(
        ["train", "--model", "resnet18", "--width", "0.125", "--data", "digits", "--epochs",
         "0.5", "--batch-size", "64", "--out", str(out), "--no-progress", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    return str(out / "model.pt")


def test_train_then_measure_prints_table2_and_writes_json(trained, tmp_path, capsys) -> None:
    out_json = tmp_path / "m.json"
    code = main(
        ["measure", "--checkpoint", trained, "--data", "digits", "--samples", "96",
         "--batch-size", "32", "--matvecs", "6", "--lanczos-iters", "5", "--json",
         str(out_json), "--no-progress", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    for needle in ("Conv", "γ", "β", "FC(w)", "FC(b)", "Total", "r_l", "Tr(H)", "λmax(H)", "FR"):
        assert needle in text, needle
    record = json.loads(out_json.read_text())
    assert record["data"] == {
        "name": "digits", "split": "test", "samples": 96, "batch_size": 32,
        "synthetic": False, "seed": 0,
    }  # fmt: skip
    results = record["results"]
    assert set(results) == {
        "connectivity", "connectivity-m", "hessian-trace", "hessian-max", "fisher-rao"
    }  # fmt: skip
    assert results["hessian-trace"]["n_matvecs"] == 6

    # The JSON holds exactly what the library computes on the same subset.
    model, spec, _ = load_model(trained)
    test = subset(load_dataset("digits", "test"), 96, seed=0)
    from biasdecay.data import DeviceLoader

    batches = list(DeviceLoader(test, 32, shuffle=False))
    expected = connectivity_sharpness(model, batches)
    assert results["connectivity"]["total"] == pytest.approx(expected.total, rel=1e-6)
    assert results["connectivity"]["table2"]["β"] == pytest.approx(expected.table2()["β"], rel=1e-6)
    assert len(results["connectivity"]["bias_utilization"]) == sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["measure", "--checkpoint", "x.pt", "--measures", "sharpness"], "valid measures: conn"),
        (["measure", "--checkpoint", "x.pt", "--data", "cifar11"], "valid names: cifar10"),
        (["measure", "--model", "resnet19", "--data", "digits"], "valid names: mlp"),
        (["measure", "--checkpoint", "missing.pt", "--data", "digits"], "missing.pt does not"),
        (["measure", "--checkpoint", "x.pt", "--width", "0.5"], "without --model it would be"),
        (["train", "--data", "digits", "--lr", "-1"], "optimizer.lr must be in (0, inf)"),
        (["train", "--set", "run.epoch=2"], "did you mean run.epochs?"),
        (["train", "--set", "run.epochs=two"], "run.epochs"),
        (["train", "--resume", "nowhere"], "no config.toml there"),
    ],
)
def test_bad_input_gets_one_clear_line(argv, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_list_names_and_settings(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "optimizers: adamw, lamb, lars, sgd" in out and "policies:" in out
    assert main(["list", "settings", "optimizer.momentum"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("optimizer.momentum = 0.9") and "[0, 1)" in line
    assert main(["list", "settings", "optimizer.momentm"]) == 2
    assert "did you mean optimizer.momentum?" in capsys.readouterr().err


def test_mismatched_checkpoint_names_keys(trained, capsys) -> None:
    code = main(
        ["measure", "--checkpoint", trained, "--model", "resnet18", "--width", "0.25",
         "--data", "digits", "--measures", "connectivity", "--no-progress"]
    )  # fmt: skip
    assert code == 2
    assert "shape mismatches: stem.conv.weight" in capsys.readouterr().err


def test_help_explains(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["measure", "--help"])
    text = capsys.readouterr().out
    assert "Table 2" in text and "--checkpoint" in text and "examples:" in text
