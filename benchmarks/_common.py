"""What the benchmarks share: the machine description and interleaved timing."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Settings that cap the instruction set torch's CPU kernels use (to stand in for a CPU without
# AVX-512): a header shows them, since they change every timing.
_ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def fused_kernel() -> str:
    """For a header: the instruction set of torch's CPU kernels (and any cap set on it), and
    whether per-sample C's fused kernel runs here (it is built on first use) and how wide."""
    from biasdecay.sharpness import _native

    caps = [f"{k}={os.environ[k]}" for k in _ISA_CAPS if os.environ.get(k)]
    flags = os.environ.get(_native.FLAGS_ENV)
    torch_isa = f"torch kernels: {torch.backends.cpu.get_cpu_capability()}"
    if caps:
        torch_isa += f" ({', '.join(caps)})"
    why = _native.unavailable()
    if why is not None:
        return f"{torch_isa} | fused kernel: not used ({why})"
    built = f", built with {_native.FLAGS_ENV}={flags}" if flags else ""
    return f"{torch_isa} | fused kernel: {_native.lanes(torch.float32)} float32 lanes{built}"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so wall time measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_times(
    rows: list[tuple[str, Callable[[], object]]],
    repeats: int,
    device: torch.device,
    settle: int = 0,
) -> dict[str, list[float]]:
    """Wall time (s) of each row in each of ``repeats`` rounds, rows interleaved in every round.

    Interleaving keeps a noisy stretch of the machine from favouring one row over another.

    Args:
        settle: untimed calls of a row just before each of its timed ones. A CPU row's time
            depends on the heap the previous row left (glibc returns freed memory to the
            system, and a row whose peak outgrows what is left pays page faults for it; compare
            ``bench_connectivity.py --settle 0`` with ``--settle 1``). With ``settle`` each row
            is timed in its own steady state.
    """
    for _, fn in rows:  # warm-up: allocator, kernels, caches
        fn()
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(repeats):
        for name, fn in rows:
            for _ in range(settle):
                fn()
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_best(
    rows: list[tuple[str, Callable[[], object]]],
    repeats: int,
    device: torch.device,
    settle: int = 0,
) -> dict[str, float]:
    """Best wall time (s) of each row over ``repeats`` interleaved rounds (``settle``: see
    :func:`interleaved_times`)."""
    times = interleaved_times(rows, repeats, device, settle)
    return {name: min(t) for name, t in times.items()}
