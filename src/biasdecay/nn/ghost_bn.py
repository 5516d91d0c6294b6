"""Ghost batch normalisation (Hoffer et al.): BatchNorm statistics per small "ghost" batch.

In training, a batch of ``N = G·g`` samples is normalised as ``G`` ghost batches of ``g``
consecutive samples, each with its own mean and variance, exactly as if ``nn.BatchNorm`` were run
on each chunk in turn. Large-batch runs keep the regularising noise of small-batch statistics, and
a batch split into micro-batches that are multiples of ``g`` gives exactly the same gradient as
the whole batch (gradient accumulation is exact). The paper uses ``g = 32`` (Appendix A.2, citing
Hoffer et al., 2018; the method was introduced by Hoffer, Hubara & Soudry, 2017).

How it is vectorised: the ghost index is folded into the channel dimension
(``(G·g, C, ...) -> (g, G·C, ...)``, one copy) and a single ``F.batch_norm`` call normalises all
``G·C`` (ghost, channel) pairs; γ and β are repeated ``G`` times so their gradients sum over the
ghosts. The per-ghost batch mean and unbiased variance come out of that same call, through
scratch running buffers with momentum 1, and the real running statistics then take the ``G``
BatchNorm momentum updates in order, in closed form::

    r ← (1−m)^G·r + Σ_{k=1..G} m·(1−m)^{G−k}·μ_k        (momentum m)
    r ← (n·r + Σ_k μ_k) / (n + G)                        (momentum=None: cumulative average)

Eval mode is plain BatchNorm (running statistics), so a converted model evaluates identically.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from biasdecay.constraints import OneOf, Range
from biasdecay.errors import InputError
from biasdecay.roles import register_module_type

__all__ = [
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "PAPER_GHOST_BATCH_SIZE",
    "convert_to_ghost_batchnorm",
]

PAPER_GHOST_BATCH_SIZE = 32  # Appendix A.2
_PARTIAL_MODES = ("error", "last")


class _GhostBatchNorm(_BatchNorm):
    """Shared implementation of :class:`GhostBatchNorm1d` and :class:`GhostBatchNorm2d`."""

    def __init__(
        self,
        num_features: int,
        ghost_batch_size: int = PAPER_GHOST_BATCH_SIZE,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        partial: str = "error",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        owner = type(self).__name__
        Range(1, integer=True).check("ghost_batch_size", ghost_batch_size, owner)
        OneOf(_PARTIAL_MODES).check("partial", partial, owner)
        Range(0.0, 1.0, high_open=False).check("momentum", momentum, owner)  # None: cumulative
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        self.ghost_batch_size = ghost_batch_size
        self.partial = partial

    def extra_repr(self) -> str:
        ghost = f"ghost_batch_size={self.ghost_batch_size}, partial={self.partial!r}"
        return f"{super().extra_repr()}, {ghost}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Ghost-batch statistics in training, BatchNorm's behaviour in eval.

        Args:
            input: ``(N, C, ...)``; in training ``N ≤ ghost_batch_size`` (one ghost batch) or a
                multiple of it (or anything with ``partial="last"``).

        Returns:
            The normalised input, same shape, dtype and memory format as BatchNorm's output.
        """
        self._check_input_dim(input)
        if not self.training:
            # Eval is BatchNorm's: running statistics (or the batch's, without running stats).
            return super().forward(input)

        batch, g = input.shape[0], self.ghost_batch_size
        n_full, remainder = divmod(batch, g) if batch > g else (1, 0)
        if remainder and self.partial == "error":
            raise InputError(
                f"{type(self).__name__}: a training batch of {batch} samples is not a multiple of "
                f"ghost_batch_size={g}. Feed micro-batches whose size is a multiple of {g} (e.g. "
                f"{n_full * g} or {(n_full + 1) * g}), or construct the layer with partial='last' "
                f"to normalise the last {remainder} samples as a ghost batch of their own."
            )
        if not remainder:
            return self._normalise_ghosts(input, n_full)
        split = n_full * g
        full = self._normalise_ghosts(input[:split], n_full)
        last = self._normalise_ghosts(input[split:], 1)  # after the full ghosts, as a loop would
        return torch.cat([full, last])

    def _normalise_ghosts(self, x: torch.Tensor, n_ghosts: int) -> torch.Tensor:
        """Normalise ``x`` as ``n_ghosts`` equal consecutive ghost batches; update running stats."""
        channels = self.num_features
        channels_last = _is_channels_last(x) and n_ghosts > 1
        folded = _fold_ghosts(x, n_ghosts, channels_last)
        weight, bias = self.weight, self.bias
        if self.affine and n_ghosts > 1:
            weight, bias = weight.repeat(n_ghosts), bias.repeat(n_ghosts)

        # Scratch buffers with momentum 1 receive each (ghost, channel) batch mean and unbiased
        # variance from inside the fused kernel: 1·μ + 0·0 = μ exactly, no second pass over x.
        batch_mean = batch_var = None
        if self.track_running_stats:
            stats_options = {"dtype": self.running_mean.dtype, "device": self.running_mean.device}
            batch_mean = torch.zeros(n_ghosts * channels, **stats_options)
            batch_var = torch.zeros(n_ghosts * channels, **stats_options)
        out = F.batch_norm(
            folded, batch_mean, batch_var, weight, bias, training=True, momentum=1.0, eps=self.eps
        )
        if self.track_running_stats:
            self._update_running_stats(
                batch_mean.view(n_ghosts, channels), batch_var.view(n_ghosts, channels)
            )
        return _unfold_ghosts(out, n_ghosts, channels_last)

    @torch.no_grad()
    def _update_running_stats(self, means: torch.Tensor, variances: torch.Tensor) -> None:
        """Apply BatchNorm's running-statistics update once per ghost batch, in order.

        Args:
            means: ``(G, C)`` ghost-batch means, ghost batches in input order.
            variances: ``(G, C)`` unbiased ghost-batch variances.
        """
        n_ghosts = means.shape[0]
        tracked = self.num_batches_tracked
        if self.momentum is None:
            if tracked is None:  # BatchNorm's factor is 0 here: nothing to average into
                return
            # Cumulative average: after n batches r is the mean of their statistics, so G more
            # batches give (n·r + Σμ_k)/(n + G), the fixed point of BatchNorm's 1/n updates.
            count = tracked.to(means.dtype)
            decay = count / (count + n_ghosts)
            weights = (1.0 - decay).expand(n_ghosts) / n_ghosts
        else:
            m = float(self.momentum)
            # Ghost k of G (0-based) is followed by G−1−k more updates, each shrinking it by 1−m.
            exponents = torch.arange(n_ghosts - 1, -1, -1, dtype=means.dtype, device=means.device)
            weights = m * torch.pow(1.0 - m, exponents)
            decay = (1.0 - m) ** n_ghosts
        self.running_mean.mul_(decay).add_(weights @ means)
        self.running_var.mul_(decay).add_(weights @ variances)
        if tracked is not None:
            tracked.add_(n_ghosts)


