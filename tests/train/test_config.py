"""The typed training config: defaults, precedence, error messages, None, round trips, files."""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from pathlib import Path
from typing import Annotated

import pytest

from biasdecay.constraints import Range
from biasdecay.data import dataset_names
from biasdecay.decay import policy_names
from biasdecay.nn.models import model_names
from biasdecay.optim import optimizer_names
from biasdecay.train.config import (
    SECTIONS,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    TrainConfig,
    check_config,
    config_from_dict,
    config_to_dict,
    dump_toml,
    load_config,
    parse_override,
    peak_lr,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    return str(info.value)


# ---- defaults -----------------------------------------------------------------------------------


def test_defaults_are_the_papers_cifar_setting() -> None:
    cfg = load_config()
    assert cfg == TrainConfig()
    assert list(config_to_dict(cfg)) == ["model", "data", "optimizer", "policy", "schedule", "run"]
    assert (cfg.model.name, cfg.model.width, cfg.model.ghost_batch_size) == ("resnet18", 1.0, 32)
    assert (cfg.data.name, cfg.data.root, cfg.data.augment) == ("cifar10", None, "cifar")
    opt = cfg.optimizer
    assert (opt.name, opt.lr, opt.base_lr, opt.base_batch_size) == ("lamb", None, 0.04, 8192)
    assert (opt.lr_scaling, opt.weight_decay, opt.betas) == ("sqrt", 0.01, (0.9, 0.999))
    assert opt.layer_adaptation == "decayed" and opt.max_grad_norm is None
    assert (cfg.policy.name, cfg.policy.beta, cfg.policy.threshold) == ("no_bias_decay", 1.0, 0.1)
    sched = cfg.schedule
    assert (sched.name, sched.warmup_fraction, sched.warmup_epochs) == ("polynomial", 0.3, 10.0)
    assert (sched.warmup_power, sched.decay_power, sched.init_lr, sched.final_lr) == (2, 2, 0, 0)
    run = cfg.run
    assert (run.epochs, run.batch_size, run.micro_batch_size, run.measure_epochs) == (
        200.0,
        8192,
        None,
        [],
    )
    assert (run.device, run.dtype, run.amp, run.channels_last) == ("auto", "float32", "auto", None)
    assert peak_lr(cfg) == 0.04


def test_sections_are_independent_instances() -> None:
    a, b = TrainConfig(), TrainConfig()
    a.run.measure_epochs.append(3)
    assert b.run.measure_epochs == []
    assert SECTIONS["run"] is RunConfig


# ---- file and override precedence ---------------------------------------------------------------


def test_file_then_overrides_in_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[run]\nepochs = 5\nbatch_size = 512\n\n[optimizer]\nname = "sgd"\nlr = 0.1\n',
    )
    cfg = load_config(path, ["run.epochs=2", "run.epochs=3", "optimizer.momentum=0.8"])
    assert cfg.run.epochs == 3.0 and isinstance(cfg.run.epochs, float)  # the last override wins
    assert cfg.run.batch_size == 512  # from the file
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum) == ("sgd", 0.1, 0.8)
    assert cfg.model == ModelConfig()  # untouched sections keep their defaults
    assert load_config(str(path)).run.epochs == 5.0  # str paths too


def test_override_values_are_toml_or_bare_words() -> None:
    cfg = load_config(
        overrides=[
            "optimizer.betas=[0.9, 0.99]",
            'data.root="~/data"',
            "policy.name=beta_decay",  # not TOML: taken as a string
            "data.name = fashion-mnist",  # spaces around '=' are fine
            "run.device=cuda:1",
            "run.compile=true",
            "run.measure_epochs=[0, 100, 200]",
            "run.out=2024-01-01",  # a TOML date, but out is a path
            "run.divergence_loss=inf",
            "optimizer.eps=1e-8",
        ]
    )
    assert cfg.optimizer.betas == (0.9, 0.99)
    assert cfg.data.root == "~/data" and cfg.data.name == "fashion-mnist"
    assert cfg.policy.name == "beta_decay" and cfg.run.device == "cuda:1"
    assert cfg.run.compile is True and cfg.run.measure_epochs == [0, 100, 200]
    assert cfg.run.out == "2024-01-01" and cfg.run.divergence_loss == math.inf
    assert cfg.optimizer.eps == 1e-8


