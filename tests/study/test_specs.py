"""Study specs and presets: the paper's grids exactly, and scaling that keeps batch/data ratios."""

from __future__ import annotations

import math

import pytest

from biasdecay.registry import RegistryError
from biasdecay.study.plan import load_plan, make_plan, save_plan
from biasdecay.study.presets import GHOST_BATCH, PRESETS, get_preset, steps_per_epoch
from biasdecay.study.specs import PAPER_DATA, STUDIES, Setting, batch_text, get_study
from biasdecay.train.config import load_config

ROOTS = {"cifar10": "/data/c10", "cifar100": "/data/c100", "imagenet": "/data/in"}


def _grid(study: str) -> set[tuple]:
    return {
        (s.dataset, s.model, s.batch, s.policy, s.coefficient, s.weight_decay, round(s.peak_lr, 6))
        for s in get_study(study).settings
    }


def test_table1_is_batch_by_weight_decay_with_sgd() -> None:
    study = get_study("table1")
    assert {(s.batch, s.weight_decay) for s in study.settings} == {
        (512, 0.0), (512, 0.005), (8192, 0.0), (8192, 0.005)
    }  # fmt: skip
    assert all(
        (s.optimizer, s.lr, s.schedule, s.policy) == ("sgd", 0.1, "cosine", "all_decay")
        for s in study.settings
    )
    assert set(study.measures) == {"hessian-trace", "hessian-max"}


def test_figure1_is_the_base_run_and_eight_one_factor_ablations() -> None:
    base = ("cifar10", "vgg11", 8192, "no_bias_decay", None, 0.01, 0.02)
    assert _grid("figure1") == {
        base,
        ("cifar10", "vgg11", 512, "no_bias_decay", None, 0.01, 0.02),
        ("cifar10", "vgg11", 2048, "no_bias_decay", None, 0.01, 0.02),
        ("cifar10", "vgg11", 8192, "no_bias_decay", None, 0.1, 0.02),
        ("cifar10", "vgg11", 8192, "no_bias_decay", None, 0.001, 0.02),
        ("cifar10", "vgg11", 8192, "no_bias_decay", None, 0.01, 0.05),
        ("cifar10", "vgg11", 8192, "no_bias_decay", None, 0.01, 0.01),
        ("cifar10", "vgg11", 8192, "bias_decay", 0.1, 0.01, 0.02),
        ("cifar10", "vgg11", 8192, "bias_decay", 1.0, 0.01, 0.02),
    }
    for name, dataset, model in (
        ("figure5", "cifar100", "vgg11"),
        ("figure6", "cifar10", "vgg19_bn"),
        ("figure7", "cifar100", "vgg19_bn"),
    ):
        assert {(d, m) for d, m, *_ in _grid(name)} == {(dataset, model)}
        assert len(get_study(name).settings) == 9
    assert set(get_study("figure1").measures) == {"hessian-trace", "fisher-rao", "connectivity-m"}


def test_tables_3_4_5_and_the_evolution_study() -> None:
    table3 = get_study("table3").settings
    assert len(table3) == 18
    assert {(s.dataset, s.model, s.batch) for s in table3} == {
        ("cifar10", "resnet18", 8192), ("cifar100", "resnet18", 8192),
        ("imagenet", "resnet50d", 32768),
    }  # fmt: skip
    assert {(s.policy, s.coefficient) for s in table3} == {
        ("no_bias_decay", None), ("bn_frozen", None), ("gamma_frozen", None),
        ("gamma_decay", 0.01), ("beta_frozen", None), ("beta_decay", 1.0),
    }  # fmt: skip
    table4 = [(s.dataset, s.batch, s.policy) for s in get_study("table4").settings]
    row = [(512, "no_bias_decay"), (2048, "no_bias_decay"), (8192, "no_bias_decay"),
           (8192, "beta_decay"), (8192, "adaptive_beta_decay")]  # fmt: skip
    assert table4 == [("cifar10", *c) for c in row] + [("cifar100", *c) for c in row]
    table5 = [(s.model, s.batch, s.policy) for s in get_study("table5").settings]
    assert table5 == [
        ("resnet50d", 1024, "no_bias_decay"), ("resnet50d", 32768, "no_bias_decay"),
        ("resnet50d", 32768, "beta_decay"), ("resnet50d", 32768, "adaptive_beta_decay"),
    ]  # fmt: skip
    evolution = get_study("evolution")
    assert evolution.track and {s.policy for s in evolution.settings} == {
        "no_bias_decay", "beta_decay", "gamma_decay", "all_decay"
    }  # fmt: skip