class GhostBatchNorm1d(_GhostBatchNorm):
    """Ghost batch normalisation over ``(N, C)`` or ``(N, C, L)`` inputs.

    A drop-in ``nn.BatchNorm1d`` (same parameters γ = ``weight``, β = ``bias``, buffers and
    state_dict keys) whose training statistics are per ghost batch of ``ghost_batch_size``
    consecutive samples. See the module docstring for the method.

    Args:
        num_features: ``C``.
        ghost_batch_size: samples per ghost batch (the paper: 32).
        eps: added to the variance.
        momentum: running-statistics momentum per ghost batch, or ``None`` for a cumulative
            average; in ``[0, 1]``.
        affine: learn γ and β.
        track_running_stats: keep running statistics (used in eval).
        partial: a training batch larger than, but not a multiple of, ``ghost_batch_size``:
            ``"error"`` raises, ``"last"`` normalises the trailing samples as one smaller ghost.
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.

    References:
        Hoffer, Hubara & Soudry (2017), "Train longer, generalize better"; Hoffer et al. (2018),
        "Norm matters"; Appendix A.2 of the paper.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3):
            raise InputError(f"expected 2D or 3D input (got {input.dim()}D input)")


class GhostBatchNorm2d(_GhostBatchNorm):
    """Ghost batch normalisation over ``(N, C, H, W)`` inputs (contiguous or channels_last).

    A drop-in ``nn.BatchNorm2d`` (same parameters γ = ``weight``, β = ``bias``, buffers and
    state_dict keys) whose training statistics are per ghost batch of ``ghost_batch_size``
    consecutive samples. See :class:`GhostBatchNorm1d` for the arguments.

    References:
        Hoffer, Hubara & Soudry (2017), "Train longer, generalize better"; Hoffer et al. (2018),
        "Norm matters"; Appendix A.2 of the paper.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() != 4:
            raise InputError(f"expected 4D input (got {input.dim()}D input)")


# In eval mode ghost batch norm is BatchNorm with running statistics: the exact per-sample
# formulas of batch norm apply (and the connectivity guard checks that they do).
for _cls in (GhostBatchNorm1d, GhostBatchNorm2d):
    register_module_type(_cls, "norm", "batch_norm")


# --------------------------------------------------------------------------- folding


