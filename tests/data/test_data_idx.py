"""idx parsing and the Fashion-MNIST source, on small files written in the real format."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from biasdecay.data import DataError, load_dataset, read_idx
from biasdecay.data.fashion_mnist import DEFAULT_FASHION_MNIST_ROOT


def idx_bytes(array: np.ndarray, dtype_code: int = 0x08) -> bytes:
    header = bytes([0, 0, dtype_code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, payload: bytes) -> Path:
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_fashion(root: Path, n_train: int = 6, n_test: int = 4, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write(root / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(images))
        write(root / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(labels))


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
def test_read_idx_plain_and_gzip(tmp_path, name):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write(tmp_path / name, idx_bytes(array))
    np.testing.assert_array_equal(read_idx(path, expect_magic=0x00000803), array)


def test_read_idx_big_endian_int32(tmp_path):
    array = np.array([1, -2, 70000], dtype=np.int32)
    path = write(tmp_path / "x.idx", idx_bytes(array, dtype_code=0x0C))
    result = read_idx(path)
    np.testing.assert_array_equal(result, array)
    assert result.dtype.isnative


def test_read_idx_wrong_magic_names_expected_and_found(tmp_path):
    labels = np.zeros(5, dtype=np.uint8)
    path = write(tmp_path / "train-images-idx3-ubyte", idx_bytes(labels))  # a labels file
    with pytest.raises(DataError) as error:
        read_idx(path, expect_magic=0x00000803, what="images")
    message = str(error.value)
    assert "0x00000803" in message and "0x00000801" in message and str(path) in message


def test_read_idx_not_idx(tmp_path):
    path = write(tmp_path / "junk", b"\x12\x34\x56\x78rest")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(path)


@pytest.mark.parametrize("name", ["body.idx", "body.idx.gz"])
def test_read_idx_truncated_body(tmp_path, name):
    payload = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    path = write(tmp_path / name, payload[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_read_idx_trailing_bytes(tmp_path):
    path = write(tmp_path / "x", idx_bytes(np.zeros(4, dtype=np.uint8)) + b"\0")
    with pytest.raises(DataError, match="trailing"):
        read_idx(path)


def test_read_idx_cut_gzip_stream(tmp_path):
    compressed = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32), dtype_code=0x0C))
    path = tmp_path / "x.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match="x.gz"):
        read_idx(path)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reduced_copy(tmp_path, gz):
    write_fashion(tmp_path, gz=gz)
    train = load_dataset("fashion-mnist", "train", root=tmp_path, expect_standard_size=False)
    test = load_dataset("fashion-mnist", "test", root=tmp_path, expect_standard_size=False)
    assert train.images.shape == (6, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.images.is_contiguous()
    assert test.labels.tolist() == [0, 1, 2, 3] and test.labels.dtype == torch.int64
    assert (train.in_channels, train.image_size, train.num_classes) == (1, 28, 10)
    assert not train.synthetic and train.source == str(tmp_path)


def test_fashion_mnist_standard_size_is_checked(tmp_path):
    write_fashion(tmp_path)
    with pytest.raises(DataError, match=r"expected 60000 images .* header says 6"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_fashion_mnist_label_count_mismatch(tmp_path):
    write_fashion(tmp_path)
    write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(DataError, match="3 labels for 4 images"):
        load_dataset("fashion-mnist", "test", root=tmp_path, expect_standard_size=False)


def test_fashion_mnist_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset("fashion-mnist", root=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "train-images-idx3-ubyte") in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-root" in message


def test_fashion_mnist_wrong_magic_has_hint(tmp_path):
    write_fashion(tmp_path)
    write(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(np.zeros(6, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"0x00000803 for uint8 images.*apt-get"):
        load_dataset("fashion-mnist", root=tmp_path, expect_standard_size=False)


@pytest.mark.skipif(
    not (DEFAULT_FASHION_MNIST_ROOT / "t10k-labels-idx1-ubyte.gz").exists(),
    reason="Debian dataset-fashion-mnist not installed",
)
def test_debian_fashion_mnist():
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    for split in (train, test):
        assert split.labels.min() == 0 and split.labels.max() == 9
        assert torch.bincount(split.labels).tolist() == [len(split) // 10] * 10
    pixels = train.images.to(torch.float64) / 255
    assert pixels.mean().item() == pytest.approx(train.mean[0], abs=1e-4)
    assert pixels.std().item() == pytest.approx(train.std[0], abs=1e-4)
