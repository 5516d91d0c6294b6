"""Build a run's pieces from its configuration: data, model, optimiser, decay, schedule.

Each builder is a small function of the config, so the engine stays a loop and a study can
build the same pieces without running the loop.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

import torch
from torch import nn

from biasdecay.data import DeviceLoader, ImageDataset, load_dataset, subset
from biasdecay.decay import AdaptiveBetaDecay, DecayPolicy, freeze_roles, param_groups
from biasdecay.decay.policies import POLICIES
from biasdecay.nn.checkpoint import ModelSpec
from biasdecay.nn.ghost_bn import convert_to_ghost_batchnorm
from biasdecay.nn.models import MODELS, min_image_size
from biasdecay.optim import OPTIMIZERS
from biasdecay.registry import Entry
from biasdecay.schedules import SCHEDULES, LRScheduler, make_schedule, warmup_steps_from_epochs
from biasdecay.train.config import ConfigError, TrainConfig, peak_lr
from biasdecay.train.distributed import DistContext


def _dtype(cfg: TrainConfig) -> torch.dtype:
    return getattr(torch, cfg.run.dtype)  # run.dtype names a torch dtype ("float32")


@dataclass(frozen=True)
class BatchPlan:
    """How one logical batch is split: world size × accumulation steps × micro-batch."""

    logical: int
    per_rank: int
    micro: int
    accumulation: int


def plan_batches(cfg: TrainConfig, ctx: DistContext) -> BatchPlan:
    """Split ``run.batch_size`` over ranks and micro-batches, or say why it cannot be split."""
    logical, world = cfg.run.batch_size, ctx.world_size
    if logical % world:
        raise ConfigError(
            f"run.batch_size={logical} is not divisible by the world size {world}; use a "
            f"multiple of {world} (logical batch = micro-batch x accumulation x world size)"
        )
    per_rank = logical // world
    micro = cfg.run.micro_batch_size or per_rank
    if per_rank % micro:
        raise ConfigError(
            f"run.micro_batch_size={micro} does not divide the per-rank batch {per_rank} "
            f"(= run.batch_size {logical} / {world} ranks); choose a divisor of {per_rank}"
        )
    ghost = cfg.model.ghost_batch_size
    if ghost and micro % ghost and micro > ghost:
        raise ConfigError(
            f"run.micro_batch_size={micro} is not a multiple of model.ghost_batch_size={ghost}: "
            "ghost batches would straddle micro-batches; use a multiple of the ghost size"
        )
    return BatchPlan(logical, per_rank, micro, per_rank // micro)


def load_data(cfg: TrainConfig) -> tuple[ImageDataset, ImageDataset]:
    """The train and test splits, cut to the configured seeded subsets."""
    train = load_dataset(cfg.data.name, "train", root=cfg.data.root)
    test = load_dataset(cfg.data.name, "test", root=cfg.data.root)
    if cfg.data.train_samples:
        train = subset(train, min(cfg.data.train_samples, len(train)), seed=cfg.run.seed)
    if cfg.data.eval_samples:
        test = subset(test, min(cfg.data.eval_samples, len(test)), seed=cfg.run.seed)
    return train, test


def measure_batches(
    cfg: TrainConfig, train: ImageDataset, test: ImageDataset, plan: BatchPlan, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed data of a run's full measures: ``run.measure_samples`` images of its split.

    Drawn once per run from its seed, un-augmented, on one process (measures run on rank 0),
    in the run's dtype, padding and memory format, so every measure of the run sees the same
    images. The default split is the training set: the paper's measures are properties of the
    training loss (eq. 3-4).
    """
    source = train if cfg.run.measure_split == "train" else test
    chosen = subset(source, min(cfg.run.measure_samples, len(source)), seed=cfg.run.seed)
    loader = DeviceLoader(
        chosen,
        max(plan.micro, 256),
        shuffle=False,
        device=device,
        pad_to=pad_size(cfg, train),
        dtype=_dtype(cfg),
        channels_last=use_channels_last(cfg, device),
    )
    return list(loader)


def model_spec(cfg: TrainConfig, data: ImageDataset) -> ModelSpec:
    """What network the run builds (through the model registry) and records in checkpoints."""
    entry = MODELS.entry(cfg.model.name)
    return ModelSpec(
        name=entry.name,
        in_channels=data.in_channels,
        num_classes=data.num_classes,
        image_size=max(data.image_size, cfg.data.pad_to or 0, entry.min_image_size),
        **section_options(cfg.model, entry),
    )


