"""Plumbing shared by LAMB and LARS: checks, path choice, buckets, decay, norms and clipping.

Nothing here knows an update rule; each optimiser module owns its equations. Everything that runs
inside ``step()`` is free of host synchronisation: decisions are taken on Python values (steps,
hyper-parameters, tensor metadata), never on tensor contents.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from biasdecay.constraints import check_in_range, check_lr
from biasdecay.errors import InputError

__all__ = [
    "LAYER_ADAPTATION",
    "SMALL_TENSOR_NUMEL",
    "FOREACH_IS_FASTER",
    "CheckedOptimizer",
    "WeightDecay",
    "adaptation_flags",
    "check_layer_adaptation",
    "check_shared_settings",
    "check_weight_decay",
    "bucket_indices",
    "clip_coefficient",
    "default_foreach",
    "group_weight_decays",
    "l2_norm",
    "path_indices",
    "per_tensor_decay_",
    "same_setting_groups",
    "step_by_path",
]

#: A group's ``weight_decay``: a Python number, or a 0-dim tensor read at every step without a
#: host sync (so that a controller, such as adaptive β decay, can ``fill_()`` it between steps
#: and ``state_dict`` carries it with the group).
WeightDecay = float | Tensor

#: Which parameters get the layer-wise trust ratio, the values of ``layer_adaptation``:
#: ``"decayed"``: exactly those whose weight decay at this step is non-zero (the convention of the
#: public ResNet LAMB/LARS code: the LAMB authors' ImageNet code, apex FusedLAMB, tensorflow_addons'
#: defaults, MLPerf LARS); ``"all"``: every parameter (optax, torch-optimizer); ``"none"``: none.
LAYER_ADAPTATION = ("decayed", "all", "none")

#: Which path ``foreach=None`` takes, per device type, for LAMB and LARS alike. Measured with
#: benchmarks/bench_optim.py on the ResNet-18 parameter set (11.2 M float32 parameters in 62
#: tensors, 2-core Xeon, torch 2.13 CPU, 40 interleaved rounds), median step, single-tensor (its
#: two rows) against foreach: LAMB 25.2-27.7 against 35.8 ms, LARS 15.0-15.4 against 19.0 ms.
#: Likely reasons: the loop reuses one temporary per tensor, takes its norms with the BLAS dot
#: product (see :func:`l2_norm`), and runs each tensor's kernels while it is still in cache.
#: (torch's AdamW measured the other way round on the same machine: foreach 27.0, loop 33.7 ms.)
#: CUDA follows torch: one launch per op for all tensors beats a launch per tensor.
FOREACH_IS_FASTER = {"cpu": False, "cuda": True}

#: Tensors of at most this many elements take the foreach path when ``foreach=None``, whatever
#: the device's entry of :data:`FOREACH_IS_FASTER` says (see :func:`path_indices`). On the cpu
#: preset's ResNet-18 (width 8, 176 k parameters in 62 tensors, 2-core Xeon, torch 2.13)
#: ``benchmarks/bench_optim.py --width 0.125 --rounds 100`` measured a LAMB step at 3.23 ms
#: median on the loop, 1.60 ms on foreach and 1.63 ms on this default; at width 64 the default
#: stays with the loop's time (28.7 against 28.2 ms).
SMALL_TENSOR_NUMEL = 65536

# Tensor types the ``torch._foreach_*`` kernels accept (subclasses may override ops per tensor).
_FOREACH_TYPES = (Tensor, torch.nn.Parameter)


class CheckedOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that checks every param group's settings when it is added.

    Subclasses (LAMB, LARS) define :meth:`_check_group` and pass their constructor's settings
    as ``defaults``; those are checked first, so that a bad value names the argument.
    """

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _check_group(self, group: Mapping[str, object]) -> None:
        raise NotImplementedError

    def add_param_group(self, param_group: dict) -> None:
        """Add a group (as ``torch.optim.Optimizer``) and check its hyper-parameters."""
        super().add_param_group(param_group)
        self._check_group(self.param_groups[-1])

    @staticmethod
    def _closure_loss(closure: Callable[[], float] | None) -> float | None:
        """The loss of ``closure`` re-evaluated with gradients on (``step``'s contract), or None."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()


def check_weight_decay(owner: str, value: object) -> None:
    """Raise unless ``value`` is a number >= 0 or a 0-dim floating tensor holding one.

    A tensor is read once here (construction time, not inside ``step()``).
    """
    if isinstance(value, Tensor):
        if value.dim() != 0 or not value.is_floating_point():
            raise InputError(
                f"{owner}: a tensor weight_decay must be a 0-dim floating tensor, got shape "
                f"{tuple(value.shape)} ({value.dtype})"
            )
        check_in_range(owner, "weight_decay", float(value), 0.0)
        return
    check_in_range(owner, "weight_decay", value, 0.0)


def check_shared_settings(owner: str, group: Mapping[str, object]) -> None:
    """Raise unless the settings every optimiser here has are valid in ``group``.

    Those are ``lr``, ``weight_decay``, ``layer_adaptation`` and ``foreach``; each optimiser
    checks its own settings against its ``CONSTRAINTS`` table.
    """
    check_lr(owner, group["lr"])
    check_weight_decay(owner, group["weight_decay"])
    check_layer_adaptation(owner, group)
    if group["foreach"] not in (None, True, False):
        raise InputError(f"{owner}: foreach must be None, True or False, got {group['foreach']!r}")


def check_layer_adaptation(owner: str, group: Mapping[str, object]) -> None:
    """Raise unless the group's ``layer_adaptation`` is one of :data:`LAYER_ADAPTATION`.

    A group that still carries the boolean ``trust_ratio`` this option replaced is refused with a
    message naming the new option, rather than silently ignored.
    """
    if "trust_ratio" in group:
        raise InputError(
            f"{owner}: trust_ratio was replaced by layer_adaptation; use "
            f"layer_adaptation='all' for trust_ratio=True on every parameter, 'none' for "
            f"trust_ratio=False, or 'decayed' (the default: the ratio exactly where weight "
            f"decay is non-zero)"
        )
    mode = group["layer_adaptation"]
    if mode not in LAYER_ADAPTATION:
        raise InputError(
            f"{owner}: layer_adaptation must be one of {', '.join(map(repr, LAYER_ADAPTATION))}, "
            f"got {mode!r}"
        )


def adaptation_flags(mode: str, weight_decays: Sequence[WeightDecay]) -> list[bool | Tensor]:
    """Whether each parameter takes the trust ratio at this step, without a host sync.

    Args:
      mode: the group's ``layer_adaptation`` (see :data:`LAYER_ADAPTATION`).
      weight_decays: each parameter's λ (its group's ``weight_decay``).

    Returns:
      Per parameter: a Python bool where the answer is known on the host, or, where a tensor λ
      decides it on the device (adaptive β decay under ``"decayed"``: the ratio follows that
      step's decay decision), that tensor itself, meaning "adapted where λ ≠ 0". The callers
      compare a whole bucket's tensors at once (one kernel, not one per tensor).
    """
    if mode == "all":
        return [True] * len(weight_decays)
    if mode == "none":
        return [False] * len(weight_decays)
    return [lam if isinstance(lam, Tensor) else lam != 0 for lam in weight_decays]


def default_foreach(tensors: Iterable[Tensor]) -> bool:
    """Whether the ``torch._foreach_*`` path should run when the user left ``foreach=None``.

    Like torch, the default is per device type, but from this module's own measured table
    (:data:`FOREACH_IS_FASTER`): on CPU the answer is the opposite of torch's for these updates.

    Args:
      tensors: every tensor the step will touch.

    Returns:
      True only if every tensor is a plain tensor on a device whose entry is True.
    """
    return all(
        type(t) in _FOREACH_TYPES and FOREACH_IS_FASTER.get(t.device.type, False) for t in tensors
    )


def path_indices(params: Sequence[Tensor], foreach: bool | None) -> tuple[list[int], list[int]]:
    """Which tensors take the per-tensor loop and which the ``torch._foreach_*`` path.

    With ``foreach=None`` each tensor goes where it measured faster: its device's entry of
    :data:`FOREACH_IS_FASTER`, except that tensors of at most :data:`SMALL_TENSOR_NUMEL` elements
    always take the foreach path. For those (BN γ and β, biases) the per-tensor loop is all
    Python dispatch: a dozen kernel launches per tensor where foreach launches a dozen for the
    whole list.

    Returns:
      ``(loop, multi)``: indices into ``params``, each in order.
    """
    if foreach is not None:
        everyone = list(range(len(params)))
        return ([], everyone) if foreach else (everyone, [])
    loop, multi = [], []
    for i, p in enumerate(params):
        plain = type(p) in _FOREACH_TYPES
        fast = FOREACH_IS_FASTER.get(p.device.type, False) or p.numel() <= SMALL_TENSOR_NUMEL
        (multi if plain and fast else loop).append(i)
    return loop, multi


def step_by_path(
    paths: tuple[Callable[..., None], Callable[..., None]],
    per_tensor: Sequence[list[Any]],
    settings: Mapping[str, Any],
    *,
    foreach: bool | None,
    written: Sequence[int] = (),
) -> None:
    """Run each path's update on the tensors :func:`path_indices` sends it.

    Args:
      paths: ``(loop, multi)``: the per-tensor-loop update and the ``torch._foreach_*`` one. Each
        is called with the lists of ``per_tensor`` cut to its tensors, then ``**settings``.
      per_tensor: lists with one entry per parameter, the parameters first.
      settings: the hyper-parameters, the same for both paths.
      foreach: True or False for one path for every tensor; None picks per tensor.
      written: positions in ``per_tensor`` of lists the update writes new entries into (LARS's
        new momentum buffers); those entries are copied back into the caller's list.
    """
    loop, multi = path_indices(per_tensor[0], foreach)
    for update, idx in zip(paths, (loop, multi), strict=True):
        if not idx:
            continue
        parts = [[entries[i] for i in idx] for entries in per_tensor]
        update(*parts, **settings)
        for position in written:
            for i, entry in zip(idx, parts[position], strict=True):
                per_tensor[position][i] = entry


def bucket_indices(params: Sequence[Tensor], extra_keys: Sequence[Hashable]) -> list[list[int]]:
    """Indices of ``params`` grouped by (device, dtype, extra key), in first-seen order.

    foreach kernels need one device and dtype per call; the extra key (the step count for LAMB)
    lets a bucket share Python scalars such as its bias corrections.
    """
    buckets: dict[tuple[object, ...], list[int]] = {}
    for i, (p, key) in enumerate(zip(params, extra_keys, strict=True)):
        buckets.setdefault((p.device, p.dtype, key), []).append(i)
    return list(buckets.values())


def group_weight_decays(group: Mapping[str, object], params: Sequence[Tensor]) -> list[WeightDecay]:
    """The group's λ once per parameter, a tensor λ on each parameter's device and dtype.

    A tensor λ made where its parameters live (as :func:`biasdecay.param_groups` makes it) is
    used as it is; one left behind by ``model.to(device)`` is copied for the step, which costs a
    transfer but never a wrong result.
    """
    lam = group["weight_decay"]
    if not isinstance(lam, Tensor):
        return [lam] * len(params)  # type: ignore[list-item]
    return [
        lam if lam.device == p.device and lam.dtype == p.dtype else lam.to(p.device, p.dtype)
        for p in params
    ]


def same_setting_groups(
    groups: Sequence[Mapping[str, object]], settings: Sequence[str]
) -> list[list[int]]:
    """Indices of the param groups that share every hyper-parameter in ``settings``.

    Groups that differ only in their parameters and ``weight_decay`` (one per role, or one per
    normalisation layer under adaptive β decay) are stepped as one list, so that the small
    tensors of many groups share each kernel launch of the foreach path.
    """
    values = operator.itemgetter(*settings)  # C-level: this runs at every step
    merged: dict[object, list[int]] = {}
    for k, group in enumerate(groups):
        key = values(group)
        try:
            merged.setdefault(key, []).append(k)
        except TypeError:  # a list setting (betas=[0.9, 0.999]): compare its values
            key = tuple(tuple(v) if isinstance(v, list) else v for v in key)
            merged.setdefault(key, []).append(k)
    return list(merged.values())


def per_tensor_decay_(
    targets: list[Tensor],
    params: list[Tensor],
    weight_decays: Sequence[WeightDecay],
    scale: float = 1.0,
    *,
    foreach: bool,
) -> None:
    """``target += scale·λ·θ`` per tensor, λ its own weight decay (a number or a 0-dim tensor).

    Args:
      targets: tensors updated in place.
      params: the matching parameters θ.
      weight_decays: the matching λ.
      scale: a Python factor applied to every λ (LAMB folds its bias correction in here).
      foreach: use one ``torch._foreach_*`` call per kind instead of a loop.
    """
    by_value: dict[float, list[int]] = {}
    tensors: list[int] = []
    for i, lam in enumerate(weight_decays):
        if isinstance(lam, Tensor):
            tensors.append(i)
        elif lam != 0:
            by_value.setdefault(float(lam), []).append(i)
    for lam, idx in by_value.items():
        if foreach:
            torch._foreach_add_(
                [targets[i] for i in idx], [params[i] for i in idx], alpha=lam * scale
            )
        else:
            for i in idx:
                targets[i].add_(params[i], alpha=lam * scale)
    if tensors:
        # The coefficient λ·scale is formed first, as in the number branch above, so that a
        # tensor holding λ gives bit-for-bit the result of a number λ (in float64).
        lams = [weight_decays[i] for i in tensors]
        if foreach:
            # One multiply over the stacked λs, not one per tensor (elementwise, so equal bits).
            coefficients = list((torch.stack(lams) * scale).unbind())
            torch._foreach_addcmul_(
                [targets[i] for i in tensors], [params[i] for i in tensors], coefficients
            )
        else:
            for i, lam in zip(tensors, lams, strict=True):
                targets[i].addcmul_(params[i], lam * scale)


def l2_norm(tensor: Tensor) -> Tensor:
    """The 2-norm of ``tensor`` as a 0-dim tensor on its device.

    On CPU a BLAS dot product of the flattened tensor replaces ``torch.linalg.vector_norm``: for
    2.4 M float32 values it measured 169 µs against 337 µs (torch 2.13, 2-core Xeon) and was more
    accurate (6e-7 against 4e-5 relative error to a float64 norm). The per-tensor norms are a
    third of a LARS step on CPU. Elsewhere, or for non-contiguous or low-precision tensors, the
    library norm is used.
    """
    if (
        tensor.device.type == "cpu"
        and tensor.dtype in (torch.float32, torch.float64)
        and tensor.is_contiguous()
    ):
        flat = tensor.view(-1)
        return torch.dot(flat, flat).sqrt()
    return torch.linalg.vector_norm(tensor)


def clip_coefficient(grads: Sequence[Tensor], max_norm: float, *, foreach: bool) -> Tensor:
    """``min(1, max_norm / (‖g‖ + 1e-6))`` for the global 2-norm of ``grads``, as a 0-dim tensor.

    Kept on the device so clipping never waits for the host; the 1e-6 matches
    ``torch.nn.utils.clip_grad_norm_``. The norm is accumulated in the widest floating dtype
    present (at least float32) on the first gradient's device.

    Args:
      grads: every gradient of the optimiser (all groups).
      max_norm: the clipping threshold (> 0).
      foreach: compute per-tensor norms with ``torch._foreach_norm``.

    Returns:
      The factor to multiply every gradient by.
    """
    device = grads[0].device
    dtype = torch.float32
    for g in grads:
        dtype = torch.promote_types(dtype, g.dtype)
    norms: list[Tensor] = []
    for idx in bucket_indices(grads, [None] * len(grads)):
        bucket = [grads[i] for i in idx]
        if foreach:
            norms.extend(torch._foreach_norm(bucket))
        else:
            norms.extend(l2_norm(g) for g in bucket)
    total = torch.linalg.vector_norm(torch.stack([n.to(device=device, dtype=dtype) for n in norms]))
    return torch.clamp(max_norm / (total + 1e-6), max=1.0)
