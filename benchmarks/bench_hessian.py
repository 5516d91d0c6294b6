"""Benchmark the Hessian baselines: Hutch++ vs Hutchinson, and ours vs hessian-eigenthings.

(a) Variance at equal budgets. For each matvec budget, the trace is estimated with several seeds
    by Hutchinson and by Hutch++; the table reports the mean, the standard deviation across seeds
    (the real error bar), the mean reported standard error (is it calibrated?) and the ratio
    std(Hutchinson) / std(Hutch++). With ``--exact`` the exact trace (one HVP per coordinate) is
    printed as well.
(b) Against the PyPI package ``hessian-eigenthings`` (optional; ``pip install
    hessian-eigenthings``) on the same model and data: trace (Hutch++) and top eigenvalue
    (Lanczos), values, matvec counts and wall time. If the package is missing or its API fails
    with this torch, the part is skipped with the reason printed; no number is ever made up.

(c) Against curvlinops (``hutchpp_trace`` on its ``HessianLinearOperator``) and PyHessian (its
    Hutchinson trace and power iteration), several seeds with the rows interleaved: value, error
    against the exact float64 Hessian, HVPs spent and time. Missing packages are skipped with the
    reason printed.
(d) Our HVP methods against each other: the time of k quadratic forms vᵀHv in one pass by
    forward-over-reverse (vmapped, in chunks of 16, 32 and 60 vectors) and by the vectorised
    double backward (8 vectors per call), for k from 1 to 60; the basis of the threshold and
    chunk that ``DatasetHessian`` uses.

The model is a small conv net with BatchNorm, briefly trained so the Hessian is not the one at
initialisation. Data: scikit-learn's bundled ``digits`` (real 8x8 images, no download) or, with
``--data synthetic``, Gaussian random inputs labelled by a random linear teacher.

Run:  python benchmarks/bench_hessian.py [--help]
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata

import torch
from torch import nn

from biasdecay.sharpness.hessian import (
    DatasetHessian,
    hessian_max_eigenvalue,
    hessian_trace,
)

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=("digits", "synthetic"), default="digits")
    parser.add_argument("--n-samples", type=int, default=512, help="samples in the data set")
    parser.add_argument("--batch-size", type=int, default=128, help="must divide --n-samples")
    parser.add_argument("--train-steps", type=int, default=150, help="SGD steps before measuring")
    parser.add_argument("--budgets", type=int, nargs="+", default=[30, 60, 120])
    parser.add_argument("--seeds", type=int, default=12, help="repeats per budget and method")
    parser.add_argument("--eig-max-iter", type=int, default=60, help="Lanczos steps at most")
    parser.add_argument(
        "--compare-budget", type=int, default=99, help="Hutch++ budget for part (b)"
    )
    parser.add_argument("--exact", action="store_true", help="also compute the exact trace")
    parser.add_argument("--skip-eigenthings", action="store_true", help="skip part (b)")
    parser.add_argument("--skip-variance", action="store_true", help="skip part (a)")
    parser.add_argument("--skip-peers", action="store_true", help="skip part (c)")
    parser.add_argument("--skip-methods", action="store_true", help="skip part (d)")
    parser.add_argument(
        "--peer-budget", type=int, default=90, help="trace matvecs in part (c); divisible by 3"
    )
    parser.add_argument("--peer-seeds", type=int, default=5, help="seeds per row in part (c)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 is fastest and steadiest for a model this small on a shared CPU",
    )
    args = parser.parse_args(argv)
    if args.n_samples % args.batch_size:
        parser.error("--batch-size must divide --n-samples (equal batches, see part (b))")
    if args.peer_budget % 3:
        parser.error("--peer-budget must be divisible by 3 (curvlinops' Hutch++ requires it)")
    return args


# --------------------------------------------------------------------------------------------
# Model and data


def load_data(kind: str, n_samples: int, batch_size: int) -> tuple[Batches, str]:
    """Equal-sized batches of 1x8x8 images with 10 classes, and a line describing them."""
    if kind == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            sys.exit(
                "--data digits needs scikit-learn (pip install scikit-learn); "
                "or pass --data synthetic explicitly"
            )
        digits = load_digits()
        x = torch.tensor(digits.data[:n_samples], dtype=torch.float32).view(-1, 1, 8, 8)
        x = (x - x.mean()) / x.std()  # pixel values 0..16 -> standardised
        y = torch.tensor(digits.target[:n_samples], dtype=torch.long)
        description = f"digits (scikit-learn, real 8x8 images), first {len(y)} samples"
    else:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n_samples, 1, 8, 8, generator=g)
        teacher = torch.randn(64, 10, generator=g)
        y = (x.flatten(1) @ teacher).argmax(1)
        description = (
            f"SYNTHETIC Gaussian inputs, random linear teacher labels, {n_samples} samples"
        )
    if len(y) < n_samples:
        sys.exit(f"the {kind} data has only {len(y)} samples; lower --n-samples")
    batches = [
        (x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n_samples, batch_size)
    ]
    return batches, description


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def train(model: nn.Module, batches: Batches, steps: int) -> float:
    """A few SGD steps in train mode; returns the eval-mode training accuracy."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(steps):
        x, y = batches[step % len(batches)]
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in batches)
    return correct / sum(len(y) for _, y in batches)


