"""A short, plain training run: SGD with momentum and a cosine schedule on a device-resident set.

This is the small trainer behind ``biasdecay train`` until the full engine (config files,
LAMB/LARS, decay policies, DDP, resume) lands; it exists so that a real trained network can be
measured. Writes ``model.pt`` (see :mod:`biasdecay.nn.checkpoint`) and ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biasdecay.data import DeviceLoader, ImageDataset
from biasdecay.nn.checkpoint import ModelSpec, save_model


@dataclass(frozen=True)
class QuickTrainConfig:
    """Hyper-parameters of :func:`quick_train`."""

    epochs: float = 1.0  # may be fractional: 0.5 = half an epoch of steps
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: str | None = None
    seed: int = 0

    def check(self) -> None:
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy over ``loader`` (eval mode, restored after)."""
    was_training = model.training
    model.eval()
    correct, loss_sum, count = 0, 0.0, 0
    for x, y in loader:
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += y.numel()
    model.train(was_training)
    return {"accuracy": correct / count, "loss": loss_sum / count}


def quick_train(
    spec: ModelSpec,
    train_set: ImageDataset,
    test_set: ImageDataset,
    config: QuickTrainConfig,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    pad_to: int | None = None,
    progress_bar: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Train ``spec`` on ``train_set`` and save it to ``out_dir/model.pt``.

    Args:
        spec: the network to build.
        train_set: training data (uint8, moved to ``device`` once).
        test_set: evaluation data.
        config: optimiser and schedule settings.
        out_dir: where ``model.pt`` and ``metrics.jsonl`` go.
        device: where to train.
        pad_to: zero-pad inputs to this square size (VGG on 28x28 data).
        progress_bar: tqdm bar over steps on a terminal.
        log: a callable for one-line progress messages.

    Returns:
        The summary: final test accuracy/loss, steps, seconds, paths.
    """
    config.check()
    torch.manual_seed(config.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    model = spec.build().to(device)
    train_loader = DeviceLoader(
        train_set,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        augment=config.augment,
        device=device,
        drop_last=True,
        pad_to=pad_to,
    )
    test_loader = DeviceLoader(
        test_set, 512, shuffle=False, device=device, pad_to=pad_to, drop_last=False
    )
    steps = max(1, round(config.epochs * len(train_loader)))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")

    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train", dynamic_ncols=True, leave=False)
    model.train()
    step, epoch, start = 0, 0, time.perf_counter()
    running = torch.zeros((), device=device)
    while step < steps:
        train_loader.set_epoch(epoch)
        for x, y in train_loader:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.detach()
            step += 1
            if bar is not None:
                bar.update(1)
            if step % 50 == 0 or step == steps:
                mean_loss = (running / (50 if step % 50 == 0 else step % 50)).item()
                running.zero_()
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(
                        f"training diverged at step {step} (loss {mean_loss}); lower --lr"
                    )
                _append_jsonl(metrics_path, {"step": step, "epoch": epoch, "loss": mean_loss})
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.3f}")
                else:
                    log(f"step {step}/{steps}  loss {mean_loss:.4f}")
            if step >= steps:
                break
        epoch += 1
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    test = evaluate(model, test_loader)
    summary = {
        "model": asdict(spec),
        "data": train_set.name,
        "synthetic": train_set.synthetic,
        "config": asdict(config),
        "steps": steps,
        "seconds": seconds,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "pad_to": pad_to,
    }
    _append_jsonl(metrics_path, {"step": steps, "eval": test})
    save_model(out / "model.pt", model, spec, meta=summary)
    return {**summary, "checkpoint": str(out / "model.pt"), "metrics": str(metrics_path)}


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