def test_an_override_may_repair_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[schedule]\nname = "cosine"\n[run]\nepochs = 5\n')  # 10 warm-up epochs
    assert "schedule.warmup_epochs" in error_of(path)
    assert load_config(path, ["schedule.warmup_epochs=1"]).schedule.warmup_epochs == 1.0


# ---- None ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["none", "None", "null"])
def test_none_words_set_optional_fields(word: str) -> None:
    cfg = load_config(
        overrides=[
            "model.ghost_batch_size=32",
            f"model.ghost_batch_size={word}",
            "optimizer.lr=0.5",
            f"optimizer.lr={word}",
            f"run.channels_last={word}",
            f"data.augment={word}",
        ]
    )
    assert cfg.model.ghost_batch_size is None and cfg.optimizer.lr is None
    assert cfg.run.channels_last is None and cfg.data.augment is None


def test_none_string_in_files(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[model]\nghost_batch_size = "none"\n[data]\naugment = "none"\npad_to = 32\n'
        '[run]\namp = "none"\nmax_steps = "null"\n',
    )
    cfg = load_config(path)
    assert cfg.model.ghost_batch_size is None and cfg.data.augment is None
    assert cfg.data.pad_to == 32 and cfg.run.max_steps is None
    assert cfg.run.amp == "none"  # a plain str field keeps the word: it is a mode


def test_none_is_refused_for_required_fields() -> None:
    message = error_of(overrides=["run.epochs=none"])
    assert "run.epochs" in message and "expected float" in message and "'none'" in message
    message = error_of(overrides=["model.name=none"])
    assert "model.name" in message and "resnet18" in message  # a str field: an unknown name


# ---- types --------------------------------------------------------------------------------------


def test_int_is_accepted_for_float_but_not_the_reverse() -> None:
    assert load_config(overrides=["model.width=2"]).model.width == 2.0
    message = error_of(overrides=["run.batch_size=512.0"])
    assert "run.batch_size" in message and "expected int" in message and "512.0" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("run.batch_size=true", "expected int"),
        ("model.width=false", "expected float"),
        ("run.epochs=abc", "expected float"),
        ("run.compile=1", "expected bool"),
        ("run.tensorboard=yes", "expected bool"),
        ("optimizer.lr=[0.1]", "expected float or none"),
        ("run.measure_epochs=3", "expected a list of ints"),
    ],
)
def test_wrong_types_name_key_value_and_type(override: str, expected: str) -> None:
    key, _, value = override.partition("=")
    message = error_of(overrides=[override])
    assert key in message and expected in message and value.strip("[]") in message


def test_tuples_and_lists_are_checked_element_by_element() -> None:
    assert load_config(overrides=["optimizer.betas=[0.8, 1]", "optimizer.betas=[0.8, 0.9]"])
    message = error_of(overrides=["optimizer.betas=[0.9]"])
    assert (
        "optimizer.betas" in message and "a list of 2 floats" in message and "length 1" in message
    )
    message = error_of(overrides=["optimizer.betas=[0.9, true]"])
    assert "optimizer.betas[1]" in message and "expected float" in message
    message = error_of(overrides=["run.measure_epochs=[1, 2.5]"])
    assert "run.measure_epochs[1]" in message and "expected int" in message and "2.5" in message
    assert load_config(overrides=["run.measure_epochs=[]"]).run.measure_epochs == []


def test_betas_range_after_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, "[optimizer]\nbetas = [0.8, 1]\n")
    message = error_of(path)
    assert "optimizer.betas[1]" in message and "[0, 1)" in message


def test_type_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[run]\nseed = "zero"\n')
    message = error_of(path)
    assert str(path) in message and "run.seed" in message and "expected int" in message


