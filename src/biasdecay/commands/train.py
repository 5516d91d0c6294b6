"""``biasdecay train``: one configured run of the training engine (also under torchrun)."""

from __future__ import annotations

import argparse
import gc
from dataclasses import dataclass
from pathlib import Path

from biasdecay.commands.common import UsageError, user_input, writable_dir
from biasdecay.commands.flags import (
    add_overrides_flag,
    add_progress_flags,
    add_subcommand,
    show_progress,
)

HELP = "train a configured run (LAMB/LARS/SGD/AdamW, decay policies, ghost BN, torchrun)"

DESCRIPTION = """\
Train one run with the engine: the model, data, optimiser (LAMB, LARS, SGD, AdamW), decay
policy (no_bias_decay, beta_decay, adaptive_beta_decay, ...), schedule and run settings come
from a TOML file (--config, see configs/) and --set overrides. The logical batch is split into
world size x accumulation x micro-batch. Writes RUN_DIR/{config.toml, environment.json,
param_groups.txt, metrics.jsonl, summary.json, summary.csv, checkpoints/}.

Multi-GPU or multi-process: the same command under torchrun, e.g.
  torchrun --nproc_per_node=8 -m biasdecay train --config configs/cifar10_resnet18.toml
A diverged run stops, keeps its last good checkpoint and is marked "diverged" (exit status 3).
"""

EPILOG = """\
examples:
  biasdecay train --config configs/fashion_resnet18_cpu.toml
  biasdecay train --config configs/cifar10_resnet18.toml --data-root ~/data/cifar-10-batches-py \\
      --set policy.name=adaptive_beta_decay --out runs/c10-adaptive
  biasdecay train --resume runs/c10-adaptive
"""


@dataclass(frozen=True)
class Shortcut:
    """A flag that sets one config key: ``--epochs 2`` is ``--set run.epochs=2``."""

    flag: str
    type: type
    key: str
    note: str = ""  # shown after the key in --help

    @property
    def dest(self) -> str:
        """The flag's attribute in the parsed arguments."""
        return self.flag[2:].replace("-", "_")


SHORTCUTS = (
    Shortcut("--model", str, "model.name"),
    Shortcut("--width", float, "model.width"),
    Shortcut("--data", str, "data.name"),
    Shortcut("--data-root", str, "data.root"),
    Shortcut("--epochs", float, "run.epochs"),
    Shortcut("--batch-size", int, "run.batch_size", "the logical batch"),
    Shortcut("--micro-batch-size", int, "run.micro_batch_size", "per rank"),
    Shortcut("--lr", float, "optimizer.lr", "peak"),
    Shortcut("--optimizer", str, "optimizer.name"),
    Shortcut("--policy", str, "policy.name"),
    Shortcut("--device", str, "run.device"),
    Shortcut("--out", str, "run.out", "the run directory"),
    Shortcut("--seed", int, "run.seed"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train`` to ``subparsers`` (see :mod:`biasdecay.commands`); returns its parser."""
    p = add_subcommand(subparsers, "train", HELP, DESCRIPTION, EPILOG)
    p.add_argument("--config", metavar="FILE", help="TOML configuration (see configs/)")
    add_overrides_flag(
        p,
        "override one setting, e.g. --set run.epochs=2 --set policy.name=beta_decay "
        "(repeatable; wins over --config and the shortcut flags)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its newest checkpoint, with its own config.toml",
    )
    shortcuts = p.add_argument_group("shortcuts (each sets one config key)")
    for s in SHORTCUTS:
        help = f"{s.key} ({s.note})" if s.note else s.key
        shortcuts.add_argument(s.flag, type=s.type, default=None, help=help)
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events")
    add_progress_flags(p)
    return p


def _quote(value: str) -> str:
    """A TOML string literal for a free-form value (paths, names)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def overrides_from(args: argparse.Namespace) -> list[str]:
    """``--set`` items, with the shortcut flags first so that ``--set`` wins over them.

    Returns:
        The overrides, in the order :func:`biasdecay.train.config.load_config` applies them.
    """
    items = []
    for s in SHORTCUTS:
        value = getattr(args, s.dest, None)
        if value is not None:
            text = _quote(value) if isinstance(value, str) else str(value)
            items.append(f"{s.key}={text}")
    if args.tensorboard:
        items.append("run.tensorboard=true")
    return items + list(args.set or [])


def run(args: argparse.Namespace) -> int:
    """Train (or resume) the configured run and print how it ended.

    Returns:
        The exit status: 0 for a finished (or stopped, resumable) run, 3 for a diverged one.

    Raises:
        BiasDecayError: bad input (the config, a resume that would change the run, a run
            directory that cannot be written or holds another run).
    """
    from biasdecay.train.config import (
        NON_IDENTIFYING_KEYS,
        config_differences,
        format_differences,
        load_config,
    )
    from biasdecay.train.distributed import barrier, init_distributed, shutdown
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
    # Setting up checks what the config file alone cannot: the device, whether the batch splits
    # over ranks and micro-batches, whether the data set holds one batch.
    with user_input():
        ctx = init_distributed(cfg.run.device)
    try:
        with user_input():
            trainer = Trainer(cfg, ctx, progress=show_progress(args.progress))
        summary = trainer.fit(resume=bool(args.resume))
        # Every rank past its last collective, and the trainer's DistributedDataParallel (whose
        # reducer holds the process group and gloo's work objects) gone, before the group is
        # torn down: a rank once aborted in teardown ("terminate called without an active
        # exception") at the end of a finished run.
        barrier(ctx)
        del trainer
        gc.collect()
    finally:
        shutdown(ctx)
    if ctx.is_main:
        status = summary["status"]
        line = f"{status}: {summary['steps']} steps in {summary['seconds']:.1f} s"
        if "test_accuracy" in summary:
            line += f"; test accuracy {summary['test_accuracy']:.2%}"
        print(f"{line}; run directory {cfg.run.out}")
    return 0 if summary["status"] in ("finished", "running") else 3