def pad_size(cfg: TrainConfig, data: ImageDataset) -> int | None:
    """``data.pad_to`` when set, else what the model needs (32 for VGG on 28x28 data).

    Raises:
        ConfigError: ``data.pad_to`` is smaller than the images or than the model's input.
    """
    pad_to, need = cfg.data.pad_to, min_image_size(cfg.model.name)
    if pad_to:
        side = data.image_size
        if pad_to < side:
            raise ConfigError(
                f"data.pad_to = {pad_to} is smaller than the {side}x{side} images of "
                f"{cfg.data.name} (padding only adds pixels): set data.pad_to >= {side}, or "
                "none to pad only when the model needs it"
            )
        if pad_to < need:
            raise ConfigError(
                f"data.pad_to = {pad_to} is too small for {cfg.model.name}, which needs inputs "
                f"of at least {need}x{need}: set data.pad_to = {need}, or none to pad "
                "automatically"
            )
        return pad_to
    return need if data.image_size < need else None


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.run.channels_last if cfg.run.channels_last is not None else device.type == "cuda"


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; none on the CPU unless asked for."""
    if cfg.run.amp == "none" or (cfg.run.amp == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def make_loaders(
    cfg: TrainConfig, train: ImageDataset, test: ImageDataset, plan: BatchPlan, ctx: DistContext
) -> tuple[DeviceLoader, DeviceLoader]:
    dtype, pad = _dtype(cfg), pad_size(cfg, train)
    channels_last = use_channels_last(cfg, ctx.device)
    train_loader = DeviceLoader(
        train,
        plan.per_rank,
        shuffle=True,
        seed=cfg.run.seed,
        augment=cfg.data.augment,
        device=ctx.device,
        drop_last=True,  # every step sees a whole logical batch
        pad_to=pad,
        dtype=dtype,
        channels_last=channels_last,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    if len(train_loader) == 0:
        raise ConfigError(
            f"the training split has {len(train)} samples, fewer than one logical batch of "
            f"{plan.logical}; lower run.batch_size"
        )
    eval_loader = DeviceLoader(
        test,
        max(plan.micro, 256),
        shuffle=False,
        device=ctx.device,
        pad_to=pad,
        dtype=dtype,
        channels_last=channels_last,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    return train_loader, eval_loader


def build_model(cfg: TrainConfig, spec: ModelSpec, ctx: DistContext) -> nn.Module:
    """The network on its device and dtype, with ghost BN when configured."""
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
    # Python's generator too, so that two identical runs checkpoint identical RNG states.
    random.seed(cfg.run.seed)
    model = spec.build()
    if cfg.model.ghost_batch_size:
        model = convert_to_ghost_batchnorm(model, cfg.model.ghost_batch_size)
    model = model.to(device=ctx.device, dtype=_dtype(cfg))
    if use_channels_last(cfg, ctx.device):
        model = model.to(memory_format=torch.channels_last)
    return model


def section_options(section: object, entry: Entry, steps_per_epoch: int | None = None) -> dict:
    """The options a config section gives the entry it chose: the fields that apply to it.

    Each field's :class:`~biasdecay.train.config.Setting` says which option it sets and for
    which entries; a value counted in epochs becomes steps with ``steps_per_epoch``.
    """
    options = {}
    for f in dataclasses.fields(section):
        spec = f.metadata["setting"]
        if spec.option is None or entry.name not in spec.applies_to:
            continue
        value = getattr(section, f.name)
        if spec.in_epochs:
            value = warmup_steps_from_epochs(value, steps_per_epoch)
        options[spec.option] = value
    return options


def layer_adaptation(cfg: TrainConfig) -> str | None:
    """The run's ``layer_adaptation``, or None for an optimiser without a trust ratio."""
    entry = OPTIMIZERS.entry(cfg.optimizer.name)
    return section_options(cfg.optimizer, entry).get("layer_adaptation")


def build_policy(cfg: TrainConfig) -> DecayPolicy:
    """The decay policy, given only the options it takes (the others are ignored)."""
    entry = POLICIES.entry(cfg.policy.name)
    return POLICIES.build(entry.name, **section_options(cfg.policy, entry))


def build_optimization(
    cfg: TrainConfig, model: nn.Module
) -> tuple[torch.optim.Optimizer, DecayPolicy, AdaptiveBetaDecay | None]:
    """The optimiser over the policy's param groups, and the adaptive controller if any."""
    policy = build_policy(cfg)
    freeze_roles(model, policy)  # the frozen policies' β/γ, fixed before any group is built
    groups = param_groups(model, policy, cfg.optimizer.weight_decay)
    entry = OPTIMIZERS.entry(cfg.optimizer.name)
    options = section_options(cfg.optimizer, entry)
    optimizer = OPTIMIZERS.build(entry.name, groups, lr=peak_lr(cfg), **options)
    controller = None
    if policy.adaptive:
        controller = AdaptiveBetaDecay(
            model,
            optimizer,
            threshold=policy.adaptive_threshold,
            beta_decay=policy.adaptive_coefficient,
        )
    return optimizer, policy, controller


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    return max(1, math.ceil(cfg.run.epochs * steps_per_epoch))


def build_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int, steps_per_epoch: int
) -> LRScheduler:
    """The run's schedule over ``steps`` updates, from the registry, driving ``optimizer``."""
    entry, lr = SCHEDULES.entry(cfg.schedule.name), peak_lr(cfg)
    # What the run itself fixes; a schedule takes the names it accepts (constant calls its
    # rate lr, the others peak_lr).
    run = {"total_steps": steps, "peak_lr": lr, "lr": lr}
    options = {k: v for k, v in run.items() if entry.accepts(k)}
    options.update(section_options(cfg.schedule, entry, steps_per_epoch))
    return LRScheduler(optimizer, make_schedule(entry.name, **options))