# ---- unknown names ------------------------------------------------------------------------------


def test_unknown_section_lists_sections_and_suggests(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "[optimiser]\nlr = 0.1\n"))
    assert "unknown section [optimiser]" in message
    assert "model, data, optimizer, policy, schedule, run" in message
    assert "did you mean [optimizer]?" in message
    message = error_of(overrides=["rn.epochs=1"])
    assert "[rn]" in message and "did you mean [run]?" in message


def test_top_level_key_points_at_its_section(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "epochs = 3\n"))
    assert "[epochs]" in message and "did you mean run.epochs?" in message


def test_unknown_key_lists_keys_and_suggests(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "[optimizer]\nweight_decy = 0.1\n"))
    assert "unknown key optimizer.weight_decy" in message
    assert "valid keys of [optimizer]: name, lr, base_lr" in message
    assert "did you mean optimizer.weight_decay?" in message
    message = error_of(overrides=["optimizer.epochs=3"])  # a real key in the wrong section
    assert "did you mean run.epochs?" in message


def test_a_replaced_key_names_its_successor(tmp_path: Path) -> None:
    for message in (
        error_of(write(tmp_path, "[optimizer]\ntrust_ratio = true\n")),
        error_of(overrides=["optimizer.trust_ratio=false"]),
    ):
        assert "optimizer.trust_ratio was replaced by optimizer.layer_adaptation" in message
        assert '"all"' in message and '"none"' in message and '"decayed"' in message


def test_section_must_be_a_table(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, 'model = "resnet18"\n'))
    assert "[model] must be a table" in message and "ghost_batch_size" in message


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("model.name=resnet19", model_names()),
        ("data.name=cifar", dataset_names()),
        ("optimizer.name=lamb2", optimizer_names()),
        ("policy.name=beta_decy", policy_names()),
        ("schedule.name=cosin", ["polynomial", "cosine", "constant"]),
        ("data.augment=crop", ["cifar", "flip", "none"]),
        ("optimizer.lr_scaling=square", ["sqrt", "linear", "none"]),
        ("run.dtype=float16", ["float32", "float64"]),
        ("run.amp=fp16", ["auto", "bf16", "none"]),
        ("run.device=gpu", ["auto", "cpu", "cuda", "cuda:N"]),
        ("optimizer.layer_adaptation=some", ["decayed", "all", "none"]),
        ("run.measure_split=val", ["train", "test"]),
    ],
)
def test_registry_names_are_checked(override: str, names: list[str]) -> None:
    key, _, value = override.partition("=")
    message = error_of(overrides=[override])
    assert key in message and repr(value) in message
    assert all(name in message for name in names)


def test_close_registry_name_is_suggested() -> None:
    assert "did you mean 'beta_decay'?" in error_of(overrides=["policy.name=beta_decy"])
    assert "did you mean 'resnet18'?" in error_of(overrides=["model.name=resnet19"])


# ---- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "range_text"),
    [
        ("run.epochs=0", "(0, inf)"),
        ("run.epochs=nan", "(0, inf)"),
        ("run.epochs=inf", "(0, inf)"),
        ("run.batch_size=0", "[1, inf)"),
        ("run.micro_batch_size=0", "[1, inf)"),
        ("optimizer.lr=-0.1", "(0, inf)"),
        ("optimizer.base_lr=0", "(0, inf)"),
        ("optimizer.base_batch_size=0", "[1, inf)"),
        ("optimizer.weight_decay=-1e-3", "[0, inf)"),
        ("optimizer.momentum=1", "[0, 1)"),
        ("optimizer.eps=0", "(0, inf)"),
        ("optimizer.max_grad_norm=0", "(0, inf)"),
        ("model.width=0", "(0, inf)"),
        ("model.ghost_batch_size=0", "[1, inf)"),
        ("data.train_samples=0", "[1, inf)"),
        ("data.pad_to=-32", "[1, inf)"),
        ("policy.beta=-1", "[0, inf)"),
        ("policy.threshold=nan", "[0, inf]"),
        ("schedule.warmup_fraction=1.5", "[0, 1]"),
        ("schedule.warmup_power=0", "(0, inf)"),
        ("run.keep_checkpoints=0", "[1, inf)"),
        ("run.log_every=0", "[1, inf)"),
        ("run.eval_every=-1", "[0, inf)"),
        ("run.seed=-1", "[0, inf)"),
        ("run.measure_samples=0", "[1, inf)"),
        ("run.max_steps=0", "[1, inf)"),
        ("run.divergence_loss=0", "(0, inf]"),
        ("run.measure_epochs=[-1]", "[0, inf)"),
    ],
)
def test_out_of_range_values_name_key_and_range(override: str, range_text: str) -> None:
    key = override.partition("=")[0]
    if key == "run.measure_epochs":
        key += "[0]"
    message = error_of(overrides=[override])
    assert key in message and range_text in message


