"""CIFAR-10 and CIFAR-100 from the official "python version" pickle directories.

Layouts (Krizhevsky, 2009):
    cifar-10-batches-py/   data_batch_1..5 (10000 each), test_batch, batches.meta
    cifar-100-python/      train (50000), test (10000), meta
Each data file is a pickled dict with ``b"data"`` (N x 3072 uint8, 1024 red then 1024 green then
1024 blue values, rows of 32 pixels) and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from biasdecay.data.dataset import ImageDataset, check_split
from biasdecay.data.errors import DataError

__all__ = ["CIFAR10", "CIFAR100", "CifarLayout", "load_cifar", "load_cifar10", "load_cifar100"]

_SIDE = 32  # pixels
_PIXELS_PER_IMAGE = 3 * _SIDE * _SIDE  # 3072 bytes per row of b"data"
_DOWNLOAD_HINT = (
    "Download the CIFAR python version from https://www.cs.toronto.edu/~kriz/cifar.html, "
    "extract it, and pass the extracted directory (or its parent) as --data-root DIR "
    "(root=DIR in Python)."
)


# Both datasets: 50000 training and 10000 test images, split evenly over a split's files.
_SPLIT_SIZES = {"train": 50000, "test": 10000}


@dataclass(frozen=True)
class CifarLayout:
    """What differs between the CIFAR-10 and CIFAR-100 pickle directories."""

    name: str
    directory: str  # name of the extracted directory
    meta_file: str
    label_key: bytes  # the labels in a data file; their names are under "<label>_names" in meta
    files: dict[str, tuple[str, ...]]  # split -> data files, in order
    num_classes: int
    mean: tuple[float, float, float]  # train split, [0, 1] units
    std: tuple[float, float, float]

    @property
    def names_key(self) -> bytes:
        """The meta file's key of the class names (``b"labels"`` -> ``b"label_names"``)."""
        return self.label_key.removesuffix(b"s") + b"_names"

    def samples_per_file(self, split: str) -> int:
        """The standard number of samples in each data file of ``split``."""
        return _SPLIT_SIZES[split] // len(self.files[split])


# A compact table: one record a dataset.
# fmt: off
CIFAR10 = CifarLayout(
    name="cifar10", directory="cifar-10-batches-py", meta_file="batches.meta", label_key=b"labels",
    files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    num_classes=10, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarLayout(
    name="cifar100", directory="cifar-100-python", meta_file="meta", label_key=b"fine_labels",
    files={"train": ("train",), "test": ("test",)},
    num_classes=100, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
)
# fmt: on


def _resolve_directory(layout: CifarLayout, root: str | Path | None) -> Path:
    """Accept the extracted directory itself or its parent."""
    if root is None:
        raise DataError(
            f"{layout.name} needs a data directory and none was given. {_DOWNLOAD_HINT}"
        )
    root = Path(root)
    marker = layout.files["test"][0]
    for candidate in (root, root / layout.directory):
        if (candidate / marker).is_file():
            return candidate
    raise DataError(
        f"no {layout.name} data in {root}: expected {root / layout.directory / marker} or "
        f"{root / marker}. {_DOWNLOAD_HINT}"
    )


# The only globals a CIFAR pickle may name: the pieces numpy uses to rebuild an ndarray (the
# b"data" array), under numpy 1's and numpy 2's module names, and bytes' own encoding. Anything
# else (os.system, builtins.eval, any class with a __reduce__) is refused before it can run: the
# standard "restricting globals" recipe of the pickle documentation.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # How Python 3's pickle protocols 0-2 write bytes (encoding text back to bytes; a
        # stdlib codec lookup, no user code).
        ("_codecs", "encode"),
    }
)


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, bytes, str, numbers and numpy arrays, nothing else."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"the file names the global {module}.{name}, which a CIFAR batch never does; "
                "refused without running it (only numpy arrays and plain containers are read)"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"missing {path}. {_DOWNLOAD_HINT}")
    try:
        with path.open("rb") as handle:
            # the files were written by Python 2: keys and strings come back as bytes
            content = _CifarUnpickler(handle, encoding="bytes").load()
    except Exception as error:  # pickle raises many types on corrupt input
        raise DataError(
            f"{path}: not a readable CIFAR pickle ({type(error).__name__}: {error}). "
            f"{_DOWNLOAD_HINT}"
        ) from error
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    return content


