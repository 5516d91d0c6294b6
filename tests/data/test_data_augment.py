"""Batched augmentation against naive per-sample loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from biasdecay.data import augment


def images(dtype=torch.uint8, n=16, channels=3, size=8):
    x = torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(1))
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_at_matches_per_sample_loop(dtype):
    x = images(dtype)
    padded = F.pad(x, (4, 4, 4, 4))
    top, left = augment.crop_offsets(len(x), 4, torch.Generator().manual_seed(3))
    assert 0 <= top.min() and top.max() <= 8 and 0 <= left.min() and left.max() <= 8
    crops = augment.crop_at(padded, top, left, 8, 8)
    for i in range(len(x)):
        t, l = int(top[i]), int(left[i])
        assert torch.equal(crops[i], padded[i, :, t : t + 8, l : l + 8])
    assert crops.dtype == dtype and crops.is_contiguous()


def test_crop_at_non_square():
    x = torch.arange(2 * 1 * 6 * 9).view(2, 1, 6, 9)
    top, left = torch.tensor([0, 2]), torch.tensor([5, 1])
    crops = augment.crop_at(x, top, left, 4, 3)
    assert torch.equal(crops[0], x[0, :, 0:4, 5:8]) and torch.equal(crops[1], x[1, :, 2:6, 1:4])


def test_random_crop_is_pad_then_crop_with_drawn_offsets():
    x = images()
    result = augment.random_crop(x, 4, torch.Generator().manual_seed(7))
    top, left = augment.crop_offsets(len(x), 4, torch.Generator().manual_seed(7))
    expected = augment.crop_at(F.pad(x, (4, 4, 4, 4)), top, left, 8, 8)
    assert torch.equal(result, expected)
    # offsets cover the whole range over a big batch: every translation is reachable
    top, left = augment.crop_offsets(4000, 4, torch.Generator().manual_seed(0))
    assert set(top.tolist()) == set(range(9)) and set(left.tolist()) == set(range(9))


def test_flip_matches_per_sample_loop():
    x = images()
    mask = augment.flip_mask(len(x), torch.Generator().manual_seed(5))
    flipped = augment.flip_where(x, mask)
    for i in range(len(x)):
        assert torch.equal(flipped[i], x[i].flip(-1) if mask[i] else x[i])
    assert torch.equal(augment.random_flip(x, torch.Generator().manual_seed(5)), flipped)
    assert 0 < int(augment.flip_mask(1000, torch.Generator().manual_seed(0)).sum()) < 1000


def test_cifar_augment_is_crop_then_flip():
    x = images()
    generator = torch.Generator().manual_seed(11)
    top, left = augment.crop_offsets(len(x), 4, generator)
    mask = augment.flip_mask(len(x), generator)
    expected = augment.flip_where(augment.crop_at(F.pad(x, (4, 4, 4, 4)), top, left, 8, 8), mask)
    assert torch.equal(augment.cifar_augment(x, torch.Generator().manual_seed(11)), expected)


def test_pad_to_square_symmetric():
    x = torch.full((2, 1, 28, 28), 9, dtype=torch.uint8)
    padded = augment.pad_to_square(x, 32)
    assert padded.shape == (2, 1, 32, 32) and padded.dtype == torch.uint8
    assert torch.equal(padded[:, :, 2:30, 2:30], x) and int(padded.sum()) == int(x.sum())
    odd = augment.pad_to_square(torch.ones(1, 1, 5, 6), 8)  # odd totals: extra at bottom/right
    assert torch.equal(odd[0, 0, 1:6, 1:7], torch.ones(5, 6)) and odd.sum() == 30
    with pytest.raises(ValueError):
        augment.pad_to_square(x, 27)


def test_normalize():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    result = augment.normalize(x, (0.2,), (0.5,))
    assert torch.allclose(result.flatten(), torch.tensor([-0.4, 0.0, 1.6]), atol=1e-6)
    assert augment.normalize(x, (0.2,), (0.5,), torch.bfloat16).dtype == torch.bfloat16


def test_unknown_augmentation_lists_valid():
    with pytest.raises(ValueError, match="cifar, flip"):
        augment.get_augmentation("autoaugment")
