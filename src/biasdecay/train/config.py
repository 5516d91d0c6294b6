"""Typed training configuration: six flat dataclass sections, a strict TOML loader and writer.

A run is described by :class:`TrainConfig`, whose sections ``[model]``, ``[data]``,
``[optimizer]``, ``[policy]``, ``[schedule]`` and ``[run]`` are plain dataclasses. Values come,
in increasing precedence, from the dataclass defaults, a TOML file and command-line overrides
``"section.key=value"``. Every value is checked exactly (init2winit style): an unknown section or
key, a value of the wrong type, or one outside its valid set or range raises :class:`ConfigError`
naming the key, the value and what is valid. Nothing is executed and nothing silently falls back.

``None`` cannot be written in TOML, so an optional field is set to None with the string
``"none"`` (also ``"None"``, ``"null"``); an override may give the bare word (``data.root=none``).
Fields whose type is a plain ``str`` keep such words as strings (``run.amp = "none"`` is a mode).

Usage::

    cfg = load_config("configs/cifar10_resnet18.toml", ["run.epochs=2", "policy.name=beta_decay"])
    (Path(cfg.run.out) / "config.toml").write_text(dump_toml(cfg))  # loads back equal
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from biasdecay.errors import BiasDecayError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a dependency on 3.10 only)
    import tomli as tomllib

from biasdecay.data import AUGMENTATIONS, dataset_names
from biasdecay.decay import policy_names
from biasdecay.nn.models import model_names
from biasdecay.optim import LAYER_ADAPTATION, optimizer_names
from biasdecay.schedules import SCHEDULES, scale_lr
from biasdecay.sharpness.suite import measure_names

__all__ = [
    "AMP_MODES",
    "DEFAULT_RUN_MEASURES",
    "DTYPES",
    "LR_SCALING_RULES",
    "MEASURE_SPLITS",
    "NONE_WORDS",
    "SECTIONS",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PolicyConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "NON_IDENTIFYING_KEYS",
    "check_config",
    "config_differences",
    "format_differences",
    "config_from_dict",
    "config_to_dict",
    "dump_toml",
    "load_config",
    "parse_override",
    "peak_lr",
]

LR_SCALING_RULES = ("sqrt", "linear", "none")
DTYPES = ("float32", "float64")
AMP_MODES = ("auto", "bf16", "none")
# Which data the full measures see: "train" (the default) is a fixed, un-augmented subset of the
# training split, as the paper defines C, C_m, Tr(H) and the Fisher-Rao norm on the training loss
# (eq. 3-4: D is the ERM training set); "test" the same draw from the test split.
MEASURE_SPLITS = ("train", "test")
# Spellings of None in TOML files and overrides (TOML itself has no null).
NONE_WORDS = frozenset({"none", "None", "null"})
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
_DEVICES_TEXT = "auto, cpu, cuda, cuda:N (N = GPU index)"
# What `run.measure_epochs` measure unless `run.measures` says otherwise.
DEFAULT_RUN_MEASURES = ("connectivity", "connectivity-m", "hessian-trace", "fisher-rao")
# Settings that say where a run lives or executes, not what it computes: a resume, or a sweep
# that finds the run's directory, may give other values than its config.toml. Every other
# setting identifies the run, so a result is always tied to the settings that made it.
NON_IDENTIFYING_KEYS = frozenset(
    {"run.out", "run.device", "run.compile", "run.tensorboard", "run.max_steps", "data.root"}
)
_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


class ConfigError(BiasDecayError, ValueError):
    """A configuration that cannot be used; the message names the key and what is valid."""


# --------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    """The network: a name from :func:`biasdecay.nn.models.model_names` and its size."""

    name: str = "resnet18"
    width: float = 1.0  # multiplier of every hidden width
    ghost_batch_size: int | None = 32  # Appendix A.2; None: plain BatchNorm


@dataclass
class DataConfig:
    """The data source (:func:`biasdecay.data.dataset_names`) and its preprocessing."""

    name: str = "cifar10"
    root: str | None = None  # None: the source's default location
    augment: str | None = "cifar"  # None, "flip", "cifar" (crop with padding 4, then flip)
    pad_to: int | None = None  # None: automatic (VGG needs 32)
    train_samples: int | None = None  # seeded subset of the train split
    eval_samples: int | None = None  # seeded subset of the test split


@dataclass
class OptimizerConfig:
    """The optimiser (:func:`biasdecay.optim.optimizer_names`) and its hyper-parameters."""

    name: str = "lamb"
    lr: float | None = None  # peak lr; None: base_lr scaled by lr_scaling from base_batch_size
    base_lr: float = 0.04  # Appendix A.2: 0.04 at batch 8k (CIFAR) or 32k (ImageNet)
    base_batch_size: int = 8192
    lr_scaling: str = "sqrt"  # "sqrt", "linear", "none"
    weight_decay: float = 0.01  # λ_w of the non-normalisation layers (Appendix A.2)
    momentum: float = 0.9  # SGD, LARS
    betas: tuple[float, float] = (0.9, 0.999)  # LAMB, AdamW (Appendix A.1)
    eps: float = 1e-6
    # LAMB/LARS: which parameters get the trust ratio: "decayed" (those whose weight decay is
    # non-zero at the step, as the public ResNet LAMB/LARS code), "all", "none" (design.md §4).
    layer_adaptation: str = "decayed"
    nesterov: bool = False
    max_grad_norm: float | None = None  # None: no clipping


@dataclass
class PolicyConfig:
    """The weight-decay policy (:func:`biasdecay.decay.policy_names`) and its options."""

    name: str = "no_bias_decay"
    beta: float = 1.0  # λ_β of beta_decay / adaptive_beta_decay
    gamma: float = 0.01  # λ_γ of gamma_decay
    bias: float = 1.0  # coefficient of every bias under bias_decay (Figure 1's ablation)
    threshold: float = 0.1  # R of adaptive_beta_decay (decay where r_l >= R)
    decay_biases: bool = False  # conv/linear biases follow the base policy unless set


@dataclass
class ScheduleConfig:
    """The learning-rate schedule (:data:`biasdecay.schedules.SCHEDULES`)."""

    name: str = "polynomial"  # "polynomial", "cosine", "constant"
    warmup_fraction: float = 0.3  # polynomial (Appendix A.1: 30% of the steps)
    warmup_epochs: float = 10.0  # cosine (Appendix A.1: 10 epochs for SGD)
    init_lr: float = 0.0
    final_lr: float = 0.0
    warmup_power: float = 2.0
    decay_power: float = 2.0


@dataclass
class RunConfig:
    """How the run is executed, logged, checkpointed and measured."""

    out: str = "runs/default"
    epochs: float = 200.0
    batch_size: int = 8192  # logical batch = micro_batch_size x accumulation x world size
    micro_batch_size: int | None = None  # per rank; None: the whole per-rank batch at once
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    dtype: str = "float32"  # "float32", "float64" (float64 for exactness tests on CPU)
    amp: str = "auto"  # "auto" (bf16 autocast on CUDA, none on CPU), "bf16", "none"
    channels_last: bool | None = None  # None: on for CUDA
    compile: bool = False
    eval_every: int = 1  # epochs between evaluations (0: only at the end)
    log_every: int = 10  # steps between log records
    checkpoint_every: int = 0  # steps between checkpoints (0: at each epoch end)
    keep_checkpoints: int = 2
    divergence_loss: float = 1e4  # training loss above this counts as divergence
    tensorboard: bool = False
    track_every: int = 0  # sharpness tracking every k steps (0: off)
    measure_epochs: list[int] = field(default_factory=list)  # full measures at these epochs
    measure_samples: int = 512
    measure_split: str = "train"  # "train" or "test" (MEASURE_SPLITS): the data of those measures
    measures: list[str] = field(default_factory=lambda: list(DEFAULT_RUN_MEASURES))
    measure_matvecs: int = 30  # Hutch++ budget of Tr(H) in those measures
    measure_lanczos_iters: int = 20  # Lanczos iterations of λmax in those measures
    max_steps: int | None = None  # stop (and checkpoint) after this many steps this invocation


@dataclass
class TrainConfig:
    """A whole training run: one instance of each section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(TrainConfig)}
