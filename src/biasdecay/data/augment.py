"""Batched image transforms as tensor ops on the device: no Python loop over samples.

All functions are pure: randomness comes only from the ``generator`` argument, which must live
on the same device as the images. They accept uint8 or float images, N x C x H x W, and keep the
dtype (so augmenting before the uint8 -> float conversion moves 1 byte/pixel instead of 4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from biasdecay.errors import InputError

__all__ = [
    "AUGMENTATIONS",
    "CIFAR_CROP_PADDING",
    "cifar_augment",
    "crop_at",
    "crop_offsets",
    "flip_mask",
    "flip_where",
    "get_augmentation",
    "normalization_affine",
    "normalize",
    "pad_to_square",
    "random_crop",
    "random_flip",
]

CIFAR_CROP_PADDING = 4  # pixels, RandomCrop(32, padding=4) of Appendix A.2

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def pad_to_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad images symmetrically to ``size`` x ``size`` (e.g. 28 -> 32 for VGG on MNIST).

    An odd total puts the extra row/column at the bottom/right.

    Args:
        x: images N x C x H x W with ``H, W <= size``.
        size: output side in pixels.

    Returns:
        Images N x C x size x size, same dtype; zero is black before normalisation.
    """
    height, width = x.shape[-2:]
    if height > size or width > size:
        raise InputError(f"cannot pad {height}x{width} images to {size}x{size}")
    top, left = (size - height) // 2, (size - width) // 2
    return F.pad(x, (left, size - width - left, top, size - height - top))


def crop_offsets(
    n: int, padding: int, generator: torch.Generator, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random crop positions for ``n`` images padded by ``padding`` on every side.

    Args:
        n: number of images.
        padding: padding in pixels; offsets lie in ``[0, 2 * padding]``.
        generator: torch generator on ``device``.
        device: device of the offsets (default: the generator's).

    Returns:
        ``(top, left)``: two int64 tensors of length ``n``.
    """
    device = generator.device if device is None else device
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=device)
    return offsets[0], offsets[1]


def crop_at(
    padded: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Crop a ``height`` x ``width`` window from each image at its own ``(top, left)``.

    One gather over the flattened pixels: sample i reads rows ``top[i]:top[i] + height`` and
    columns ``left[i]:left[i] + width``.

    Args:
        padded: images N x C x Hp x Wp.
        top: int64 row offsets, length N, each in ``[0, Hp - height]``.
        left: int64 column offsets, length N, each in ``[0, Wp - width]``.
        height: crop height in pixels.
        width: crop width in pixels.

    Returns:
        Contiguous crops N x C x height x width, same dtype as ``padded``.
    """
    n, channels, _, padded_width = padded.shape
    rows = top[:, None] + torch.arange(height, device=padded.device)  # N x height
    cols = left[:, None] + torch.arange(width, device=padded.device)  # N x width
    flat_index = (rows[:, :, None] * padded_width + cols[:, None, :]).view(n, 1, height * width)
    flat = padded.reshape(n, channels, -1)
    crops = flat.gather(2, flat_index.expand(n, channels, height * width))
    return crops.view(n, channels, height, width)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """RandomCrop(size=H x W, padding) for a whole batch: zero-pad, then shift each image.

    Draws ``crop_offsets(len(x), padding, generator)`` and returns
    ``crop_at(F.pad(x, [padding] * 4), top, left, H, W)``.

    Args:
        x: images N x C x H x W (uint8 or float).
        padding: zero padding on every side, in pixels.
        generator: torch generator on ``x.device``.

    Returns:
        Images of the input's shape and dtype.
    """
    if padding == 0:
        return x
    height, width = x.shape[-2:]
    top, left = crop_offsets(len(x), padding, generator, x.device)
    padded = F.pad(x, (padding, padding, padding, padding))
    return crop_at(padded, top, left, height, width)


def flip_mask(
    n: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    probability: float = 0.5,
) -> torch.Tensor:
    """Which of ``n`` images to flip, each independently with ``probability``.

    Args:
        n: number of images.
        generator: torch generator on ``device``.
        device: device of the mask (default: the generator's).
        probability: flip probability.

    Returns:
        Bool tensor of length ``n``.
    """
    device = generator.device if device is None else device
    return torch.rand(n, generator=generator, device=device) < probability


def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images selected by ``mask``.

    Args:
        x: images N x C x H x W.
        mask: bool tensor of length N.

    Returns:
        Images of the input's shape and dtype.
    """
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """RandomHorizontalFlip(p=0.5) for a whole batch: ``flip_where(x, flip_mask(len(x), ...))``.

    Args:
        x: images N x C x H x W.
        generator: torch generator on ``x.device``.

    Returns:
        Images of the input's shape and dtype.
    """
    return flip_where(x, flip_mask(len(x), generator, x.device))


def cifar_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """RandomCrop(padding=4) then RandomHorizontalFlip, the CIFAR recipe of Appendix A.2.

    Args:
        x: images N x C x H x W.
        generator: torch generator on ``x.device``; offsets are drawn before flips.

    Returns:
        Augmented images of the input's shape and dtype.
    """
    return random_flip(random_crop(x, CIFAR_CROP_PADDING, generator), generator)


AUGMENTATIONS: dict[str, Augmentation] = {"cifar": cifar_augment, "flip": random_flip}


def get_augmentation(name: str) -> Augmentation:
    """Look up a batched augmentation by name.

    Args:
        name: a key of :data:`AUGMENTATIONS`.

    Returns:
        The augmentation function ``(x, generator) -> x``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        valid = ", ".join(sorted(AUGMENTATIONS))
        raise InputError(f"unknown augmentation {name!r}; valid: {valid} (or None)") from None


def normalization_affine(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``pixel * scale + shift == (pixel / 255 - mean) / std``.

    Args:
        mean: per-channel mean in [0, 1] units.
        std: per-channel standard deviation in [0, 1] units.
        device: device of the returned tensors.

    Returns:
        Two float32 tensors of shape 1 x C x 1 x 1.
    """
    mean_t = torch.tensor(mean, dtype=torch.float64)
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_t)).to(torch.float32).view(1, -1, 1, 1)
    shift = (-mean_t / std_t).to(torch.float32).view(1, -1, 1, 1)
    return scale.to(device), shift.to(device)


def normalize(
    x: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 pixels (0..255) -> ``(x / 255 - mean) / std`` in ``dtype``.

    The arithmetic runs in float32 and is cast at the end, so bfloat16 output loses nothing
    beyond its own rounding.

    Args:
        x: uint8 images N x C x H x W.
        mean: per-channel mean in [0, 1] units.
        std: per-channel standard deviation in [0, 1] units.
        dtype: floating output dtype.

    Returns:
        Normalised images of the same shape.
    """
    scale, shift = normalization_affine(mean, std, x.device)
    return torch.addcmul(shift, x.to(torch.float32), scale).to(dtype)
