"""DeviceLoader: coverage, reproducible order, normalisation, padding, subsets, sharding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from biasdecay.data import DeviceLoader, ImageDataset, load_dataset, subset


def indexed_dataset(n: int = 50, size: int = 4, channels: int = 1) -> ImageDataset:
    """Image i is filled with i, label i: every batch says which samples it holds."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, channels, size, size)
    return ImageDataset(
        images=images.contiguous(),
        labels=torch.arange(n),
        num_classes=n,
        name="indexed",
        split="train",
        source="test",
        synthetic=True,
        mean=(0.1,) * channels,
        std=(0.3,) * channels,
    )


def epoch_labels(loader) -> list[int]:
    return torch.cat([y for _, y in loader]).tolist()


def test_every_sample_once_per_epoch():
    loader = DeviceLoader(indexed_dataset(50), 8)
    assert len(loader) == 7
    for _ in range(3):
        labels = epoch_labels(loader)
        assert sorted(labels) == list(range(50))


def test_order_reproducible_per_epoch_and_different_across_epochs():
    a, b = DeviceLoader(indexed_dataset(), 8, seed=3), DeviceLoader(indexed_dataset(), 8, seed=3)
    a.set_epoch(5)
    b.set_epoch(5)
    assert epoch_labels(a) == epoch_labels(b)
    first, second = epoch_labels(a), epoch_labels(a)  # epochs 6 and 7 by the counter
    assert first != second
    b.set_epoch(6)
    assert epoch_labels(b) == first
    fresh = DeviceLoader(indexed_dataset(), 8, seed=3)
    fresh.set_epoch(0)
    counted = DeviceLoader(indexed_dataset(), 8, seed=3)
    assert epoch_labels(fresh) == epoch_labels(counted)
    assert epoch_labels(DeviceLoader(indexed_dataset(), 8, seed=4)) != epoch_labels(
        DeviceLoader(indexed_dataset(), 8, seed=3)
    )


def test_no_shuffle_is_identical_every_pass():
    loader = DeviceLoader(indexed_dataset(20), 6, shuffle=False)
    assert epoch_labels(loader) == list(range(20)) == epoch_labels(loader)


def test_drop_last():
    loader = DeviceLoader(indexed_dataset(50), 8, drop_last=True)
    sizes = [len(y) for _, y in loader]
    assert len(loader) == 6 and sizes == [8] * 6
    sizes = [len(y) for _, y in DeviceLoader(indexed_dataset(50), 8)]
    assert sizes[-1] == 2


def test_normalisation_uses_dataset_statistics():
    dataset = indexed_dataset(10, channels=2)
    x, y = next(iter(DeviceLoader(dataset, 10, shuffle=False)))
    expected = (dataset.images.float() / 255 - 0.1) / 0.3
    assert x.dtype == torch.float32 and torch.allclose(x, expected, atol=1e-6)
    assert y.dtype == torch.int64


def test_pad_to_pads_before_normalisation():
    dataset = indexed_dataset(4, size=28)
    x, _ = next(iter(DeviceLoader(dataset, 4, shuffle=False, pad_to=32)))
    assert x.shape == (4, 1, 32, 32)
    border_value = (0 - 0.1) / 0.3  # a zero pixel, normalised
    assert torch.allclose(x[:, :, :2], torch.full_like(x[:, :, :2], border_value))
    assert torch.allclose(x[:, :, 2:30, 2:30], (dataset.images.float() / 255 - 0.1) / 0.3)


