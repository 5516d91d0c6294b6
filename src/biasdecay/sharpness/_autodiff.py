"""Plumbing shared by every measure: batches, the default loss, and leaving the model as found."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]


def mean_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The default loss of every measure: mean softmax cross-entropy over the batch."""
    return nn.functional.cross_entropy(logits, targets)


def resolve_loss(loss_fn: LossFn | None) -> LossFn:
    """``loss_fn`` or the default mean cross-entropy. A custom loss must average over the batch."""
    return mean_cross_entropy if loss_fn is None else loss_fn


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (CPU/float32 if it has none)."""
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` for every parameter with ``requires_grad``; frozen ones are ignored."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def iter_batches(data: Iterable, model: nn.Module) -> Iterator[Batch]:
    """Yield ``(inputs, targets)`` moved to the model's device, float inputs cast to its dtype.

    Raises:
        TypeError: when an element of ``data`` is not an ``(inputs, targets)`` pair.
        ValueError: when a batch is empty.
    """
    device, dtype = model_device_dtype(model)
    for i, batch in enumerate(data):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(
                f"batch {i} of the data is a {type(batch).__name__}; measures expect an iterable "
                "of (inputs, targets) pairs, e.g. a DataLoader or [(x, y)]"
            )
        x, y = batch[0], batch[1]
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(f"batch {i}: inputs and targets must be tensors")
        if x.shape[0] == 0:
            raise ValueError(f"batch {i} is empty; drop empty batches from the data")
        x = x.to(device, non_blocking=True)
        if x.is_floating_point():
            x = x.to(dtype)
        yield x, y.to(device, non_blocking=True)


@contextlib.contextmanager
def preserved_state(model: nn.Module, *, train: bool | None = None) -> Iterator[nn.Module]:
    """Run a block with the model in ``train``/eval mode, then restore its modes and buffers.

    Every module's ``training`` flag and every buffer (BatchNorm running statistics and counters)
    are restored on exit, so measuring a model never changes what it computes afterwards.

    Args:
        model: the model.
        train: mode inside the block; ``None`` keeps the current modes.
    """
    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        if train is not None:
            model.train(train)
        yield model
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, mode in modes.items():
            m.training = mode


def progress(iterable: Iterable, *, desc: str, total: int | None = None, enabled: bool = True):
    """A tqdm progress bar on a terminal (stderr), the plain iterable otherwise."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