def _read_data_file(
    path: Path, layout: CifarLayout, expected_count: int | None
) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    for key in (b"data", layout.label_key):
        if key not in batch:
            raise DataError(
                f"{path}: expected key {key!r} in the {layout.name} dict, found "
                f"{sorted(batch)}. {_DOWNLOAD_HINT}"
            )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[layout.label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS_PER_IMAGE:
        raise DataError(
            f"{path}: expected b'data' as N x {_PIXELS_PER_IMAGE} uint8, got {data.dtype} with "
            f"shape {data.shape}"
        )
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {labels.shape} labels for {len(data)} images")
    if expected_count is not None and len(data) != expected_count:
        raise DataError(f"{path}: expected {expected_count} images, found {len(data)}")
    if len(labels) and not 0 <= labels.min() <= labels.max() < layout.num_classes:
        raise DataError(
            f"{path}: labels must lie in [0, {layout.num_classes}), found "
            f"[{labels.min()}, {labels.max()}]"
        )
    return data, labels


def _class_names(directory: Path, layout: CifarLayout) -> tuple[str, ...] | None:
    """Class names from the meta file, when it is there (they are not needed to train)."""
    path = directory / layout.meta_file
    if not path.is_file():
        return None
    names = _unpickle(path).get(layout.names_key)
    if names is None or len(names) != layout.num_classes:
        raise DataError(f"{path}: expected {layout.num_classes} names under {layout.names_key!r}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def load_cifar(
    layout: CifarLayout,
    split: str = "train",
    root: str | Path | None = None,
    *,
    expect_standard_size: bool = True,
) -> ImageDataset:
    """Load one split of CIFAR-10 or CIFAR-100; nothing is downloaded.

    Args:
        layout: :data:`CIFAR10` or :data:`CIFAR100`.
        split: ``"train"`` (50000 images) or ``"test"`` (10000 images).
        root: the extracted directory (e.g. ``.../cifar-10-batches-py``) or its parent.
        expect_standard_size: require the standard number of images per file (10000 per
            CIFAR-10 batch; 50000/10000 for CIFAR-100); set False for reduced copies.

    Returns:
        An :class:`ImageDataset` of 3 x 32 x 32 uint8 images.

    Raises:
        DataError: missing directory or file, or a file without the expected layout.
    """
    check_split(layout.name, split, tuple(layout.files))
    directory = _resolve_directory(layout, root)
    expected = layout.samples_per_file(split) if expect_standard_size else None
    parts = [_read_data_file(directory / f, layout, expected) for f in layout.files[split]]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, _SIDE, _SIDE))),
        labels=torch.from_numpy(labels),
        num_classes=layout.num_classes,
        name=layout.name,
        split=split,
        source=str(directory),
        synthetic=False,
        mean=layout.mean,
        std=layout.std,
        classes=_class_names(directory, layout),
    )


def load_cifar10(
    split: str = "train", root: str | Path | None = None, **options: bool
) -> ImageDataset:
    """CIFAR-10 (10 classes); see :func:`load_cifar` for the arguments."""
    return load_cifar(CIFAR10, split, root, **options)


def load_cifar100(
    split: str = "train", root: str | Path | None = None, **options: bool
) -> ImageDataset:
    """CIFAR-100 with its 100 fine labels; see :func:`load_cifar` for the arguments."""
    return load_cifar(CIFAR100, split, root, **options)
