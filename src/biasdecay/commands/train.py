"""``biasdecay train``: one configured run of the training engine (also under torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

from biasdecay.commands.common import UsageError, show_progress

# Shortcut flags and the config key each one sets.
SHORTCUTS = {
    "model": "model.name",
    "width": "model.width",
    "data": "data.name",
    "data_root": "data.root",
    "epochs": "run.epochs",
    "batch_size": "run.batch_size",
    "micro_batch_size": "run.micro_batch_size",
    "lr": "optimizer.lr",
    "optimizer": "optimizer.name",
    "policy": "policy.name",
    "device": "run.device",
    "out": "run.out",
    "seed": "run.seed",
}


def _quote(value: str) -> str:
    """A TOML string literal for a free-form value (paths, names)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def overrides_from(args: argparse.Namespace) -> list[str]:
    """``--set`` items, with the shortcut flags first so that ``--set`` wins over them."""
    items = []
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag, None)
        if value is not None:
            text = _quote(value) if isinstance(value, str) else str(value)
            items.append(f"{key}={text}")
    if args.tensorboard:
        items.append("run.tensorboard=true")
    return items + list(args.set or [])


def run(args: argparse.Namespace) -> int:
    from biasdecay.train.config import load_config
    from biasdecay.train.distributed import init_distributed, shutdown
    from biasdecay.train.engine import Trainer

    overrides = overrides_from(args)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").is_file():
            raise UsageError(
                f"--resume {run_dir}: no config.toml there; give the directory of a run started "
                "with `biasdecay train` (its run.out)"
            )
        if args.config:
            raise UsageError("--resume reads the run's own config.toml; do not also give --config")
        cfg = load_config(run_dir / "config.toml", [*overrides, f"run.out={_quote(str(run_dir))}"])
    else:
        cfg = load_config(args.config, overrides)
    ctx = init_distributed(cfg.run.device)
    try:
        trainer = Trainer(cfg, ctx, progress=show_progress(args.progress))
        summary = trainer.fit(resume=bool(args.resume))
    finally:
        shutdown(ctx)
    if ctx.is_main:
        status = summary["status"]
        line = f"{status}: {summary['steps']} steps in {summary['seconds']:.1f} s"
        if "test_accuracy" in summary:
            line += f"; test accuracy {summary['test_accuracy']:.2%}"
        print(f"{line}; run directory {cfg.run.out}")
    return 0 if summary["status"] in ("finished", "running") else 3
