"""Build a run's pieces from its configuration: data, model, optimiser, decay, schedule.

Each builder is a small function of the config, so the engine stays a loop and a study can
build the same pieces without running the loop.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

import torch
from torch import nn

from biasdecay.data import DeviceLoader, ImageDataset, load_dataset, subset
from biasdecay.decay import (
    AdaptiveBetaDecay,
    DecayPolicy,
    decay_policy,
    param_groups,
    policy_options,
)
from biasdecay.nn.checkpoint import ModelSpec
from biasdecay.nn.ghost_bn import convert_to_ghost_batchnorm
from biasdecay.nn.models import min_image_size
from biasdecay.optim import build_optimizer
from biasdecay.schedules import (
    LRScheduler,
    cosine_warmup,
    polynomial_warmup_decay,
    warmup_steps_from_epochs,
)
from biasdecay.train.config import ConfigError, TrainConfig, peak_lr
from biasdecay.train.distributed import DistContext

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
        raise ValueError(
            f"run.batch_size={logical} is not divisible by the world size {world}; use a "
            f"multiple of {world} (logical batch = micro-batch x accumulation x world size)"
        )
    per_rank = logical // world
    micro = cfg.run.micro_batch_size or per_rank
    if per_rank % micro:
        raise ValueError(
            f"run.micro_batch_size={micro} does not divide the per-rank batch {per_rank} "
            f"(= run.batch_size {logical} / {world} ranks); choose a divisor of {per_rank}"
        )
    ghost = cfg.model.ghost_batch_size
    if ghost and micro % ghost and micro > ghost:
        raise ValueError(
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
        dtype=_DTYPES[cfg.run.dtype],
        channels_last=use_channels_last(cfg, device),
    )
    return list(loader)


def model_spec(cfg: TrainConfig, data: ImageDataset) -> ModelSpec:
    return ModelSpec(
        name=cfg.model.name,
        in_channels=data.in_channels,
        num_classes=data.num_classes,
        width=cfg.model.width,
        image_size=max(data.image_size, cfg.data.pad_to or 0, min_image_size(cfg.model.name)),
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
    dtype, pad = _DTYPES[cfg.run.dtype], pad_size(cfg, train)
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
        raise ValueError(
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
    model = model.to(device=ctx.device, dtype=_DTYPES[cfg.run.dtype])
    if use_channels_last(cfg, ctx.device):
        model = model.to(memory_format=torch.channels_last)
    return model


def _optimizer_options(cfg: TrainConfig) -> dict:
    opt = cfg.optimizer
    if opt.name == "lamb":
        return {
            "betas": tuple(opt.betas),
            "eps": opt.eps,
            "layer_adaptation": layer_adaptation(cfg),
            "max_grad_norm": opt.max_grad_norm,
        }
    if opt.name == "lars":
        return {
            "momentum": opt.momentum,
            "nesterov": opt.nesterov,
            "layer_adaptation": layer_adaptation(cfg),
        }
    if opt.name == "sgd":
        return {"momentum": opt.momentum, "nesterov": opt.nesterov}
    if opt.name == "adamw":
        return {"betas": tuple(opt.betas), "eps": opt.eps}
    return {}


def layer_adaptation(cfg: TrainConfig) -> str | None:
    """The run's ``layer_adaptation``, or None for an optimiser without a trust ratio."""
    return cfg.optimizer.layer_adaptation if cfg.optimizer.name in ("lamb", "lars") else None


def build_policy(cfg: TrainConfig) -> DecayPolicy:
    """The decay policy, given only the options it takes (the others are ignored)."""
    p = cfg.policy
    options = {
        "beta": p.beta,
        "gamma": p.gamma,
        "bias": p.bias,
        "threshold": p.threshold,
        "decay_biases": p.decay_biases,
    }
    accepted = policy_options(p.name)
    return decay_policy(p.name, **{k: v for k, v in options.items() if k in accepted})


def build_optimization(
    cfg: TrainConfig, model: nn.Module
) -> tuple[torch.optim.Optimizer, DecayPolicy, AdaptiveBetaDecay | None]:
    """The optimiser over the policy's param groups, and the adaptive controller if any."""
    policy = build_policy(cfg)
    groups = param_groups(model, policy, cfg.optimizer.weight_decay)
    optimizer = build_optimizer(
        cfg.optimizer.name, groups, lr=peak_lr(cfg), **_optimizer_options(cfg)
    )
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
    s, lr = cfg.schedule, peak_lr(cfg)
    if s.name == "polynomial":
        schedule = functools.partial(
            polynomial_warmup_decay,
            total_steps=steps,
            peak_lr=lr,
            warmup_fraction=s.warmup_fraction,
            init_lr=s.init_lr,
            final_lr=s.final_lr,
            warmup_power=s.warmup_power,
            decay_power=s.decay_power,
        )
    elif s.name == "cosine":
        warmup = warmup_steps_from_epochs(s.warmup_epochs, steps_per_epoch)
        schedule = functools.partial(
            cosine_warmup, total_steps=steps, peak_lr=lr, warmup_steps=warmup, final_lr=s.final_lr
        )
    else:
        schedule = functools.partial(_constant, lr=lr)
    return LRScheduler(optimizer, schedule)


def _constant(step: int, *, lr: float) -> float:
    del step
    return lr
