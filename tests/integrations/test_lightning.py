"""The Lightning callbacks against a hand-written loop with the same seed (float64, real data)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")
pytest.importorskip("sklearn")

from biasdecay import LAMB, AdaptiveBetaDecay, decay_policy, param_groups  # noqa: E402
from biasdecay.data import load_dataset  # noqa: E402
from biasdecay.integrations.lightning import (  # noqa: E402
    AdaptiveBetaDecayCallback,
    SharpnessMonitor,
    configure_lamb,
)
from biasdecay.train.monitors import SharpnessTracker  # noqa: E402

STEPS, BATCH, LR = 8, 32, 0.02
R = 0.03  # low enough that β is decayed at some steps and not at others


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10),
    ).double()  # fmt: skip


def digits(n: int = 512) -> torch.utils.data.TensorDataset:
    train = load_dataset("digits", "train")
    x = train.images[:n].double() / 255.0
    return torch.utils.data.TensorDataset(x, train.labels[:n])


class Module(pl.LightningModule):
    def __init__(self, policy: str = "adaptive_beta_decay") -> None:
        super().__init__()
        self.net = network()
        self.policy = policy

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _index):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return configure_lamb(self, lr=LR, policy=self.policy)


class Memory(pl.loggers.logger.Logger):
    """A logger that keeps what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int, dict]] = []

    name, version = "memory", 0

    @property
    def experiment(self):
        return None

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append((step, dict(metrics)))


