"""Time the framework callbacks: a training run with them against the same run without them.

Lightning: the cpu preset's ResNet-18 (8 base channels, BatchNorm) on scikit-learn's digits,
LAMB from ``configure_lamb``; with ``SharpnessMonitor(every=50)`` and
``AdaptiveBetaDecayCallback`` (and the adaptive policy's groups) against no callbacks (and
no_bias_decay's groups). Hugging Face: a BERT of BERT-Tiny's shape on an in-memory token task,
LAMB from ``lamb_for``; with ``SharpnessMonitorCallback(every=50)`` and
``AdaptiveBetaDecayTrainerCallback`` against none, the same way. The parts the callbacks add are
also timed alone, as shares of a training step.
Each run is a fresh trainer of ``--steps`` optimiser steps; the two variants alternate over
``--rounds`` rounds, and the ratio of their best times is printed (goal: at most 1.05).

    python benchmarks/bench_integrations.py [--steps 100] [--rounds 12]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shlex
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable

import torch
from torch import nn

from _common import cpu_name, interleaved_best, interleaved_times

SEQ = 32  # tokens per sequence of the BERT task
CPU = torch.device("cpu")


# The decay policy of each run: what a user without the callbacks would train with, and what the
# adaptive β decay callback needs (its groups cost LAMB something too, so they are timed).
POLICY = {False: "no_bias_decay", True: "adaptive_beta_decay"}


def lightning_net() -> nn.Module:
    """The cpu preset's network: ResNet-18 with 8 base channels (BatchNorm)."""
    from biasdecay.nn.models import build_model

    return build_model("resnet18", in_channels=1, num_classes=10, width=0.125, image_size=8)


def bert_config():
    """BERT-Tiny's shape (2 layers, hidden 128, 2 heads), a small vocabulary."""
    import transformers

    return transformers.BertConfig(
        vocab_size=64, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=512, max_position_embeddings=SEQ, num_labels=2,
    )  # fmt: skip


def lightning_run(steps: int, with_callbacks: bool) -> Callable[[], None]:
    import lightning.pytorch as pl

    from biasdecay.data import load_dataset
    from biasdecay.integrations.lightning import (
        AdaptiveBetaDecayCallback,
        SharpnessMonitor,
        configure_lamb,
    )

    train = load_dataset("digits", "train")
    data = torch.utils.data.TensorDataset(train.images.float() / 255.0, train.labels)
    policy = POLICY[with_callbacks]

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = lightning_net()

        def training_step(self, batch, _index):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return configure_lamb(self, lr=0.01, policy=policy)

    def run() -> None:
        loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)
        callbacks = (
            [SharpnessMonitor(every=50), AdaptiveBetaDecayCallback()] if with_callbacks else []
        )
        trainer = pl.Trainer(
            max_steps=steps, callbacks=callbacks, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        )  # fmt: skip
        trainer.fit(Net(), loader)

    return run


def transformers_run(steps: int, with_callbacks: bool) -> Callable[[], None]:
    import transformers

    from biasdecay.integrations.transformers import (
        AdaptiveBetaDecayTrainerCallback,
        SharpnessMonitorCallback,
        add_callbacks,
        lamb_for,
    )

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (512, SEQ), generator=g)
    data = [{"input_ids": i, "labels": int((i == 1).sum() > (i == 2).sum())} for i in ids]
    config = bert_config()
    out = tempfile.mkdtemp(prefix="bench-hf-")

    def run() -> None:
        torch.manual_seed(0)
        model = transformers.BertForSequenceClassification(config)
        args = transformers.TrainingArguments(
            out, max_steps=steps, per_device_train_batch_size=32, report_to=[],
            save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=10**9,
        )  # fmt: skip
        optimizer = lamb_for(model, lr=1e-3, policy=POLICY[with_callbacks])
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=data, optimizers=(optimizer, None)
        )
        if with_callbacks:
            add_callbacks(
                trainer, SharpnessMonitorCallback(every=50), AdaptiveBetaDecayTrainerCallback()
            )
        trainer.train()

    return run


