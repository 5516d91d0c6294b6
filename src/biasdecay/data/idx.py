"""Reader for the idx format of (Fashion-)MNIST.

Layout (all integers big-endian): a 4-byte magic ``0x00 0x00 <dtype code> <ndim>``, then ``ndim``
uint32 dimension sizes, then the body, row-major. Files may be gzipped (``.gz``).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from biasdecay.data.errors import DataError

__all__ = ["IDX_DTYPES", "idx_magic", "read_idx"]

# dtype code (third magic byte) -> numpy dtype; multi-byte types are stored big-endian
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_NAMES = {
    0x08: "uint8",
    0x09: "int8",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        # gzip raises EOFError for a cut-off stream and BadGzipFile (an OSError) for non-gzip data
        raise DataError(
            f"{path}: cannot read idx file ({type(error).__name__}: {error})"
        ) from error


def idx_magic(dtype_code: int, ndim: int) -> int:
    """The 4-byte magic number of an idx file, e.g. ``idx_magic(0x08, 3) == 0x00000803``."""
    return (dtype_code << 8) | ndim


def read_idx(
    path: str | Path, *, expect_magic: int | None = None, what: str = "data"
) -> np.ndarray:
    """Read one idx file (plain or gzipped) into a numpy array, checking it against its header.

    Args:
        path: the file; a name ending in ``.gz`` is decompressed.
        expect_magic: required magic number (e.g. ``0x00000803`` for 3-D uint8 images), or None
            to accept any valid idx file.
        what: what the file should hold (``"images"``, ``"labels"``), for error messages.

    Returns:
        An array with the header's shape, in native byte order.

    Raises:
        DataError: wrong magic, unknown dtype, or a body whose size does not match the header.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an idx header")
    magic = int.from_bytes(raw[0:4], "big")
    if expect_magic is not None and magic != expect_magic:
        dtype_name = _DTYPE_NAMES.get(expect_magic >> 8, "unknown dtype")
        raise DataError(
            f"{path}: expected idx magic 0x{expect_magic:08x} for {dtype_name} {what} "
            f"({expect_magic & 0xFF} dims), got 0x{magic:08x}"
        )
    zeros, dtype_code, ndim = magic >> 16, raw[2], raw[3]
    if zeros != 0 or dtype_code not in IDX_DTYPES:
        raise DataError(
            f"{path}: not an idx file: magic 0x{magic:08x} (expected 0x0000, then a dtype code "
            f"in {', '.join(hex(c) for c in IDX_DTYPES)}, then the number of dims)"
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(
            f"{path}: idx header announces {ndim} dims but the file ends at byte {len(raw)}"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[dtype_code]
    expected_body = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = len(raw) - header_size
    if body != expected_body:
        problem = "truncated" if body < expected_body else "has trailing bytes"
        raise DataError(
            f"{path}: {problem}: header says shape {shape} ({expected_body} bytes of "
            f"{_DTYPE_NAMES[dtype_code]}), body has {body} bytes"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)