def test_every_problem_is_reported_at_once() -> None:
    message = error_of(overrides=["run.epochs=0", "optimizer.lr=-1", "run.amp=fp8"])
    assert "run.epochs" in message and "optimizer.lr" in message and "run.amp" in message


def test_threshold_may_be_infinite() -> None:
    assert load_config(overrides=["policy.threshold=inf"]).policy.threshold == math.inf


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["run.batch_size=512", "run.micro_batch_size=1024"], ["run.micro_batch_size"]),
        (["run.dtype=float64", "run.amp=bf16"], ["run.amp", "run.dtype"]),
        (["run.epochs=2", "run.measure_epochs=[1, 5]"], ["run.measure_epochs", "[5]"]),
        (["optimizer.lr=0.01", "schedule.final_lr=0.02"], ["schedule.final_lr", "peak lr"]),
        (["schedule.init_lr=0.05"], ["schedule.init_lr", "0.04"]),  # sqrt-scaled peak 0.04
    ],
)
def test_checks_across_sections(overrides: list[str], keys: list[str]) -> None:
    message = error_of(overrides=overrides)
    assert all(key in message for key in keys)


def test_micro_batch_divisibility_is_left_to_the_engine() -> None:
    # 8192 / 3 ranks is not whole, but the world size is unknown here.
    assert load_config(overrides=["run.micro_batch_size=3000"]).run.micro_batch_size == 3000


def test_peak_lr_follows_the_scaling_rule() -> None:
    assert peak_lr(load_config(overrides=["run.batch_size=2048"])) == 0.02  # 0.04·sqrt(1/4)
    linear = load_config(overrides=["run.batch_size=2048", "optimizer.lr_scaling=linear"])
    assert peak_lr(linear) == pytest.approx(0.01)
    fixed = load_config(overrides=["run.batch_size=2048", "optimizer.lr_scaling=none"])
    assert peak_lr(fixed) == 0.04
    assert peak_lr(load_config(overrides=["optimizer.lr=0.3"])) == 0.3


# ---- malformed input ----------------------------------------------------------------------------


@pytest.mark.parametrize("override", ["run.epochs", "epochs=2", "=2", "run.=2", "a.b.c=1"])
def test_malformed_overrides_show_the_form(override: str) -> None:
    message = error_of(overrides=[override])
    assert "section.key=value" in message and repr(override) in message


def test_malformed_override_suggests_the_section() -> None:
    assert "did you mean run.epochs=2?" in error_of(overrides=["epochs=2"])


def test_parse_override_splits_on_the_first_equals() -> None:
    assert parse_override(' data.root = "a=b" ') == ("data", "root", '"a=b"')
    assert load_config(overrides=['data.root="a=b"']).data.root == "a=b"


def test_a_single_string_is_not_a_list_of_overrides() -> None:
    assert "wrap it in a list" in error_of(overrides="run.epochs=2")


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    message = error_of(missing)
    assert "not found" in message and str(missing) in message


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[run]\nepochs = 2\nbatch_size = = 3\n")
    message = error_of(path)
    assert str(path) in message and "line 3" in message and "batch_size = = 3" in message