def exact_hessian(model: nn.Module, batches: Batches, chunk: int = 256) -> torch.Tensor:
    """The full Hessian, one HVP per coordinate (in chunks of rows), in float64."""
    model.eval()
    hessian = DatasetHessian(model, batches, nn.functional.cross_entropy)
    rows = []
    with torch.enable_grad():
        for start in range(0, hessian.dim, chunk):
            index = torch.arange(start, min(start + chunk, hessian.dim))
            unit = torch.zeros(len(index), hessian.dim, dtype=hessian.dtype)
            unit[torch.arange(len(index)), index] = 1.0
            rows.append(hessian.apply(unit).double())
    full = torch.cat(rows)
    return (full + full.T) / 2  # float32 HVPs are symmetric only to rounding


def exact_trace(model: nn.Module, batches: Batches) -> float:
    """Σ_i e_iᵀ H e_i from the full Hessian."""
    return exact_hessian(model, batches).trace().item()


# --------------------------------------------------------------------------------------------
# Tables


def timed(fn: Callable):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")


def variance_at_equal_budgets(model, batches, budgets, n_seeds, exact) -> None:
    print("\n## (a) Hutch++ vs Hutchinson at equal matvec budgets")
    print(
        f"{n_seeds} seeds per cell; std = standard deviation across seeds; "
        "mean stderr = mean of the reported standard errors"
    )
    if exact is not None:
        print(f"exact trace (one HVP per coordinate): {exact:.6g}")
    header = ["budget", "method", "mean", "std", "mean stderr", "time/run s"]
    if exact is not None:
        header.insert(4, "rmse")
    rows, ratios = [], []
    for budget in budgets:
        spreads = {}
        for method in ("hutchinson", "hutch++"):
            estimates, seconds = [], []
            for seed in range(n_seeds):
                estimate, elapsed = timed(
                    lambda b=budget, m=method, s=seed: hessian_trace(
                        model, batches, n_matvecs=b, method=m, seed=s
                    )
                )
                assert estimate.n_matvecs == budget
                estimates.append(estimate)
                seconds.append(elapsed)
            values = [e.value for e in estimates]
            spreads[method] = statistics.stdev(values)
            row = [
                str(budget),
                method,
                f"{statistics.fmean(values):.5g}",
                f"{spreads[method]:.3g}",
                f"{statistics.fmean(e.stderr for e in estimates):.3g}",
                f"{statistics.fmean(seconds):.2f}",
            ]
            if exact is not None:
                rmse = statistics.fmean((v - exact) ** 2 for v in values) ** 0.5
                row.insert(4, f"{rmse:.3g}")
            rows.append(row)
        ratios.append((budget, spreads["hutchinson"] / spreads["hutch++"]))
    print_table(header, rows)
    print()
    print_table(
        ["budget", "std ratio Hutchinson / Hutch++"], [[str(b), f"{r:.2f}"] for b, r in ratios]
    )