def _is_channels_last(x: torch.Tensor) -> bool:
    # A tensor that is both (C == 1 or H·W == 1) counts as contiguous, as BatchNorm decides.
    return (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def _fold_ghosts(x: torch.Tensor, n_ghosts: int, channels_last: bool) -> torch.Tensor:
    """``(G·g, C, *S) -> (g, G·C, *S)``: channel ``k·C + c`` is channel ``c`` of ghost ``k``."""
    return _move_ghosts(x, n_ghosts, channels_last, into_channels=True)


def _unfold_ghosts(y: torch.Tensor, n_ghosts: int, channels_last: bool) -> torch.Tensor:
    """Inverse of :func:`_fold_ghosts`: ``(g, G·C, *S) -> (G·g, C, *S)``."""
    return _move_ghosts(y, n_ghosts, channels_last, into_channels=False)


def _move_ghosts(
    x: torch.Tensor, n_ghosts: int, channels_last: bool, *, into_channels: bool
) -> torch.Tensor:
    """Move the ghost index G from the batch dim into the channel dim, or back."""
    if n_ghosts == 1:
        return x
    batch, channels, *spatial = x.shape
    if into_channels:
        shape = (batch // n_ghosts, n_ghosts * channels)
    else:
        shape = (n_ghosts * batch, channels // n_ghosts)
    if channels_last:
        # Copy in (batch, H, W, channel) order so that the result is channels_last itself and
        # the kernel returns channels_last: no layout conversion on top of the fold.
        nhwc = x.permute(0, 2, 3, 1)
        if into_channels:  # (G, g, H, W, C) -> (g, H, W, G, C)
            moved = nhwc.unflatten(0, (n_ghosts, shape[0])).permute(1, 2, 3, 0, 4)
        else:  # (g, H, W, G, C) -> (G, g, H, W, C)
            moved = nhwc.unflatten(3, (n_ghosts, shape[1])).permute(3, 0, 1, 2, 4)
        return moved.reshape(shape[0], *spatial, shape[1]).permute(0, 3, 1, 2)
    # (G, g, C, *S) <-> (g, G, C, *S): split the dim G leaves, swap G with the batch dim.
    split = 0 if into_channels else 1
    moved = x.unflatten(split, (n_ghosts, x.shape[split] // n_ghosts)).transpose(0, 1)
    return moved.reshape(*shape, *spatial)


# --------------------------------------------------------------------------- conversion

_GHOST_OF: dict[type[nn.Module], type[_GhostBatchNorm]] = {
    nn.BatchNorm1d: GhostBatchNorm1d,
    nn.BatchNorm2d: GhostBatchNorm2d,
}


def _ghost_from(bn: _BatchNorm, ghost_batch_size: int, partial: str) -> _GhostBatchNorm:
    ghost = _GHOST_OF[type(bn)](
        bn.num_features,
        ghost_batch_size,
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
        partial=partial,
        device="meta",  # every tensor is replaced below: allocate nothing
    )
    # The very same Parameter and buffer objects: device, dtype, requires_grad and values are
    # kept, and an optimiser built before the conversion still holds the model's γ and β.
    for name, param in bn.named_parameters(recurse=False):
        setattr(ghost, name, param)
    for name, buffer in bn.named_buffers(recurse=False):
        setattr(ghost, name, buffer)
    ghost.train(bn.training)
    return ghost


def convert_to_ghost_batchnorm(
    model: nn.Module, ghost_batch_size: int = PAPER_GHOST_BATCH_SIZE, *, partial: str = "error"
) -> nn.Module:
    """Replace every ``nn.BatchNorm1d``/``nn.BatchNorm2d`` of ``model`` by its ghost version.

    The new layers share the old ones' γ, β and running-statistics tensors (so device, dtype,
    values and any optimiser already holding γ and β are kept) and copy eps, momentum, affine,
    track_running_stats and the train/eval mode; eval outputs are unchanged. Hooks registered on
    the old layers are not carried over. Already-ghost layers are left as they are, so converting
    twice is the same as converting once. ``SyncBatchNorm``, ``BatchNorm3d`` and other BatchNorm
    subclasses are left alone with a warning (ghost statistics are per process and per ghost
    batch by design; synchronising them across processes is a different method).

    Args:
        model: the model, modified in place.
        ghost_batch_size: samples per ghost batch (the paper: 32).
        partial: see :class:`GhostBatchNorm1d`.

    Returns:
        ``model``; or, when ``model`` itself is a BatchNorm1d/2d, its ghost replacement.
    """
    if type(model) in _GHOST_OF:
        return _ghost_from(model, ghost_batch_size, partial)

    replacements: dict[int, _GhostBatchNorm] = {}  # a layer shared by two parents stays shared
    left_alone: list[str] = []
    # Collected first: the tree is edited while being walked otherwise.
    slots = [
        (parent_name, parent, child_name, child)
        for parent_name, parent in model.named_modules()
        for child_name, child in parent._modules.items()
        if child is not None
    ]
    for parent_name, parent, child_name, child in slots:
        qualified = f"{parent_name}.{child_name}" if parent_name else child_name
        if type(child) in _GHOST_OF:
            if id(child) not in replacements:
                replacements[id(child)] = _ghost_from(child, ghost_batch_size, partial)
            parent._modules[child_name] = replacements[id(child)]
        elif isinstance(child, _BatchNorm) and not isinstance(child, _GhostBatchNorm):
            left_alone.append(f"{qualified} ({type(child).__name__})")
    if left_alone:
        warnings.warn(
            "convert_to_ghost_batchnorm left these layers unchanged (only BatchNorm1d/2d are "
            "converted; SyncBatchNorm pools statistics across processes, which ghost batches "
            "deliberately do not): " + ", ".join(left_alone),
            UserWarning,
            stacklevel=2,
        )
    return model