# ---- dicts and round trips ----------------------------------------------------------------------


def test_config_from_dict_and_check_config() -> None:
    cfg = config_from_dict({"run": {"epochs": 3}, "policy": {"name": "beta_decay"}})
    assert cfg.run.epochs == 3.0 and cfg.policy.name == "beta_decay"
    built = TrainConfig(optimizer=OptimizerConfig(betas=[0.9, 0.99]), run=RunConfig(epochs=4))
    checked = check_config(built)
    assert checked.optimizer.betas == (0.9, 0.99) and isinstance(checked.run.epochs, float)
    with pytest.raises(ConfigError, match="data.name"):
        check_config(TrainConfig(data=DataConfig(name="mnist")))
    with pytest.raises(ConfigError, match="model.width: expected float"):
        check_config(TrainConfig(model=ModelConfig(width="wide")))


def test_round_trip_of_the_defaults(tmp_path: Path) -> None:
    cfg = TrainConfig()
    text = dump_toml(cfg)
    assert load_config(write(tmp_path, text)) == cfg
    assert 'root = "none"' in text and "betas = [0.9, 0.999]" in text


def test_round_trip_of_unusual_values(tmp_path: Path) -> None:
    cfg = load_config(
        overrides=[
            'run.out="runs/a \\"quoted\\" \\\\ dir\\twith\\u007fcontrols é"',
            "run.divergence_loss=inf",
            "policy.threshold=inf",
            "optimizer.eps=1e-12",
            "optimizer.lr=0.1",
            "optimizer.betas=[0.5, 0.123456789012345678]",
            "run.measure_epochs=[0, 7]",
            "run.channels_last=false",
            "model.ghost_batch_size=none",
            "data.root=/tmp/data",
            "run.seed=9223372036854775807",
        ]
    )
    assert "\x7f" in cfg.run.out and "\t" in cfg.run.out
    text = dump_toml(cfg)
    tomllib.loads(text)  # valid TOML
    assert load_config(write(tmp_path, text)) == cfg
    assert config_from_dict(tomllib.loads(text)) == cfg


def test_dump_writes_nan_for_the_writer_contract() -> None:
    cfg = TrainConfig()
    cfg.run.divergence_loss = math.nan  # not a valid config, but the writer must not choke
    assert "divergence_loss = nan" in dump_toml(cfg)


def test_config_to_dict_is_a_deep_copy() -> None:
    cfg = TrainConfig()
    data = config_to_dict(cfg)
    data["run"]["measure_epochs"].append(1)
    assert cfg.run.measure_epochs == []
    assert data["optimizer"]["betas"] == (0.9, 0.999)


# ---- configs/ -----------------------------------------------------------------------------------

EXPECTED_FILES = {
    "cifar10_resnet18.toml",
    "cifar100_resnet18.toml",
    "cifar10_vgg11.toml",
    "cifar10_vgg19_bn.toml",
    "cifar100_vgg19_bn.toml",
    "imagenet_resnet50d.toml",
    "cifar10_resnet18_sgd.toml",
    "fashion_resnet18_gpu.toml",
    "fashion_resnet18_cpu.toml",
}


def test_the_paper_configs_exist() -> None:
    assert EXPECTED_FILES <= {p.name for p in CONFIGS.glob("*.toml")}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_config_file_loads_and_says_what_it_reproduces(path: Path) -> None:
    cfg = load_config(path)
    assert path.read_text(encoding="utf-8").startswith("# ")
    assert cfg.run.out.startswith("runs/")
    if cfg.run.micro_batch_size is not None:
        assert cfg.run.batch_size % cfg.run.micro_batch_size == 0
        if cfg.model.ghost_batch_size is not None:  # exact ghost-BN accumulation
            assert cfg.run.micro_batch_size % cfg.model.ghost_batch_size == 0
    assert load_config(path, ["run.max_steps=1"]).run.max_steps == 1