def against_eigenthings(model, batches, budget, max_iter) -> None:
    print("\n## (b) biasdecay vs hessian-eigenthings (same model, data, eval mode)")
    try:
        import hessian_eigenthings as he
    except ImportError as error:
        print(
            f"SKIPPED: hessian-eigenthings is not installed ({error}); "
            "pip install hessian-eigenthings to run this part"
        )
        return
    version = getattr(he, "__version__", "unknown")
    print(
        f"hessian-eigenthings {version}. Its HessianOperator averages batches with equal "
        "weights, ours weights them by size; the batches here are equal, so both are the "
        "Hessian of the same loss. Time ratio = theirs / ours (> 1: ours is faster)."
    )
    model.eval()
    try:
        operator = he.HessianOperator(
            model, batches, he.supervised_loss(nn.functional.cross_entropy)
        )
        theirs_trace, theirs_trace_s = timed(
            lambda: he.trace(operator, num_matvecs=budget, method="hutch++", seed=0)
        )
        # Their Lanczos runs all max_iter steps; ours stops at the Ritz tolerance.
        theirs_eig, theirs_eig_s = timed(
            lambda: he.lanczos(operator, k=1, max_iter=max_iter, which="LA", seed=0)
        )
    except Exception as error:  # any API or torch incompatibility: say so, never fake numbers
        print(
            f"SKIPPED: hessian-eigenthings failed with this torch ({type(error).__name__}: {error})"
        )
        return
    ours_trace, ours_trace_s = timed(
        lambda: hessian_trace(model, batches, n_matvecs=budget, method="hutch++", seed=0)
    )
    ours_eig, ours_eig_s = timed(
        lambda: hessian_max_eigenvalue(model, batches, max_iter=max_iter, seed=0)
    )
    theirs_trace_matvecs = 3 * max(1, budget // 3)  # their Hutch++ spends budget//3 per phase
    header = [
        "quantity",
        "ours",
        "theirs",
        "ours HVPs",
        "theirs HVPs",
        "ours s",
        "theirs s",
        "time ratio",
    ]
    rows = [
        [
            "trace (Hutch++)",
            f"{ours_trace.value:.8g} ± {ours_trace.stderr:.2g}",
            f"{theirs_trace.estimate:.8g} ± {theirs_trace.stderr:.2g}",
            str(ours_trace.n_matvecs),
            str(theirs_trace_matvecs),
            f"{ours_trace_s:.2f}",
            f"{theirs_trace_s:.2f}",
            f"{theirs_trace_s / ours_trace_s:.2f}",
        ],
        [
            "λmax (Lanczos)",
            f"{ours_eig.value:.7g}",
            f"{theirs_eig.eigenvalues[0].item():.7g}",
            f"{ours_eig.n_matvecs} ({'converged' if ours_eig.converged else 'not converged'})",
            str(theirs_eig.iterations),
            f"{ours_eig_s:.2f}",
            f"{theirs_eig_s:.2f}",
            f"{theirs_eig_s / ours_eig_s:.2f}",
        ],
    ]
    print_table(header, rows)
    print(
        "The Hutch++ values agree to float32 rounding because both libraries draw the same ±1 "
        "probes (a CPU generator seeded 0, in the same order): the row checks the arithmetic, "
        "not the luck of the draw."
    )
    print(
        f"ours: λmax residual ‖Hv − λv‖ = {ours_eig.residual:.2g} (checked with one extra HVP); "
        f"relative difference of λmax = "
        f"{abs(ours_eig.value / theirs_eig.eigenvalues[0].item() - 1):.2g}"
    )


def against_curvlinops_and_pyhessian(model, batches, budget, seeds, max_iter) -> None:
    """(c) Trace and λmax beside curvlinops and PyHessian, errors against the exact Hessian."""
    print("\n## (c) biasdecay vs curvlinops and PyHessian (same model, data, eval mode)")
    model.eval()
    # The reference in float64: a Hessian assembled from float32 HVPs has an error of its own
    # (about 4e-4 of λmax here), larger than the estimators' differences.
    reference = copy.deepcopy(model).double()
    batches64 = [(x.double(), y) for x, y in batches]
    full, seconds = timed(lambda: exact_hessian(reference, batches64))
    true_trace = full.trace().item()
    true_max = torch.linalg.eigvalsh(full)[-1].item()
    print(
        f"exact: Tr(H) = {true_trace:.7g}, λmax = {true_max:.7g} (full Hessian from "
        f"{full.shape[0]} float64 HVPs, {seconds:.1f} s); the estimators run in float32"
    )
    loss = nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    n_samples = sum(len(y) for _, y in batches)
    trace_rows: dict[str, Callable[[int], tuple[float, int]]] = {
        f"ours, Hutch++ {budget}": lambda seed: (
            hessian_trace(model, batches, n_matvecs=budget, seed=seed).value,
            budget,
        )
    }
    eig_rows: dict[str, Callable[[int], tuple[float, int]]] = {}

    def ours_eig(seed: int) -> tuple[float, int]:
        estimate = hessian_max_eigenvalue(model, batches, max_iter=max_iter, seed=seed)
        return estimate.value, estimate.n_matvecs

    eig_rows["ours, Lanczos (default tol)"] = ours_eig
    notes = []
    try:
        from curvlinops import HessianLinearOperator
        from curvlinops.trace.meyer2020hutch import hutchpp_trace

        def curvlinops_trace(seed: int) -> tuple[float, int]:
            torch.manual_seed(seed)  # curvlinops draws its probes from the global generator
            operator = HessianLinearOperator(
                model, loss, params, batches, check_deterministic=False, num_data=n_samples
            )
            return hutchpp_trace(operator, budget).item(), budget

        version = metadata.version("curvlinops-for-pytorch")
        trace_rows[f"curvlinops {version}, hutchpp_trace {budget}"] = curvlinops_trace
    except ImportError as error:
        notes.append(f"curvlinops not run: {error} (pip install curvlinops-for-pytorch)")
    try:
        from pyhessian import hessian as PyHessian

        def pyhessian_operator() -> tuple[object, list[int]]:
            operator = PyHessian(model, loss, dataloader=batches, cuda=False)
            calls = [0]
            product = operator.dataloader_hv_product

            def counted(v):
                calls[0] += 1
                return product(v)

            operator.dataloader_hv_product = counted
            return operator, calls

        def pyhessian_trace(seed: int, **kwargs) -> tuple[float, int]:
            torch.manual_seed(seed)
            operator, calls = pyhessian_operator()
            values = operator.trace(**kwargs)
            return statistics.fmean(values), calls[0]

        def pyhessian_eig(seed: int) -> tuple[float, int]:
            torch.manual_seed(seed)
            operator, calls = pyhessian_operator()
            eigenvalues, _ = operator.eigenvalues(top_n=1)
            return eigenvalues[0], calls[0]

        ph = f"PyHessian {metadata.version('pyhessian')}"
        trace_rows[f"{ph}, Hutchinson (default tol)"] = pyhessian_trace
        trace_rows[f"{ph}, Hutchinson {budget}"] = lambda seed: pyhessian_trace(
            seed, maxIter=budget, tol=0.0
        )
        eig_rows[f"{ph}, power iteration (default tol)"] = pyhessian_eig
    except ImportError as error:
        notes.append(f"PyHessian not run: {error} (pip install pyhessian)")
    for title, rows, truth in (
        ("trace", trace_rows, true_trace),
        ("λmax", eig_rows, true_max),
    ):
        results = {name: [] for name in rows}
        for seed in range(seeds):  # rows interleaved within every seed
            for name, fn in rows.items():
                (value, matvecs), elapsed = timed(lambda fn=fn, seed=seed: fn(seed))
                results[name].append((value, matvecs, elapsed))
        table = []
        for name, runs in results.items():
            errors = [abs(v / truth - 1) for v, _, _ in runs]
            table.append(
                [
                    name,
                    f"{statistics.fmean(v for v, _, _ in runs):.7g}",
                    f"{statistics.fmean(errors):.2g}",
                    f"{max(errors):.2g}",
                    f"{statistics.fmean(m for _, m, _ in runs):.1f}",
                    f"{statistics.median(t for _, _, t in runs):.2f}",
                ]
            )
        print(f"\n{title}: {seeds} seeds, rows interleaved; error = |estimate / exact − 1|")
        print_table(["method", "mean", "mean error", "max error", "HVPs", "median s"], table)
    for note in notes:
        print(note)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print("$ " + shlex.join(sys.orig_argv))
    torch.set_num_threads(args.threads)
    batches, description = load_data(args.data, args.n_samples, args.batch_size)
    model = make_model()
    accuracy = train(model, batches, args.train_steps)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} thread(s), float32")
    print(f"data: {description}, {len(batches)} batches of {args.batch_size}")
    print(
        f"model: conv-BN-ReLU x2 + linear, {n_params} parameters, trained {args.train_steps} "
        f"SGD steps (train accuracy {accuracy:.1%}); Hessians in eval mode"
    )
    exact = None
    if args.exact:
        exact, seconds = timed(lambda: exact_trace(model, batches))
        print(f"exact trace took {seconds:.1f} s ({n_params} HVPs)")
    if args.skip_variance:
        print("\n## (a) skipped (--skip-variance)")
    else:
        variance_at_equal_budgets(model, batches, args.budgets, args.seeds, exact)
    if args.skip_eigenthings:
        print("\n## (b) skipped (--skip-eigenthings)")
    else:
        against_eigenthings(model, batches, args.compare_budget, args.eig_max_iter)
    if args.skip_peers:
        print("\n## (c) skipped (--skip-peers)")
    else:
        against_curvlinops_and_pyhessian(
            model, batches, args.peer_budget, args.peer_seeds, args.eig_max_iter
        )
    if args.skip_methods:
        print("\n## (d) skipped (--skip-methods)")
    else:
        hvp_methods(model, batches)


