"""Device-resident loader: the whole split lives on the device as uint8, batches are cut there.

As in airbench, this removes the host -> device copy and the worker processes from the training
loop: a CIFAR-10 train split is 50000 x 3 x 32 x 32 = 147 MiB of uint8, copied once. Shuffling,
augmentation and normalisation are batched tensor ops on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from biasdecay.data.augment import get_augmentation, normalization_affine, pad_to_square
from biasdecay.data.dataset import ImageDataset
from biasdecay.errors import InputError

__all__ = ["DeviceLoader", "check_loader_settings", "epoch_seed"]

_ORDER_STREAM, _AUGMENT_STREAM = 0, 1  # independent random streams per (seed, epoch)


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 63-bit seed for one random stream of one epoch.

    numpy's SeedSequence hashes the triple, so nearby seeds and epochs give unrelated streams
    (``seed + epoch`` would make seed 1 epoch 0 replay seed 0 epoch 1).

    Args:
        seed: the run's base seed.
        epoch: the epoch number.
        stream: which stream of that epoch (e.g. order vs augmentation).

    Returns:
        A non-negative int for ``torch.Generator.manual_seed``.
    """
    words = np.random.SeedSequence([seed, epoch, stream]).generate_state(2)
    return (int(words[0]) << 32 | int(words[1])) & ((1 << 63) - 1)


