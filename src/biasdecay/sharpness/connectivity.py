"""Connectivity sharpness C(θ) and C_m(θ) (paper eq. 4, 7, 11) and the bias-utilisation ratio r_l.

C(θ) = E_n ‖∂ℓ_n/∂θ ⊙ θ‖₁ is the ℓ1 norm of the connection sensitivity (eq. 7): the first-order
loss change from pruning each parameter, summed. Because it is a sum over parameters, it splits
exactly by parameter, module and role (substructure separability, eq. 11), which is what
:class:`ConnectivityReport` records.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from biasdecay.errors import InputError
from biasdecay.roles import Role, is_norm_module, param_owners, param_roles
from biasdecay.sharpness._autodiff import (
    LossFn,
    check_batch_mean,
    eager_module,
    iter_batches,
    preserved_state,
    progress,
    resolve_loss,
    trainable_parameters,
)
from biasdecay.sharpness._per_sample import (
    GuardFailure,
    HookedPerSample,
    guard_samples,
    loop_per_sample,
    parameters_without_formula,
    samples_interact,
    vmap_per_sample,
)

__all__ = [
    "ConnectivityReport",
    "connectivity_sharpness",
    "bias_utilization",
    "connection_sensitivity",
    "TABLE2_ROWS",
    "PER_SAMPLE_METHODS",
]

# How per-sample terms may be computed (connectivity_sharpness's ``method``).
PER_SAMPLE_METHODS = ("auto", "hooks", "vmap", "loop")

# The rows of the paper's Table 2 and the roles each one adds up.
TABLE2_ROWS: dict[str, tuple[Role, ...]] = {
    "Conv": (Role.CONV_WEIGHT, Role.CONV_BIAS),
    "γ": (Role.NORM_SCALE,),
    "β": (Role.NORM_SHIFT,),
    "FC(w)": (Role.LINEAR_WEIGHT,),
    "FC(b)": (Role.LINEAR_BIAS,),
    "other": (Role.EMBEDDING, Role.OTHER),
}


@dataclass(frozen=True)
class ConnectivityReport:
    """Connectivity sharpness of a model on a data set, split by parameter.

    Attributes:
        total: C(θ) (``per_sample=True``, eq. 4) or C_m(θ) (``per_sample=False``).
        by_parameter: each trainable parameter's share; the shares sum to ``total`` (eq. 11).
        roles: the :class:`Role` of every parameter in ``by_parameter``.
        owners: the qualified name of the module owning every parameter.
        per_sample: True for C, False for C_m.
        train_mode: whether the model ran in train mode (C_m only; C is always eval mode).
        n_samples: samples seen.
        batch_sizes: sizes of the batches seen; C_m depends on them, C does not.
        method: how per-sample terms were computed: the paths of ``paths`` that were taken,
            joined by "+" in the order hooks, vmap, loop ("hooks", "vmap", "hooks+vmap" when
            the exactness guard sent some parameters to torch.func, "loop" or "hooks+loop"
            where torch.func cannot transform the model), or "minibatch" for C_m.
        fallback_reason: why anything left the hook path, or None.
        paths: each parameter's path: "hooks" (layer formulas), "vmap" (torch.func), "loop"
            (one sample at a time), "vmap+loop" (batches of both: torch.func gave up on a later
            batch) or "minibatch".
    """

    total: float
    by_parameter: dict[str, float]
    roles: dict[str, Role]
    owners: dict[str, str]
    per_sample: bool
    train_mode: bool
    n_samples: int
    batch_sizes: tuple[int, ...]
    method: str
    fallback_reason: str | None = field(default=None)
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def measure(self) -> str:
        """ "C" (per-sample, eq. 4) or "C_m" (mini-batch)."""
        return "C" if self.per_sample else "C_m"

    @property
    def by_module(self) -> dict[str, float]:
        """Sharpness summed over each module's own parameters ("" is the root module)."""
        out: dict[str, float] = {}
        for name, value in self.by_parameter.items():
            owner = self.owners[name]
            out[owner] = out.get(owner, 0.0) + value
        return out

    @property
    def by_role(self) -> dict[Role, float]:
        """Sharpness summed over every role (all roles listed, zero where absent)."""
        out = {role: 0.0 for role in Role}
        for name, value in self.by_parameter.items():
            out[self.roles[name]] += value
        return out

    def table2(self) -> dict[str, float | None]:
        """The rows of the paper's Table 2 (Conv, γ, β, FC(w), FC(b), other) plus "Total".

        A row is ``None`` when the model has no (trainable) parameter of its roles, e.g. γ and β
        of VGG-11, which has no normalisation layers: absent, rather than present and flat.
        """
        by_role = self.by_role
        present = set(self.roles.values())
        rows: dict[str, float | None] = {
            row: sum(by_role[r] for r in roles) if present.intersection(roles) else None
            for row, roles in TABLE2_ROWS.items()
        }
        rows["Total"] = self.total
        return rows

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of everything in the report."""
        return {
            "measure": self.measure,
            "total": self.total,
            "per_sample": self.per_sample,
            "train_mode": self.train_mode,
            "n_samples": self.n_samples,
            "batch_sizes": list(self.batch_sizes),
            "method": self.method,
            "fallback_reason": self.fallback_reason,
            "paths": self.paths,
            "table2": self.table2(),
            "by_role": {r.value: v for r, v in self.by_role.items()},
            "by_module": self.by_module,
            "by_parameter": self.by_parameter,
            "roles": {n: r.value for n, r in self.roles.items()},
        }


def connectivity_sharpness(
    model: nn.Module,
    data: Iterable,
    loss_fn: LossFn | None = None,
    *,
    per_sample: bool = True,
    train_mode: bool = False,
    chunk_size: int = 32,
    method: str = "auto",
    strict: bool = False,
    progress_bar: bool = False,
) -> ConnectivityReport:
    """Connectivity sharpness of ``model`` over ``data`` (paper eq. 4; eq. 11 for the split).

    ``per_sample=True`` gives C(θ) = mean over samples n of Σ_i |θ_i ∂ℓ_n/∂θ_i| (the absolute
    value is taken per sample, then averaged). It is defined with fixed normalisation statistics,
    so the model runs in eval mode. ``per_sample=False`` gives C_m(θ): the same sum on each
    batch's mean loss, averaged over batches (equal weight per batch); it depends on the batch
    size, which the report records, and can run in train mode (what training sees).

    Parameters with ``requires_grad=False`` are not part of θ. The model's modes and buffers (BN
    running statistics) are the same afterwards.

    Args:
        model: the network (outputs logits for the default loss).
        data: an iterable of ``(inputs, targets)`` batches.
        loss_fn: ``loss_fn(outputs, targets)`` averaged over the batch; default cross-entropy.
        per_sample: C (True) or C_m (False).
        train_mode: for C_m only, run the model in train mode (batch statistics).
        chunk_size: samples per vectorised chunk on the generic (``vmap``) path.
        method: one of :data:`PER_SAMPLE_METHODS`, per-sample only. "auto": layer hooks when
            every parametrised layer has an exact formula, else torch.func (vmap), and one
            sample at a time, with a warning, where torch.func cannot transform the model
            (``nn.LSTM``, ``nn.GRU``). "hooks", "vmap" or "loop" force one path ("vmap" raises
            where torch.func refuses the model). On the hook path an exactness guard checks
            every parameter on every batch (the formula's batch gradient against autograd's)
            and recomputes those that fail on the generic path; the report's ``paths`` says
            which parameter took which path.
        strict: raise, naming the parameters, when the guard fails instead of recomputing.
        progress_bar: show a progress bar over batches.

    Returns:
        A :class:`ConnectivityReport`.

    Raises:
        ValueError: on train mode with per-sample C, an unknown method, no trainable
            parameters, empty data, or (``strict``) a parameter whose formula the guard
            rejects.
    """
    model = eager_module(model)
    if per_sample and train_mode:
        raise InputError(
            "per-sample C is defined with fixed normalisation statistics (eval mode): a "
            "per-sample gradient does not exist when BatchNorm uses the batch's own statistics. "
            "Use per_sample=False for C_m in train mode."
        )
    interaction = samples_interact(model) if per_sample else None
    if interaction is not None:
        raise InputError(
            f"per-sample C is undefined for this model: {interaction}. Use per_sample=False "
            "for C_m, which is defined on batches, or give the layer running statistics "
            "(track_running_stats=True, then a pass over the data in train mode)"
        )
    if method not in PER_SAMPLE_METHODS:
        raise InputError(
            f"unknown method {method!r}; valid methods: {', '.join(PER_SAMPLE_METHODS)}"
        )
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    params = trainable_parameters(model)
    if not params:
        raise InputError("the model has no trainable parameters (all have requires_grad=False)")
    loss = resolve_loss(loss_fn)
    names = [n for n, _ in params]
    roles, owners = param_roles(model), param_owners(model)
    batches = progress(data, desc=_desc(per_sample), enabled=progress_bar)

    with preserved_state(model, train=train_mode):
        if per_sample:
            result = _per_sample_sums(model, batches, loss, names, chunk_size, method, strict)
            sums, batch_sizes, used = result.sums, result.batch_sizes, result.method
            reason, paths = result.reason, result.paths
            n_samples = sum(batch_sizes)
            denominator = n_samples
        else:
            sums, batch_sizes = _minibatch_sums(model, batches, loss, params)
            used, reason, paths = "minibatch", None, dict.fromkeys(names, "minibatch")
            n_samples = sum(batch_sizes)
            denominator = len(batch_sizes)
    if not batch_sizes:
        raise InputError("the data yielded no batches")

    # One host transfer for everything: the sums stay on the device until here.
    values = (torch.stack([sums[n] for n in names]) / denominator).tolist()
    by_parameter = dict(zip(names, values, strict=True))
    return ConnectivityReport(
        total=math.fsum(values),
        by_parameter=by_parameter,
        roles={n: roles[n] for n in names},
        owners={n: owners[n] for n in names},
        per_sample=per_sample,
        train_mode=train_mode and not per_sample,
        n_samples=n_samples,
        batch_sizes=tuple(batch_sizes),
        method=used,
        fallback_reason=reason,
        paths=paths,
    )


def _desc(per_sample: bool) -> str:
    return "connectivity C" if per_sample else "connectivity C_m"


@dataclass
class _PerSampleResult:
    sums: dict[str, torch.Tensor]
    batch_sizes: list[int]
    method: str
    reason: str | None
    paths: dict[str, str]


def _per_sample_sums(
    model: nn.Module,
    batches: Iterable,
    loss: LossFn,
    names: list[str],
    chunk_size: int,
    method: str,
    strict: bool,
) -> _PerSampleResult:
    """Σ over samples of each parameter's |θ⊙∂ℓ_n/∂θ| sum, accumulated in float64."""
    reason: str | None = None
    without = {} if method in ("vmap", "loop") else parameters_without_formula(model)
    if method == "hooks" and without:
        raise InputError(
            f"method='hooks' cannot handle this model: no per-sample formula covers "
            f"{_grouped(without)}. method='auto' computes these parameters' terms through "
            "torch.func and the rest through the layer formulas"
        )
    if method in ("vmap", "loop"):
        reason = f"method={method!r} requested"
    elif len(without) == len(names):
        reason = f"no per-sample formula covers {_grouped(without)}"
    data = iter_batches(batches, model)
    first = next(data, None)
    hooked = None
    if reason is None:
        # the first samples of the first batch show how the model uses the parameters that no
        # layer holds (a layer scale: HookedPerSample's probe)
        example = None if first is None else first[0][: guard_samples(first[0].shape[0])]
        hooked = HookedPerSample(model, loss, without=without, example=example)
    generic = _GenericPath(
        model, loss, chunk_size, loop=method == "loop", may_loop=method != "vmap"
    )
    sums: dict[str, torch.Tensor] = {}
    batch_sizes: list[int] = []
    # parameters without a formula that the hook path does not measure -> why
    # (in the model's order, as ``without`` is: the report's reason reads the same every run)
    hooked_without = (
        {n: why for n, why in without.items() if n in hooked.elsewhere}
        if hooked is not None
        else {}
    )
    # parameters on the generic path beside the hook path -> why: those, then those the guard
    # sends there
    guarded = dict(hooked_without)
    try:
        for x, y in itertools.chain([] if first is None else [first], data):
            terms = None
            if hooked is not None:
                # The hook path scales by the batch size: the loss must be a batch mean.
                result = hooked(x, y, check_mean=not batch_sizes)
                if result is None:
                    reason = "a layer ran more than once in one forward pass"
                else:
                    terms, failures = result
                    _note_failures(failures, guarded, strict)
                if terms is None:  # switch to the generic path for this and later batches
                    hooked.close()
                    hooked = None
            if terms is None:
                terms = generic.terms(x, y, None, reason)
            elif guarded:  # no formula, or the guard's failures: exactly, the generic path
                for name in guarded:
                    terms.pop(name, None)
                why = f"no formula, or the exactness guard rejected it, for {', '.join(guarded)}"
                terms.update(generic.terms(x, y, guarded, why))
            for n, t in terms.items():
                s = t.sum(dtype=torch.float64)
                sums[n] = sums[n] + s if n in sums else s
            batch_sizes.append(int(x.shape[0]))
    finally:
        if hooked is not None:
            hooked.close()
    device = next(model.parameters()).device
    zero = torch.zeros((), dtype=torch.float64, device=device)
    paths = {n: generic.path_of(n) or "hooks" for n in names}
    if reason is None and guarded:
        rejected = {n: why for n, why in guarded.items() if n not in hooked_without}
        parts = (
            [f"no per-sample formula covers {_grouped(hooked_without)}"] if hooked_without else []
        )
        if rejected:
            shown = "; ".join(f"{n} ({why})" for n, why in rejected.items())
            parts.append(
                f"the exactness guard found the layer formula wrong or inapplicable for {shown}"
            )
        reason = f"{'; '.join(parts)}: computed through {generic.path_name()}"
    if generic.loop_reason is not None and reason is not None:
        reason = f"{reason}; {generic.loop_reason}"
    order = ("hooks", "vmap", "loop")
    used = "+".join(p for p in order if any(p in path.split("+") for path in paths.values()))
    return _PerSampleResult({n: sums.get(n, zero) for n in names}, batch_sizes, used, reason, paths)


