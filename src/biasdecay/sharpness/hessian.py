"""Hessian baselines of the paper (Sec. 3.1): Tr(H(θ)) and λmax(H(θ)) of the data-set loss.

The paper compares connectivity sharpness (eq. 4) with the two classic Hessian sharpness measures,
``Tr(∇²_θ L)`` and the top eigenvalue of ``∇²_θ L``, where ``L(θ; D)`` is the empirical risk of
eq. 3. Both are computed matrix-free from Hessian-vector products (HVPs):

* the data-set loss is ``L = Σ_b (n_b / N) · ℓ̄_b`` (``ℓ̄_b`` the mean loss of batch ``b`` with
  ``n_b`` samples, ``N = Σ_b n_b``), so a data-set HVP is the batch-size-weighted sum of per-batch
  HVPs, each a double backward through ``torch.autograd.grad(..., create_graph=True)``;
* every probe vector known up front is multiplied in the same pass over the data, so ``k``
  probes cost one pass instead of ``k``. Many vectors (Hutch++, Hutchinson) go forward-over-
  reverse: ``torch.func.jvp`` of ``torch.func.grad``, vmapped over a chunk of vectors, as
  curvlinops does. A few (one Lanczos step) share one forward and first-order backward per
  batch whose graph is kept (``retain_graph``) and differentiated again, in one vectorised
  double backward (``is_grads_batched``) per chunk. A model that a transform cannot handle
  falls back to the next method, for good: vmapped forward-over-reverse, vectorised double
  backward, one double backward per vector.

θ is the vector of trainable parameters (``requires_grad``) in ``model.named_parameters()``
order; frozen parameters are constants, not coordinates of the Hessian. BatchNorm runs in eval
mode (fixed statistics, so the loss is a sum over samples) and the model's modes and buffers are
restored afterwards.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from biasdecay.errors import InputError
from biasdecay.sharpness._autodiff import (
    LossFn,
    check_batch_mean,
    eager_module,
    exact_higher_order,
    iter_batches,
    missing_second_derivatives,
    no_second_derivatives_error,
    preserved_state,
    resolve_loss,
    trainable_parameters,
    undifferentiable_node,
)
from biasdecay.sharpness._autodiff import progress as progress_bar
from biasdecay.sharpness._per_sample import guard_tolerance

__all__ = [
    "TRACE_METHODS",
    "DatasetHessian",
    "EigenEstimate",
    "TraceEstimate",
    "hessian_max_eigenvalue",
    "hessian_trace",
]

#: Trace estimators accepted by :func:`hessian_trace`.
TRACE_METHODS = ("hutchinson", "hutch++")

# Minimum matvec budget per method: Hutch++ needs one sketch probe, one projected direction and
# one residual probe.
_MIN_MATVECS = {"hutchinson": 1, "hutch++": 3}

# β below this many machine epsilons of ‖T‖ means the Krylov space is invariant: the next Lanczos
# vector would be rounding noise, and the Ritz values are already eigenvalues of H.
_INVARIANT_EPS_FACTOR = 100.0

# Vectors per vectorised double backward: on a 2-core CPU, 8 was fastest with batches of 128
# and of 512 samples (benchmarks/bench_hessian.py); more costs memory for no speed.
_VECTOR_CHUNK = 8
# Passes with more vectors than this go forward-over-reverse, _FORWARD_OVER_REVERSE_CHUNK
# vectors per vmapped call; fewer go by double backward. Part (d) of benchmarks/bench_hessian.py
# times both: on the 2-core Xeon the double backward was faster up to about 8 vectors, and
# forward-over-reverse gained little beyond chunks of 32. Memory grows with the chunk: every
# activation gets one tangent per vector.
_FORWARD_OVER_REVERSE_ABOVE = 8
_FORWARD_OVER_REVERSE_CHUNK = 32


@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic estimate of ``Tr(H(θ))``.

    Attributes:
        value: the estimate of the trace.
        stderr: standard error of the stochastic part: the sample standard deviation of the
            Hutchinson terms divided by the square root of their number (for Hutch++ only the
            residual probes are random). ``nan`` when there is a single random probe.
        n_matvecs: Hessian-vector products actually computed, each over the whole data set.
        method: ``"hutchinson"`` or ``"hutch++"``.
        seed: seed of the probe generator; the same seed gives the same estimate.
    """

    value: float
    stderr: float
    n_matvecs: int
    method: str
    seed: int