def lightning_run(accumulate: int = 1, policy: str = "adaptive_beta_decay"):
    module = Module(policy)
    monitor, adaptive, logger = SharpnessMonitor(every=3), AdaptiveBetaDecayCallback(R), Memory()
    trainer = pl.Trainer(
        max_steps=STEPS, accelerator="cpu", devices=1, precision="64-true", logger=logger,
        callbacks=[monitor, adaptive], accumulate_grad_batches=accumulate,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(digits(), batch_size=BATCH // accumulate, shuffle=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
        trainer.fit(module, loader)
    return module, monitor, adaptive, logger


def hand_run(accumulate: int = 1):
    """The same training written out: the loop the callbacks must reproduce."""
    model = nn.Module()
    model.net = network()  # the same names as inside the LightningModule
    optimizer = LAMB(param_groups(model, decay_policy("adaptive_beta_decay"), 0.01), lr=LR)
    controller = AdaptiveBetaDecay(model, optimizer, threshold=R)
    tracker = SharpnessTracker(model, 3)
    data = torch.utils.data.DataLoader(digits(), batch_size=BATCH // accumulate, shuffle=False)
    batches, records = iter(data), []
    for step in range(1, STEPS + 1):
        optimizer.zero_grad()
        for _ in range(accumulate):
            x, y = next(batches)
            (nn.functional.cross_entropy(model.net(x), y) / accumulate).backward()
        if tracker.due(step):
            records.append(tracker.record(step))
        controller.step()
        optimizer.step()
    return model, records, controller


@pytest.mark.parametrize("accumulate", [1, 2])
def test_callbacks_log_and_decay_exactly_as_the_hand_loop(accumulate: int) -> None:
    module, monitor, adaptive, logger = lightning_run(accumulate)
    model, records, controller = hand_run(accumulate)
    assert [r["step"] for r in monitor.records] == [1, 2, 3, 6] == [r["step"] for r in records]
    for ours, theirs in zip(monitor.records, records, strict=True):
        assert ours["c_m"] == pytest.approx(theirs["c_m"], rel=1e-12)
        for layer, stats in theirs["layers"].items():
            for key, value in stats.items():
                assert ours["layers"][layer][key] == pytest.approx(value, rel=1e-12), (layer, key)
    assert adaptive.controller.step_count == controller.step_count == STEPS
    ratios = [r["layers"]["net.1"]["r"] for r in records]
    assert min(ratios) < R < max(ratios)  # the decay acted at some steps and not at others
    for name, p in model.named_parameters():
        torch.testing.assert_close(dict(module.named_parameters())[name], p, rtol=1e-12, atol=0)
    # What reached the logger: the same records, flat, at their steps.
    steps = [step for step, metrics in logger.logged if "sharpness/c_m" in metrics]
    assert steps == [1, 2, 3, 6]
    first = next(m for s, m in logger.logged if s == 1)
    assert first["sharpness/net.1/r"] == pytest.approx(records[0]["layers"]["net.1"]["r"])


def test_under_amp_with_a_grad_scaler_the_callbacks_read_unscaled_gradients() -> None:
    """16-bit autocast with a GradScaler (on the CPU: float16 autocast and torch's CPU scaler),
    with gradient accumulation: the monitor's C_m and the controller's decisions equal a hand
    loop that reads the gradients after ``scaler.unscale_``. A scale of 2^12 would make any
    scaled reading 4096 times too large."""
    from lightning.pytorch.plugins import MixedPrecision

    accumulate, scale = 2, 2.0**12

    def float_network() -> nn.Module:
        return network().float()

    class AmpModule(Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = float_network()

    def loader():
        x, y = digits().tensors
        data = torch.utils.data.TensorDataset(x.float(), y)
        return torch.utils.data.DataLoader(data, batch_size=BATCH // accumulate, shuffle=False)

    module = AmpModule()
    monitor, adaptive = SharpnessMonitor(every=3), AdaptiveBetaDecayCallback(R)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    trainer = pl.Trainer(
        max_steps=STEPS, accelerator="cpu", devices=1, logger=False,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        callbacks=[monitor, adaptive], accumulate_grad_batches=accumulate,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
        trainer.fit(module, loader())

    model = nn.Module()
    model.net = float_network()
    optimizer = LAMB(param_groups(model, decay_policy("adaptive_beta_decay"), 0.01), lr=LR)
    controller = AdaptiveBetaDecay(model, optimizer, threshold=R)
    tracker, hand_scaler = SharpnessTracker(model, 3), torch.amp.GradScaler("cpu", init_scale=scale)
    batches, records, decisions = iter(loader()), [], []
    for step in range(1, STEPS + 1):
        optimizer.zero_grad()
        for _ in range(accumulate):
            x, y = next(batches)
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.cross_entropy(model.net(x), y) / accumulate
            hand_scaler.scale(loss).backward()
        hand_scaler.unscale_(optimizer)
        if tracker.due(step):
            records.append(tracker.record(step))
        decisions.append(controller.step().tolist())
        hand_scaler.step(optimizer)
        hand_scaler.update()

    assert [r["step"] for r in monitor.records] == [r["step"] for r in records] == [1, 2, 3, 6]
    for ours, theirs in zip(monitor.records, records, strict=True):
        assert ours["c_m"] == pytest.approx(theirs["c_m"], rel=1e-5)
        assert 0.01 < ours["c_m"] < 100  # an unscaled reading (scaled ones are 4096 times larger)
    assert adaptive.controller.history()["decisions"] == decisions
    assert any(row[0] for row in decisions) and not all(row[0] for row in decisions)
    for name, p in model.named_parameters():
        torch.testing.assert_close(dict(module.named_parameters())[name], p, rtol=1e-5, atol=1e-6)


def test_a_model_without_normalisation_warns_once_and_trains() -> None:
    class Plain(Module):
        def __init__(self) -> None:
            super().__init__("no_bias_decay")
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double()

    trainer = pl.Trainer(
        max_steps=2, accelerator="cpu", precision="64-true", logger=False,
        callbacks=[SharpnessMonitor(every=1), AdaptiveBetaDecayCallback()],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(digits(64), batch_size=32)
    with pytest.warns(UserWarning, match="no normalisation layer") as caught:
        trainer.fit(Plain(), loader)
    messages = [str(w.message) for w in caught if "no normalisation layer" in str(w.message)]
    assert len(messages) == 2  # one per callback, once each


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        SharpnessMonitor(every=0)
    with pytest.raises(ValueError, match="measure_epochs needs measure_data"):
        SharpnessMonitor(measure_epochs=[1])
    with pytest.raises(ValueError, match="unknown"):
        configure_lamb(Module(), lr=0.1, policy="no_decay")


def test_the_documented_example_runs(tmp_path, monkeypatch) -> None:
    import re
    from pathlib import Path

    monkeypatch.chdir(tmp_path)  # Lightning writes its checkpoints below the working directory

    doc = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"
    (code,) = [
        block
        for block in re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
        if "import lightning" in block
    ]
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "docs/integrations.md", "exec"), namespace)  # noqa: S102 - our doc
    records = namespace["monitor"].records
    assert [r["step"] for r in records] == [1, 2, 4] and "net.1" in records[-1]["layers"]


def _hand_run_two_ranks():
    """DDP over 2 ranks written out: each rank's batch norm sees its half (the sampler deals
    samples alternately), and the gradient is the mean of the two halves' mean-loss gradients."""
    model = nn.Module()
    model.net = network()
    optimizer = LAMB(param_groups(model, decay_policy("adaptive_beta_decay"), 0.01), lr=LR)
    controller = AdaptiveBetaDecay(model, optimizer, threshold=R)
    images, labels = digits().tensors
    for step in range(STEPS):
        x, y = (t[step * BATCH : (step + 1) * BATCH] for t in (images, labels))
        optimizer.zero_grad()
        halves = [(x[r::2], y[r::2]) for r in range(2)]
        loss = sum(nn.functional.cross_entropy(model.net(xr), yr) for xr, yr in halves) / 2
        loss.backward()
        controller.step()
        optimizer.step()
    return model


class Alternate(torch.utils.data.Sampler):
    """Rank r of w reads samples r, r + w, r + 2w, ... in order (Lightning's own distributed
    sampler shuffles); the rank is read when iterating, inside the spawned process."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        return iter(range(rank, self.n, world))

    def __len__(self) -> int:
        return self.n // 2


def test_two_process_ddp_decays_as_the_hand_loop(tmp_path) -> None:
    module = Module()
    trainer = pl.Trainer(
        max_steps=STEPS, accelerator="cpu", devices=2, strategy="ddp_spawn",
        precision="64-true", logger=pl.loggers.CSVLogger(tmp_path, name="ddp"),
        callbacks=[SharpnessMonitor(every=3), AdaptiveBetaDecayCallback(R)],
        use_distributed_sampler=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    data = digits()
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH // 2, sampler=Alternate(len(data)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    model = _hand_run_two_ranks()
    for name, p in model.named_parameters():
        torch.testing.assert_close(dict(module.named_parameters())[name], p, rtol=1e-10, atol=1e-12)
    logged = (tmp_path / "ddp" / "version_0" / "metrics.csv").read_text()
    assert "sharpness/net.1/r" in logged.splitlines()[0]  # rank 0 logged the records
