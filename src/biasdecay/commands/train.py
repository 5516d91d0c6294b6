"""``biasdecay train``: a short SGD run that saves a checkpoint ``biasdecay measure`` can read."""

from __future__ import annotations

import argparse

from biasdecay.commands.common import (
    UsageError,
    load_split,
    model_spec_for,
    pad_for,
    resolve_device,
    show_progress,
)
from biasdecay.train.quick import QuickTrainConfig, quick_train


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    train_set = load_split(args.data, "train", args.data_root)
    test_set = load_split(args.data, "test", args.data_root)
    if args.train_samples is not None:
        from biasdecay.data import subset

        if args.train_samples < 1:
            raise UsageError("--train-samples must be >= 1")
        train_set = subset(train_set, min(args.train_samples, len(train_set)), seed=args.seed)
    spec = model_spec_for(args.model, train_set, args.width)
    config = QuickTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        augment=args.augment,
        seed=args.seed,
    )
    try:
        config.check()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    print(
        f"train: {spec.describe()} on {args.data} ({len(train_set)} samples"
        f"{', SYNTHETIC' if train_set.synthetic else ''}), SGD lr {args.lr} momentum "
        f"{args.momentum} wd {args.weight_decay}, batch {args.batch_size}, {args.epochs:g} "
        f"epoch(s), device {device}"
    )
    summary = quick_train(
        spec,
        train_set,
        test_set,
        config,
        args.out,
        device=device,
        pad_to=pad_for(spec.name, train_set),
        progress_bar=show_progress(args.progress),
    )
    print(
        f"done: {summary['steps']} steps in {summary['seconds']:.1f} s; test accuracy "
        f"{summary['test_accuracy']:.2%} (loss {summary['test_loss']:.4f}); saved "
        f"{summary['checkpoint']}"
    )
    return 0
