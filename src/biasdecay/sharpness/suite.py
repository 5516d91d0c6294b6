"""Run a chosen set of measures on one model and data set, returning one JSON-ready result.

The names here are the ones ``biasdecay measure --measures`` accepts.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from biasdecay.constraints import did_you_mean
from biasdecay.errors import InputError
from biasdecay.registry import Entry, Registry
from biasdecay.sharpness.connectivity import bias_utilization, connectivity_sharpness
from biasdecay.sharpness.fisher_rao import fisher_rao_norm
from biasdecay.sharpness.hessian import hessian_max_eigenvalue, hessian_trace
from biasdecay.sharpness.reparam import rescalable_pairs, rescale_neuron


@dataclass(frozen=True)
class MeasureOptions:
    """Settings of the measures that have any (budgets, seeds, modes)."""

    hessian_matvecs: int = 30  # Hutch++ budget for Tr(H)
    trace_method: str = "hutch++"
    lanczos_iters: int = 20  # λmax iterations
    lanczos_tol: float = 1e-3
    seed: int = 0
    minibatch_train_mode: bool = False  # C_m with batch statistics (what training sees)
    fisher_labels: str = "model"
    rescale_factor: float = 10.0  # c of the invariance check's neuron rescaling (eq. 9)
    progress: bool = False


def _connectivity(model, data, o: MeasureOptions, earlier: Mapping[str, Any]) -> dict[str, Any]:
    del earlier  # needs no earlier result
    report = connectivity_sharpness(model, data, progress_bar=o.progress)
    return {**report.to_dict(), "bias_utilization": bias_utilization(report, model)}


def _connectivity_m(model, data, o: MeasureOptions, earlier: Mapping[str, Any]) -> dict[str, Any]:
    del earlier  # needs no earlier result
    report = connectivity_sharpness(
        model, data, per_sample=False, train_mode=o.minibatch_train_mode, progress_bar=o.progress
    )
    return {**report.to_dict(), "bias_utilization": bias_utilization(report, model)}


def _trace(model, data, o: MeasureOptions, earlier: Mapping[str, Any]) -> dict[str, Any]:
    del earlier  # needs no earlier result
    est = hessian_trace(
        model,
        data,
        n_matvecs=o.hessian_matvecs,
        method=o.trace_method,
        seed=o.seed,
        progress=o.progress,
    )
    return _plain(est)


def _max_eig(model, data, o: MeasureOptions, earlier: Mapping[str, Any]) -> dict[str, Any]:
    del earlier  # needs no earlier result
    est = hessian_max_eigenvalue(
        model, data, max_iter=o.lanczos_iters, tol=o.lanczos_tol, seed=o.seed, progress=o.progress
    )
    return _plain(est)


def _fisher_rao(model, data, o: MeasureOptions, earlier: Mapping[str, Any]) -> dict[str, Any]:
    del earlier  # needs no earlier result
    return _plain(fisher_rao_norm(model, data, labels=o.fisher_labels, progress=o.progress))


def _invariance(model, data, o: MeasureOptions, earlier: Mapping[str, Any]) -> dict[str, Any]:
    """C and Tr(H) of the model and of a function-equal rescaled copy (eq. 9, Theorem 3.1).

    The first rescalable layer pair (in forward order) has unit 0 multiplied by c on its way in
    and divided by c on its way out; the copy computes the same function, checked on the first
    batch. Tr(H) of both uses the same probe vectors (same seed), so its change is the
    reparameterisation's, not the estimator's.
    """
    pairs = rescalable_pairs(model)
    if not pairs:
        raise InputError(
            f"the invariance check found no rescalable layer pair in {type(model).__name__}: it "
            "needs a Linear/conv/norm layer feeding a Linear/conv through ReLU or pooling only"
        )
    incoming, outgoing = pairs[0]
    rescaled = copy.deepcopy(model)
    with torch.no_grad():
        rescale_neuron(rescaled, incoming, outgoing, 0, o.rescale_factor)
        x = next(iter(data))[0]
        was = model.training, rescaled.training
        model.eval(), rescaled.eval()
        change = (model(x) - rescaled(x)).abs().max().item()
        model.train(was[0]), rescaled.train(was[1])
    result: dict[str, Any] = {
        "incoming": incoming,
        "outgoing": outgoing,
        "unit": 0,
        "factor": o.rescale_factor,
        "output_max_abs_change": change,
    }
    reused = []
    for label, net in (("original", model), ("rescaled", rescaled)):
        # The original's C and Tr(H) are the "connectivity" and "hessian-trace" measures of the
        # same call when those ran (same data, options and probe seed): reuse, not recompute.
        if label == "original" and "connectivity" in earlier:
            c = earlier["connectivity"]["total"]
            reused.append("connectivity")
        else:
            c = connectivity_sharpness(net, data).total
        if label == "original" and "hessian-trace" in earlier:
            trace = {k: v for k, v in earlier["hessian-trace"].items() if k != "seconds"}
            reused.append("hessian-trace")
        else:
            trace = _plain(
                hessian_trace(
                    net, data, n_matvecs=o.hessian_matvecs, method=o.trace_method, seed=o.seed
                )
            )
        result[label] = {"connectivity": c, "hessian_trace": trace}
    result["reused"] = reused
    before, after = result["original"], result["rescaled"]
    result["connectivity_relative_change"] = _relative(
        before["connectivity"], after["connectivity"]
    )
    result["hessian_trace_relative_change"] = _relative(
        before["hessian_trace"]["value"], after["hessian_trace"]["value"]
    )
    return result


def _relative(before: float, after: float) -> float:
    return abs(after - before) / abs(before) if before else float("inf")


def _plain(result: Any) -> dict[str, Any]:
    """A result dataclass as a dict of JSON values (tensors such as eigenvectors dropped)."""
    return {
        f.name: getattr(result, f.name)
        for f in dataclasses.fields(result)
        if isinstance(getattr(result, f.name), (int, float, str, bool, type(None)))
    }


Measure = Callable[[nn.Module, Iterable, MeasureOptions, Mapping[str, Any]], dict[str, Any]]


def _measure(name: str, fn: Measure, description: str) -> Entry:
    # Every argument is the suite's: a measure's settings live in MeasureOptions.
    return Entry(name, fn, description=description, fixed=("model", "data", "o", "earlier"))


# A measure's function gets the results of the measures run before it in the same call, so a
# later one can reuse them (the invariance check reuses C and Tr(H) of the original network).
MEASURES: Registry[Entry] = Registry(
    "measure",
    [
        _measure("connectivity", _connectivity, "per-sample connectivity sharpness C (eq. 4)"),
        _measure("connectivity-m", _connectivity_m, "mini-batch connectivity sharpness C_m"),
        _measure("hessian-trace", _trace, "Hessian trace Tr(H) (Hutch++)"),
        _measure("hessian-max", _max_eig, "largest Hessian eigenvalue λmax (Lanczos)"),
        _measure("fisher-rao", _fisher_rao, "Fisher-Rao norm θᵀFθ (eq. 8)"),
        _measure("invariance", _invariance, "C against Tr(H) under a neuron rescaling (eq. 9)"),
    ],
)


#: Names accepted by :func:`run_measures`.
measure_names = MEASURES.names


def parse_measures(text: str | Iterable[str]) -> list[str]:
    """Split ``"a,b"`` into names, checking each; an unknown name lists the valid ones."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in MEASURES]
    if unknown or not names:
        hint = did_you_mean(unknown[0], MEASURES) if unknown else ""
        raise InputError(
            f"unknown measure(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"valid measures: {', '.join(MEASURES)}{hint}"
        )
    return list(dict.fromkeys(names))


def run_measures(
    model: nn.Module,
    data: Iterable,
    measures: Iterable[str],
    options: MeasureOptions | None = None,
    *,
    on_start: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run each named measure on ``model`` over ``data``.

    Args:
        model: the network.
        data: a re-iterable collection of ``(inputs, targets)`` batches.
        measures: names from :func:`measure_names`.
        options: budgets and modes.
        on_start: called with each measure's name before it runs (progress messages).

    Returns:
        ``{measure name: result dict (with "seconds")}``.
    """
    options = options or MeasureOptions()
    results: dict[str, dict[str, Any]] = {}
    for name in parse_measures(list(measures)):
        if on_start is not None:
            on_start(name)
        start = time.perf_counter()
        result = MEASURES[name].builder(model, data, options, results)
        results[name] = {**result, "seconds": time.perf_counter() - start}
    return results
