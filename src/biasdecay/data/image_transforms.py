"""Per-image PIL transforms for streamed datasets (ImageNet), written with PIL + torch only.

Train: RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3)) + RandomHorizontalFlip();
eval: Resize(256) of the shorter side + CenterCrop(224) (Appendix A.2). Both end in a normalised
float tensor C x H x W. Randomness comes from a torch generator (default: torch's global one,
which the DataLoader seeds differently in every worker process).

PIL is imported on first use only, so importing this module stays light.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from biasdecay.data.errors import import_optional
from biasdecay.errors import InputError

__all__ = [
    "EvalTransform",
    "TrainTransform",
    "center_crop_box",
    "random_resized_crop_box",
    "shorter_side_size",
    "to_normalized_tensor",
]

Box = tuple[int, int, int, int]  # (left, top, width, height) in pixels


def _pil_image() -> Any:
    return import_optional("PIL.Image", "decoding and transforming images (ImageNet)")


def _bilinear(image_module: Any) -> Any:
    # Pillow >= 9.1 moved the constants into enums; older versions have them on the module
    return getattr(image_module, "Resampling", image_module).BILINEAR


def _flip_left_right(image_module: Any) -> Any:
    return getattr(image_module, "Transpose", image_module).FLIP_LEFT_RIGHT


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand(1, generator=generator).item()


def _randint(low: int, high_inclusive: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(low, high_inclusive + 1, (1,), generator=generator).item())


def random_resized_crop_box(
    width: int,
    height: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
    generator: torch.Generator | None = None,
) -> Box:
    """Sample the crop of RandomResizedCrop: a random area fraction and log-uniform aspect ratio.

    Up to ``attempts`` draws of (area, aspect) are tried; the first crop that fits inside the
    image wins, at a uniformly random position. If none fits, fall back to the largest centred
    crop whose aspect ratio is clamped into ``ratio`` (the whole image when it already is).

    Args:
        width: image width in pixels.
        height: image height in pixels.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (width / height).
        attempts: random draws before the centre fallback.
        generator: torch generator for the draws (None: torch's global generator).

    Returns:
        ``(left, top, crop_width, crop_height)`` in pixels.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], generator))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = _randint(0, height - crop_h, generator)
            left = _randint(0, width - crop_w, generator)
            return left, top, crop_w, crop_h
    image_ratio = width / height
    if image_ratio < min(ratio):  # too tall: keep the width
        crop_w, crop_h = width, round(width / min(ratio))
    elif image_ratio > max(ratio):  # too wide: keep the height
        crop_w, crop_h = round(height * max(ratio)), height
    else:
        crop_w, crop_h = width, height
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """New ``(width, height)`` that scales the shorter side to ``size``, keeping the aspect ratio.

    Args:
        width: image width in pixels.
        height: image height in pixels.
        size: target length of the shorter side in pixels.

    Returns:
        ``(new_width, new_height)``; the longer side is truncated to an int.
    """
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, size: int) -> Box:
    """The centred ``size`` x ``size`` crop of an image at least that large.

    Args:
        width: image width in pixels.
        height: image height in pixels.
        size: crop side in pixels.

    Returns:
        ``(left, top, size, size)``.
    """
    if width < size or height < size:
        raise InputError(f"cannot centre-crop {size}x{size} from a {width}x{height} image")
    return round((width - size) / 2), round((height - size) / 2), size, size


def to_normalized_tensor(
    image: Any, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """PIL RGB image -> float32 tensor C x H x W, ``(pixel / 255 - mean) / std``.

    Args:
        image: a PIL image in RGB mode.
        mean: per-channel mean in [0, 1] units.
        std: per-channel standard deviation in [0, 1] units.

    Returns:
        The normalised tensor.
    """
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))  # H x W x C
    x = pixels.permute(2, 0, 1).to(torch.float32).div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(mean_t).div_(std_t)


class TrainTransform:
    """RandomResizedCrop + RandomHorizontalFlip + normalisation, for one PIL image.

    Args:
        mean: per-channel mean in [0, 1] units.
        std: per-channel standard deviation in [0, 1] units.
        image_size: output side in pixels.
        scale: crop area range as a fraction of the image.
        ratio: crop aspect ratio range.
        flip_probability: probability of a horizontal flip.
    """

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        image_size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_probability: float = 0.5,
    ) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_size = image_size
        self.scale, self.ratio = scale, ratio
        self.flip_probability = flip_probability

    def __call__(self, image: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """Transform one PIL RGB image into a normalised ``3 x image_size x image_size`` tensor."""
        pil = _pil_image()
        left, top, crop_w, crop_h = random_resized_crop_box(
            image.width, image.height, scale=self.scale, ratio=self.ratio, generator=generator
        )
        # resizing straight from the crop box avoids materialising the crop first
        image = image.resize(
            (self.image_size, self.image_size),
            _bilinear(pil),
            box=(left, top, left + crop_w, top + crop_h),
        )
        if torch.rand(1, generator=generator).item() < self.flip_probability:
            image = image.transpose(_flip_left_right(pil))
        return to_normalized_tensor(image, self.mean, self.std)


class EvalTransform:
    """Resize the shorter side + CenterCrop + normalisation, for one PIL image.

    Args:
        mean: per-channel mean in [0, 1] units.
        std: per-channel standard deviation in [0, 1] units.
        resize_size: shorter side after resizing, in pixels.
        image_size: output side in pixels.
    """

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        resize_size: int = 256,
        image_size: int = 224,
    ) -> None:
        if image_size > resize_size:
            raise InputError(f"image_size {image_size} exceeds resize_size {resize_size}")
        self.mean, self.std = tuple(mean), tuple(std)
        self.resize_size, self.image_size = resize_size, image_size

    def __call__(self, image: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """Transform one PIL RGB image; ``generator`` is unused (the transform is deterministic)."""
        pil = _pil_image()
        image = image.resize(
            shorter_side_size(image.width, image.height, self.resize_size), _bilinear(pil)
        )
        left, top, size, _ = center_crop_box(image.width, image.height, self.image_size)
        image = image.crop((left, top, left + size, top + size))
        return to_normalized_tensor(image, self.mean, self.std)
