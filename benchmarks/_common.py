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


# Settings of the C heap (glibc's, or one preloaded in its place). They decide how much freed
# memory a process keeps, so how many fresh pages a row must fault in on each call: a peer that
# allocates hundreds of MiB per call (opacus' per-sample gradients) is timed differently under
# them (docs/benchmarks.md). A header shows each one set.
_ALLOCATOR_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_ARENA_MAX",
    "GLIBC_TUNABLES",
    "LD_PRELOAD",
)


def allocator() -> str:
    """For a header: the heap settings that are set, or that none is."""
    set_ = [f"{k}={os.environ[k]}" for k in _ALLOCATOR_SETTINGS if os.environ.get(k)]
    return "allocator: " + (", ".join(set_) if set_ else "default settings")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so wall time measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_times(
    rows: list[tuple[str, Callable[[], object]]],
    repeats: int,
    device: torch.device,
    settle: int = 0,
    faults: dict[str, list[int]] | None = None,
) -> dict[str, list[float]]:
    """Wall time (s) of each row in each of ``repeats`` rounds, rows interleaved in every round.

    Interleaving keeps a noisy stretch of the machine from favouring one row over another.

    Args:
        settle: untimed calls of a row just before each of its timed ones. A CPU row's time
            depends on the heap the previous row left (glibc returns freed memory to the
            system, and a row whose peak outgrows what is left pays page faults for it; compare
            ``bench_connectivity.py --settle 0`` with ``--settle 1``). With ``settle`` each row
            is timed in its own steady state.
        faults: if given, filled with each row's minor page faults in each timed call (fresh
            4 KiB pages the process asked of the system, each a cost in time; Linux and macOS).
    """
    for _, fn in rows:  # warm-up: allocator, kernels, caches
        fn()
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(repeats):
        for name, fn in rows:
            for _ in range(settle):
                fn()
            sync(device)
            pages = minor_faults() if faults is not None else 0
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
            if faults is not None:
                faults.setdefault(name, []).append(minor_faults() - pages)
    return times


def minor_faults() -> int:
    """This process's minor page faults so far: fresh 4 KiB pages it asked of the system."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


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


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory (bytes) of one call of ``fn`` above what was in use before it: allocated
    memory on CUDA, the resident set on a Linux CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        # Linux: reset the resident-set high-water mark, then read it after the row. (The
        # getrusage maximum cannot be used: a child process inherits its parent's.)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status_kib("VmRSS")
        fn()
        peak = (status_kib("VmHWM") - base) * 1024
    return peak


def status_kib(field: str) -> int:
    """A field of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")