def _grouped(why_of: dict[str, str]) -> str:
    """Parameters and why, one clause per distinct why: "a, b (why); c (why)"."""
    names_of: dict[str, list[str]] = {}
    for name, why in why_of.items():
        names_of.setdefault(why, []).append(name)
    return "; ".join(f"{', '.join(names)} ({why})" for why, names in names_of.items())


class _GenericPath:
    """Per-sample terms of any model: through ``torch.func`` (:func:`vmap_per_sample`) or,
    where torch.func cannot transform the model, one sample at a time
    (:func:`loop_per_sample`).

    Args:
        loop: one sample at a time from the start (``method="loop"``).
        may_loop: fall back to one sample at a time when torch.func refuses the model, with a
            warning (``method="auto"``); False raises instead (``method="vmap"``).
    """

    def __init__(
        self, model: nn.Module, loss: LossFn, chunk_size: int, *, loop: bool, may_loop: bool
    ) -> None:
        self.model, self.loss, self.chunk_size = model, loss, chunk_size
        self.loop, self.may_loop = loop, may_loop
        self.loop_reason: str | None = None  # why torch.func was given up, when it was
        self._taken: dict[str, list[str]] = {}  # parameter -> the paths it took, in order

    def path_name(self) -> str:
        return "one sample at a time" if self.loop else "torch.func"

    def path_of(self, name: str) -> str | None:
        """ "vmap", "loop" or "vmap+loop" (batches of both), or None if never taken."""
        taken = self._taken.get(name)
        return None if taken is None else "+".join(taken)

    def terms(
        self, x: torch.Tensor, y: torch.Tensor, only: Collection[str] | None, why: str | None
    ) -> dict[str, torch.Tensor]:
        """The terms of ``only`` (None: every trainable parameter) on one batch.

        Args:
            why: why these parameters are off the hook path, for the error message.
        """
        if not self.loop:
            try:
                return self._took(
                    vmap_per_sample(self.model, self.loss, x, y, self.chunk_size, only=only),
                    "vmap",
                )
            except (RuntimeError, NotImplementedError) as error:
                # The model's plain forward and backward have run by now (or run eagerly the
                # same way), so this is an operation torch.func cannot transform.
                refusal = str(error).splitlines()[0].rstrip(".")
                if not self.may_loop:
                    raise InputError(
                        f"per-sample C needs per-sample gradients through torch.func here "
                        f"({why}), and torch.func cannot transform this model: {refusal}. "
                        "method='loop' (or 'auto') computes them one sample at a time instead; "
                        "C_m (per_sample=False) needs no per-sample gradients."
                    ) from error
                self.loop = True
                self.loop_reason = (
                    f"torch.func cannot transform this model ({refusal}): per-sample gradients "
                    "one sample at a time"
                )
                warnings.warn(
                    f"per-sample C: {self.loop_reason}, one forward and backward per sample "
                    "(slow on large data; C_m, per_sample=False, needs no per-sample gradients)",
                    stacklevel=4,
                )
        return self._took(loop_per_sample(self.model, self.loss, x, y, only=only), "loop")

    def _took(self, terms: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
        for name in terms:
            taken = self._taken.setdefault(name, [])
            if path not in taken:
                taken.append(path)
        return terms


def _note_failures(failures: list[GuardFailure], guarded: dict[str, str], strict: bool) -> None:
    """Record the guard's failures (each parameter once); raise under ``strict``."""
    if failures and strict:
        shown = "; ".join(f"{f.name}: {f.describe()}" for f in failures)
        raise InputError(
            f"strict: the per-sample formula of these parameters disagrees with autograd or "
            f"cannot apply ({shown}). They are used other than inside their own module's "
            "standard forward, once per sample (a subclass with its own forward, a tied weight, "
            "a reparametrisation, a table looked up once for the whole batch); use "
            "strict=False to recompute them through torch.func, or method='vmap'"
        )
    for failure in failures:
        guarded.setdefault(failure.name, failure.describe())


def _minibatch_sums(
    model: nn.Module,
    batches: Iterable,
    loss: LossFn,
    params: list[tuple[str, nn.Parameter]],
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Σ over batches of each parameter's |θ⊙∇L_batch| sum (C_m), accumulated in float64.

    Each parameter's own sum runs in its dtype, or float32 for a 16-bit one (torch's sums are
    pairwise: relative rounding near the dtype's epsilon, where a float64 sum would convert
    every entry on the way), and those sums are accumulated over parameters and batches in
    float64.
    """
    tensors = [p for _, p in params]
    sums = [torch.zeros((), dtype=torch.float64, device=p.device) for p in tensors]
    batch_sizes: list[int] = []
    for x, y in iter_batches(batches, model):
        with torch.enable_grad():
            outputs = model(x)
            if not batch_sizes:
                check_batch_mean(loss, outputs.detach(), y)
            grads = torch.autograd.grad(loss(outputs, y), tensors, allow_unused=True)
        for i, (g, p) in enumerate(zip(grads, tensors, strict=True)):
            if g is not None:
                own = torch.float64 if p.dtype == torch.float64 else torch.float32
                sums[i] += (g * p.detach()).abs_().sum(dtype=own)
        batch_sizes.append(int(x.shape[0]))
    return {n: s for (n, _), s in zip(params, sums, strict=True)}, batch_sizes


def connection_sensitivity(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn | None = None,
    *,
    train_mode: bool = True,
) -> dict[str, torch.Tensor]:
    """The signed connection sensitivity θ ⊙ ∂L/∂θ of one batch's mean loss (eq. 7).

    Its absolute sum is C_m. Unlike C it keeps signs, which is what the scale-invariance
    identities need: in train mode, for a conv/linear layer followed by BatchNorm,
    Σ_j θ_jk ∂L/∂θ_jk (+ b_k ∂L/∂b_k) = 0 for every output channel k (eq. 14-16).

    Args:
        model: the network.
        inputs: one batch of inputs.
        targets: its targets.
        loss_fn: batch-mean loss; default cross-entropy.
        train_mode: run the model in train mode (batch statistics) or eval mode.

    Returns:
        ``{parameter name: tensor shaped like the parameter}`` for trainable parameters.
    """
    model = eager_module(model)
    params = trainable_parameters(model)
    loss = resolve_loss(loss_fn)
    with preserved_state(model, train=train_mode):
        ((x, y),) = list(iter_batches([(inputs, targets)], model))
        with torch.enable_grad():
            grads = torch.autograd.grad(
                loss(model(x), y), [p for _, p in params], allow_unused=True
            )
    return {
        n: (g * p.detach()) if g is not None else torch.zeros_like(p)
        for (n, p), g in zip(params, grads, strict=True)
    }


def bias_utilization(
    report: ConnectivityReport, model: nn.Module | None = None
) -> dict[str, float]:
    """The bias-utilisation ratio r_l = C(β_l) / C(γ_l) of every normalisation layer (Sec. 4.2).

    Both terms are summed over the layer's channels. C(γ_l) = 0 with C(β_l) > 0 gives ``inf``;
    both zero gives 0. Layers whose γ or β is not in the report (no affine parameters, or
    frozen) are left out.

    Args:
        report: a :class:`ConnectivityReport` (C or C_m).
        model: optional; when given, only modules that are normalisation layers of this model
            are considered (otherwise the report's roles decide).

    Returns:
        ``{normalisation module name: r_l}`` in the model's order.
    """
    gamma: dict[str, float] = {}
    beta: dict[str, float] = {}
    for name, value in report.by_parameter.items():
        role, owner = report.roles[name], report.owners[name]
        if role is Role.NORM_SCALE:
            gamma[owner] = value
        elif role is Role.NORM_SHIFT:
            beta[owner] = value
    if model is not None:
        norms = {n for n, m in eager_module(model).named_modules() if is_norm_module(m)}
        gamma = {k: v for k, v in gamma.items() if k in norms}
    ratios: dict[str, float] = {}
    for layer, c_gamma in gamma.items():
        if layer not in beta:
            continue
        c_beta = beta[layer]
        if c_gamma > 0:
            ratios[layer] = c_beta / c_gamma
        else:
            ratios[layer] = math.inf if c_beta > 0 else 0.0
    return ratios