def test_config_files_hold_the_papers_settings() -> None:
    load = lambda name: load_config(CONFIGS / name)  # noqa: E731
    for name in ("cifar10_resnet18.toml", "cifar100_resnet18.toml"):
        cfg = load(name)
        assert (cfg.optimizer.name, cfg.run.batch_size, cfg.run.epochs) == ("lamb", 8192, 200)
        assert (peak_lr(cfg), cfg.optimizer.weight_decay, cfg.model.ghost_batch_size) == (
            0.04,
            0.01,
            32,
        )
        assert (cfg.schedule.name, cfg.schedule.warmup_fraction) == ("polynomial", 0.3)
        assert cfg.policy.name == "no_bias_decay" and cfg.data.augment == "cifar"
    assert peak_lr(load("cifar10_vgg11.toml")) == 0.02  # Section 3.2's VGG runs
    assert load("cifar100_vgg19_bn.toml").data.name == "cifar100"
    imagenet = load("imagenet_resnet50d.toml")
    assert (imagenet.data.name, imagenet.model.name, imagenet.run.epochs) == (
        "imagenet",
        "resnet50d",
        90,
    )
    assert imagenet.run.batch_size == imagenet.optimizer.base_batch_size == 32768
    assert peak_lr(imagenet) == 0.04
    sgd = load("cifar10_resnet18_sgd.toml")
    assert (sgd.optimizer.name, peak_lr(sgd), sgd.optimizer.momentum) == ("sgd", 0.1, 0.9)
    assert (sgd.schedule.name, sgd.schedule.warmup_epochs) == ("cosine", 10.0)
    assert (sgd.policy.name, sgd.optimizer.weight_decay, sgd.run.batch_size) == (
        "all_decay",
        0.005,
        512,
    )
    cpu = load("fashion_resnet18_cpu.toml")
    assert (cpu.model.width, cpu.run.batch_size, cpu.run.micro_batch_size) == (0.25, 1024, 256)
    assert (cpu.run.epochs, cpu.run.device, cpu.run.dtype) == (2, "auto", "float32")
    gpu = load("fashion_resnet18_gpu.toml")
    assert (gpu.model.width, gpu.run.batch_size, gpu.run.epochs) == (1.0, 8192, 30)
    assert gpu.data.name == cpu.data.name == "fashion-mnist"


def test_dataclass_fields_match_the_engine_contract() -> None:
    names = {
        section: [f.name for f in dataclasses.fields(cls)] for section, cls in SECTIONS.items()
    }
    assert names["model"] == ["name", "width", "ghost_batch_size"]
    assert names["policy"][0] == "name"
    assert sorted(names["policy"][1:]) == ["beta", "bias", "decay_biases", "gamma", "threshold"]
    assert names["run"][-7:] == [
        "measure_epochs",
        "measure_samples",
        "measure_split",
        "measures",
        "measure_matvecs",
        "measure_lanczos_iters",
        "max_steps",
    ]


def test_run_measures_are_checked_against_the_suite() -> None:
    cfg = load_config(
        None, ['run.measures=["connectivity", "invariance"]', "run.measure_epochs=[1]"]
    )
    assert cfg.run.measures == ["connectivity", "invariance"]
    with pytest.raises(ConfigError, match="run.measures: unknown value 'hessian'; valid: conn"):
        load_config(None, ['run.measures=["hessian"]'])
    with pytest.raises(ConfigError, match="run.measures is empty"):
        load_config(None, ["run.measures=[]", "run.measure_epochs=[1]"])
    with pytest.raises(ConfigError, match="run.measure_matvecs"):
        load_config(None, ["run.measure_matvecs=0"])


# ---- settings derived from the registries -----------------------------------------------------


def test_component_defaults_are_the_builders_own() -> None:
    import inspect

    from biasdecay.optim import LAMB, LARS
    from biasdecay.schedules import polynomial_warmup_decay

    cfg = load_config()
    lamb = inspect.signature(LAMB).parameters
    assert cfg.optimizer.betas == lamb["betas"].default and cfg.optimizer.eps == lamb["eps"].default
    assert cfg.optimizer.max_grad_norm is lamb["max_grad_norm"].default
    assert cfg.optimizer.momentum == inspect.signature(LARS).parameters["momentum"].default
    poly = inspect.signature(polynomial_warmup_decay).parameters
    assert cfg.schedule.decay_power == poly["decay_power"].default