def hvp_methods(model: nn.Module, batches: Batches, rounds: int = 5) -> None:
    """Part (d): seconds for k quadratic forms by each of our HVP methods, best of ``rounds``."""
    from biasdecay.sharpness import hessian as hessian_module

    print("\n## (d) our HVP methods: k quadratic forms in one pass, best of interleaved rounds")
    model.eval()
    operator = DatasetHessian(model, batches, nn.functional.cross_entropy)
    generator = torch.Generator().manual_seed(0)
    ks = (1, 4, 8, 16, 32, 60)
    vectors = torch.randn(max(ks), operator.dim, generator=generator)
    methods = {"double backward": (False, None)}
    methods.update({f"fwd-over-rev, chunk {c}": (True, c) for c in (16, 32, 60)})
    best = {(m, k): float("inf") for m in methods for k in ks}
    default_chunk = hessian_module._FORWARD_OVER_REVERSE_CHUNK
    try:
        with torch.enable_grad():
            for _ in range(rounds + 1):  # the first is a warm-up
                for k in ks:
                    for method, (forward, chunk) in methods.items():
                        operator._forward_over_reverse = forward
                        hessian_module._FORWARD_OVER_REVERSE_CHUNK = chunk or default_chunk
                        threshold = hessian_module._FORWARD_OVER_REVERSE_ABOVE
                        if forward:  # below the threshold too, to time it there
                            hessian_module._FORWARD_OVER_REVERSE_ABOVE = 0
                        try:
                            _, seconds = timed(lambda v=vectors[:k]: operator.quadratic_forms(v))
                        finally:
                            hessian_module._FORWARD_OVER_REVERSE_ABOVE = threshold
                        best[method, k] = min(best[method, k], seconds)
    finally:
        hessian_module._FORWARD_OVER_REVERSE_CHUNK = default_chunk
    header = ["method"] + [f"k={k} s" for k in ks]
    rows = [[m] + [f"{best[m, k]:.3f}" for k in ks] for m in methods]
    print_table(header, rows)
    print(
        f"in use: forward-over-reverse in chunks of {default_chunk} for more than "
        f"{hessian_module._FORWARD_OVER_REVERSE_ABOVE} vectors, else the double backward "
        f"({hessian_module._VECTOR_CHUNK} vectors per call)"
    )


if __name__ == "__main__":
    main()
