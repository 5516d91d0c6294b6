"""Fashion-MNIST from its four idx files (Xiao et al., 2017): 60000 train / 10000 test, 28x28."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from biasdecay.data.dataset import ImageDataset, check_split
from biasdecay.data.errors import DataError
from biasdecay.data.idx import idx_magic, read_idx

__all__ = ["FASHION_MNIST_CLASSES", "DEFAULT_FASHION_MNIST_ROOT", "load_fashion_mnist"]

# where the Debian/Ubuntu package `dataset-fashion-mnist` installs the (gzipped) files
DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# split -> (idx file prefix, standard number of samples)
_SPLITS = {"train": ("train", 60000), "test": ("t10k", 10000)}
_IMAGE_SIDE = 28  # pixels
# statistics of the 60000 train images in [0, 1] units (computed from the official files)
_MEAN, _STD = (0.2860,), (0.3530,)


def _hint(root: Path) -> str:
    kinds = ("images-idx3-ubyte", "labels-idx1-ubyte")
    files = ", ".join(f"{prefix}-{kind}.gz" for prefix, _ in _SPLITS.values() for kind in kinds)
    return (
        f"To get Fashion-MNIST: `apt-get install dataset-fashion-mnist` (installs it into "
        f"{DEFAULT_FASHION_MNIST_ROOT}), or download the four idx files ({files}) into DIR and "
        f"pass --data-root DIR (root=DIR in Python). Looked in {root}."
    )


def _find(root: Path, stem: str) -> Path:
    """The plain or gzipped file for one idx stem; plain wins when both exist."""
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"missing Fashion-MNIST file {root / stem}[.gz]. {_hint(root)}")


def load_fashion_mnist(
    split: str = "train",
    root: str | Path | None = None,
    *,
    expect_standard_size: bool = True,
) -> ImageDataset:
    """Load a Fashion-MNIST split from its idx files.

    Args:
        split: ``"train"`` (60000 images) or ``"test"`` (10000 images, the ``t10k`` files).
        root: directory holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; defaults
            to the Debian package path ``/usr/share/datasets/fashion-mnist``.
        expect_standard_size: require the standard 60000/10000 sizes (catches a wrong or partial
            download); set False for reduced copies written in the same format.

    Returns:
        An :class:`ImageDataset` with 1 x 28 x 28 uint8 images and 10 classes.

    Raises:
        DataError: a file is missing or malformed; the message names it and says how to get it.
    """
    check_split("fashion-mnist", split, tuple(_SPLITS))
    root = Path(root) if root is not None else DEFAULT_FASHION_MNIST_ROOT
    prefix, standard_count = _SPLITS[split]
    images_path = _find(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(root, f"{prefix}-labels-idx1-ubyte")
    try:
        images = read_idx(images_path, expect_magic=idx_magic(0x08, 3), what="images")
        labels = read_idx(labels_path, expect_magic=idx_magic(0x08, 1), what="labels")
    except DataError as error:
        raise DataError(f"{error}. {_hint(root)}") from error

    if expect_standard_size:
        for path, array, what in ((images_path, images, "images"), (labels_path, labels, "labels")):
            if len(array) != standard_count:
                raise DataError(
                    f"{path}: expected {standard_count} {what} for the {split} split, header "
                    f"says {len(array)}. {_hint(root)}"
                )
    if images.shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE):
        raise DataError(f"{images_path}: expected 28 x 28 images, header says {images.shape[1:]}")
    if len(labels) != len(images):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}"
        )
    if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{labels_path}: labels must be 0..9, found {int(labels.max())}")

    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(images[:, None])),
        labels=torch.from_numpy(labels.astype(np.int64)),
        num_classes=len(FASHION_MNIST_CLASSES),
        name="fashion-mnist",
        split=split,
        source=str(root),
        synthetic=False,
        mean=_MEAN,
        std=_STD,
        classes=FASHION_MNIST_CLASSES,
    )
