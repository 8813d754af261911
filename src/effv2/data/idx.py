"""A reader for the idx format of MNIST and Fashion-MNIST, gzip-compressed or not.

Hand-written because torchvision's ``FashionMNIST`` only reads its own folder layout
(``ROOT/FashionMNIST/raw/`` with uncompressed files), while Debian's ``dataset-fashion-mnist``
installs the four ``.gz`` files in /usr/share/datasets/fashion-mnist. The format: two zero
bytes, a type code, the number of dimensions, one big-endian uint32 per dimension, then the data
in big-endian order. A test checks the result against torchvision's reader on the same bytes.
"""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np

from ..errors import UsageError

# idx type code -> numpy dtype (big-endian)
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, name: str = "idx data") -> np.ndarray:
    """The array stored in the idx bytes ``data`` (native byte order)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise UsageError(f"{name}: not an idx file (bad magic number)")
    dtype, ndim = _DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UsageError(f"{name}: idx header cut short")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise UsageError(f"{name}: idx data is {len(data)} bytes, the header says {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str) -> np.ndarray:
    """Read an idx file; a name ending in .gz is decompressed."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        else:
            with open(path, "rb") as fh:
                data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise UsageError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    return parse_idx(data, path)


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding of ``array`` (the inverse of ``parse_idx``; used to make test fixtures)."""
    code = {v.newbyteorder("="): k for k, v in _DTYPES.items()}.get(array.dtype.newbyteorder("="))
    if code is None or array.ndim > 255:
        raise ValueError(f"no idx type for {array.dtype} with {array.ndim} dimensions")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).astype(_DTYPES[code]).tobytes()


def write_idx(path: str, array: np.ndarray) -> None:
    """Write ``array`` as an idx file, gzip-compressed when ``path`` ends in .gz."""
    data = idx_bytes(array)
    with gzip.open(path, "wb") if path.endswith(".gz") else open(path, "wb") as fh:
        fh.write(data)
