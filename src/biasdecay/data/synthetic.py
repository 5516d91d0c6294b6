"""Random images with random labels, for smoke tests and timing only.

Only ever produced when ``"synthetic"`` is named explicitly; the dataset carries
``synthetic=True`` so any result computed from it says so.
"""

from __future__ import annotations

from pathlib import Path

import torch

from biasdecay.data.dataset import ImageDataset, channel_stats, check_split
from biasdecay.errors import InputError

__all__ = ["load_synthetic"]

_SPLIT_OFFSET = {"train": 0, "test": 1}  # train and test draw from different streams


def _draw(
    split: str, num_samples: int, channels: int, image_size: int, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2 * seed + _SPLIT_OFFSET[split])
    shape = (num_samples, channels, image_size, image_size)
    images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
    return images, labels


def load_synthetic(
    split: str = "train",
    root: str | Path | None = None,
    *,
    num_samples: int | None = None,
    image_size: int = 32,
    channels: int = 3,
    num_classes: int = 10,
    seed: int = 0,
) -> ImageDataset:
    """Uniformly random uint8 images with uniformly random labels (nothing to learn).

    Args:
        split: ``"train"`` or ``"test"``; the two splits are different draws.
        root: ignored.
        num_samples: images in the split; default 1024 for train, 256 for test.
        image_size: side of the square images in pixels.
        channels: image channels.
        num_classes: number of classes.
        seed: the same seed gives the same images.

    Returns:
        An :class:`ImageDataset` with ``synthetic=True`` and mean/std computed from the train
        draw (as for real data, the test split is normalised with train statistics; it takes
        them from a 1024-image train draw with the same seed).
    """
    check_split("synthetic", split, tuple(_SPLIT_OFFSET))
    if num_samples is None:
        num_samples = 1024 if split == "train" else 256
    if num_samples < 1 or image_size < 1 or channels < 1 or num_classes < 1:
        raise InputError("num_samples, image_size, channels and num_classes must be positive")
    sizes = (channels, image_size, num_classes, seed)
    images, labels = _draw(split, num_samples, *sizes)
    train_images = images if split == "train" else _draw("train", 1024, *sizes)[0]
    mean, std = channel_stats(train_images)
    return ImageDataset(
        images=images,
        labels=labels,
        num_classes=num_classes,
        name="synthetic",
        split=split,
        source=f"synthetic(seed={seed})",
        synthetic=True,
        mean=mean,
        std=std,
    )