# The type hints the loader checks values against, resolved once: section -> key -> type.
_FIELD_TYPES: dict[str, dict[str, Any]] = {
    name: typing.get_type_hints(cls) for name, cls in SECTIONS.items()
}


# --------------------------------------------------------------------------- messages


def _did_you_mean(name: str, valid: Sequence[str], template: str = "{}") -> str:
    """``"; did you mean X?"`` for the closest valid name, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {template.format(close[0])}?" if close else ""


def _sections_with_key(key: str) -> list[str]:
    return [section for section, hints in _FIELD_TYPES.items() if key in hints]


def _unknown_section(section: str, source: str) -> ConfigError:
    hint = _did_you_mean(section, list(SECTIONS), "[{}]")
    owners = _sections_with_key(section)
    if owners:  # `epochs = 3` at the top level: the key exists, it is just not in a section
        hint = f"; settings belong in a section: did you mean {owners[0]}.{section}?"
    return ConfigError(
        f"{source}: unknown section [{section}]; valid sections: {', '.join(SECTIONS)}{hint}"
    )


# Keys a config may still carry from an earlier version: key -> what replaced it and how.
_REPLACED_KEYS = {
    "optimizer.trust_ratio": (
        "optimizer.trust_ratio was replaced by optimizer.layer_adaptation: write "
        'layer_adaptation = "all" for trust_ratio = true on every parameter, "none" for false, '
        'or "decayed" (the default: the ratio exactly where weight decay is non-zero)'
    ),
}


def _unknown_key(section: str, key: str, source: str) -> ConfigError:
    if f"{section}.{key}" in _REPLACED_KEYS:
        return ConfigError(f"{source}: {_REPLACED_KEYS[f'{section}.{key}']}")
    valid = list(_FIELD_TYPES[section])
    owners = _sections_with_key(key)
    if owners:  # the right key in the wrong section beats a near spelling in this one
        hint = f"; did you mean {owners[0]}.{key}?"
    else:
        hint = _did_you_mean(key, valid, f"{section}.{{}}")
    return ConfigError(
        f"{source}: unknown key {section}.{key}; valid keys of [{section}]: "
        f"{', '.join(valid)}{hint}"
    )


def _describe(hint: Any) -> str:
    """A type hint in words, for error messages."""
    inner = _optional_inner(hint)
    if inner is not None:
        return f"{_describe(inner)} or none"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return f"a list of {len(args)} {_describe(args[0])}s"
    if origin is list:
        return f"a list of {_describe(args[0])}s"
    if hint is bool:
        return "bool (true or false)"
    return hint.__name__


# --------------------------------------------------------------------------- type checking


def _optional_inner(hint: Any) -> Any:
    """``X`` for a hint ``X | None``; None for any other hint (every union here is optional)."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return None