def test_peak_lr_follows_appendix_a2() -> None:
    assert Setting("cifar10", "resnet18", 8192).peak_lr == pytest.approx(0.04)
    assert Setting("cifar10", "resnet18", 512).peak_lr == pytest.approx(0.01)
    assert Setting("imagenet", "resnet50d", 32768).peak_lr == pytest.approx(0.04)
    assert Setting("imagenet", "resnet50d", 1024).peak_lr == pytest.approx(0.04 * math.sqrt(1 / 32))
    assert Setting("cifar10", "vgg11", 512, lr=0.02).peak_lr == 0.02
    assert [batch_text(b) for b in (512, 2048, 8192, 32768, 1000)] == [
        "512", "2k", "8k", "32k", "1000"
    ]  # fmt: skip


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown paper data set 'mnist'"):
        Setting("mnist", "resnet18", 512)
    with pytest.raises(ValueError, match="takes no coefficient"):
        Setting("cifar10", "resnet18", 512, policy="no_bias_decay", coefficient=1.0)
    with pytest.raises(RegistryError, match="unknown study 'table9'; valid names: table1, figure1"):
        get_study("table9")
    with pytest.raises(
        RegistryError, match="unknown preset 'gpu'; valid names: paper, fashion, cpu"
    ):
        get_preset("gpu")


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "paper"])
def test_scaled_batches_keep_their_share_of_the_training_set(preset) -> None:
    p = get_preset(preset)
    for study in STUDIES.values():
        for setting in study.settings:
            scaled = p.scale(setting)
            if scaled is None:
                assert p.datasets[setting.dataset] is None
                continue
            share = setting.batch / PAPER_DATA[setting.dataset].train_size
            assert scaled.batch % GHOST_BATCH == 0
            if scaled.batch > GHOST_BATCH:  # not clamped to one ghost batch
                assert abs(scaled.batch - share * scaled.train_size) <= GHOST_BATCH / 2
            if scaled.micro_batch is not None:
                assert scaled.batch % scaled.micro_batch == 0
                assert scaled.micro_batch % GHOST_BATCH == 0
                assert scaled.micro_batch <= p.micro_batch_cap


def test_the_cpu_preset_keeps_the_papers_steps_per_epoch() -> None:
    scaled = get_preset("cpu").scale(Setting("cifar10", "resnet18", 8192))
    assert (scaled.dataset, scaled.train_size, scaled.batch) == ("fashion-mnist", 2_048, 320)
    assert steps_per_epoch(scaled) == 50_000 // 8192 == 6
    paper = get_preset("paper").scale(Setting("imagenet", "resnet50d", 32768))
    assert (paper.dataset, paper.batch, paper.epochs, paper.width) == ("imagenet", 32768, 90, 1.0)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_planned_run_is_a_valid_training_config(preset) -> None:
    for name in STUDIES:
        plan = make_plan(name, preset, seeds=2, data_roots=ROOTS, extra=("run.compile=true",))
        names = [r.name for r in plan.runs]
        assert len(set(names)) == len(names) == 2 * (len(plan.study.settings) - len(plan.skipped))
        for run in plan.runs:
            cfg = load_config(None, [*run.spec.overrides, "run.out=x"])
            assert cfg.model.name == run.setting.model and cfg.run.seed == run.seed
            assert cfg.run.batch_size == run.scaled.batch and cfg.run.compile
            assert cfg.optimizer.lr == pytest.approx(run.setting.peak_lr)
            assert cfg.run.measures == list(plan.study.measures) or not plan.study.measures
            if run.setting.coefficient is not None:
                field = run.setting.coefficient_field
                assert getattr(cfg.policy, field) == run.setting.coefficient
            if preset == "paper":
                assert cfg.data.root == ROOTS[run.setting.dataset]


def test_a_sweep_directory_keeps_its_study_and_preset(tmp_path) -> None:
    plan = make_plan("table2", "cpu", seeds=3)
    save_plan(plan, tmp_path)
    again = load_plan(tmp_path)
    assert (again.study.name, again.preset.name, again.seeds) == ("table2", "cpu", 3)
    assert [r.name for r in again.runs] == [r.name for r in plan.runs]
    with pytest.raises(ValueError, match="holds a sweep of preset 'cpu', not 'fashion'"):
        save_plan(make_plan("table2", "fashion"), tmp_path)
    with pytest.raises(ValueError, match="not a study sweep directory"):
        load_plan(tmp_path / "elsewhere")


def test_an_extra_epochs_override_moves_the_final_measures_with_it() -> None:
    plan = make_plan("main", "fashion", extra=("run.epochs=200",))
    cfg = load_config(None, [*plan.runs[0].spec.overrides, "run.out=x"])
    assert cfg.run.epochs == 200 and cfg.run.measure_epochs == [200]
    assert plan.runs[0].scaled.epochs == 200
    with pytest.raises(ValueError, match="run.epochs: expected float, got 'many'"):
        make_plan("main", "cpu", extra=("run.epochs=many",))


def test_first_seed_replicates_a_study_on_fresh_seeds(tmp_path) -> None:
    plan = make_plan("main", "smoke", seeds=2, first_seed=3)
    assert sorted({r.seed for r in plan.runs}) == [3, 4]
    assert all(r.name.endswith(("-s3", "-s4")) for r in plan.runs)
    save_plan(plan, tmp_path)
    again = load_plan(tmp_path)
    assert (again.seeds, again.first_seed) == (2, 3)
    with pytest.raises(ValueError, match="first_seed 3, not 0"):
        save_plan(make_plan("main", "smoke", seeds=2), tmp_path)
    with pytest.raises(ValueError, match="first seed must be >= 0"):
        make_plan("main", "smoke", first_seed=-1)
