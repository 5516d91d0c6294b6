"""The training engine on real bundled data (scikit-learn digits): splits, resume, divergence."""

from __future__ import annotations

import json

import pytest
import torch

from biasdecay.train.config import load_config
from biasdecay.train.engine import Trainer

pytest.importorskip("sklearn")


def config(tmp_path, name: str, *extra: str):
    """A small, fast run: thin ResNet-18 with ghost BN on digits (1438 training images)."""
    return load_config(
        None,
        [
            "model.name=resnet18",
            "model.width=0.0625",
            "model.ghost_batch_size=32",
            "data.name=digits",
            "data.augment=flip",
            "run.batch_size=128",
            "run.epochs=2",
            "run.log_every=4",
            "run.eval_every=1",
            "optimizer.name=lamb",
            "optimizer.lr=0.01",
            "policy.name=adaptive_beta_decay",
            f'run.out="{tmp_path / name}"',
            *extra,
        ],
    )


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_result_does_not_depend_on_the_micro_batch_split(tmp_path) -> None:
    """1 micro-batch of 128 and 4 of 32 (ghost size 32): equal parameters in float64."""
    runs = []
    for micro in (128, 32):
        cfg = config(
            tmp_path, f"micro{micro}", f"run.micro_batch_size={micro}", "run.dtype=float64",
            "run.epochs=0.5",
        )  # fmt: skip
        trainer = Trainer(cfg, log=lambda _m: None)
        assert trainer.plan.accumulation == 128 // micro
        summary = trainer.fit()
        assert summary["status"] == "finished" and summary["steps"] == 6
        runs.append(params(trainer))
    for key in runs[0]:
        torch.testing.assert_close(runs[1][key], runs[0][key], rtol=1e-10, atol=1e-12, msg=key)


class Interrupt(Exception):
    """Stands for a kill: the run stops between two steps without any clean-up."""


def test_resume_after_a_kill_mid_epoch_is_bitwise_equal(tmp_path) -> None:
    full = Trainer(config(tmp_path, "full", "run.checkpoint_every=3"), log=lambda _m: None)
    full_summary = full.fit()
    assert full.steps_per_epoch == 11 and full_summary["steps"] == 22

    def kill_at_step_8(trainer: Trainer, step: int) -> None:
        if step == 8:  # mid-epoch, 2 steps after the checkpoint at step 6
            raise Interrupt

    cut = config(tmp_path, "cut", "run.checkpoint_every=3")
    with pytest.raises(Interrupt):
        Trainer(cut, log=lambda _m: None, on_step=kill_at_step_8).fit()
    resumed = Trainer(cut, log=lambda _m: None)
    summary = resumed.fit(resume=True)
    assert summary["status"] == "finished" and summary["steps"] == 22
    for key, value in params(full).items():
        assert torch.equal(params(resumed)[key], value), key
    history = resumed.controller.history()
    assert history["steps"] == full.controller.history()["steps"] == list(range(1, 23))
    # metrics.jsonl has each training record once, resumed steps included
    records = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").open()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 22
    assert (tmp_path / "cut" / "model.pt").is_file()
    # Resuming a finished run changes nothing: same summary, same files.
    before = {p: p.read_bytes() for p in (tmp_path / "cut").rglob("*") if p.is_file()}
    again = Trainer(cut, log=lambda _m: None).fit(resume=True)
    assert again == json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert {p: p.read_bytes() for p in (tmp_path / "cut").rglob("*") if p.is_file()} == before


def test_divergence_is_recorded_and_the_last_good_checkpoint_kept(tmp_path) -> None:
    cfg = config(
        tmp_path, "boom", "optimizer.name=sgd", "optimizer.lr=1e6", "policy.name=no_bias_decay",
        "run.checkpoint_every=1", "run.log_every=1",
    )  # fmt: skip
    summary = Trainer(cfg, log=lambda _m: None).fit()
    assert summary["status"] == "diverged" and summary["diverged_at"] >= 1
    saved = json.loads((tmp_path / "boom" / "summary.json").read_text())
    assert saved["status"] == "diverged"
    for path in (tmp_path / "boom" / "checkpoints").glob("step-*.pt"):
        state = torch.load(path, weights_only=True)
        assert all(
            torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
        )


@pytest.mark.parametrize(
    "checkpoint_every",
    [
        0,  # epoch-end checkpoints, loss logged rarely: NaN parameters long before a log record
        5,  # a checkpoint due at the steps where the run blows up
    ],
)
def test_a_diverged_run_keeps_only_finite_checkpoints_and_says_which(
    tmp_path, checkpoint_every
) -> None:
    lines: list[str] = []
    cfg = config(
        tmp_path, "nan", "optimizer.lr=1e6", "run.epochs=3", "run.batch_size=64",
        "policy.name=no_bias_decay", f"run.checkpoint_every={checkpoint_every}",
        "run.log_every=100",
    )  # fmt: skip
    summary = Trainer(cfg, log=lines.append).fit()
    assert summary["status"] == "diverged"
    saved = sorted((tmp_path / "nan" / "checkpoints").glob("step-*.pt"))
    for path in saved:
        state = torch.load(path, weights_only=True)
        assert all(
            torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
        ), path.name
    message = next(line for line in lines if "DIVERGED" in line)
    if saved:
        assert f"the last good checkpoint is {saved[-1].name}" in message
    else:
        assert "no checkpoint was saved before it" in message
    records = [json.loads(line) for line in (tmp_path / "nan" / "metrics.jsonl").open()]
    assert not any(r["kind"] == "eval" for r in records), "evaluated non-finite weights"