def _is_int(value: Any) -> bool:
    # bool is an int subclass; `batch_size = true` is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against ``hint`` and normalised (int -> float, list -> tuple).

    Args:
        value: a value from TOML, an override or a dataclass.
        hint: the field's type hint.
        key: ``section.key`` for messages.

    Returns:
        The value to store.

    Raises:
        ConfigError: the value does not have the hinted type.
    """
    inner = _optional_inner(hint)
    if inner is not None:
        if value is None or (isinstance(value, str) and value in NONE_WORDS):
            return None
        try:
            return _coerce(value, inner, key)
        except ConfigError:
            raise _type_error(key, hint, value) from None
    origin = typing.get_origin(hint)
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        return _coerce_sequence(value, hint, key)
    if hint is float and _is_int(value):
        return float(value)  # `epochs = 2` means 2.0
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = _is_int(value)
    else:
        ok = origin is None and isinstance(value, hint) and not isinstance(value, bool)
    if not ok:
        raise _type_error(key, hint, value)
    return value


def _type_error(key: str, hint: Any, value: Any) -> ConfigError:
    shown = "none" if value is None else f"{value!r} ({type(value).__name__})"
    return ConfigError(f"{key}: expected {_describe(hint)}, got {shown}")


def _coerce_sequence(value: Sequence[Any], hint: Any, key: str) -> Any:
    """A list/tuple field element by element; a tuple field must have its exact length."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        if len(value) != len(args):
            raise ConfigError(
                f"{key}: expected {_describe(hint)}, got {list(value)!r} (length {len(value)})"
            )
        return tuple(
            _coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]


