"""Which parameters a model only scales or shifts its activations by, found by watching one
forward of a few samples.

A layer-scale vector γ (ConvNeXt, CaiT, DINOv2, BEiT: ``x * γ``, x of shape (B, …, d)) belongs to
no layer with a per-sample formula, yet its per-sample gradient is cheap: handed to the model
as a copy per sample, shaped (B, 1, …, 1, d), it broadcasts exactly as γ does, and autograd
gives its gradient one row per sample. Whether a parameter is used only that way, and how many
singleton dims go between the sample dim and its own, is read off the operations that one
forward applies to it. Nothing here is trusted: the exactness guard compares the per-sample
gradients so obtained with autograd's on every batch, and the measured outputs with the
model's own (:class:`biasdecay.sharpness._per_sample.HookedPerSample`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

# Elementwise arithmetic with broadcasting, by the name torch's function protocol reports
# (``γ * x`` arrives as Tensor.mul, ``x += γ`` as Tensor.__iadd__)
_ELEMENTWISE = frozenset(
    {
        *(f"{op}{suffix}" for op in ("mul", "add", "sub", "div") for suffix in ("", "_")),
        *("multiply", "true_divide"),
        *(f"__{r}{op}__" for op in ("mul", "add", "sub", "truediv") for r in ("", "r", "i")),
    }
)


def _in_place(name: str) -> bool:
    """Whether the function writes into its first operand (``mul_``, ``__imul__``)."""
    return (name.endswith("_") and not name.endswith("__")) or name.startswith("__i")


class _Uses(TorchFunctionMode):
    """Each watched parameter's uses in one forward: the singleton dims that every use puts
    between the sample dim and the parameter's own, or a refusal."""

    def __init__(self, watched: dict[int, str], samples: int) -> None:
        super().__init__()
        self.watched = watched
        self.samples = samples
        self.gaps: dict[str, set[int]] = {}
        self.refused: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name != "__get__":  # reading an attribute (shape, dtype) is not a use
            flat, _ = tree_flatten((args, kwargs))
            for i, t in enumerate(flat):
                param = self.watched.get(id(t)) if isinstance(t, torch.Tensor) else None
                if param is not None:
                    self._note(param, name, t, flat, i)
        return func(*args, **kwargs)

    def _note(self, param: str, func: str, p: torch.Tensor, flat: list, i: int) -> None:
        others = [o for j, o in enumerate(flat) if j != i and isinstance(o, torch.Tensor)]
        gap = None
        if func in _ELEMENTWISE and len(others) == 1 and not (i == 0 and _in_place(func)):
            other = others[0]
            if (
                other.dim() > p.dim()
                and other.shape[0] == self.samples
                and torch.broadcast_shapes(other.shape, p.shape) == other.shape
            ):
                gap = other.dim() - 1 - p.dim()
        if gap is None:
            self.refused.add(param)
        else:
            self.gaps.setdefault(param, set()).add(gap)


def scale_layouts(
    model: nn.Module, example: torch.Tensor, candidates: dict[str, nn.Parameter]
) -> dict[str, int | None]:
    """The parameters of ``candidates`` that the model uses only in elementwise arithmetic with
    an activation of one row per sample, each with the number of singleton dims between the
    sample dim and its own in every such use, and those it does not use at all.

    Args:
        model: the network, in the mode it is measured in.
        example: a few samples of the batch, which the probe runs through the model.
        candidates: ``{name: parameter}`` to watch.

    Returns:
        ``{name: k}``: handed to the model shaped (B, 1×k, *θ.shape), θ broadcasts as it did;
        k is None for a parameter the forward did not use (a mask token, without a mask). A
        parameter used otherwise anywhere (indexed, reshaped, a matmul) is left out.
    """
    if not candidates or example.dim() == 0:
        return {}
    watch = _Uses({id(p): n for n, p in candidates.items()}, example.shape[0])
    # with gradients on, as the measured forward runs: a model may branch on it (cache what
    # it computed without them, say)
    try:
        with torch.enable_grad(), watch:
            model(example)
    except Exception:
        # Only a speed-up is lost (these parameters stay on torch.func); a model that cannot
        # run raises from the measured forward, which follows.
        return {}
    layouts: dict[str, int | None] = {
        n: next(iter(gaps))
        for n, gaps in watch.gaps.items()
        if len(gaps) == 1 and n not in watch.refused
    }
    for n in candidates:
        if n not in watch.gaps and n not in watch.refused:
            layouts[n] = None
    return layouts