def step_cost(build: Callable[[str], tuple], rounds: int = 200) -> dict[str, float]:
    """Best times (ms) of the parts the callbacks add, each measured alone, interleaved.

    ``build(policy)`` gives ``(model, loss, optimizer)``; two copies are built, one under
    no_bias_decay and one under adaptive β decay with the controller. What a step the monitor
    does not record gains is the controller's step and LAMB's work over the adaptive policy's
    groups (one per BN layer's β, its decay a 0-dim tensor; the monitor's check is an integer
    modulo); a recorded step adds the record. Measured alone, these are far steadier than the
    difference of two whole runs.
    """
    from biasdecay import AdaptiveBetaDecay
    from biasdecay.train.monitors import SharpnessTracker

    plain, controlled = build(POLICY[False]), build(POLICY[True])
    controller = AdaptiveBetaDecay(controlled[0], controlled[2])
    tracker = SharpnessTracker(controlled[0], 1)

    def train_step(parts) -> None:
        _, loss, optimizer = parts
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()

    parts = {
        "step": lambda: train_step(plain),
        "step over adaptive groups": lambda: train_step(controlled),
        "controller": controller.step,
        "record": lambda: tracker.record(1),
    }
    best = interleaved_best(list(parts.items()), rounds, CPU)
    return {name: 1e3 * seconds for name, seconds in best.items()}


def lightning_step_cost() -> dict[str, float]:
    import lightning.pytorch  # noqa: F401 - the same imports as the timed runs

    from biasdecay.data import load_dataset
    from biasdecay.integrations.lightning import configure_lamb

    train = load_dataset("digits", "train")
    x, y = train.images[:64].float() / 255.0, train.labels[:64]

    def build(policy: str):
        torch.manual_seed(0)
        net = lightning_net()
        loss = lambda: nn.functional.cross_entropy(net(x), y)  # noqa: E731
        return net, loss, configure_lamb(net, lr=0.01, policy=policy)

    return step_cost(build)


def transformers_step_cost() -> dict[str, float]:
    import transformers

    from biasdecay.integrations.transformers import lamb_for

    ids = torch.randint(0, 64, (32, SEQ), generator=torch.Generator().manual_seed(0))
    labels = ((ids == 1).sum(1) > (ids == 2).sum(1)).long()

    def build(policy: str):
        torch.manual_seed(0)
        model = transformers.BertForSequenceClassification(bert_config())
        loss = lambda: model(input_ids=ids, labels=labels).loss  # noqa: E731
        return model, loss, lamb_for(model, lr=1e-3, policy=policy)

    return step_cost(build)


def compare(name: str, build, steps: int, rounds: int) -> None:
    runs = {
        label: build(steps, label == "with callbacks") for label in ("without", "with callbacks")
    }
    # The frameworks print banners and a summary per run; only the timings are wanted here.
    # (Lightning's logger writes to the stderr it saw at import, so its level is lowered too.)
    for logger in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "transformers"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        times = interleaved_times(list(runs.items()), rounds, CPU)  # warm-up included
    best = {label: min(t) for label, t in times.items()}
    # Each round's own ratio: the two runs of a round shared the machine's state of the moment.
    ratios = sorted(w / o for w, o in zip(times["with callbacks"], times["without"], strict=True))
    print(f"\n## {name}: {steps} optimiser steps per run, best of {rounds} interleaved rounds")
    for label, seconds in best.items():
        print(f"{label:16s} {seconds:8.3f} s")
    print(f"ratio with / without: {best['with callbacks'] / best['without']:.3f} (goal <= 1.05)")
    print(
        f"per-round ratios: median {statistics.median(ratios):.3f}, "
        f"range {ratios[0]:.3f}-{ratios[-1]:.3f}"
    )
    ms = COSTS[name]()
    step = ms["step"]
    print(f"alone, best of 200 interleaved: training step {step:.2f} ms")
    print(
        f"  LAMB over adaptive β decay's groups (against no_bias_decay's): "
        f"{ms['step over adaptive groups'] / step - 1:+.1%} per step"
    )
    print(
        f"  controller step {ms['controller']:.3f} ms ({ms['controller'] / step:.1%}, every step)"
    )
    print(
        f"  monitor record {ms['record']:.2f} ms ({ms['record'] / step:.0%}, at 1, 2, every 50th)"
    )


COSTS = {"lightning": lightning_step_cost, "transformers": transformers_step_cost}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--frameworks", default="lightning,transformers")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    print("$ python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    print(
        f"torch {torch.__version__} | {cpu_name()} | {os.cpu_count()} cores | "
        f"threads {torch.get_num_threads()}"
    )
    builders = {"lightning": lightning_run, "transformers": transformers_run}
    for name in args.frameworks.split(","):
        compare(name, builders[name], args.steps, args.rounds)


if __name__ == "__main__":
    main()
