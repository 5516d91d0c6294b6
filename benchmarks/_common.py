"""What the benchmarks share: the machine description and interleaved timing."""

from __future__ import annotations

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


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so wall time measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_times(
    rows: list[tuple[str, Callable[[], object]]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Wall time (s) of each row in each of ``repeats`` rounds, rows interleaved in every round.

    Interleaving keeps a noisy stretch of the machine from favouring one row over another.
    """
    for _, fn in rows:  # warm-up: allocator, kernels, caches
        fn()
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(repeats):
        for name, fn in rows:
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_best(
    rows: list[tuple[str, Callable[[], object]]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Best wall time (s) of each row over ``repeats`` interleaved rounds."""
    return {name: min(t) for name, t in interleaved_times(rows, repeats, device).items()}
