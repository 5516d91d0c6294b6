"""Typed training configuration: six flat dataclass sections, loaded strictly and written as TOML.

A run is described by :class:`TrainConfig`, whose sections ``[model]``, ``[data]``,
``[optimizer]``, ``[policy]``, ``[schedule]`` and ``[run]`` are plain dataclasses. Values come,
in increasing precedence, from the dataclass defaults, a TOML file and command-line overrides
``"section.key=value"``. Every value is checked exactly (init2winit style): an unknown section or
key, a value of the wrong type, or one outside its valid set or range raises :class:`ConfigError`
naming the key, the value and what is valid. Nothing is executed and nothing silently falls back.

``None`` cannot be written in TOML, so an optional field is set to None with the string
``"none"`` (also ``"None"``, ``"null"``); an override may give the bare word (``data.root=none``).
Fields whose type is a plain ``str`` keep such words as strings (``run.amp = "none"`` is a mode).

This module states what only the config knows: each setting with its default, type and
:class:`Setting`, the checks across sections, and loading and writing whole configurations.
How a field carries its Setting is :mod:`biasdecay.train.config_fields`, turning one value into
its type :mod:`biasdecay.train.config_values`, writing one value as TOML
:mod:`biasdecay.toml_text`, and the settings' help :mod:`biasdecay.train.config_help`.

Usage::

    cfg = load_config("configs/cifar10_resnet18.toml", ["run.epochs=2", "policy.name=beta_decay"])
    (Path(cfg.run.out) / "config.toml").write_text(dump_toml(cfg))  # loads back equal
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biasdecay.constraints import (
    NonEmpty,
    OneOf,
    Pattern,
    Range,
    did_you_mean,
    problems,
)
from biasdecay.data import AUGMENTATIONS, DATASETS
from biasdecay.decay.policies import POLICIES
from biasdecay.nn.models import MODELS
from biasdecay.optim import OPTIMIZERS
from biasdecay.registry import Registry
from biasdecay.schedules import (
    PAPER_BASE_BATCH_SIZE,
    PAPER_BASE_LR,
    PAPER_SGD_WARMUP_EPOCHS,
    PAPER_WARMUP_FRACTION,
    SCALING_RULES,
    SCHEDULES,
    scale_lr,
)
from biasdecay.sharpness.suite import MEASURES
from biasdecay.toml_text import toml_value
from biasdecay.train.config_fields import (
    Setting,
    choice,
    every_option,
    option,
    setting,
    setting_of,
)
from biasdecay.train.config_values import (
    NONE_WORDS,
    ConfigError,
    coerce,
    override_value,
    read_toml,
    sections_with_key,
    split_override,
)

__all__ = [
    "AMP_MODES",
    "COMPONENTS",
    "DEFAULT_RUN_MEASURES",
    "DTYPES",
    "FIELD_TYPES",
    "LR_SCALING_RULES",
    "MEASURE_SPLITS",
    "NONE_WORDS",
    "SECTIONS",
    "SETTINGS",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PolicyConfig",
    "RunConfig",
    "ScheduleConfig",
    "Setting",
    "TrainConfig",
    "NON_IDENTIFYING_KEYS",
    "check_config",
    "check_setting_name",
    "check_override",
    "config_differences",
    "format_differences",
    "config_from_dict",
    "config_to_dict",
    "dump_toml",
    "load_config",
    "parse_override",
    "peak_lr",
]

LR_SCALING_RULES = (*SCALING_RULES, "none")
DTYPES = ("float32", "float64")
AMP_MODES = ("auto", "bf16", "none")
# Which data the full measures see: "train" (the default) is a fixed, un-augmented subset of the
# training split, as the paper defines C, C_m, Tr(H) and the Fisher-Rao norm on the training loss
# (eq. 3-4: D is the ERM training set); "test" the same draw from the test split.
MEASURE_SPLITS = ("train", "test")
# What `run.measure_epochs` measure unless `run.measures` says otherwise.
DEFAULT_RUN_MEASURES = ("connectivity", "connectivity-m", "hessian-trace", "fisher-rao")
# Settings that say where a run lives or executes, not what it computes: a resume, or a sweep
# that finds the run's directory, may give other values than its config.toml. Every other
# setting identifies the run, so a result is always tied to the settings that made it.
NON_IDENTIFYING_KEYS = frozenset(
    {"run.out", "run.device", "run.compile", "run.tensorboard", "run.max_steps", "data.root"}
)

# --------------------------------------------------------------------------- sections

# Ranges many settings share.
_POSITIVE = Range(0.0, low_open=True)
_NONNEGATIVE = Range(0.0)
_COUNT = Range(1, integer=True)  # a number of things, at least one
_EVERY = Range(0, integer=True)  # an interval in steps or epochs, 0 for "off" or "at the end"


@dataclass
class ModelConfig:
    """The network: a name from :data:`biasdecay.nn.models.MODELS` and its size."""

    name: str = choice(MODELS, "resnet18", "the network (see `biasdecay list models`)")
    width: float = option(MODELS, "width")
    ghost_batch_size: int | None = setting(
        32, _COUNT, "samples per ghost batch of every BatchNorm (Appendix A.2); none: plain BN"
    )


@dataclass
class DataConfig:
    """The data source (:data:`biasdecay.data.DATASETS`) and its preprocessing."""

    name: str = choice(DATASETS, "cifar10", "the data source (see `biasdecay list data`)")
    root: str | None = setting(
        None,
        NonEmpty('a path or "none" (the default location)'),
        "directory of the data set's files; none: the source's default location",
    )
    augment: str | None = setting(
        "cifar",
        OneOf([*sorted(AUGMENTATIONS), "none"]),
        'training augmentation: "flip", "cifar" (crop with padding 4, then flip) or none',
    )
    pad_to: int | None = setting(None, _COUNT, "pad images to this side; none: automatic")
    train_samples: int | None = setting(None, _COUNT, "seeded subset of the train split")
    eval_samples: int | None = setting(None, _COUNT, "seeded subset of the test split")


@dataclass
class OptimizerConfig:
    """The optimiser (:data:`biasdecay.optim.OPTIMIZERS`) and its hyper-parameters."""

    name: str = choice(OPTIMIZERS, "lamb", "the optimiser")
    lr: float | None = setting(
        None, _POSITIVE, "peak lr; none: base_lr scaled by lr_scaling from base_batch_size"
    )
    base_lr: float = setting(
        PAPER_BASE_LR, _POSITIVE, "lr at base_batch_size (Appendix A.2: 0.04 at 8k or 32k)"
    )
    base_batch_size: int = setting(
        PAPER_BASE_BATCH_SIZE["cifar"], _COUNT, "the batch size base_lr is tuned for"
    )
    lr_scaling: str = setting(
        "sqrt", OneOf(LR_SCALING_RULES), "how base_lr scales to run.batch_size"
    )
    weight_decay: float = setting(
        0.01, _NONNEGATIVE, "λ_w of the non-normalisation layers (Appendix A.2)"
    )
    momentum: float = option(OPTIMIZERS, "momentum", applies_to=("lars", "sgd"))
    betas: tuple[float, float] = option(OPTIMIZERS, "betas", applies_to=("lamb", "adamw"))
    eps: float = option(OPTIMIZERS, "eps", applies_to=("lamb", "adamw"))
    # Which parameters get the trust ratio (docs/design.md §4): a named, reported setting.
    layer_adaptation: str = option(OPTIMIZERS, "layer_adaptation", applies_to=("lamb", "lars"))
    nesterov: bool = option(OPTIMIZERS, "nesterov", applies_to=("lars", "sgd"))
    max_grad_norm: float | None = option(OPTIMIZERS, "max_grad_norm", applies_to=("lamb",))
    trust_coefficient: float = option(OPTIMIZERS, "trust_coefficient", applies_to=("lars",))


@dataclass
@every_option(POLICIES)
class PolicyConfig:
    """The weight-decay policy (:data:`biasdecay.decay.policies.POLICIES`) and its options.

    Every option of every policy is a field, added from the registry (``biasdecay list settings
    policy`` lists them): a policy builder's new option needs no edit here.
    """

    name: str = choice(POLICIES, "no_bias_decay", "the weight-decay policy")


@dataclass
class ScheduleConfig:
    """The learning-rate schedule (:data:`biasdecay.schedules.SCHEDULES`)."""

    name: str = choice(SCHEDULES, "polynomial", "the learning-rate schedule")
    # A float, not none: the paper's 30% is written out so config.toml records it.
    warmup_fraction: float = option(
        SCHEDULES,
        "warmup_fraction",
        default=PAPER_WARMUP_FRACTION,
        help="polynomial warm-up as a fraction of the run's steps (Appendix A.1: 0.3)",
    )
    warmup_epochs: float = setting(
        float(PAPER_SGD_WARMUP_EPOCHS),
        _NONNEGATIVE,
        "linear warm-up of the cosine schedule in epochs (Appendix A.1: 10 for SGD)",
        option="warmup_steps",
        applies_to=("cosine",),
        in_epochs=True,
    )
    init_lr: float = option(SCHEDULES, "init_lr")
    final_lr: float = option(SCHEDULES, "final_lr")
    warmup_power: float = option(SCHEDULES, "warmup_power")
    decay_power: float = option(SCHEDULES, "decay_power")


@dataclass
class RunConfig:
    """How the run is executed, logged, checkpointed and measured."""

    out: str = setting("runs/default", NonEmpty("a non-empty path"), "the run's directory")
    epochs: float = setting(200.0, _POSITIVE, "length of the run in epochs (may be fractional)")
    batch_size: int = setting(
        8192, _COUNT, "logical batch = micro_batch_size x accumulation x world size"
    )
    micro_batch_size: int | None = setting(
        None, _COUNT, "per rank; none: the whole per-rank batch at once"
    )
    seed: int = setting(0, Range(0, integer=True), "seed of weights, data order and subsets")
    device: str = setting(
        "auto",
        Pattern(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda, cuda:N (N = GPU index)"),
        "where the run executes (auto: CUDA if present)",
    )
    dtype: str = setting("float32", OneOf(DTYPES), "float64 for exactness tests on CPU")
    amp: str = setting(
        "auto", OneOf(AMP_MODES), "autocast: auto (bf16 on CUDA, none on CPU), bf16, none"
    )
    channels_last: bool | None = setting(None, None, "channels-last memory; none: on for CUDA")
    compile: bool = setting(False, None, "torch.compile the model")
    eval_every: int = setting(1, _EVERY, "epochs between evaluations (0: only at the end)")
    log_every: int = setting(10, _COUNT, "steps between log records")
    checkpoint_every: int = setting(0, _EVERY, "steps between checkpoints (0: each epoch end)")
    keep_checkpoints: int = setting(2, _COUNT, "checkpoints kept")
    divergence_loss: float = setting(
        1e4, Range(0.0, low_open=True, high_open=False), "training loss counted as divergence"
    )
    tensorboard: bool = setting(False, None, "mirror the metrics to TensorBoard")
    track_every: int = setting(0, _EVERY, "sharpness tracking every k steps (0: off)")
    measure_epochs: list[int] = setting([], _EVERY, "full measures at these epochs")
    measure_samples: int = setting(512, _COUNT, "images the full measures see")
    measure_split: str = setting("train", OneOf(MEASURE_SPLITS), "the split those images come from")
    measures: list[str] = setting(
        list(DEFAULT_RUN_MEASURES), OneOf(MEASURES.names), "the full measures"
    )
    measure_matvecs: int = setting(30, _COUNT, "Hutch++ budget of Tr(H) in those measures")
    measure_lanczos_iters: int = setting(20, _COUNT, "Lanczos iterations of λmax in them")
    max_steps: int | None = setting(
        None, _COUNT, "stop (and checkpoint) after this many steps this invocation"
    )


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
#: The registry each component section's ``name`` chooses from.
COMPONENTS: dict[str, Registry] = {
    "model": MODELS,
    "data": DATASETS,
    "optimizer": OPTIMIZERS,
    "policy": POLICIES,
    "schedule": SCHEDULES,
}
#: section -> key -> the type hint its values are checked against (resolved once).
FIELD_TYPES: dict[str, dict[str, Any]] = {
    name: typing.get_type_hints(cls) for name, cls in SECTIONS.items()
}
#: section -> key -> its :class:`Setting`.
SETTINGS: dict[str, dict[str, Setting]] = {
    name: {f.name: setting_of(f) for f in dataclasses.fields(cls)} for name, cls in SECTIONS.items()
}


# --------------------------------------------------------------------------- names


def _unknown_section(section: str, source: str) -> ConfigError:
    hint = did_you_mean(section, SECTIONS, "[{}]")
    owners = sections_with_key(section, FIELD_TYPES)
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
    valid = list(FIELD_TYPES[section])
    owners = sections_with_key(key, FIELD_TYPES)
    if owners:  # the right key in the wrong section beats a near spelling in this one
        hint = f"; did you mean {owners[0]}.{key}?"
    else:
        hint = did_you_mean(key, valid, f"{section}.{{}}")
    return ConfigError(
        f"{source}: unknown key {section}.{key}; valid keys of [{section}]: "
        f"{', '.join(valid)}{hint}"
    )


def check_setting_name(section: str, key: str | None = None, source: str = "setting") -> None:
    """Check that ``section`` (and ``key`` in it, when given) names a setting.

    Args:
        section: e.g. ``"optimizer"``.
        key: e.g. ``"momentum"``; None to check the section alone.
        source: where the name came from, for messages.

    Raises:
        ConfigError: an unknown section or key; the message lists the valid ones and the closest.
    """
    if section not in SECTIONS:
        raise _unknown_section(section, source)
    if key is not None and key not in FIELD_TYPES[section]:
        raise _unknown_key(section, key, source)


# --------------------------------------------------------------------------- loading


def _coerced(section: str, key: str, value: Any, source: str) -> Any:
    """``value`` as ``section.key`` stores it: the name and the type checked, not the range."""
    check_setting_name(section, key, source)
    try:
        return coerce(value, FIELD_TYPES[section][key], f"{section}.{key}")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def _merge(cfg: TrainConfig, data: Mapping[str, Any], source: str) -> None:
    """Apply a ``{section: {key: value}}`` mapping onto ``cfg`` (types checked, values not)."""
    for section, table in data.items():
        check_setting_name(section, source=source)
        if not isinstance(table, Mapping):
            raise ConfigError(
                f"{source}: [{section}] must be a table of settings, got {table!r}; "
                f"valid keys of [{section}]: {', '.join(FIELD_TYPES[section])}"
            )
        for key, value in table.items():
            setattr(getattr(cfg, section), key, _coerced(section, key, value, source))


# --------------------------------------------------------------------------- value checks


def _check_across(cfg: TrainConfig) -> list[str]:
    """Checks that involve two sections; run only once each section is valid on its own."""
    run, schedule, found = cfg.run, cfg.schedule, []
    if run.micro_batch_size is not None and run.micro_batch_size > run.batch_size:
        found.append(
            f"run.micro_batch_size ({run.micro_batch_size}) must be <= run.batch_size "
            f"({run.batch_size}): it is a part of the per-rank batch"
        )
    if run.dtype == "float64" and run.amp == "bf16":
        found.append('run.amp = "bf16" contradicts run.dtype = "float64"; use amp = "none"')
    last_epoch = math.ceil(run.epochs)
    if run.measure_epochs and not run.measures:
        found.append("run.measure_epochs is set but run.measures is empty; name the measures")
    late = [e for e in run.measure_epochs if e > last_epoch]
    if late:
        found.append(f"run.measure_epochs {late} lie after the last epoch ({last_epoch})")
    uses = {key: schedule.name in spec.applies_to for key, spec in SETTINGS["schedule"].items()}
    if uses["warmup_epochs"] and schedule.warmup_epochs > run.epochs:
        found.append(
            f"schedule.warmup_epochs ({schedule.warmup_epochs:g}) must be <= run.epochs "
            f"({run.epochs:g}) for the {schedule.name} schedule"
        )
    # The schedules require η_init, η_final <= η_peak (cosine starts at 0: no init_lr).
    peak = peak_lr(cfg)
    for key in ("init_lr", "final_lr"):
        value = getattr(schedule, key)
        if uses[key] and value > peak:
            found.append(f"schedule.{key} ({value:g}) must be <= the peak lr ({peak:g})")
    return found


def _check_values(cfg: TrainConfig) -> None:
    """Raise one :class:`ConfigError` listing every value outside its valid set or range."""
    found = [
        text
        for section, settings in SETTINGS.items()
        for key, spec in settings.items()
        if spec.constraint is not None
        for text in problems(
            spec.constraint, f"{section}.{key}", getattr(getattr(cfg, section), key)
        )
    ]
    if not found:  # cross-section checks would only repeat (or trip over) earlier problems
        found = _check_across(cfg)
    if len(found) == 1:
        raise ConfigError(found[0])
    if found:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(found))


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
        f"{key} {toml_value(a)} ({old}) -> {toml_value(b)} ({new})" for key, a, b in differences
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
    return split_override(text, FIELD_TYPES)


def _typed_override(text: str) -> tuple[str, str, Any, str]:
    """``(section, key, value, source)`` of an override, its name and type checked."""
    section, key, raw = parse_override(text)
    source = f"override {text!r}"
    check_setting_name(section, key, source)
    value = _coerced(section, key, override_value(raw, FIELD_TYPES[section][key]), source)
    return section, key, value, source


def _apply_override(cfg: TrainConfig, text: str) -> None:
    # Only the type here: the range is checked once every override is applied, since a later
    # override may repair an earlier value.
    section, key, value, _ = _typed_override(text)
    setattr(getattr(cfg, section), key, value)


def check_override(text: str) -> tuple[str, Any]:
    """Check one ``section.key=value`` override on its own: name, type and valid range.

    What needs the whole configuration (a value against another section) waits for
    :func:`load_config`; this is for callers that read an override before loading one (a
    study plan reading ``run.epochs``).

    Args:
        text: the override, e.g. ``"run.epochs=2"``.

    Returns:
        ``("section.key", value)``, the value as the config stores it.

    Raises:
        ConfigError: malformed, unknown name, wrong type or out of range; the message says what
            is valid.
    """
    section, key, value, source = _typed_override(text)
    constraint = SETTINGS[section][key].constraint
    found = problems(constraint, f"{section}.{key}", value) if constraint else []
    if found:
        raise ConfigError(f"{source}: {found[0]}")
    return f"{section}.{key}", value


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
        _merge(cfg, read_toml(path), str(path))
    for text in overrides:
        _apply_override(cfg, text)
    # Values are checked once everything is applied: an override may repair a file's setting.
    _check_values(cfg)
    return cfg


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
        lines = [f"[{section}]", *(f"{k} = {toml_value(v)}" for k, v in values.items())]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)
