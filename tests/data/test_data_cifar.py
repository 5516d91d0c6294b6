"""CIFAR-10/100 sources on tiny pickles written in the official dict layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from biasdecay.data import DataError, load_dataset


def dump(path: Path, content: dict) -> None:
    with path.open("wb") as handle:
        pickle.dump(content, handle)


def batch(n: int, label_key: bytes, num_classes: int, offset: int) -> dict:
    # each image's red plane is filled with its global index, so layout mistakes show up
    data = np.zeros((n, 3072), dtype=np.uint8)
    data[:, :1024] = (offset + np.arange(n))[:, None]
    data[:, 1024:2048] = 200  # green plane
    return {
        b"batch_label": b"testing batch",
        b"data": data,
        label_key: [int(v) for v in (offset + np.arange(n)) % num_classes],
        b"filenames": [b"x.png"] * n,
    }


def make_cifar10(parent: Path, per_batch: int = 3) -> Path:
    directory = parent / "cifar-10-batches-py"
    directory.mkdir()
    for i in range(5):
        dump(directory / f"data_batch_{i + 1}", batch(per_batch, b"labels", 10, i * per_batch))
    dump(directory / "test_batch", batch(2, b"labels", 10, 100))
    names = [f"class{i}".encode() for i in range(10)]
    dump(directory / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return directory


def make_cifar100(parent: Path) -> Path:
    directory = parent / "cifar-100-python"
    directory.mkdir()
    for name, n, offset in (("train", 7, 0), ("test", 3, 50)):
        content = batch(n, b"fine_labels", 100, offset)
        content[b"coarse_labels"] = [0] * n
        dump(directory / name, content)
    names = [f"fine{i}".encode() for i in range(100)]
    dump(directory / "meta", {b"fine_label_names": names, b"coarse_label_names": []})
    return directory


@pytest.mark.parametrize("use_parent", [True, False])
def test_cifar10_layout_and_split(tmp_path, use_parent):
    directory = make_cifar10(tmp_path)
    root = tmp_path if use_parent else directory
    train = load_dataset("cifar10", "train", root=root, expect_standard_size=False)
    test = load_dataset("cifar10", "test", root=root, expect_standard_size=False)
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (2, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.images.is_contiguous()
    # batches concatenated in order; planes are red, green, blue
    assert train.images[:, 0, 5, 7].tolist() == list(range(15))
    assert (train.images[:, 1] == 200).all() and (train.images[:, 2] == 0).all()
    assert train.labels.tolist() == [i % 10 for i in range(15)]
    assert train.classes[3] == "class3" and train.num_classes == 10
    assert train.source == str(directory) and not train.synthetic
    assert train.mean == pytest.approx((0.4914, 0.4822, 0.4465))


def test_cifar100_fine_labels(tmp_path):
    make_cifar100(tmp_path)
    train = load_dataset("cifar100", "train", root=tmp_path, expect_standard_size=False)
    test = load_dataset("cifar100", "test", root=tmp_path, expect_standard_size=False)
    assert train.images.shape == (7, 3, 32, 32) and len(test) == 3
    assert test.labels.tolist() == [50, 51, 52] and train.num_classes == 100
    assert train.classes[99] == "fine99"


def test_cifar_standard_size_is_checked(tmp_path):
    make_cifar10(tmp_path)
    with pytest.raises(DataError, match="data_batch_1: expected 10000 images, found 3"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_missing_batch_names_file_and_download(tmp_path):
    directory = make_cifar10(tmp_path)
    (directory / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"data_batch_4.*cs\.toronto\.edu"):
        load_dataset("cifar10", root=tmp_path, expect_standard_size=False)


def test_cifar_missing_directory(tmp_path):
    with pytest.raises(DataError, match=r"cifar-100-python.*--data-root"):
        load_dataset("cifar100", root=tmp_path)
    with pytest.raises(DataError, match="none was given"):
        load_dataset("cifar10")


def test_cifar_wrong_label_key(tmp_path):
    directory = make_cifar10(tmp_path)
    dump(directory / "test_batch", batch(2, b"fine_labels", 10, 0))
    with pytest.raises(DataError, match=r"test_batch: expected key b'labels'"):
        load_dataset("cifar10", "test", root=directory, expect_standard_size=False)


def test_cifar_corrupt_pickle(tmp_path):
    directory = make_cifar10(tmp_path)
    (directory / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch: not a readable CIFAR pickle"):
        load_dataset("cifar10", "test", root=directory, expect_standard_size=False)


def test_cifar_bad_data_shape(tmp_path):
    directory = make_cifar10(tmp_path)
    content = batch(2, b"labels", 10, 0)
    content[b"data"] = content[b"data"][:, :3000]
    dump(directory / "test_batch", content)
    with pytest.raises(DataError, match="N x 3072 uint8"):
        load_dataset("cifar10", "test", root=directory, expect_standard_size=False)


class _Payload:
    """What a poisoned batch file would hold: an object whose unpickling runs a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["data", "labels", "top"])
def test_a_batch_file_with_code_is_refused_and_runs_nothing(tmp_path, where):
    directory = make_cifar10(tmp_path)
    marker = tmp_path / "the-payload-ran"
    poisoned = batch(2, b"labels", 10, 100)
    if where == "data":
        poisoned[b"data"] = _Payload(marker)
    elif where == "labels":
        poisoned[b"labels"] = [0, _Payload(marker)]
    dump(directory / "test_batch", _Payload(marker) if where == "top" else poisoned)
    with pytest.raises(DataError, match=r"names the global (posix|os)\.system.*refused"):
        load_dataset("cifar10", "test", root=tmp_path, expect_standard_size=False)
    assert not marker.exists()
    # The same loader reads the untouched training files.
    assert len(load_dataset("cifar10", "train", root=tmp_path, expect_standard_size=False)) == 15


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_arrays_load_whatever_the_pickle_protocol(tmp_path, protocol):
    directory = make_cifar10(tmp_path)
    with (directory / "test_batch").open("wb") as handle:  # the originals are protocol 2
        pickle.dump(batch(2, b"labels", 10, 100), handle, protocol=protocol)
    test = load_dataset("cifar10", "test", root=tmp_path, expect_standard_size=False)
    assert len(test) == 2
