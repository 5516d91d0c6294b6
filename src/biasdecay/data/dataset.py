"""The in-memory dataset record every source returns, and helpers to validate and subset it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from biasdecay.errors import InputError

__all__ = ["ImageDataset", "check_split", "channel_stats", "subset"]


@dataclass(frozen=True)
class ImageDataset:
    """A whole split of an image classification dataset, held in memory.

    Images stay uint8 (1 byte/pixel) so a full split fits on the device once; conversion to
    normalised floats happens per batch in :class:`~biasdecay.data.DeviceLoader`.

    Attributes:
        images: uint8 tensor, N x C x H x W, contiguous, pixel values 0..255.
        labels: int64 tensor, N, class indices in ``[0, num_classes)``.
        num_classes: number of classes of the dataset (not just those present in this split).
        name: registry name of the dataset, e.g. ``"cifar10"``.
        split: ``"train"`` or ``"test"``.
        source: where the data came from (a directory, a file, or a package), for the record.
        synthetic: True only for generated data; results must record it.
        mean: per-channel mean of the *train* split in [0, 1] units, used for normalisation.
        std: per-channel standard deviation of the train split in [0, 1] units.
        classes: class names in label order, when the source provides them.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    split: str
    source: str
    synthetic: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise InputError(
                f"images must be a uint8 N x C x H x W tensor, got {images.dtype} with shape "
                f"{tuple(images.shape)}"
            )
        if not images.is_contiguous():
            raise InputError("images must be contiguous (call .contiguous() first)")
        if labels.dtype != torch.int64 or labels.dim() != 1 or len(labels) != len(images):
            raise InputError(
                f"labels must be an int64 vector with one entry per image ({len(images)}), got "
                f"{labels.dtype} with shape {tuple(labels.shape)}"
            )
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise InputError(
                f"labels must lie in [0, {self.num_classes}), got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        if len(self.mean) != images.shape[1] or len(self.std) != images.shape[1]:
            raise InputError(
                f"mean/std need one value per channel ({images.shape[1]}), got "
                f"{len(self.mean)}/{len(self.std)}"
            )
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise InputError(f"{len(self.classes)} class names for {self.num_classes} classes")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_channels(self) -> int:
        """Number of image channels (1 for greyscale, 3 for RGB)."""
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        """Side of the (square) images in pixels; height when they are not square."""
        return self.images.shape[2]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])

    def __repr__(self) -> str:
        flag = ", SYNTHETIC" if self.synthetic else ""
        return (
            f"ImageDataset({self.name}/{self.split}: {len(self)} x {self.image_shape}, "
            f"{self.num_classes} classes{flag}, source={self.source!r})"
        )


def check_split(name: str, split: str, valid: Sequence[str]) -> None:
    """Raise ``ValueError`` listing the valid splits when ``split`` is not one of them.

    Args:
        name: dataset name, for the message.
        split: the requested split.
        valid: the splits the dataset has.
    """
    if split not in valid:
        raise InputError(f"unknown split {split!r} for {name}; valid splits: {', '.join(valid)}")


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 images, in [0, 1] units.

    Args:
        images: uint8 tensor, N x C x H x W.

    Returns:
        ``(mean, std)``, one float per channel.
    """
    # float64 accumulation: 60k x 28 x 28 sums lose digits in float32
    pixels = images.transpose(0, 1).reshape(images.shape[1], -1).to(torch.float64) / 255.0
    mean = pixels.mean(dim=1)
    std = pixels.std(dim=1, correction=0)
    return tuple(mean.tolist()), tuple(std.tolist())


def subset(dataset: ImageDataset, n: int, seed: int | None = None) -> ImageDataset:
    """The first ``n`` samples of a dataset, or ``n`` samples drawn without replacement.

    Used for fixed evaluation subsets (e.g. the samples a sharpness measure runs on), so the
    same ``(n, seed)`` always gives the same samples. Seeded draws keep file order.

    Args:
        dataset: the dataset to take from.
        n: number of samples, ``0 < n <= len(dataset)``.
        seed: None for the first ``n`` samples; an int for a seeded random choice.

    Returns:
        A new :class:`ImageDataset` with the same metadata and statistics.
    """
    if not 0 < n <= len(dataset):
        raise InputError(f"subset size must be in [1, {len(dataset)}], got {n}")
    if seed is None:
        index = torch.arange(n)
    else:
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(dataset), generator=generator)[:n].sort().values
    return replace(
        dataset,
        images=dataset.images[index].contiguous(),
        labels=dataset.labels[index].contiguous(),
    )