def test_bad_splits_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not divide the per-rank batch 128"):
        Trainer(config(tmp_path, "x", "run.micro_batch_size=48"), log=lambda _m: None)
    with pytest.raises(ValueError, match="not a multiple of model.ghost_batch_size=48"):
        Trainer(config(tmp_path, "y", "run.micro_batch_size=64", "model.ghost_batch_size=48"))
    with pytest.raises(ValueError, match="fewer than one logical batch"):
        Trainer(config(tmp_path, "z", "run.batch_size=4096", "model.ghost_batch_size=none"))


def test_resume_refuses_a_corrupt_checkpoint_without_touching_the_run(tmp_path) -> None:
    cfg = config(tmp_path, "c", "run.epochs=0.5", "run.checkpoint_every=2", "run.max_steps=4")
    Trainer(cfg, log=lambda _m: None).fit()
    checkpoints = sorted((tmp_path / "c" / "checkpoints").glob("step-*.pt"))
    for path in checkpoints:
        path.write_bytes(path.read_bytes()[:100])  # truncate every checkpoint
    before = {p: p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="step-"):
        Trainer(cfg, log=lambda _m: None).fit(resume=True)
    after = {p: p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file()}
    assert after == before


def test_resume_names_a_corrupt_newest_checkpoint_instead_of_falling_back(tmp_path) -> None:
    cfg = config(tmp_path, "n", "run.epochs=0.5", "run.checkpoint_every=2", "run.max_steps=4")
    Trainer(cfg, log=lambda _m: None).fit()
    newest = sorted((tmp_path / "n" / "checkpoints").glob("step-*.pt"))[-1]
    newest.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"step-000000004.pt is unreadable.*step-000000002.pt"):
        Trainer(cfg, log=lambda _m: None).fit(resume=True)


def test_sharpness_tracking_and_measures_are_logged(tmp_path) -> None:
    cfg = config(
        tmp_path, "t", "run.epochs=1", "run.track_every=5", "run.measure_epochs=[0, 1]",
        "run.measure_samples=64", "policy.threshold=0.0",
    )  # fmt: skip
    trainer = Trainer(cfg, log=lambda _m: None)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").open()]
    tracked = [r for r in records if r["kind"] == "sharpness"]
    assert [r["step"] for r in tracked] == [1, 2, 5, 10]  # initialisation, first update, every 5
    first = tracked[2]
    layers = trainer.controller.layer_names
    assert list(first["layers"]) == layers and all(first["beta_decayed"].values())  # R = 0
    layer = first["layers"][layers[0]]
    assert layer["r"] == pytest.approx(layer["c_beta"] / layer["c_gamma"])
    assert first["c_m"] == pytest.approx(sum(first["c_m_by_role"].values()))
    measured = [r for r in records if r["kind"] == "measures"]
    assert [r["epoch"] for r in measured] == [0, 1] and [r["step"] for r in measured] == [0, 11]
    assert measured[1]["connectivity"]["n_samples"] >= 64
    assert all(r["split"] == "train" and r["samples"] == 64 for r in measured)


@pytest.mark.parametrize("split", ["train", "test"])
def test_measures_see_a_fixed_unaugmented_subset_of_their_split(tmp_path, split) -> None:
    """The oracle: C of the trained network on the seeded subset drawn by hand, no augmentation."""
    import biasdecay as bd
    from biasdecay.data import DeviceLoader, load_dataset, subset

    cfg = config(
        tmp_path, split, "run.epochs=0.2", "run.measure_epochs=[1]",
        "run.measures=[\"connectivity\"]", "run.measure_samples=40", "run.seed=3",
        f'run.measure_split="{split}"', "run.dtype=float64",
    )  # fmt: skip
    trainer = Trainer(cfg, log=lambda _m: None)
    trainer.fit()  # 3 steps, then the measures of the last (first) epoch
    records = [json.loads(line) for line in (tmp_path / split / "metrics.jsonl").open()]
    (record,) = [r for r in records if r["kind"] == "measures"]
    assert (record["split"], record["samples"]) == (split, 40)

    chosen = subset(load_dataset("digits", split), 40, seed=3)
    batches = list(DeviceLoader(chosen, 256, shuffle=False, dtype=torch.float64))  # no augment
    want = bd.connectivity_sharpness(trainer.model, batches).total
    assert record["connectivity"]["total"] == pytest.approx(want, rel=1e-12)


def test_bias_decay_policy_reaches_the_optimiser(tmp_path) -> None:
    cfg = config(tmp_path, "b", "policy.name=bias_decay", "policy.bias=0.1", "run.max_steps=1")
    trainer = Trainer(cfg, log=lambda _m: None)
    decay = {g["role"]: g["weight_decay"] for g in trainer.optimizer.param_groups}
    assert decay == {
        "conv_weight": 0.01, "linear_weight": 0.01, "linear_bias": 0.1,
        "norm_scale": 0.0, "norm_shift": 0.1,
    }  # fmt: skip


def test_python_random_is_seeded_from_the_run_seed(tmp_path) -> None:
    import random

    from biasdecay.train.checkpoint import capture_rng_state

    states = []
    for name, noise in (("a", 1), ("b", 2)):
        random.seed(noise)  # whatever the process did before
        Trainer(config(tmp_path, name, "run.seed=7"), log=lambda _m: None)
        states.append(capture_rng_state()["python"])
    assert torch.equal(states[0]["state"], states[1]["state"])
    assert states[0]["gauss_next"] == states[1]["gauss_next"]
