"""The engine's training speed against a bare hand-written loop on the same model and batch.

Both run ResNet-18 (width 0.25, ghost BN 32) with LAMB under no_bias_decay, the polynomial
schedule and the device-resident Fashion-MNIST loader. The bare loop is forward, backward,
``optimizer.step()`` and ``scheduler.step()``, and nothing else. The engine adds micro-batching,
device-side loss/accuracy sums, periodic logging and the checks. Steps after a warm-up are
timed; rounds alternate between the two.

    python benchmarks/bench_engine.py            # CPU: batch 256, 12 timed steps per round
    python benchmarks/bench_engine.py --device cuda --batch 8192 --steps 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

from _common import cpu_name
from biasdecay.train import components as C
from biasdecay.train.config import load_config
from biasdecay.train.engine import Trainer


def engine_steps_per_second(overrides: list[str], steps: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, [*overrides, f'run.out="{out}"', f"run.max_steps={warmup + steps}"])
        stamps: list[float] = []
        trainer = Trainer(
            cfg, log=lambda _m: None, on_step=lambda t, s: stamps.append(time.perf_counter())
        )
        trainer.fit()
        if trainer.ctx.device.type == "cuda":
            torch.cuda.synchronize()
        return steps / (stamps[-1] - stamps[warmup - 1])


def bare_steps_per_second(overrides: list[str], steps: int, warmup: int) -> float:
    """The same pieces, built by the same builders, in the plainest loop."""
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, [*overrides, f'run.out="{out}"'])
        from biasdecay.train.distributed import DistContext, resolve_device

        ctx = DistContext(device=resolve_device(cfg.run.device))
        plan = C.plan_batches(cfg, ctx)
        train, test = C.load_data(cfg)
        loader, _ = C.make_loaders(cfg, train, test, plan, ctx)
        model = C.build_model(cfg, C.model_spec(cfg, train), ctx)
        optimizer, _, _ = C.build_optimization(cfg, model)
        scheduler = C.build_scheduler(cfg, optimizer, 10_000, len(loader))
        model.train()
        stamps = []
        done = 0
        while done < warmup + steps:
            for x, y in loader:
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize()
                stamps.append(time.perf_counter())
                done += 1
                if done == warmup + steps:
                    break
        return steps / (stamps[-1] - stamps[warmup - 1])


def compute_only_steps_per_second(overrides: list[str], steps: int, warmup: int) -> float:
    """Forward, backward and update on one batch already on the device: no data pipeline."""
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, [*overrides, f'run.out="{out}"'])
        trainer = Trainer(cfg, log=lambda _m: None)
        x, y = next(iter(trainer.train_loader))
        totals = torch.zeros(3, device=x.device, dtype=torch.float64)
        stamps = []
        for _ in range(warmup + steps):
            trainer.train_step(x, y, totals)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
        return steps / (stamps[-1] - stamps[warmup - 1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--compute-only",
        action="store_true",
        help="also time the engine's step on one resident batch (no loader): the end-to-end "
        "figure over this one shows what the data pipeline costs",
    )
    parser.add_argument("--compile", action="store_true", help="run.compile=true (torch.compile)")
    parser.add_argument("--data", default="fashion-mnist", help="e.g. fashion-mnist, synthetic")
    args = parser.parse_args(argv)
    overrides = [
        "model.name=resnet18",
        "model.width=0.25",
        "model.ghost_batch_size=32",
        f"data.name={args.data}",
        "data.augment=cifar",
        "optimizer.name=lamb",
        "policy.name=no_bias_decay",
        f"run.batch_size={args.batch}",
        f"run.device={args.device}",
        "run.epochs=100",
        "run.log_every=10",
        "run.eval_every=0",
        f"run.compile={'true' if args.compile else 'false'}",
    ]
    print("$ python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    print(
        f"torch {torch.__version__} | {cpu_name()} | {os.cpu_count()} cores | threads "
        f"{torch.get_num_threads()} | device {args.device} | resnet18 width 0.25, ghost BN 32, "
        f"LAMB, batch {args.batch}, fashion-mnist with crop+flip"
    )
    engine, bare = [], []
    for round_ in range(args.rounds):  # alternate which runs first: no order advantage
        runs = [
            (bare, bare_steps_per_second),
            (engine, engine_steps_per_second),
        ]
        for results, measure in runs if round_ % 2 == 0 else runs[::-1]:
            results.append(measure(overrides, args.steps, args.warmup))
    b, e = statistics.median(bare), statistics.median(engine)
    print(f"bare loop   steps/s: median {b:.3f}  (rounds: {', '.join(f'{v:.3f}' for v in bare)})")
    print(f"engine      steps/s: median {e:.3f}  (rounds: {', '.join(f'{v:.3f}' for v in engine)})")
    print(f"engine / bare: {e / b:.3f}   (goal: >= 0.95)")
    if args.compute_only:
        c = statistics.median(
            compute_only_steps_per_second(overrides, args.steps, args.warmup)
            for _ in range(args.rounds)
        )
        print(f"compute-only steps/s: median {c:.3f}; images/s {c * args.batch:,.0f}")
        print(f"end-to-end / compute-only: {e / c:.3f}   (goal on a GPU: >= 0.90)")


if __name__ == "__main__":
    main()