@dataclass(frozen=True)
class EigenEstimate:
    """The algebraically largest eigenvalue of ``H(θ)`` found by Lanczos.

    Attributes:
        value: the Ritz value, the estimate of ``λmax(H)``.
        residual: ``‖H v − λ v‖`` for the returned unit eigenvector, computed with one extra HVP
            rather than trusted from the Lanczos recurrence.
        n_matvecs: Hessian-vector products computed, including the residual check.
        converged: whether the Ritz residual ``|β_k · s_k|`` fell below ``tol · |λ|`` (or the
            Krylov space became invariant) within ``max_iter`` steps.
        eigenvector: the unit Ritz vector as a flat tensor over the trainable parameters (in
            ``model.named_parameters()`` order), on the model's device, or ``None``.
    """

    value: float
    residual: float
    n_matvecs: int
    converged: bool
    eigenvector: torch.Tensor | None = field(default=None, repr=False, compare=False)


def reiterable(data: Iterable) -> Iterable:
    """``data`` itself, or its batches in a list when it is a one-shot iterator.

    The Hessian measures pass over the data several times; a generator or ``iter(loader)`` would
    be exhausted after the first pass, so its batches are cached (they stay in memory).
    """
    # An Iterator is its own iter(); testing the type avoids calling iter() on a DataLoader,
    # which would start its workers for nothing.
    if isinstance(data, Iterator):
        return list(data)
    return data