def _set(cfg: TrainConfig, section: str, key: str, value: Any, source: str) -> None:
    """Check ``section.key`` exists and ``value`` has its type, then store it."""
    if key not in _FIELD_TYPES[section]:
        raise _unknown_key(section, key, source)
    try:
        coerced = _coerce(value, _FIELD_TYPES[section][key], f"{section}.{key}")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    setattr(getattr(cfg, section), key, coerced)


def _merge(cfg: TrainConfig, data: Mapping[str, Any], source: str) -> None:
    """Apply a ``{section: {key: value}}`` mapping onto ``cfg`` (types checked, values not)."""
    for section, table in data.items():
        if section not in SECTIONS:
            raise _unknown_section(section, source)
        if not isinstance(table, Mapping):
            raise ConfigError(
                f"{source}: [{section}] must be a table of settings, got {table!r}; "
                f"valid keys of [{section}]: {', '.join(_FIELD_TYPES[section])}"
            )
        for key, value in table.items():
            _set(cfg, section, key, value, source)


# --------------------------------------------------------------------------- value checks


def _choice(key: str, value: str | None, valid: Sequence[str]) -> list[str]:
    if value is None or value in valid:
        return []
    hint = _did_you_mean(value, valid, "{!r}") if isinstance(value, str) else ""
    return [f"{key}: unknown value {value!r}; valid: {', '.join(valid)}{hint}"]


def _number(
    key: str,
    value: float | None,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    allow_inf: bool = False,
) -> list[str]:
    """A problem unless ``value`` (skipped when None) is in the stated range; NaN never is."""
    if value is None:
        return []
    limits = {">": gt, ">=": ge, "<": lt, "<=": le}
    wanted = [
        (f"{op} {bound:g}", _COMPARE[op](value, bound))
        for op, bound in limits.items()
        if bound is not None
    ]
    finite_ok = allow_inf or math.isfinite(value)
    if finite_ok and not math.isnan(value) and all(ok for _, ok in wanted):
        return []
    kind = "an integer" if _is_int(value) else "a number" if allow_inf else "a finite number"
    return [f"{key} must be {kind} {' and '.join(text for text, _ in wanted)}, got {value!r}"]


def _check_model(m: ModelConfig) -> list[str]:
    return [
        *_choice("model.name", m.name, model_names()),
        *_number("model.width", m.width, gt=0),
        *_number("model.ghost_batch_size", m.ghost_batch_size, ge=1),
    ]


def _check_data(d: DataConfig) -> list[str]:
    problems = [
        *_choice("data.name", d.name, dataset_names()),
        *_choice("data.augment", d.augment, [*sorted(AUGMENTATIONS), "none"]),
        *_number("data.pad_to", d.pad_to, ge=1),
        *_number("data.train_samples", d.train_samples, ge=1),
        *_number("data.eval_samples", d.eval_samples, ge=1),
    ]
    if d.root == "":
        problems.append('data.root must be a path or "none" (the default location), got ""')
    return problems


def _check_optimizer(o: OptimizerConfig) -> list[str]:
    return [
        *_choice("optimizer.name", o.name, optimizer_names()),
        *_number("optimizer.lr", o.lr, gt=0),
        *_number("optimizer.base_lr", o.base_lr, gt=0),
        *_number("optimizer.base_batch_size", o.base_batch_size, ge=1),
        *_choice("optimizer.lr_scaling", o.lr_scaling, LR_SCALING_RULES),
        *_number("optimizer.weight_decay", o.weight_decay, ge=0),
        *_number("optimizer.momentum", o.momentum, ge=0, lt=1),
        *_number("optimizer.betas[0]", o.betas[0], ge=0, lt=1),
        *_number("optimizer.betas[1]", o.betas[1], ge=0, lt=1),
        *_number("optimizer.eps", o.eps, gt=0),
        *_number("optimizer.max_grad_norm", o.max_grad_norm, gt=0),
        *_choice("optimizer.layer_adaptation", o.layer_adaptation, LAYER_ADAPTATION),
    ]