def test_setting_help_names_default_range_and_reach() -> None:
    from biasdecay.train.config_help import format_setting_help, setting_help

    (momentum,) = setting_help("optimizer.momentum")
    assert (momentum.default, momentum.valid, momentum.applies_to) == (
        0.9,
        "[0, 1)",
        ("lars", "sgd"),
    )
    assert momentum.help
    line = format_setting_help("optimizer.momentum")
    assert line.startswith("optimizer.momentum = 0.9  (float; [0, 1)) [only lars, sgd]: ")
    assert [h.key for h in setting_help("policy")][:2] == ["policy.name", "policy.decay_biases"]
    assert len(setting_help()) == sum(len(dataclasses.fields(c)) for c in SECTIONS.values())
    with pytest.raises(ConfigError, match="did you mean optimizer.momentum"):
        setting_help("optimizer.momentun")
    with pytest.raises(ConfigError, match=r"did you mean \[optimizer\]"):
        setting_help("optimiser")


def test_check_override_checks_one_setting_on_its_own() -> None:
    from biasdecay.train.config import check_override

    assert check_override("run.epochs=3") == ("run.epochs", 3.0)
    assert check_override("optimizer.betas=[0.9, 0.99]") == ("optimizer.betas", (0.9, 0.99))
    with pytest.raises(ConfigError, match=r"run.epochs must be in \(0, inf\), got 0.0"):
        check_override("run.epochs=0")
    with pytest.raises(ConfigError, match="expected float"):
        check_override("run.epochs=soon")
    with pytest.raises(ConfigError, match="did you mean run.epochs"):
        check_override("run.epoch=3")


# ---- the modules config is made of ---------------------------------------------------------------


def test_config_re_exports_what_moved_as_the_same_objects() -> None:
    import subprocess

    from biasdecay.train import config, config_fields, config_help, config_values

    assert config.ConfigError is config_values.ConfigError
    assert config.NONE_WORDS is config_values.NONE_WORDS
    assert config.Setting is config_fields.Setting
    assert config_help.setting_help  # the help lives in its own module, on top of the config
    assert all(hasattr(config, name) for name in config.__all__)
    # The help imports the config, never the other way round: each imports first on its own.
    for module in ("biasdecay.train.config_help", "biasdecay.train.config_values"):
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)


def test_values_take_any_type_hint_and_name_the_key() -> None:
    from biasdecay.train.config_values import coerce, describe_type, override_value

    assert describe_type(tuple[int, int, int]) == "a list of 3 ints"
    assert describe_type(list[str] | None) == "a list of strs or none"
    assert coerce([1, 2], tuple[float, float], "a.b") == (1.0, 2.0)
    assert coerce("null", int | None, "a.b") is None
    assert coerce("null", str, "a.b") == "null"  # a plain str keeps the word
    with pytest.raises(ConfigError, match=r"^a\.b\[1\]: expected int, got True \(bool\)$"):
        coerce([1, True], list[int], "a.b")
    with pytest.raises(ConfigError, match=r"expected a list of 2 ints, got \[1\] \(length 1\)"):
        coerce([1], tuple[int, int], "a.b")
    assert override_value("[1, 2]", list[int]) == [1, 2]
    assert override_value("2024-01-01", str | None) == "2024-01-01"  # a path, not a date
    assert override_value("1\nother = 2", int) == "1\nother = 2"


def test_split_override_suggests_the_section_of_a_bare_key() -> None:
    from biasdecay.train.config_values import sections_with_key, split_override

    keys = {"a": ("x",), "b": ("y", "x")}
    assert sections_with_key("x", keys) == ["a", "b"]
    assert split_override(" b.y = 3 ", keys) == ("b", "y", "3")
    with pytest.raises(ConfigError, match=r"did you mean a\.x=3\?$"):
        split_override("x=3", keys)
    with pytest.raises(
        ConfigError, match=r"expected the form section\.key=value \(e\.g\. [^)]*\)$"
    ):
        split_override("z=3", keys)