def test_cifar_augmentation_shifts_and_flips_each_image():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 8, 8), generator=generator, dtype=torch.uint8)
    # mean 0 and std 1/255 make x equal to the pixel value
    dataset = ImageDataset(
        images=images,
        labels=torch.arange(12) % 3,
        num_classes=3,
        name="random",
        split="train",
        source="test",
        synthetic=True,
        mean=(0.0,) * 3,
        std=(1 / 255,) * 3,
    )
    loader = DeviceLoader(dataset, 5, augment="cifar")
    plain = DeviceLoader(dataset, 5)
    padded = F.pad(images, (4, 4, 4, 4)).float()
    for (_, y), (_, y_plain) in zip(loader, plain, strict=True):
        assert torch.equal(y, y_plain)  # augmentation draws do not change the order
    loader.set_epoch(0)
    order = loader.epoch_order(0)
    x_all = torch.cat([x for x, _ in loader])
    for position, sample in enumerate(order.tolist()):
        windows = [padded[sample, :, t : t + 8, l : l + 8] for t in range(9) for l in range(9)]
        image = x_all[position]
        assert any(torch.equal(image, w) or torch.equal(image, w.flip(-1)) for w in windows)


def test_indices_restrict_and_keep_order():
    loader = DeviceLoader(indexed_dataset(30), 4, shuffle=False, indices=[7, 3, 19])
    assert epoch_labels(loader) == [7, 3, 19] and len(loader) == 1
    with pytest.raises(ValueError):
        DeviceLoader(indexed_dataset(30), 4, indices=[30])


def test_subset_first_and_seeded():
    dataset = indexed_dataset(40)
    assert subset(dataset, 5).labels.tolist() == [0, 1, 2, 3, 4]
    seeded = subset(dataset, 10, seed=1)
    labels = seeded.labels.tolist()
    assert labels == sorted(labels) and len(set(labels)) == 10
    assert torch.equal(seeded.labels, subset(dataset, 10, seed=1).labels)
    assert seeded.mean == dataset.mean and seeded.name == dataset.name


def test_dtype_and_channels_last():
    loader = DeviceLoader(
        indexed_dataset(8, channels=3), 4, dtype=torch.bfloat16, channels_last=True
    )
    x, _ = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)


def test_sharding_slices_each_logical_batch_between_ranks():
    single = DeviceLoader(indexed_dataset(21), 6, seed=2, drop_last=True)
    shards = [
        DeviceLoader(indexed_dataset(21), 2, seed=2, rank=r, world_size=3, drop_last=True)
        for r in range(3)
    ]
    for epoch in range(2):
        single.set_epoch(epoch)
        for shard in shards:
            shard.set_epoch(epoch)
        per_step = zip(single, *shards, strict=True)
        for (_, y), *parts in per_step:  # rank r's batch = slice r of the 1-process batch
            assert torch.equal(y, torch.cat([part_y for _, part_y in parts]))
    assert [len(s) for s in shards] == [len(single)] * 3 == [3] * 3
    # without drop_last the partial last logical batch (21 = 3 x 6 + 3) is sliced as far as it goes
    uneven = [DeviceLoader(indexed_dataset(21), 2, rank=r, world_size=3) for r in range(3)]
    per_rank = [epoch_labels(shard) for shard in uneven]
    assert [len(p) for p in per_rank] == [8, 7, 6] == [s.num_samples for s in uneven]
    assert sorted(sum(per_rank, [])) == list(range(21))


def test_sharded_augmentation_draws_do_not_depend_on_world_size():
    single = DeviceLoader(indexed_dataset(16), 8, seed=1, augment="cifar", drop_last=True)
    pair = [
        DeviceLoader(
            indexed_dataset(16), 4, seed=1, augment="cifar", rank=r, world_size=2, drop_last=True
        )
        for r in range(2)
    ]
    for (x, _), (x0, _), (x1, _) in zip(single, *pair, strict=True):
        assert torch.equal(x, torch.cat([x0, x1]))


def test_real_dataset_loader_reiterable():
    dataset = load_dataset("synthetic", "test", num_samples=33, image_size=6)
    loader = DeviceLoader(dataset, 10, shuffle=False, augment="flip")
    assert [x.shape for x, _ in loader] == [(10, 3, 6, 6)] * 3 + [(3, 3, 6, 6)]
    assert epoch_labels(loader) == dataset.labels.tolist()