def _check_policy(p: PolicyConfig) -> list[str]:
    return [
        *_choice("policy.name", p.name, policy_names()),
        *_number("policy.beta", p.beta, ge=0),
        *_number("policy.gamma", p.gamma, ge=0),
        *_number("policy.bias", p.bias, ge=0),
        # R = inf is meaningful: adaptive β decay that never decays (an ablation).
        *_number("policy.threshold", p.threshold, ge=0, allow_inf=True),
    ]


def _check_schedule(s: ScheduleConfig) -> list[str]:
    return [
        *_choice("schedule.name", s.name, list(SCHEDULES)),
        *_number("schedule.warmup_fraction", s.warmup_fraction, ge=0, le=1),
        *_number("schedule.warmup_epochs", s.warmup_epochs, ge=0),
        *_number("schedule.init_lr", s.init_lr, ge=0),
        *_number("schedule.final_lr", s.final_lr, ge=0),
        *_number("schedule.warmup_power", s.warmup_power, gt=0),
        *_number("schedule.decay_power", s.decay_power, gt=0),
    ]


def _check_run(r: RunConfig) -> list[str]:
    problems = [
        *_number("run.epochs", r.epochs, gt=0),
        *_number("run.batch_size", r.batch_size, ge=1),
        *_number("run.micro_batch_size", r.micro_batch_size, ge=1),
        *_number("run.seed", r.seed, ge=0),
        *_choice("run.dtype", r.dtype, DTYPES),
        *_choice("run.amp", r.amp, AMP_MODES),
        *_number("run.eval_every", r.eval_every, ge=0),
        *_number("run.log_every", r.log_every, ge=1),
        *_number("run.checkpoint_every", r.checkpoint_every, ge=0),
        *_number("run.keep_checkpoints", r.keep_checkpoints, ge=1),
        *_number("run.divergence_loss", r.divergence_loss, gt=0, allow_inf=True),
        *_number("run.track_every", r.track_every, ge=0),
        *_number("run.measure_samples", r.measure_samples, ge=1),
        *_choice("run.measure_split", r.measure_split, MEASURE_SPLITS),
        *_number("run.measure_matvecs", r.measure_matvecs, ge=1),
        *_number("run.measure_lanczos_iters", r.measure_lanczos_iters, ge=1),
        *_number("run.max_steps", r.max_steps, ge=1),
    ]
    if not r.out:
        problems.append('run.out must be a non-empty path, got ""')
    if not _DEVICE_PATTERN.fullmatch(r.device):
        problems.append(f"run.device: unknown value {r.device!r}; valid: {_DEVICES_TEXT}")
    for i, epoch in enumerate(r.measure_epochs):
        problems += _number(f"run.measure_epochs[{i}]", epoch, ge=0)
    for name in r.measures:
        problems += _choice("run.measures", name, measure_names())
    if r.measure_epochs and not r.measures:
        problems.append("run.measure_epochs is set but run.measures is empty; name the measures")
    return problems


def _check_across(cfg: TrainConfig) -> list[str]:
    """Checks that involve two sections; run only once each section is valid on its own."""
    run, schedule, problems = cfg.run, cfg.schedule, []
    if run.micro_batch_size is not None and run.micro_batch_size > run.batch_size:
        problems.append(
            f"run.micro_batch_size ({run.micro_batch_size}) must be <= run.batch_size "
            f"({run.batch_size}): it is a part of the per-rank batch"
        )
    if run.dtype == "float64" and run.amp == "bf16":
        problems.append('run.amp = "bf16" contradicts run.dtype = "float64"; use amp = "none"')
    last_epoch = math.ceil(run.epochs)
    late = [e for e in run.measure_epochs if e > last_epoch]
    if late:
        problems.append(f"run.measure_epochs {late} lie after the last epoch ({last_epoch})")
    if schedule.name == "cosine" and schedule.warmup_epochs > run.epochs:
        problems.append(
            f"schedule.warmup_epochs ({schedule.warmup_epochs:g}) must be <= run.epochs "
            f"({run.epochs:g}) for the cosine schedule"
        )
    # The schedules require η_init, η_final <= η_peak; cosine starts at 0 (no init_lr).
    used = {"polynomial": ("init_lr", "final_lr"), "cosine": ("final_lr",)}
    peak = peak_lr(cfg)
    for key in used.get(schedule.name, ()):
        value = getattr(schedule, key)
        if value > peak:
            problems.append(f"schedule.{key} ({value:g}) must be <= the peak lr ({peak:g})")
    return problems


