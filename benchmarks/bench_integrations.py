"""Time the framework callbacks: a training run with them against the same run without them.

Lightning: a small conv net with BatchNorm on scikit-learn's digits, LAMB from
``configure_lamb``; with ``SharpnessMonitor(every=50)`` and ``AdaptiveBetaDecayCallback`` against
no callbacks. Hugging Face: a tiny BERT on an in-memory token task, LAMB from ``lamb_for``; with
``SharpnessMonitorCallback(every=50)`` and ``AdaptiveBetaDecayTrainerCallback`` against none.
Each run is a fresh trainer of ``--steps`` optimiser steps; the two variants alternate over
``--rounds`` rounds, and the ratio of their best times is printed (goal: at most 1.05).

    python benchmarks/bench_integrations.py [--steps 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from _common import cpu_name


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

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10),
            )  # fmt: skip

        def training_step(self, batch, _index):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return configure_lamb(self, lr=0.01, policy="adaptive_beta_decay")

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
    ids = torch.randint(0, 64, (512, 16), generator=g)
    data = [{"input_ids": i, "labels": int((i == 1).sum() > (i == 2).sum())} for i in ids]
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16, num_labels=2,
    )  # fmt: skip
    out = tempfile.mkdtemp(prefix="bench-hf-")

    def run() -> None:
        torch.manual_seed(0)
        model = transformers.BertForSequenceClassification(config)
        args = transformers.TrainingArguments(
            out, max_steps=steps, per_device_train_batch_size=32, report_to=[],
            save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=10**9,
        )  # fmt: skip
        optimizer = lamb_for(model, lr=1e-3, policy="adaptive_beta_decay")
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=data, optimizers=(optimizer, None)
        )
        if with_callbacks:
            add_callbacks(
                trainer, SharpnessMonitorCallback(every=50), AdaptiveBetaDecayTrainerCallback()
            )
        trainer.train()

    return run


def compare(name: str, build, steps: int, rounds: int) -> None:
    runs = {
        label: build(steps, label == "with callbacks") for label in ("without", "with callbacks")
    }
    for run in runs.values():  # warm-up: imports, allocator, kernels
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for label, run in runs.items():
            start = time.perf_counter()
            run()
            best[label] = min(best[label], time.perf_counter() - start)
    print(f"\n## {name}: {steps} optimiser steps per run, best of {rounds} interleaved rounds")
    for label, seconds in best.items():
        print(f"{label:16s} {seconds:8.3f} s")
    print(f"ratio with / without: {best['with callbacks'] / best['without']:.3f} (goal <= 1.05)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
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
