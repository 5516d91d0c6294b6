"""The registry type: options read from the builder's signature, one bind, one miss message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pytest

from biasdecay.constraints import ConstraintError, Range
from biasdecay.data import DATASETS
from biasdecay.decay.policies import POLICIES
from biasdecay.nn.models import MODELS
from biasdecay.optim import OPTIMIZERS
from biasdecay.registry import REQUIRED, Entry, OptionError, Registry, RegistryError
from biasdecay.schedules import SCHEDULES
from biasdecay.sharpness.suite import MEASURES


def _build(
    step: int,
    *,
    rate: Annotated[float, Range(0.0, low_open=True)],
    power: float = 2.0,
    label: str = "x",
) -> tuple:
    """A toy builder.

    Args:
        step: not an option (fixed).
        rate: the rate, > 0.
        power: the exponent; a long line that
            continues here.

    Returns:
        Its arguments.
    """
    return step, rate, power, label


TOY = Registry(
    "toy",
    [Entry("b", _build, {"power": 3.0}, "the toy", fixed=("step",)), Entry("a", _build)],
    sort=True,
    option_help={"label": "a shared help line"},
)


def test_options_come_from_the_signature_once() -> None:
    options = TOY.entry("b").options
    assert list(options) == ["rate", "power", "label"]
    assert options["rate"].default is REQUIRED and options["rate"].required
    assert options["power"].default == 3.0  # the entry's default over the signature's
    assert TOY.entry("a").options["power"].default == 2.0
    assert options["rate"].constraint == Range(0.0, low_open=True)  # from the annotation
    assert options["power"].help == "the exponent; a long line that continues here."
    assert options["label"].help == "a shared help line"
    assert "step" in TOY.entry("a").options  # not fixed there


def test_listing_order_and_the_miss_message() -> None:
    assert list(TOY) == TOY.names() == ["a", "b"] and len(TOY) == 2 and "a" in TOY
    with pytest.raises(RegistryError, match=r"^unknown toy 'c'; valid names: a, b$"):
        TOY.entry("c")
    with pytest.raises(RegistryError, match="did you mean 'b'"):
        TOY.entry("bb")
    with pytest.raises(KeyError):
        TOY["c"]  # the mapping protocol stays a mapping's


def test_bind_refuses_unknown_and_missing_options_and_bad_values() -> None:
    assert TOY.bind("b", rate=1) == {"power": 3.0, "rate": 1.0}
    assert TOY.build("b", 7, rate=0.5) == (7, 0.5, 3.0, "x")
    with pytest.raises(OptionError, match=r"unknown option\(s\) rat; valid options: rate, power"):
        TOY.bind("b", rat=1.0)
    with pytest.raises(OptionError, match="did you mean rate"):
        TOY.bind("b", rat=1.0)
    with pytest.raises(OptionError, match=r"toy 'b' is missing required option\(s\) rate"):
        TOY.bind("b")
    with pytest.raises(ConstraintError, match=r"^toy 'b': rate must be in \(0, inf\), got 0.0$"):
        TOY.bind("b", rate=0)
    assert issubclass(OptionError, TypeError) and issubclass(OptionError, ValueError)


def test_entries_are_frozen_and_checked() -> None:
    entry = TOY.entry("b")
    with pytest.raises(TypeError):
        entry.defaults["power"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError, match="defaults for options the builder lacks"):
        Entry("x", _build, {"nope": 1})
    with pytest.raises(ValueError, match="registered twice"):
        Registry("toy", [Entry("a", _build), Entry("a", _build)])


def test_shared_option_as_the_first_entry_defines_it() -> None:
    option, names = OPTIMIZERS.option("eps", ("lamb", "adamw"))
    assert option.default == 1e-6 and names == ("lamb", "adamw")  # LAMB's own default
    option, names = POLICIES.option("beta")
    assert option.default == 1.0 and names == ("beta_decay", "adaptive_beta_decay")
    with pytest.raises(ValueError, match="not accepted"):
        OPTIMIZERS.option("eps", ("sgd",))


def test_any_named_object_can_be_an_entry() -> None:
    @dataclass(frozen=True)
    class Preset:
        name: str
        description: str

    presets = Registry("preset", [Preset("quick", "q"), Preset("paper", "p")])
    assert presets.entry("quick").description == "q"
    with pytest.raises(RegistryError, match="unknown preset 'quik'.*did you mean 'quick'"):
        presets.entry("quik")


@pytest.mark.parametrize("registry", [OPTIMIZERS, SCHEDULES, POLICIES, MODELS, DATASETS, MEASURES])
def test_every_registry_is_one_type_with_described_entries(registry) -> None:
    assert isinstance(registry, Registry)
    for name in registry:
        entry = registry.entry(name)
        assert isinstance(entry, Entry) and entry.name == name and entry.description
        assert all(
            line.startswith(option)
            for option, line in zip(entry.options, entry.describe_options(), strict=True)
        )


def test_a_builder_taking_kwargs_leaves_extra_options_to_it() -> None:
    assert DATASETS.entry("cifar10").open_options  # load_cifar10(..., **options)
    assert not DATASETS.entry("synthetic").open_options
    with pytest.raises(OptionError, match="did you mean num_samples"):
        DATASETS.bind("synthetic", num_sample=3)
    # An extra option goes through unchecked, to the builder's own **kwargs.
    bound = DATASETS.bind("cifar10", root="/data", expect_standard_size=False)
    assert bound["expect_standard_size"] is False