def _check_values(cfg: TrainConfig) -> None:
    """Raise one :class:`ConfigError` listing every value outside its valid set or range."""
    problems = [
        *_check_model(cfg.model),
        *_check_data(cfg.data),
        *_check_optimizer(cfg.optimizer),
        *_check_policy(cfg.policy),
        *_check_schedule(cfg.schedule),
        *_check_run(cfg.run),
    ]
    if not problems:  # cross-section checks would only repeat (or trip over) earlier problems
        problems = _check_across(cfg)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------- public API


def peak_lr(cfg: TrainConfig) -> float:
    """The peak learning rate of a run: ``optimizer.lr``, or ``base_lr`` scaled to the batch.

    Args:
        cfg: a checked configuration.

    Returns:
        ``optimizer.lr`` when given; else ``base_lr`` scaled from ``base_batch_size`` to
        ``run.batch_size`` by ``lr_scaling`` (``"sqrt"``: Appendix A.2's
        ``0.04·sqrt(B/8192)``; ``"none"``: ``base_lr`` as is).
    """
    opt = cfg.optimizer
    if opt.lr is not None:
        return opt.lr
    if opt.lr_scaling == "none":
        return opt.base_lr
    return scale_lr(opt.base_lr, cfg.run.batch_size, opt.base_batch_size, rule=opt.lr_scaling)


