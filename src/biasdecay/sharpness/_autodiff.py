"""Plumbing shared by every measure: batches, the default loss, and leaving the model as found."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from biasdecay.errors import InputError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]


def mean_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The default loss of every measure: mean softmax cross-entropy over the batch."""
    return nn.functional.cross_entropy(logits, targets)


def resolve_loss(loss_fn: LossFn | None) -> LossFn:
    """``loss_fn`` or the default mean cross-entropy. A custom loss must average over the batch."""
    return mean_cross_entropy if loss_fn is None else loss_fn


def check_batch_mean(loss_fn: LossFn, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Refuse a ``loss_fn`` that does not average over the batch (one host sync).

    Every measure is defined on the batch-*mean* loss (eq. 3-4); a summed loss would make C
    (on the hook path), C_m, Tr(H) and λmax the batch size times too large, without a sign. The
    check splits the batch in two and asks whether the loss of the whole is the size-weighted
    mean of the parts', which a mean passes and a sum fails.

    Raises:
        ValueError: the loss is not a scalar, or is not the batch mean.
    """
    with torch.no_grad():
        value = loss_fn(outputs, targets)
        if value.ndim != 0:
            raise InputError(
                f"loss_fn returned shape {tuple(value.shape)}; it must return the mean loss of "
                "the batch, a scalar (reduction='mean')"
            )
        n = outputs.shape[0]
        if n < 2:
            return
        first, rest = loss_fn(outputs[:1], targets[:1]), loss_fn(outputs[1:], targets[1:])
        mean, total = ((first + (n - 1) * rest) / n).item(), (first + rest).item()
        whole = value.item()
    # A mean passes up to the rounding of the outputs' dtype; a sum misses by O(1).
    low_precision = outputs.is_floating_point() and torch.finfo(outputs.dtype).bits < 32
    rel_tol = 2e-2 if low_precision else 1e-4
    if not math.isclose(whole, mean, rel_tol=rel_tol, abs_tol=1e-12):
        what = (
            " (it is their sum: reduction='sum'?)"
            if math.isclose(whole, total, rel_tol=rel_tol)
            else ""
        )
        raise InputError(
            f"loss_fn does not average over the batch: on {n} samples it gives {whole:.6g}, "
            f"but the size-weighted mean of its values on sample 1 and on the other {n - 1} is "
            f"{mean:.6g}{what}. C, C_m, Tr(H) and λmax are defined on the batch-mean loss "
            "(eq. 3-4): use reduction='mean'"
        )


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (CPU/float32 if it has none)."""
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _composite_weight_norm(v: torch.Tensor, g: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return v * (g / torch.norm_except_dim(v, 2, dim))


@contextlib.contextmanager
def exact_higher_order() -> Iterator[None]:
    """Within this context, ops whose higher derivatives torch gets wrong use a composite form.

    ``torch._weight_norm`` (behind ``nn.utils.parametrizations.weight_norm`` and the older
    ``nn.utils.weight_norm``) runs a fused kernel whose double backward is wrong: the Hessian it
    gives is not even symmetric (torch 2.13 on the CPU; ``tests/sharpness/test_exactness_zoo.py``
    shows it against the composite v·g/‖v‖ written out by hand), and it has no forward-mode
    derivative at all. Here it is replaced by that composite: the same function,
    differentiable to any order.

    Attention likewise: ``scaled_dot_product_attention``'s fused CPU kernel has no double
    backward, and the fused forward that ``nn.TransformerEncoderLayer`` and
    ``nn.MultiheadAttention`` take without autograd (their "fast path") has no forward-mode
    derivative, so Tr(H), λmax and the Fisher-Rao norm of a transformer raised. Here attention
    runs its composite (math) form and the fast path is off: the same function, written in
    differentiable operations.

    Not thread-safe: the Hessian and Fisher measures run inside it.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fused = torch._weight_norm
    torch._weight_norm = _composite_weight_norm
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch._weight_norm = fused
        torch.backends.mha.set_fastpath_enabled(fast_path)


# Autograd nodes that stand for a derivative torch does not have: a custom Function's backward
# marked @once_differentiable leaves an Error node in the graph of the gradient it forms, and an
# op without a double-backward formula a NotImplemented one. Differentiating the gradient again
# raises only where such a node lies on a path to the inputs asked for; the node is cut off from
# them, so autograd skips it and the second derivatives through it are silently missing.
_UNDIFFERENTIABLE_NODES = ("torch::autograd::Error", "torch::autograd::NotImplemented")


def missing_second_derivatives(gradients: Iterable[torch.Tensor | None]) -> str | None:
    """The name of a node without a derivative in the graph of ``gradients`` (formed with
    ``create_graph=True``), or None: one walk over the graph.

    Args:
        gradients: first-order gradients whose graph is to be differentiated again.
    """
    stack = [g.grad_fn for g in gradients if g is not None and g.grad_fn is not None]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.name() in _UNDIFFERENTIABLE_NODES:
            return node.name()
        stack.extend(child for child, _ in node.next_functions)
    return None


def no_second_derivatives_error(cause: str, measure: str) -> InputError:
    """The error for a model that ``measure`` cannot differentiate twice, and why (``cause``:
    a node :func:`missing_second_derivatives` found, or torch's own refusal)."""
    return InputError(
        f"{measure} needs second derivatives through the whole model, and {cause}. Write that "
        "backward or operation in differentiable torch operations (nn.EmbeddingBag: an "
        "nn.Embedding and a sum or mean), or freeze the parameters that come before it "
        "(requires_grad=False): their gradients are the ones that pass through it"
    )


def undifferentiable_node(node: str) -> str:
    """The cause, for :func:`no_second_derivatives_error`, of a node that
    :func:`missing_second_derivatives` found."""
    return (
        f"its gradient's graph holds a node without one ({node}): a custom autograd Function "
        "whose backward is marked @once_differentiable, or an operation torch cannot "
        "differentiate twice, which autograd would skip without a sign, making the result wrong"
    )


def eager_module(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile``d model wraps; any other model as it is.

    The measures hook into layers and differentiate per sample, which compiled graphs would
    trace again and again (a recompilation per hook call). The wrapped module has the same
    parameters and computes the same function eagerly, and its parameter names lack the
    ``_orig_mod.`` prefix, so reports name them as the user's model does.
    """
    inner = getattr(model, "_orig_mod", None)
    if isinstance(inner, nn.Module) and type(model).__name__ == "OptimizedModule":
        return inner
    return model


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
            raise TypeError(
                f"batch {i}: inputs and targets must be tensors, got {type(x).__name__} and "
                f"{type(y).__name__}. The measures call model(inputs) with one tensor: wrap a "
                "model of several inputs in a module whose forward takes one (for a Hugging "
                "Face model, biasdecay.integrations.transformers.LogitsOf(model) takes "
                "input_ids)"
            )
        if x.shape[0] == 0:
            raise InputError(f"batch {i} is empty; drop empty batches from the data")
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