def check_loader_settings(batch_size: int, rank: int, world_size: int, dtype: torch.dtype) -> None:
    """Raise unless the settings every loader here shares are valid.

    Args:
        batch_size: samples per batch (per rank), >= 1.
        rank: this process's rank, in ``[0, world_size)``.
        world_size: number of processes.
        dtype: the floating dtype of the batches' ``x``.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= rank < world_size:
        raise InputError(f"need 0 <= rank < world_size, got rank={rank}, world={world_size}")
    if not dtype.is_floating_point:
        raise InputError(f"dtype must be floating point, got {dtype}")


class DeviceLoader:
    """Re-iterable batches ``(x, y)`` of an in-memory dataset held on ``device``.

    ``x`` is normalised with the dataset's train-split mean/std and has ``dtype``; ``y`` is int64.
    Every pass is one epoch. The sample order and augmentation draws of a pass depend only on
    ``(seed, epoch)``: ``set_epoch(e)`` chooses the epoch of the next pass, and passes without
    it count on from the previous one (starting at 0). With ``shuffle=False`` the order is the
    dataset order on every pass.

    Args:
        dataset: the split to serve.
        batch_size: samples per batch (per rank).
        shuffle: draw a new random order every epoch.
        seed: base seed for shuffling and augmentation.
        augment: None, ``"flip"`` (random horizontal flip) or ``"cifar"`` (random crop with
            4-pixel zero padding, then flip; Appendix A.2).
        device: where the data lives and batches are produced.
        drop_last: drop the final incomplete batch.
        pad_to: zero-pad images to this square side first (e.g. 28 -> 32), before augmentation
            and normalisation.
        dtype: floating dtype of ``x``.
        channels_last: return ``x`` in channels-last memory format.
        indices: serve only these dataset indices (e.g. a fixed evaluation subset), in this
            order when ``shuffle=False``.
        rank: this process's rank when the data is sharded across processes.
        world_size: number of processes. Every rank walks the same epoch order in *logical*
            batches of ``batch_size * world_size`` samples and serves its contiguous slice
            ``[rank * batch_size, (rank + 1) * batch_size)`` of each. So step k trains on the
            same samples, with the same augmentation draws, whatever the world size: a
            2-process run sees exactly the batches of a 1-process run with the same logical
            batch. (With augmentation each rank augments the whole logical batch and keeps its
            slice: cheap next to the model, and what makes the draws identical.) The last
            partial logical batch may leave a rank fewer or no samples; training uses
            ``drop_last=True``.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        augment: str | None = None,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        pad_to: int | None = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        indices: Sequence[int] | torch.Tensor | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_loader_settings(batch_size, rank, world_size, dtype)
        self.dataset = dataset
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.augment_name = augment
        self._augment = get_augmentation(augment) if augment is not None else None
        self.device = torch.device(device)
        self.drop_last, self.dtype, self.channels_last = drop_last, dtype, channels_last
        self.rank, self.world_size = rank, world_size

        images, labels = dataset.images, dataset.labels
        if indices is not None:
            index = torch.as_tensor(indices, dtype=torch.int64).flatten().cpu()
            if len(index) == 0 or int(index.min()) < 0 or int(index.max()) >= len(dataset):
                raise InputError(f"indices must be non-empty and lie in [0, {len(dataset)})")
            images, labels = images[index], labels[index]
        if pad_to is not None:
            images = pad_to_square(images, pad_to)  # once, in uint8: cheaper than per batch
        # the one host -> device copy
        self.images = images.contiguous().to(self.device)
        self.labels = labels.to(self.device)
        self._scale, self._shift = normalization_affine(dataset.mean, dataset.std, self.device)
        self._epoch = 0

    @property
    def logical_batch_size(self) -> int:
        """Samples per step over all ranks: ``batch_size * world_size``."""
        return self.batch_size * self.world_size

    @property
    def num_samples(self) -> int:
        """Samples this rank serves per epoch."""
        n, logical = len(self.labels), self.logical_batch_size
        full = (n // logical) * self.batch_size
        if self.drop_last:
            return full
        rest = n % logical  # the last, partial logical batch
        return full + min(max(rest - self.rank * self.batch_size, 0), self.batch_size)

    def __len__(self) -> int:
        """Number of batches (steps) per epoch; the same on every rank."""
        n, logical = len(self.labels), self.logical_batch_size
        return n // logical if self.drop_last else math.ceil(n / logical)

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next pass (then count on from it)."""
        self._epoch = epoch

    def _generator(self, epoch: int, stream: int) -> torch.Generator:
        seed = epoch_seed(self.seed, epoch, stream)
        return torch.Generator(device=self.device).manual_seed(seed)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The order in which all ranks together visit the samples in ``epoch``.

        Args:
            epoch: the epoch number.

        Returns:
            int64 tensor on the device of all served positions (the same on every rank).
        """
        n = len(self.labels)
        if self.shuffle:
            generator = self._generator(epoch, _ORDER_STREAM)
            return torch.randperm(n, generator=generator, device=self.device)
        return torch.arange(n, device=self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        self._epoch += 1
        order = self.epoch_order(epoch)
        generator = self._generator(epoch, _AUGMENT_STREAM) if self._augment else None
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        logical, mine = (
            self.logical_batch_size,
            slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size),
        )
        for batch in range(len(self)):
            step_index = order[batch * logical : (batch + 1) * logical]
            if self._augment is not None:
                # Augment the whole logical batch so the random draws do not depend on the
                # world size, then keep this rank's slice.
                pixels = self._augment(self.images.index_select(0, step_index), generator)
                pixels, index = pixels[mine], step_index[mine]
            else:
                index = step_index[mine]
                pixels = self.images.index_select(0, index)  # uint8 B x C x H x W
            if index.numel() == 0:  # a partial last logical batch left this rank nothing
                continue
            # (pixels / 255 - mean) / std in float32, then cast: exact for bf16 targets too
            x = torch.addcmul(self._shift, pixels.to(torch.float32), self._scale)
            x = x.to(self.dtype).contiguous(memory_format=memory_format)
            yield x, self.labels.index_select(0, index)

    def __repr__(self) -> str:
        return (
            f"DeviceLoader({self.dataset.name}/{self.dataset.split}, {len(self.labels)} samples, "
            f"batch_size={self.batch_size}, shuffle={self.shuffle}, augment={self.augment_name}, "
            f"device={self.device})"
        )