def config_to_dict(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """The configuration as ``{section: {key: value}}`` (a deep copy; tuples stay tuples).

    Args:
        cfg: the configuration.

    Returns:
        A nested dict in section order, suitable for JSON and :func:`config_from_dict`.
    """
    return {section: dataclasses.asdict(getattr(cfg, section)) for section in SECTIONS}


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Build a checked configuration from ``{section: {key: value}}`` over the defaults.

    Sections and keys left out keep their defaults. Used for TOML tables and for configs saved
    in checkpoints.

    Args:
        data: the mapping, e.g. ``tomllib.loads(text)`` or :func:`config_to_dict`'s result.
        source: where the mapping came from, for messages.

    Returns:
        The :class:`TrainConfig`.

    Raises:
        ConfigError: unknown section or key, wrong type, or a value out of range.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    cfg = TrainConfig()
    _merge(cfg, data, source)
    _check_values(cfg)
    return cfg


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Check a configuration built in code as strictly as a loaded one.

    Args:
        cfg: the configuration (not modified).

    Returns:
        An equal, normalised copy (ints in float fields as floats, lists as tuples).

    Raises:
        ConfigError: as :func:`config_from_dict`.
    """
    return config_from_dict(config_to_dict(cfg), source="config")


def config_differences(
    old: TrainConfig, new: TrainConfig, *, ignore: frozenset[str] = NON_IDENTIFYING_KEYS
) -> list[tuple[str, Any, Any]]:
    """The settings in which two configurations differ, in section order.

    Args:
        old: e.g. the configuration a run directory's config.toml records.
        new: e.g. the configuration a resume or a sweep would give it.
        ignore: ``section.key`` names left out (by default those that do not change what a
            run computes: :data:`NON_IDENTIFYING_KEYS`).

    Returns:
        ``(section.key, old value, new value)`` for every differing setting.
    """
    a, b = config_to_dict(old), config_to_dict(new)
    return [
        (f"{section}.{key}", value, b[section][key])
        for section, table in a.items()
        for key, value in table.items()
        if f"{section}.{key}" not in ignore and value != b[section][key]
    ]


def format_differences(differences: Sequence[tuple[str, Any, Any]], old: str, new: str) -> str:
    """``"run.epochs 2.0 (old) -> 5.0 (new), ..."`` for messages; ``old``/``new`` name the sides."""
    return ", ".join(
        f"{key} {_toml_value(a)} ({old}) -> {_toml_value(b)} ({new})" for key, a, b in differences
    )


def parse_override(text: str) -> tuple[str, str, str]:
    """Split an override ``"section.key=value"`` into its section, key and raw value text.

    Args:
        text: the override, e.g. ``"run.epochs=2"``.

    Returns:
        ``(section, key, raw_value)``, whitespace around each part removed.

    Raises:
        ConfigError: no ``=``, or a name that is not ``section.key``.
    """
    name, eq, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if eq and dot and section and key and "." not in key:
        return section, key, raw.strip()
    owners = _sections_with_key(name.strip())
    hint = f"; did you mean {owners[0]}.{name.strip()}={raw.strip()}?" if eq and owners else ""
    raise ConfigError(
        f"malformed override {text!r}: expected the form section.key=value "
        f"(e.g. run.epochs=2, optimizer.betas=[0.9, 0.99], data.root=none){hint}"
    )


def _override_value(raw: str, hint: Any) -> Any:
    """The value of an override: TOML when it parses as one value, else the text itself."""
    try:
        parsed = tomllib.loads(f"value = {raw}")
    except tomllib.TOMLDecodeError:
        return raw  # a bare word: policy.name=beta_decay, data.root=~/data, data.root=none
    if set(parsed) != {"value"}:
        return raw  # "1\nother = 2" smuggles a second key in; keep it as text
    value = parsed["value"]
    accepts_str = str in (hint, _optional_inner(hint))
    if accepts_str and not isinstance(value, str):
        return raw  # run.out=2024-01-01 is a path, not a TOML date
    return value


def _apply_override(cfg: TrainConfig, text: str) -> None:
    section, key, raw = parse_override(text)
    source = f"override {text!r}"
    if section not in SECTIONS:
        raise _unknown_section(section, source)
    if key not in _FIELD_TYPES[section]:
        raise _unknown_key(section, key, source)
    _set(cfg, section, key, _override_value(raw, _FIELD_TYPES[section][key]), source)


def _read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; errors name the file and quote the offending line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        # tomllib reports "(at line N, column M)" in the message only (no attribute before 3.14).
        where = re.search(r"at line (\d+)", str(err))
        lines = text.splitlines()
        quoted = ""
        if where and 1 <= int(where.group(1)) <= len(lines):
            quoted = f"\n  line {where.group(1)}: {lines[int(where.group(1)) - 1]}"
        raise ConfigError(f"invalid TOML in {path}: {err}{quoted}") from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a training configuration: defaults, then a TOML file, then overrides.

    Args:
        path: a TOML file with any of the sections ``[model]``, ``[data]``, ``[optimizer]``,
            ``[policy]``, ``[schedule]``, ``[run]``; None for the defaults alone.
        overrides: ``"section.key=value"`` strings applied in order; the value is read as a TOML
            value (``run.epochs=2``, ``optimizer.betas=[0.9, 0.99]``, ``data.root="~/data"``),
            a bare word that is not TOML as a string (``policy.name=beta_decay``), and
            ``none``/``None``/``null`` as None for optional fields.

    Returns:
        The checked :class:`TrainConfig`.

    Raises:
        ConfigError: missing file, invalid TOML, unknown section or key, malformed override,
            wrong type or a value out of range; the message says what is valid.
    """
    if isinstance(overrides, str):
        raise ConfigError(
            f"overrides must be a list of 'section.key=value' strings, got the single string "
            f"{overrides!r}; wrap it in a list"
        )
    cfg = TrainConfig()
    if path is not None:
        path = Path(path)
        _merge(cfg, _read_toml(path), str(path))
    for text in overrides:
        _apply_override(cfg, text)
    # Values are checked once everything is applied: an override may repair a file's setting.
    _check_values(cfg)
    return cfg


# --------------------------------------------------------------------------- TOML writer


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:  # TOML forbids raw control characters
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    """One value in TOML syntax; None is written as the string "none" (TOML has no null)."""
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest text that reads back to the same float
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as a TOML value")


def dump_toml(cfg: TrainConfig) -> str:
    """The configuration as TOML text that :func:`load_config` reads back to an equal config.

    Every key of every section is written, so the file records the whole run.

    Args:
        cfg: the configuration.

    Returns:
        The TOML text, one ``[section]`` table per section.
    """
    blocks = []
    for section, values in config_to_dict(cfg).items():
        lines = [f"[{section}]", *(f"{k} = {_toml_value(v)}" for k, v in values.items())]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)