class DatasetHessian:
    """The Hessian of the data-set loss ``L = Σ_b (n_b/N)·ℓ̄_b`` as a matrix-free operator.

    Vectors are flat tensors over the trainable parameters (``model.named_parameters()`` order)
    in the parameters' dtype and device. Every call is one pass over the data, however many
    vectors it is given: per batch one forward, one ``create_graph`` backward, then one
    vectorised double backward per chunk of vectors (one backward per vector where torch cannot
    vectorise the model's backward). The caller sets the model's mode (eval for BatchNorm).

    Args:
        model: the network; its trainable parameters are θ.
        data: an iterable of ``(inputs, targets)`` batches that yields the same samples on every
            pass (a one-shot iterator is cached in a list).
        loss_fn: ``loss_fn(outputs, targets)``, the mean loss over the batch.
        show_progress: show a progress bar over the batches of each pass.

    Raises:
        ValueError: when the model has no trainable parameters, or they do not share one dtype
            and device.
    """

    def __init__(
        self, model: nn.Module, data: Iterable, loss_fn: LossFn, *, show_progress: bool = False
    ) -> None:
        named = trainable_parameters(model)
        if not named:
            raise InputError(
                "the model has no trainable parameters (none has requires_grad=True); "
                "unfreeze the parameters whose Hessian you want"
            )
        kinds = {(p.dtype, p.device) for _, p in named}
        if len(kinds) > 1:
            raise InputError(
                f"trainable parameters mix dtypes/devices {sorted(map(str, kinds))}; "
                "move the model to one dtype and device first"
            )
        self.model = model
        self.data = reiterable(data)
        self.loss_fn = loss_fn
        self.show_progress = show_progress
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self._offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        # Each method is used until torch cannot apply it to this model (then never again).
        self._forward_over_reverse = True
        self._batched = True  # vectorised double backward
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        #: HVPs computed so far (each a full pass-equivalent over the data).
        self.n_matvecs = 0
        self._passes = 0
        self._mean_checked = False
        self._graph_checked = False  # for derivatives torch does not have
        self._symmetry_checked = False  # for derivatives the double backward skips

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H v`` for every row ``v`` of ``vectors`` (shape ``(k, dim)``), in one data pass."""
        return self._pass(vectors, quadratic_forms=False)

    def quadratic_forms(self, vectors: torch.Tensor) -> torch.Tensor:
        """``vᵀ H v`` for every row of ``vectors``, in one data pass.

        Accumulated batch by batch, so the ``(k, dim)`` products ``H v`` are never held at once.
        """
        return self._pass(vectors, quadratic_forms=True)

    def _split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [
            piece.view_as(p) for piece, p in zip(flat.split(self.sizes), self.params, strict=True)
        ]

    def _pass(self, vectors: torch.Tensor, *, quadratic_forms: bool) -> torch.Tensor:
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise InputError(
                f"expected vectors of shape (k, {self.dim}), got {tuple(vectors.shape)}"
            )
        k = vectors.shape[0]
        vectors = vectors.to(self.device, self.dtype)
        shape = (k,) if quadratic_forms else (k, self.dim)
        total = torch.zeros(shape, dtype=self.dtype, device=self.device)
        # Per parameter, the k vectors' pieces stacked: (k, *parameter shape).
        stacked = [
            piece.view(k, *p.shape)
            for piece, p in zip(vectors.split(self.sizes, dim=1), self.params, strict=True)
        ]
        n_samples = 0
        self._passes += 1
        batches = progress_bar(
            iter_batches(self.data, self.model),
            desc=f"Hessian-vector products (pass {self._passes}, {k} vectors)",
            total=len(self.data) if hasattr(self.data, "__len__") else None,
            enabled=self.show_progress,
        )
        for x, y in batches:
            n_batch = x.shape[0]
            n_samples += n_batch
            self._check_mean(x, y)
            self._check_symmetry(x, y)
            self._accumulate(total, x, y, stacked, n_batch, quadratic_forms=quadratic_forms)
        if n_samples == 0:
            raise InputError("the data yielded no batches; pass a non-empty iterable of (x, y)")
        self.n_matvecs += k
        return total / n_samples

    def _accumulate(
        self,
        total: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        stacked: list[torch.Tensor],
        weight: float,
        *,
        quadratic_forms: bool,
    ) -> None:
        """Add ``weight`` × one batch's HVPs (or quadratic forms) of the stacked vectors."""
        for start, stop, hvps in self._batch_hvps(x, y, stacked):
            for i, h in enumerate(hvps):
                if h is None:
                    continue
                h = h.reshape(stop - start, -1)
                if quadratic_forms:
                    v = stacked[i][start:stop].reshape(stop - start, -1)
                    total[start:stop] += weight * (h * v).sum(1)
                else:
                    offset = self._offsets[i]
                    total[start:stop, offset : offset + self.sizes[i]].add_(h, alpha=weight)

    def _check_symmetry(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """On the first batch: uᵀ(Hv) = vᵀ(Hu) for random u and v, as for any Hessian.

        A backward that does not carry its own derivative (a custom autograd Function whose
        backward detaches, unmarked) leaves no node that :func:`missing_second_derivatives`
        finds: the double backward skips its part without a sign. Where parameters come after
        it, what is skipped makes the product asymmetric, which this catches. Two products on
        one batch, not counted as matvecs of the estimate.
        """
        if self._symmetry_checked:
            return
        self._symmetry_checked = True
        generator = torch.Generator().manual_seed(0)
        uv = torch.randn(2, self.dim, generator=generator, dtype=torch.float64)
        uv = uv.to(self.device, self.dtype)
        stacked = [
            piece.view(2, *p.shape)
            for piece, p in zip(uv.split(self.sizes, dim=1), self.params, strict=True)
        ]
        products = torch.zeros(2, self.dim, dtype=self.dtype, device=self.device)
        self._accumulate(products, x, y, stacked, 1.0, quadratic_forms=False)
        (u, v), (hu, hv) = uv, products
        gap = (u @ hv - v @ hu).abs()
        scale = u.abs() @ hv.abs() + v.abs() @ hu.abs()
        # float32 rounding at least, whatever the model's dtype: a model may compute parts in
        # float32 (Hugging Face's RMSNorm does in a float64 Llama, Mistral or Qwen), while a
        # skipped backward is off by a large share of the scale
        tolerance = max(guard_tolerance(self.dtype), guard_tolerance(torch.float32))
        if bool(gap > tolerance * scale):
            raise InputError(
                "the Hessian's products are not symmetric on this model: uᵀ(Hv) and vᵀ(Hu) "
                f"differ by {(gap / scale).item():.2g} of their scale, so a backward in the model "
                "does not carry its own derivative (a custom autograd Function whose backward "
                "detaches or runs without autograd) and the double backward skips part of the "
                "Hessian. Write that backward in differentiable torch operations"
            )

    def _batch_hvps(
        self, x: torch.Tensor, y: torch.Tensor, stacked: list[torch.Tensor]
    ) -> Iterator[tuple[int, int, list[torch.Tensor | None]]]:
        """One batch's ``(start, stop, HVPs)`` for consecutive chunks of the vectors.

        The HVPs are ``(stop − start, *shape)`` per parameter (None: a zero row of H).
        """
        k = stacked[0].shape[0]
        if self._forward_over_reverse and k > _FORWARD_OVER_REVERSE_ABOVE:
            start = 0
            while start < k and self._forward_over_reverse:
                stop = min(k, start + _FORWARD_OVER_REVERSE_CHUNK)
                hvps = self._forward_over_reverse_hvps(x, y, [v[start:stop] for v in stacked])
                if hvps is not None:
                    yield start, stop, hvps
                    start = stop
            if start == k:
                return
            stacked = [v[start:] for v in stacked]  # the rest by double backward
        else:
            start = 0
        yield from self._double_backward_hvps(x, y, stacked, offset=start)

    def _forward_over_reverse_hvps(
        self, x: torch.Tensor, y: torch.Tensor, vectors: list[torch.Tensor]
    ) -> list[torch.Tensor] | None:
        """H·v for a chunk of vectors, ``(c, *shape)`` per parameter, by vmapped jvp of grad.

        Returns None (and turns the method off) when torch cannot transform the model: a custom
        autograd Function without forward-mode or vmap rules, an op without a batching rule.
        """
        from torch.func import functional_call, grad, jvp, vmap

        model, loss_fn, names = self.model, self.loss_fn, self.names

        def loss(theta: tuple[torch.Tensor, ...]) -> torch.Tensor:
            value = loss_fn(functional_call(model, dict(zip(names, theta, strict=True)), (x,)), y)
            _check_scalar(value)
            return value

        primals = tuple(p.detach() for p in self.params)
        gradient = grad(loss)

        def hvp(*v: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return jvp(gradient, (primals,), (v,))[1]

        try:
            return list(vmap(hvp)(*vectors))
        except (RuntimeError, NotImplementedError):
            self._forward_over_reverse = False
            return None

    def _double_backward_hvps(
        self, x: torch.Tensor, y: torch.Tensor, stacked: list[torch.Tensor], offset: int
    ) -> Iterator[tuple[int, int, list[torch.Tensor | None]]]:
        """The chunks of :meth:`_batch_hvps` by differentiating one first-order graph again."""
        grads = self._first_order_graph(x, y)
        # Parameters whose gradient is no function of θ (unused, or the loss is linear in
        # them) have zero Hessian rows, and by symmetry zero columns: only the others are
        # differentiated again. The products come back for every parameter (None: a zero row).
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not live:
            return
        k = stacked[0].shape[0]
        for start in range(0, k, _VECTOR_CHUNK):
            stop = min(k, start + _VECTOR_CHUNK)
            hvps = self._hvps(
                [grads[i] for i in live], [stacked[i][start:stop] for i in live], retain=stop < k
            )
            yield offset + start, offset + stop, hvps

    def _hvps(
        self, grads: list[torch.Tensor], vectors: list[torch.Tensor], *, retain: bool
    ) -> list[torch.Tensor | None]:
        """One batch's HVPs with a chunk of vectors, ``(c, *shape)`` for every parameter of
        θ (None: a zero row), from the gradients ``grads`` and their vectors.

        One vectorised double backward (``is_grads_batched``) for the whole chunk: on small
        batches, c sequential backward passes cost mostly their per-op overhead. A model whose
        backward torch cannot vectorise gets the sequential passes, for good.
        """
        c = vectors[0].shape[0]
        if self._batched and c > 1:
            try:
                return list(
                    torch.autograd.grad(
                        grads,
                        self.params,
                        grad_outputs=vectors,
                        retain_graph=True,  # kept, so that a failure can still go sequential
                        allow_unused=True,
                        is_grads_batched=True,
                    )
                )
            except RuntimeError:
                self._batched = False
        try:
            columns = [
                torch.autograd.grad(
                    grads,
                    self.params,
                    grad_outputs=[v[j] for v in vectors],
                    retain_graph=retain or j < c - 1,
                    allow_unused=True,
                )
                for j in range(c)
            ]
        except (NotImplementedError, RuntimeError) as error:
            if "not implemented" not in str(error):
                raise
            refusal = str(error).splitlines()[0].rstrip(".")
            cause = f"torch has none for an operation in it ({refusal})"
            raise no_second_derivatives_error(cause, "the Hessian") from error
        return [None if col[0] is None else torch.stack(col) for col in zip(*columns, strict=True)]

    def _check_mean(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """On the first batch: batches are weighted by their size, so losses must be means."""
        if not self._mean_checked:
            with torch.no_grad():
                check_batch_mean(self.loss_fn, self.model(x), y)
            self._mean_checked = True

    def _first_order_graph(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        loss = self.loss_fn(self.model(x), y)
        _check_scalar(loss)
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        if not self._graph_checked:  # the model's graph: the same on every batch
            node = missing_second_derivatives(grads)
            if node is not None:
                raise no_second_derivatives_error(undifferentiable_node(node), "the Hessian")
            self._graph_checked = True
        return grads


def _check_scalar(loss: torch.Tensor) -> None:
    if loss.ndim != 0:
        raise InputError(
            f"loss_fn returned shape {tuple(loss.shape)}; it must return the mean loss of the "
            "batch (a scalar)"
        )


def hessian_trace(
    model: nn.Module,
    data: Iterable,
    loss_fn: LossFn | None = None,
    *,
    n_matvecs: int = 100,
    method: str = "hutch++",
    seed: int = 0,
    progress: bool = False,
) -> TraceEstimate:
    """Estimate ``Tr(H(θ)) = Tr(∇²_θ L(θ; D))``, the trace sharpness of Sec. 3.1 (eq. 3).

    ``"hutchinson"`` averages ``vᵀHv`` over ``n_matvecs`` Rademacher probes ``v``.
    ``"hutch++"`` (Meyer et al., 2021) splits the budget in thirds: ``k = n_matvecs // 3``
    Rademacher probes ``S`` give ``Q = qr(H S)``; ``Tr(Qᵀ H Q)`` is computed exactly and the
    remaining probes estimate ``Tr((I−QQᵀ) H (I−QQᵀ))`` by Hutchinson. With
    ``n_matvecs >= 3·dim(θ)`` ``Q`` spans the whole space and the estimate is exact.

    Cost: Hutchinson is one pass over the data, Hutch++ two, whatever ``n_matvecs``; memory is
    about ``2·n_matvecs`` flat parameter vectors. ``data`` must yield the same samples on every
    pass (no random augmentation); a one-shot iterator is cached in a list first.

    Args:
        model: the network; θ are its trainable parameters, frozen ones are ignored.
        data: an iterable of ``(inputs, targets)`` batches.
        loss_fn: ``loss_fn(outputs, targets)`` averaging over the batch; mean cross-entropy if
            ``None``.
        n_matvecs: exact number of HVPs to spend (>= 1 for Hutchinson, >= 3 for Hutch++).
        method: ``"hutch++"`` or ``"hutchinson"``.
        seed: seed of the probe generator (a CPU generator, so results do not depend on device).
        progress: show a progress bar over the batches of each pass.

    Returns:
        A :class:`TraceEstimate` with the value, its standard error and ``n_matvecs``.

    Raises:
        ValueError: for an unknown method, a budget too small for it, a model without trainable
            parameters or empty data.

    References:
        Meyer, Musco, Musco & Woodruff, "Hutch++: Optimal Stochastic Trace Estimation", SOSA 2021.
    """
    model = eager_module(model)
    if method not in TRACE_METHODS:
        raise InputError(f"unknown trace method {method!r}; valid methods are {TRACE_METHODS}")
    n_matvecs = operator.index(n_matvecs)
    if n_matvecs < _MIN_MATVECS[method]:
        raise InputError(
            f"n_matvecs={n_matvecs} is too small for {method!r}, which needs at least "
            f"{_MIN_MATVECS[method]}; raise n_matvecs"
        )
    generator = torch.Generator().manual_seed(seed)
    with preserved_state(model, train=False), exact_higher_order(), torch.enable_grad():
        hessian = DatasetHessian(model, data, resolve_loss(loss_fn), show_progress=progress)
        estimator = _hutchinson if method == "hutchinson" else _hutch_plus_plus
        value, stderr = estimator(hessian, n_matvecs, generator)
    return TraceEstimate(
        value=value, stderr=stderr, n_matvecs=hessian.n_matvecs, method=method, seed=seed
    )


def _rademacher(n: int, hessian: DatasetHessian, generator: torch.Generator) -> torch.Tensor:
    """``(n, dim)`` independent ±1 probes, drawn on the CPU so a seed means the same everywhere."""
    signs = torch.randint(0, 2, (n, hessian.dim), generator=generator, dtype=torch.int8)
    return (2 * signs - 1).to(hessian.device, hessian.dtype)


def _mean_and_stderr(samples: torch.Tensor) -> tuple[float, float]:
    samples = samples.detach().to("cpu", torch.float64)
    if samples.numel() < 2:
        return samples.mean().item(), math.nan
    return samples.mean().item(), (samples.std() / math.sqrt(samples.numel())).item()


def _hutchinson(
    hessian: DatasetHessian, n_matvecs: int, generator: torch.Generator
) -> tuple[float, float]:
    return _mean_and_stderr(hessian.quadratic_forms(_rademacher(n_matvecs, hessian, generator)))


def _hutch_plus_plus(
    hessian: DatasetHessian, n_matvecs: int, generator: torch.Generator
) -> tuple[float, float]:
    n_sketch = n_matvecs // 3
    sketch = hessian.apply(_rademacher(n_sketch, hessian, generator))  # pass 1: H S
    basis = torch.linalg.qr(sketch.T, mode="reduced").Q.T  # (min(k, dim), dim) orthonormal rows
    # Whatever the sketch and its span did not use goes to the residual probes, so the budget is
    # spent exactly even when dim(θ) < k.
    n_residual = n_matvecs - n_sketch - basis.shape[0]
    probes = _rademacher(n_residual, hessian, generator)
    probes = probes - (probes @ basis.T) @ basis  # (I − QQᵀ) g
    # Pass 2: the span and the residual probes are both known now, so they share one pass.
    forms = hessian.quadratic_forms(torch.cat([basis, probes]))
    residual_mean, stderr = _mean_and_stderr(forms[basis.shape[0] :])
    low_rank_trace = forms[: basis.shape[0]].detach().to("cpu", torch.float64).sum().item()
    return low_rank_trace + residual_mean, stderr


def hessian_max_eigenvalue(
    model: nn.Module,
    data: Iterable,
    loss_fn: LossFn | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    progress: bool = False,
) -> EigenEstimate:
    """The algebraically largest eigenvalue ``λmax(H(θ))`` of the data-set loss Hessian (Sec. 3.1).

    Symmetric Lanczos from a seeded Gaussian start vector, one HVP (one data pass) per step. The
    Krylov vectors stay on the model's device in the parameters' dtype and are fully
    re-orthogonalised (twice, which is enough) so no spurious copies of converged eigenvalues
    appear; the small tridiagonal matrix is solved in float64 on the host. Iteration stops when
    the Ritz residual ``|β_k · s_k| <= tol · |λ|`` or when ``β_k ≈ 0`` (the Krylov space is
    invariant, so the Ritz values are exact). The reported residual ``‖Hv − λv‖`` is recomputed
    with one extra HVP. The largest eigenvalue is algebraic: a negative eigenvalue of larger
    magnitude is not returned.

    Memory: up to ``max_iter`` flat parameter vectors. ``data`` must yield the same samples on
    every pass; a one-shot iterator is cached in a list first.

    Args:
        model: the network; θ are its trainable parameters, frozen ones are ignored.
        data: an iterable of ``(inputs, targets)`` batches.
        loss_fn: ``loss_fn(outputs, targets)`` averaging over the batch; mean cross-entropy if
            ``None``.
        max_iter: maximum number of Lanczos steps (HVPs), >= 1.
        tol: relative Ritz-residual tolerance; 0 runs all ``max_iter`` steps.
        seed: seed of the start vector (drawn on the CPU).
        progress: show a progress bar over the Lanczos steps.

    Returns:
        An :class:`EigenEstimate` with the value, the checked residual, the HVP count, whether
        it converged, and the flat unit eigenvector.

    Raises:
        ValueError: for ``max_iter < 1``, ``tol < 0``, a model without trainable parameters or
            empty data.
    """
    model = eager_module(model)
    max_iter = operator.index(max_iter)
    if max_iter < 1:
        raise InputError(f"max_iter={max_iter}; Lanczos needs at least one step, pass max_iter>=1")
    if not tol >= 0:
        raise InputError(f"tol={tol}; pass a relative tolerance >= 0 (e.g. 1e-6)")
    generator = torch.Generator().manual_seed(seed)
    with preserved_state(model, train=False), exact_higher_order(), torch.enable_grad():
        hessian = DatasetHessian(model, data, resolve_loss(loss_fn))
        value, vector, converged = _lanczos_largest(hessian, max_iter, tol, generator, progress)
        residual = torch.linalg.vector_norm(hessian.apply(vector[None])[0] - value * vector)
    return EigenEstimate(
        value=value,
        residual=residual.item(),
        n_matvecs=hessian.n_matvecs,
        converged=converged,
        eigenvector=vector.detach(),
    )


def _lanczos_largest(
    hessian: DatasetHessian,
    max_iter: int,
    tol: float,
    generator: torch.Generator,
    show_progress: bool,
) -> tuple[float, torch.Tensor, bool]:
    """Largest Ritz pair ``(λ, unit v, converged)`` of symmetric Lanczos on ``hessian``."""
    start = torch.randn(hessian.dim, generator=generator, dtype=torch.float64)
    start = start.to(hessian.device, hessian.dtype)
    krylov = [start / torch.linalg.vector_norm(start)]
    alphas: list[float] = []
    betas: list[float] = []
    noise_floor = _INVARIANT_EPS_FACTOR * torch.finfo(hessian.dtype).eps
    scale = 0.0  # running estimate of ‖T‖ ≤ ‖H‖, the yardstick for "β is rounding noise"
    converged = False
    ritz_value, ritz_coefficients = 0.0, torch.ones(1, dtype=torch.float64)
    steps = progress_bar(range(max_iter), desc="Lanczos", total=max_iter, enabled=show_progress)
    for step in steps:
        w = hessian.apply(krylov[-1][None])[0]
        alpha = torch.dot(krylov[-1], w).item()
        alphas.append(alpha)
        w = w - alpha * krylov[-1]
        if betas:
            w = w - betas[-1] * krylov[-2]
        # Full re-orthogonalisation, twice ("twice is enough"): in floating point the three-term
        # recurrence loses orthogonality exactly when a Ritz value converges.
        for _ in range(2):
            for q in krylov:
                w = w - torch.dot(q, w) * q
        beta = torch.linalg.vector_norm(w).item()
        ritz_value, ritz_coefficients = _largest_ritz_pair(alphas, betas)
        scale = max(scale, abs(alpha), beta)
        invariant = beta <= noise_floor * scale
        ritz_residual = abs(beta * ritz_coefficients[-1].item())
        if invariant or ritz_residual <= tol * abs(ritz_value):
            converged = True
            break
        if step == max_iter - 1:
            break
        betas.append(beta)
        krylov.append(w / beta)
    # Accumulated vector by vector: stacking the basis would double the peak memory.
    vector = torch.zeros_like(krylov[0])
    for coefficient, q in zip(ritz_coefficients.tolist(), krylov, strict=True):
        vector.add_(q, alpha=coefficient)
    return ritz_value, vector / torch.linalg.vector_norm(vector), converged


def _largest_ritz_pair(alphas: list[float], betas: list[float]) -> tuple[float, torch.Tensor]:
    """Largest eigenpair of the Lanczos tridiagonal ``T`` (diagonal α, off-diagonal β), float64."""
    tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(tridiagonal)
    return values[-1].item(), vectors[:, -1]
