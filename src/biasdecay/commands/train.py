"""``biasdecay train``: one configured run of the training engine (also under torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

from biasdecay.commands.common import UsageError, show_progress, writable_dir

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
    from biasdecay.train.config import (
        NON_IDENTIFYING_KEYS,
        config_differences,
        format_differences,
        load_config,
    )
    from biasdecay.train.distributed import init_distributed, shutdown
    from biasdecay.train.engine import Trainer
    from biasdecay.train.process import end_with_parent, stop_on_sigterm

    end_with_parent()  # a run a sweep started ends with the sweep

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
        recorded = load_config(run_dir / "config.toml", [f"run.out={_quote(str(run_dir))}"])
        cfg = load_config(run_dir / "config.toml", [*overrides, f"run.out={_quote(str(run_dir))}"])
        changed = config_differences(recorded, cfg)
        if changed:
            keep = ", ".join(sorted(NON_IDENTIFYING_KEYS - {"run.out"}))
            raise UsageError(
                f"--resume {run_dir} would change what the run computes: "
                f"{format_differences(changed, 'config.toml', 'asked')}. A resumed run stays the "
                f"run its config.toml records (only {keep} may change); for other settings "
                f"start a new run: biasdecay train --config {run_dir / 'config.toml'} --set ... "
                "--out NEW_DIR"
            )
    else:
        cfg = load_config(args.config, overrides)
    writable_dir(cfg.run.out, "--out (run.out)")  # before the data and the model are built
    stop_on_sigterm(
        f"biasdecay train: stopped by SIGTERM; continue with `biasdecay train --resume "
        f"{cfg.run.out}`"
    )
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
