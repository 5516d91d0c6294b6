"""The per-sample kernels (``per_sample_kernels.c``): built on first use, then cached.

* :func:`abs_products`: per-sample Σ|W ⊙ G_n| with G_n = D_n U_n is a matmul whose output is
  reduced at once; eager torch can only write G_n and read it back, which on the CPU costs more
  than the matmul.
* :func:`batch_norm_backward`, :func:`group_norm_backward`, :func:`layer_norm_backward`: an
  eval-mode BatchNorm's, a GroupNorm's or a LayerNorm's input gradient with its per-sample γ
  and β gradients, in one pass over δ and the input (autograd's backward makes one or two
  alone, and the per-sample sums more).
* :func:`guard_extremes`: the exactness guard's comparison of every parameter, in one read of
  θ, autograd's gradient and the formula's, where torch's multi-tensor ops make four passes
  and write two.

The kernels are plain C with vector extensions, compiled for this CPU by the system's C
compiler (``$CC``, else ``cc``; ``$BIASDECAY_NATIVE_CFLAGS`` adds flags) the first time they are
needed, into ``$BIASDECAY_CACHE_DIR`` (default ``$XDG_CACHE_HOME/biasdecay`` or
``~/.cache/biasdecay``), one file per source, compiler, flags and CPU. They share torch's OpenMP
runtime (the loaded ``libgomp.so.1``), and run with ``torch.get_num_threads()`` threads.

Neither is ever required: without a compiler, on a GPU, for other dtypes, or with
``BIASDECAY_NATIVE=0``, the torch routes run, and :func:`unavailable` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCE = (
    Path(__file__).resolve().with_name("per_sample_kernels.c")
)  # absolute: it includes __FILE__
DISABLE_ENV = "BIASDECAY_NATIVE"  # "0": never build or use the kernel
CACHE_ENV = "BIASDECAY_CACHE_DIR"
FLAGS_ENV = "BIASDECAY_NATIVE_CFLAGS"  # more compiler flags, after ours (-mno-avx512f: AVX2)

# Tried in order: the first that compiles is kept. Without OpenMP the kernel runs on one
# thread (and is then rarely the fastest route); without -march=native, for a generic CPU.
_FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-march=native"),
    ("-O3", "-fopenmp"),
    ("-O3",),
)
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}

_lock = threading.Lock()
_loaded: dict[str, object] = {}  # "library": the CDLL, or "why": the reason there is none


def _cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "biasdecay"


def _cpu_identity() -> str:
    """What -march=native compiles for: the CPU's model and feature flags."""
    lines = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    lines.append(line)
                if line.strip() == "":  # the first processor is enough
                    break
    except OSError:
        lines.append(platform.processor())
    return platform.machine() + "".join(lines)


def _compiler_version(cc: str) -> str:
    try:
        run = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return run.stdout


def _build() -> ctypes.CDLL:
    """Compile (or find compiled) and load the kernel; raises OSError with the reason."""
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        raise OSError(f"no C compiler ('{cc}' is not on PATH; set CC to one)")
    source = SOURCE.read_bytes()
    version = _compiler_version(cc)
    errors = []
    extra = tuple(shlex.split(os.environ.get(FLAGS_ENV, "")))
    cpu = _cpu_identity().encode()
    for flags in (f + extra for f in _FLAG_SETS):
        what = [source, version.encode(), " ".join(flags).encode(), cpu]
        key = hashlib.sha256(b"\0".join(what)).hexdigest()[:16]
        target = _cache_dir() / f"per_sample_kernels-{key}.so"
        if not target.exists():
            try:
                target = _compile(cc, flags, target)
            except OSError as error:
                errors.append(f"{' '.join(flags)}: {error}")
                continue
        return ctypes.CDLL(str(target))
    raise OSError("the kernel did not compile: " + "; ".join(errors))


