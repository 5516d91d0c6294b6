"""ImageNet (or any class-folder image set) streamed from disk through a torch DataLoader.

Layout: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``. Images are decoded with PIL
in worker processes and transformed per image (see :mod:`biasdecay.data.image_transforms`);
1.28M JPEGs do not fit the device-resident path of :class:`~biasdecay.data.DeviceLoader`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from biasdecay.data.dataset import check_split
from biasdecay.data.errors import DataError, import_optional
from biasdecay.data.image_transforms import EvalTransform, TrainTransform
from biasdecay.data.loader import check_loader_settings, epoch_seed

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_SPLITS",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "StreamingLoader",
    "imagenet_loader",
]

# ImageNet-1k train statistics in [0, 1] units (the values every ImageNet recipe uses)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SPLITS = ("train", "val")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".ppm", ".bmp", ".webp")

_HINT = (
    "Expected ImageNet as class folders: ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG "
    "(the official validation archive is flat: sort it into <wnid> folders with the devkit's "
    "ground truth), then pass --data-root ROOT (root=ROOT in Python)."
)


def _scan_classes(directory: Path) -> list[str]:
    if not directory.is_dir():
        raise DataError(f"missing directory {directory}. {_HINT}")
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{directory} has no class folders. {_HINT}")
    return classes


class ImageFolderDataset(Dataset):
    """Images in ``root/<split>/<class>/`` folders, decoded with PIL and transformed on access.

    Labels index the sorted class folder names of ``root/train`` (when it exists), so train and
    validation agree on the label of every class even when a split lacks some class.

    Args:
        root: directory holding the split folders.
        split: ``"train"`` or ``"val"``.
        transform: callable PIL image -> tensor; default :class:`TrainTransform` for train and
            :class:`EvalTransform` for val, normalised with the ImageNet statistics.
        name: dataset name for records.

    Attributes:
        samples: ``(path, label)`` pairs, sorted by class then file name.
        classes: class folder names in label order.
        synthetic: always False.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[Any], torch.Tensor] | None = None,
        name: str = "imagenet",
    ) -> None:
        check_split(name, split, IMAGENET_SPLITS)
        self.root, self.split, self.name = Path(root), split, name
        self.synthetic = False
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        split_dir = self.root / split
        train_dir = self.root / "train"
        self.classes = _scan_classes(train_dir if train_dir.is_dir() else split_dir)
        split_classes = _scan_classes(split_dir)
        unknown = sorted(set(split_classes) - set(self.classes))
        if unknown:
            raise DataError(f"{split_dir}: class folders not in {train_dir}: {unknown[:5]}")
        label_of = {c: i for i, c in enumerate(self.classes)}
        self.samples = [
            (path, label_of[c])
            for c in split_classes
            for path in sorted((split_dir / c).iterdir())
            if path.suffix.lower() in IMAGE_EXTENSIONS
        ]
        if not self.samples:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir}. {_HINT}")
        if transform is None:
            transform = (
                TrainTransform(self.mean, self.std)
                if split == "train"
                else EvalTransform(self.mean, self.std)
            )
        self.transform = transform

    @property
    def num_classes(self) -> int:
        """Number of class folders."""
        return len(self.classes)

    @property
    def source(self) -> str:
        """The root directory, for records."""
        return str(self.root)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        pil = import_optional("PIL.Image", "decoding ImageNet images")
        try:
            with pil.open(path) as image:
                rgb = image.convert("RGB")  # greyscale and CMYK JPEGs exist in ImageNet
        except (OSError, SyntaxError, ValueError) as error:
            raise DataError(f"{path}: cannot decode image ({error})") from error
        return self.transform(rgb), label


class StreamingLoader:
    """A DataLoader over an :class:`ImageFolderDataset` with the contract of ``DeviceLoader``.

    Yields ``(x, y)`` with ``x`` normalised (``dtype``) and both on ``device``; ``set_epoch``
    reseeds the shuffle (and the per-worker augmentation seeds) with ``(seed, epoch)``; without
    it an internal epoch counter advances each pass. With ``world_size > 1`` each rank reads a
    disjoint share (padded by repetition to equal length, as torch's DistributedSampler does).

    Args:
        dataset: the image-folder dataset.
        batch_size: images per batch (per rank).
        shuffle: reshuffle every epoch.
        seed: base seed for shuffling and augmentation.
        num_workers: decoding processes.
        device: where batches are moved.
        drop_last: drop the final incomplete batch.
        dtype: floating dtype of ``x``.
        channels_last: return ``x`` in channels-last memory format.
        rank: this process's rank.
        world_size: number of processes.
        pin_memory: pin host batches (faster copies to a GPU).
    """

    def __init__(
        self,
        dataset: ImageFolderDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 8,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool | None = None,
    ) -> None:
        check_loader_settings(batch_size, rank, world_size, dtype)
        self.dataset, self.seed = dataset, seed
        self.device, self.dtype, self.channels_last = torch.device(device), dtype, channels_last
        self.sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed
        )
        self._generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            drop_last=drop_last,
            pin_memory=self.device.type == "cuda" if pin_memory is None else pin_memory,
            # the DataLoader draws each epoch's worker seeds from this generator
            generator=self._generator,
        )
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next pass (then count on from it)."""
        self._epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        self._epoch += 1
        self.sampler.set_epoch(epoch)
        self._generator.manual_seed(epoch_seed(self.seed, epoch))
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        non_blocking = self.device.type == "cuda"
        for x, y in self.loader:
            x = x.to(
                self.device, self.dtype, non_blocking=non_blocking, memory_format=memory_format
            )
            yield x, y.to(self.device, non_blocking=non_blocking)


def imagenet_loader(
    root: str | Path,
    split: str = "train",
    batch_size: int = 256,
    *,
    shuffle: bool | None = None,
    drop_last: bool | None = None,
    image_size: int = 224,
    resize_size: int = 256,
    **loader_options: Any,
) -> StreamingLoader:
    """A streaming loader over ImageNet class folders with the paper's transforms.

    Train: RandomResizedCrop(``image_size``) + horizontal flip; val: Resize(``resize_size``) +
    CenterCrop(``image_size``); both normalised with the ImageNet mean/std.

    Args:
        root: directory with ``train/`` and ``val/`` class folders.
        split: ``"train"`` or ``"val"``.
        batch_size: images per batch (per rank).
        shuffle: default True for train, False for val.
        drop_last: default True for train, False for val.
        image_size: output side in pixels.
        resize_size: shorter side before the centre crop (val), in pixels.
        **loader_options: passed to :class:`StreamingLoader` (seed, num_workers, device, dtype,
            channels_last, rank, world_size, pin_memory).

    Returns:
        A :class:`StreamingLoader` yielding ``(x, y)`` with ``x`` of shape B x 3 x 224 x 224.
    """
    check_split("imagenet", split, IMAGENET_SPLITS)
    train = split == "train"
    transform = (
        TrainTransform(IMAGENET_MEAN, IMAGENET_STD, image_size=image_size)
        if train
        else EvalTransform(IMAGENET_MEAN, IMAGENET_STD, resize_size, image_size)
    )
    dataset = ImageFolderDataset(root, split, transform)
    return StreamingLoader(
        dataset,
        batch_size,
        shuffle=train if shuffle is None else shuffle,
        drop_last=train if drop_last is None else drop_last,
        **loader_options,
    )