def test_read_toml_names_the_file(tmp_path: Path) -> None:
    from biasdecay.train.config_values import read_toml

    assert read_toml(write(tmp_path, "[a]\nx = 1\n")) == {"a": {"x": 1}}
    with pytest.raises(ConfigError, match="config file not found: .*nowhere.toml"):
        read_toml(tmp_path / "nowhere.toml")
    with pytest.raises(ConfigError, match=r"invalid TOML in .*run\.toml: .*\n  line 2: x = = 1"):
        read_toml(write(tmp_path, "[a]\nx = = 1\n"))


def test_check_setting_name_checks_a_section_or_a_key() -> None:
    from biasdecay.train.config import FIELD_TYPES, check_setting_name

    check_setting_name("run")
    check_setting_name("run", "epochs")
    assert FIELD_TYPES["run"]["epochs"] is float
    with pytest.raises(
        ConfigError, match=r"^here: unknown key run\.epoch; .*did you mean run\.epochs"
    ):
        check_setting_name("run", "epoch", "here")
    with pytest.raises(ConfigError, match=r"^setting: unknown section \[\]"):
        check_setting_name("")
    with pytest.raises(ConfigError, match="replaced by optimizer.layer_adaptation"):
        check_setting_name("optimizer", "trust_ratio")


def _plain_builder(*, rate: Annotated[float, Range(0.0)] = 0.5) -> None:
    """A toy builder.

    Args:
        rate: how fast.
    """


def _newer_builder(*, rate: float = 0.5, depth: Annotated[int, Range(1, integer=True)] = 3) -> None:
    """A toy builder with one option more.

    Args:
        rate: how fast.
        depth: a new option, in the builder only.
    """


def test_every_option_adds_a_field_for_each_option_a_builder_takes() -> None:
    from biasdecay.registry import Entry, Registry
    from biasdecay.train.config_fields import choice, every_option, setting_of

    toy = Registry("toy", [Entry("plain", _plain_builder), Entry("newer", _newer_builder)])

    @dataclasses.dataclass
    @every_option(toy, exclude=("rate",))
    class Section:
        name: str = choice(toy, "plain", "the toy")

    fields = {f.name: f for f in dataclasses.fields(Section)}
    assert list(fields) == ["name", "depth"]  # declared first; rate excluded
    assert Section().depth == 3 and typing.get_type_hints(Section)["depth"] is int
    depth = setting_of(fields["depth"])
    assert (depth.option, depth.applies_to, depth.help) == (
        "depth",
        ("newer",),
        "a new option, in the builder only.",
    )
    with pytest.raises(Exception, match=r"depth must be in \[1, inf\)"):
        depth.constraint.check("depth", 0)

    def untyped(*, depth=3) -> None: ...

    with pytest.raises(TypeError, match="option 'depth' has no resolvable type"):
        every_option(Registry("toy", [Entry("u", untyped)]))(type("S", (), {}))


def test_fields_carry_their_setting_and_read_options_from_the_registry() -> None:
    from biasdecay.optim import OPTIMIZERS
    from biasdecay.train.config_fields import Setting, option, setting, setting_of

    @dataclasses.dataclass
    class Section:
        steps: list[int] = setting([1], None, "when")
        momentum: float = option(OPTIMIZERS, "momentum", applies_to=("sgd",), help="μ")

    steps, momentum = dataclasses.fields(Section)
    assert setting_of(steps) == Setting(None, "when")
    assert Section().steps is not Section().steps  # a list default is copied per instance
    spec = setting_of(momentum)
    assert (spec.option, spec.applies_to, spec.help) == ("momentum", ("sgd",), "μ")
    assert Section().momentum == 0.9 and spec.constraint.describe() == "[0, 1)"