def _compile(cc: str, flags: tuple[str, ...], target: Path) -> Path:
    """Compile into a temporary file beside ``target``, then rename it (atomic: a concurrent
    process sees the old file, no file, or the whole new one). Where the cache directory cannot
    be written, into the system's temporary directory instead.

    Returns:
        Where the library is.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", prefix=".per_sample_kernels-", dir=target.parent)
    except OSError:
        target = Path(tempfile.gettempdir()) / target.name
        fd, tmp = tempfile.mkstemp(suffix=".so", prefix=".per_sample_kernels-", dir=target.parent)
    os.close(fd)
    try:
        try:
            run = subprocess.run(
                [cc, *flags, "-shared", "-fPIC", str(SOURCE), "-o", tmp],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except subprocess.SubprocessError as error:  # a timeout
            raise OSError(str(error)) from error
        if run.returncode != 0:
            lines = run.stderr.strip().splitlines() or ["failed"]
            raise OSError(next((x for x in lines if "error" in x), lines[-1]).strip())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _library() -> ctypes.CDLL | None:
    with _lock:
        if not _loaded:
            if os.environ.get(DISABLE_ENV, "1") == "0":
                _loaded["why"] = f"{DISABLE_ENV}=0"
            else:
                try:
                    lib = _build()
                    _declare(lib)
                    _loaded["library"] = lib
                except (OSError, AttributeError) as error:
                    _loaded["why"] = str(error)
        return _loaded.get("library")


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for suffix in _DTYPES.values():
        fn = getattr(lib, f"abs_products_{suffix}")
        fn.restype = None
        fn.argtypes = [i64] * 4 + [ptr, i64, i64, i64, ptr, i64, ptr, ptr, ptr, ptr, ptr, i64]
        fn.argtypes += [ptr, ptr, ptr, i64, ctypes.c_int]
        getattr(lib, f"abs_products_lanes_{suffix}").restype = ctypes.c_int
        fn = getattr(lib, f"batch_norm_backward_{suffix}")
        fn.restype = None
        fn.argtypes = [i64] * 3 + [ptr] * 7 + [ctypes.c_int]
        fn = getattr(lib, f"group_norm_backward_{suffix}")
        fn.restype = None
        fn.argtypes = [i64] * 4 + [ptr] * 8 + [ctypes.c_int]
        fn = getattr(lib, f"layer_norm_backward_{suffix}")
        fn.restype = None
        fn.argtypes = [i64] * 3 + [ptr] * 8 + [ctypes.c_int]
        fn = getattr(lib, f"guard_extremes_{suffix}")
        fn.restype = None
        fn.argtypes = [i64, ptr, ptr, ptr, ptr, i64, ptr, ptr, ptr, ctypes.c_int]


def unavailable(like: torch.Tensor | None = None) -> str | None:
    """None if the kernel can run on tensors like ``like`` (any, if None), else why not."""
    if like is not None:
        if like.device.type != "cpu":
            return f"the kernel runs on the CPU, not {like.device.type}"
        if like.dtype not in _DTYPES:
            return f"the kernel is written for float32 and float64, not {like.dtype}"
    if _library() is None:
        return _loaded["why"]
    return None


_LANES: dict[torch.dtype, int] = {}


def lanes(dtype: torch.dtype) -> int:
    """Elements of ``dtype`` in one of the kernel's vectors: U's column blocks are this wide."""
    if dtype not in _LANES:
        lib = _library()
        assert lib is not None, _loaded.get("why")
        _LANES[dtype] = getattr(lib, f"abs_products_lanes_{_DTYPES[dtype]}")()
    return _LANES[dtype]


@dataclass(frozen=True)
class Columns:
    """Where the kernel finds U_n in sample n's memory: row l, columns [k, k + lanes) are the
    ``lanes`` contiguous elements at ``off_l[l] + off_k[k // lanes]``.

    Build with :meth:`of`, which checks the offsets once.
    """

    off_l: torch.Tensor  # int64, contiguous, CPU
    off_k: torch.Tensor
    span: int  # elements from a sample's start to the end of the last one read

    @classmethod
    def of(cls, off_l: torch.Tensor, off_k: torch.Tensor, width: int) -> Columns:
        off_l, off_k = off_l.to(torch.int64).contiguous(), off_k.to(torch.int64).contiguous()
        if min(int(off_l.min()), int(off_k.min())) < 0:
            raise ValueError("negative offsets")
        return cls(off_l, off_k, int(off_l.max()) + int(off_k.max()) + width)


@dataclass(frozen=True)
class Planar:
    """A conv input in planes, (n, C, H, W) with any strides, which the kernel copies a block of
    samples at a time into padded channels-last form, (H + 2·padding[0], W + 2·padding[1],
    channels), in a buffer of its threads that stays in cache. ``channels`` ≥ C, whole vectors:
    the border and the channels past C are zeros."""

    x: torch.Tensor
    padding: tuple[int, int]
    channels: int

    @property
    def sample_elements(self) -> int:
        """Elements of one sample's copy."""
        (_, _, H, W), (ph, pw) = self.x.shape, self.padding
        return (H + 2 * ph) * (W + 2 * pw) * self.channels


# Samples whose inputs and output gradients stay in cache while every strip of |W| passes over
# them: 16 samples of the input of a ResNet-18 layer on 32×32 maps with 16 channels, copied
# padded and channels last, take 1.2 MB, within a core's L2 cache. A Linear layer's sample on a
# sequence is larger (its δ alone is tokens × outputs: 96 KiB for 64 tokens and 384 outputs),
# and 8 of them are 8-10% faster than 16 on the transformer blocks' layers (2-core Xeon).
SAMPLE_BLOCK = 16
ROW_SAMPLE_BLOCK = 8


def sample_block(guarded: int, planar: bool = True) -> int:
    """Samples per block of work: SAMPLE_BLOCK for a planar input (ROW_SAMPLE_BLOCK for rows
    read in place), or the guard's if more (only the first block writes the guard's sum)."""
    return max(SAMPLE_BLOCK if planar else ROW_SAMPLE_BLOCK, guarded)


def copies_elements(planar: Planar, guarded: int, threads: int | None = None) -> int:
    """Elements of the buffer :func:`abs_products` needs for ``planar`` (its threads' copies)."""
    threads = torch.get_num_threads() if threads is None else threads
    return threads * sample_block(guarded) * planar.sample_elements


def abs_products(
    d: torch.Tensor,
    x: torch.Tensor | Planar,
    columns: Columns,
    w_abs: torch.Tensor,
    guard: torch.Tensor,
    grad: torch.Tensor,
    copies: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample Σ_ij |W_ij| |(D_n U_n)_ij|, and grad += Σ_n guard_n D_n U_n (first samples).

    Args:
        d: (n, O, L) output gradients, any strides.
        x: the columns' source, read as ``columns`` says: sample n's at ``x[n]``, or a
            :class:`Planar` input, whose copies ``columns`` then describes.
        w_abs: |W|, (O, K) contiguous, K a multiple of :func:`lanes`.
        guard: the weights of the first samples, whose weighted sum of G_n goes to ``grad``.
        grad: (O, K) contiguous, added to.
        copies: for a :class:`Planar` input, a zeroed buffer of at least
            :func:`copies_elements` (allocated here if None).

    Returns:
        The (n,) sums, in ``d``'s dtype.
    """
    n, O, L = d.shape
    K = w_abs.shape[1]
    width = lanes(d.dtype) if d.dtype in _DTYPES else 1  # else refused below
    threads = torch.get_num_threads()
    g = min(guard.numel(), n)
    planar = x if isinstance(x, Planar) else None
    source = planar.x if planar else x
    if planar and source.dim() != 4:
        raise ValueError(f"abs_products: a planar input is (n, C, H, W), not {tuple(source.shape)}")
    if planar:
        per_sample = planar.sample_elements
        if copies is None:
            copies = source.new_zeros(copies_elements(planar, g, threads))
        layout = [*source.shape[1:], *source.stride()[1:], *planar.padding]
        layout += [source.shape[3] + 2 * planar.padding[1], planar.channels, source.stride(0)]
        fits = columns.span <= per_sample and planar.channels >= source.shape[1]
        fits = fits and planar.channels % width == 0 and min(planar.padding) >= 0
        fits = fits and copies.numel() >= copies_elements(planar, g, threads)
        fits = fits and copies.is_contiguous() and copies.dtype == d.dtype
        fits = fits and copies.device.type == "cpu" and source.shape[0] >= n
    else:
        per_sample, layout = source.stride(0), [0] * 11
        stored = source.untyped_storage().nbytes() // source.element_size()
        last = source.storage_offset() + source.stride(0) * max(n - 1, 0) + columns.span
        fits = source.shape[0] >= n and source.stride(0) >= 0 and last <= stored
    # The kernel reads and writes through raw pointers: every bound it relies on is checked
    # here (not with assert, which python -O drops).
    checks = {
        "|W| is (O, K), contiguous, K whole vectors": w_abs.shape[0] == O
        and K % width == 0
        and w_abs.is_contiguous(),
        "one offset per position and per column vector": columns.off_l.numel() == L
        and columns.off_k.numel() == K // width,
        "grad is (O, K), contiguous": tuple(grad.shape) == (O, K) and grad.is_contiguous(),
        "one dtype, on the CPU": source.dtype == d.dtype == w_abs.dtype == grad.dtype
        and d.dtype in _DTYPES
        and source.device.type == d.device.type == w_abs.device.type == grad.device.type == "cpu",
        "every window inside x": fits,
        "no negative strides": all(s >= 0 for s in (*d.stride(), *source.stride())),
    }
    broken = [what for what, ok in checks.items() if not ok]
    if broken:
        raise ValueError("abs_products: operands break the kernel's layout: " + "; ".join(broken))
    if n == 0:
        return d.new_zeros(0)
    sums = torch.zeros(threads, n, dtype=torch.float64)
    weights = guard[:g].to(d.dtype).contiguous()
    layout = torch.tensor(layout, dtype=torch.int64)
    fn = getattr(_library(), f"abs_products_{_DTYPES[d.dtype]}")
    fn(
        n, O, L, K,
        d.data_ptr(), *d.stride(),
        source.data_ptr(), per_sample, layout.data_ptr(),
        copies.data_ptr() if planar else None,
        columns.off_l.data_ptr(), columns.off_k.data_ptr(),
        w_abs.data_ptr(), g, weights.data_ptr(), grad.data_ptr(), sums.data_ptr(),
        sample_block(g, planar is not None), threads,
    )  # fmt: skip
    return sums.sum(0).to(d.dtype)


def batch_norm_backward(
    delta: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    scale: torch.Tensor,
    input_gradient: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm's backward, y = (x − mean) · scale + shift per channel, with its
    per-sample sums, in one pass.

    Args:
        delta: (N, C, *) output gradient, contiguous.
        x: the layer's input, like ``delta``.
        mean, scale: (C,) contiguous, in ``x``'s dtype.
        input_gradient: also form the input gradient δ · scale.

    Returns:
        The input gradient (or None), and per (sample, channel), (N, C) in float64, Σ δ and
        Σ δ (x − mean) over the positions.
    """
    C = x.shape[1] if x.dim() >= 2 else -1
    _check_norm_operands("batch_norm_backward", delta, x, {"mean": mean, "scale": scale}, (C,))
    grad_in = torch.empty_like(x) if input_gradient else None
    sums = [torch.zeros(x.shape[:2], dtype=torch.float64) for _ in range(2)]
    sizes = (x.shape[0] * C, C, x[0, 0].numel()) if x.numel() else ()
    _run_norm_kernel("batch_norm_backward", sizes, [delta, x, mean, scale], grad_in, sums)
    return grad_in, *sums


def group_norm_backward(
    delta: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    gamma: torch.Tensor,
    input_gradient: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """A GroupNorm's backward, y = γ (x − mean) · rstd + β with the statistics of each sample
    and group that its forward saved, with its per-sample sums, in one pass over memory.

    Args:
        delta: (N, C, *) output gradient, contiguous.
        x: the layer's input, like ``delta``.
        mean, rstd: (N, G) contiguous, in ``x``'s dtype; G divides C.
        gamma: (C,) contiguous.
        input_gradient: also form the input gradient (autograd's formula).

    Returns:
        The input gradient (or None), and per (sample, channel), (N, C) in float64, Σ δ and
        Σ δ (x − mean) over the positions.
    """
    N, C = x.shape[:2] if x.dim() >= 2 else (-1, -1)
    G = mean.shape[1] if mean.dim() == 2 else 0
    if G == 0 or C % G:
        raise ValueError(f"group_norm_backward: {tuple(mean.shape)} statistics for {C} channels")
    stats = {"mean": mean, "rstd": rstd}
    _check_norm_operands("group_norm_backward", delta, x, stats, (N, G))
    _check_norm_operands("group_norm_backward", delta, x, {"gamma": gamma}, (C,))
    grad_in = torch.empty_like(x) if input_gradient else None
    sums = [torch.zeros(x.shape[:2], dtype=torch.float64) for _ in range(2)]
    sizes = (N, C, G, x[0, 0].numel()) if x.numel() else ()
    _run_norm_kernel("group_norm_backward", sizes, [delta, x, mean, rstd, gamma], grad_in, sums)
    return grad_in, *sums


def layer_norm_backward(
    delta: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    gamma: torch.Tensor,
    input_gradient: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """A LayerNorm's backward over its last ``gamma.numel()`` elements, with the statistics of
    each row that its forward saved, and its per-sample sums, in one pass over memory.

    Args:
        delta: (N, …) output gradient, contiguous.
        x: the layer's input, like ``delta``.
        mean, rstd: one per row (N · rows per sample elements), contiguous, in ``x``'s dtype.
        gamma: the normalised elements' γ, contiguous.
        input_gradient: also form the input gradient (autograd's formula).

    Returns:
        The input gradient (or None), and per sample, (N, γ elements) in ``x``'s dtype, Σ δ x̂
        and Σ δ over its rows.
    """
    N, D = (x.shape[0] if x.dim() else 0), gamma.numel()
    rows = x.numel() // max(N * D, 1)
    flat = {"mean": mean.reshape(-1), "rstd": rstd.reshape(-1)}
    if D == 0 or N * rows * D != x.numel():
        raise ValueError(
            f"layer_norm_backward: {D} normalised elements do not tile {tuple(x.shape)}"
        )
    _check_norm_operands("layer_norm_backward", delta, x, {"gamma": gamma.reshape(-1)}, (D,))
    _check_norm_operands("layer_norm_backward", delta, x, flat, (N * rows,))
    grad_in = torch.empty_like(x) if input_gradient else None
    sums = [x.new_zeros(N, D) for _ in range(2)]
    sizes = (N, rows, D) if x.numel() else ()
    _run_norm_kernel("layer_norm_backward", sizes, [delta, x, mean, rstd, gamma], grad_in, sums)
    return grad_in, *sums


def _check_norm_operands(
    kernel: str,
    delta: torch.Tensor,
    x: torch.Tensor,
    small: dict[str, torch.Tensor],
    shape: tuple[int, ...],
) -> None:
    """Raise ValueError unless the kernels can read the operands through raw pointers."""
    checks = {
        "δ and x are (N, C, …) of one shape, contiguous": delta.shape == x.shape
        and x.dim() >= 2
        and delta.is_contiguous()
        and x.is_contiguous(),
        f"{' and '.join(small)} are {shape}, contiguous": all(
            tuple(t.shape) == shape and t.is_contiguous() for t in small.values()
        ),
        "one dtype, on the CPU": x.dtype in _DTYPES
        and all(t.dtype == x.dtype and t.device.type == "cpu" for t in (delta, x, *small.values())),
    }
    broken = [what for what, ok in checks.items() if not ok]
    if broken:
        raise ValueError(f"{kernel}: operands break the kernel's layout: " + "; ".join(broken))


def _run_norm_kernel(
    kernel: str,
    sizes: tuple[int, ...],
    inputs: list[torch.Tensor],
    grad_in: torch.Tensor | None,
    outputs: list[torch.Tensor],
) -> None:
    """Call a norm kernel (checked operands) for the inputs' dtype: its sizes, the inputs', the
    input gradient's (None: not formed) and the outputs' addresses; nothing if ``sizes`` is
    empty (no elements)."""
    if not sizes:
        return
    getattr(_library(), f"{kernel}_{_DTYPES[inputs[0].dtype]}")(
        *sizes,
        *(t.data_ptr() for t in inputs),
        _pointer(grad_in),
        *(t.data_ptr() for t in outputs),
        torch.get_num_threads(),
    )


def _pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


GUARD_CHUNK = 32768  # as in per_sample_kernels.c: elements per share of a thread's work


def guard_extremes(
    thetas: list[torch.Tensor],
    truths: list[torch.Tensor],
    formulas: list[torch.Tensor | None],
) -> list[tuple[float, float]]:
    """Per parameter, max |θ g| and max |θ (g − f)| (NaN where either meets a NaN), for the
    exactness guard.

    Args:
        thetas, truths: the parameters and autograd's gradients, contiguous, one dtype.
        formulas: the formulas' gradients, like them; None: zero.

    Returns:
        (max |θ g|, max |θ (g − f)|) per parameter.
    """
    dtype = thetas[0].dtype if thetas else torch.float32
    ok = dtype in _DTYPES and len(thetas) == len(truths) == len(formulas)
    for group in zip(thetas, truths, formulas, strict=False):
        for t in group:
            if t is None:
                continue
            ok = ok and t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous()
            ok = ok and t.shape == group[0].shape
    if not ok:
        raise ValueError(
            "guard_extremes: every θ, g and f must be contiguous, of one dtype (float32 or "
            "float64) and one shape per parameter, on the CPU"
        )
    if not thetas:
        return []
    sizes = torch.tensor([t.numel() for t in thetas], dtype=torch.int64)
    first = torch.zeros(len(thetas) + 1, dtype=torch.int64)
    torch.cumsum((sizes + GUARD_CHUNK - 1) // GUARD_CHUNK, 0, out=first[1:])
    chunks = int(first[-1])
    address = [
        torch.tensor([0 if t is None else t.data_ptr() for t in ts], dtype=torch.int64)
        for ts in (thetas, truths, formulas)
    ]
    partial = torch.empty(2 * chunks, dtype=dtype)
    out = torch.zeros(2 * len(thetas), dtype=dtype)
    getattr(_library(), f"guard_extremes_{_DTYPES[dtype]}")(
        len(thetas), sizes.data_ptr(), *(a.data_ptr() for a in address),
        chunks, first.data_ptr(), partial.data_ptr(), out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    flat = out.tolist()
    return list(zip(flat[::2], flat[1::2], strict=True))
