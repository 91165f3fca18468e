"""Self-checking binary format for arrays stored in a database (codebooks). Never pickle.

Layout (all integers little-endian)::

    magic      8 bytes   b"SEMIDARR"
    version    u16       1
    dtype      u8 n + n ASCII bytes, a numpy dtype string from ALLOWED_DTYPES (e.g. "<f4")
    ndim       u8
    shape      ndim x u64
    length     u64       payload bytes (= prod(shape) * itemsize)
    sha256     32 bytes  of the payload
    payload    raw little-endian, C order

``decode_array`` checks every field and raises :class:`CorruptBlobError` naming the first problem.
"""

from __future__ import annotations

import base64
import hashlib
import struct

import numpy as np

from ..errors import ConfigError, CorruptBlobError

__all__ = ["ALLOWED_DTYPES", "CorruptBlobError", "decode_array", "encode_array"]

MAGIC = b"SEMIDARR"
VERSION = 1
ALLOWED_DTYPES = ("<f4", "<f8", "<i4", "<i8", "|u1")
_MAX_NDIM = 8


def encode_array(array: np.ndarray) -> bytes:
    """Serialise a numeric array (any shape, a dtype of ALLOWED_DTYPES once made little-endian)."""
    a = np.asarray(array)
    le = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    a = np.asarray(a, dtype=le, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    code = a.dtype.str
    if code not in ALLOWED_DTYPES:
        raise ConfigError(f"dtype {a.dtype} cannot be stored; allowed: {ALLOWED_DTYPES}")
    if a.ndim > _MAX_NDIM:
        raise ConfigError(f"arrays of {a.ndim} dimensions cannot be stored (max {_MAX_NDIM})")
    payload = a.tobytes(order="C")
    head = MAGIC + struct.pack("<HB", VERSION, len(code)) + code.encode("ascii")
    head += struct.pack("<B", a.ndim) + struct.pack(f"<{a.ndim}Q", *a.shape)
    head += struct.pack("<Q", len(payload)) + hashlib.sha256(payload).digest()
    return head + payload


def decode_array(blob: bytes | bytearray | memoryview) -> np.ndarray:
    """Parse and verify a blob written by :func:`encode_array`; returns a writable array."""
    buf = memoryview(blob).cast("B")
    pos = 0

    def take(n: int, what: str) -> memoryview:
        nonlocal pos
        if pos + n > len(buf):
            raise CorruptBlobError(f"blob ends inside the {what} (needs {pos + n} bytes, has "
                                   f"{len(buf)})")
        out = buf[pos:pos + n]
        pos += n
        return out

    if bytes(take(len(MAGIC), "magic")) != MAGIC:
        raise CorruptBlobError("not a semid_index array blob (bad magic)")
    version, n_code = struct.unpack("<HB", take(3, "header"))
    if version != VERSION:
        raise CorruptBlobError(f"array blob version {version} is not supported (this is {VERSION})")
    code = bytes(take(n_code, "dtype")).decode("ascii", errors="replace")
    if code not in ALLOWED_DTYPES:
        raise CorruptBlobError(f"array blob has dtype {code!r}; allowed: {ALLOWED_DTYPES}")
    (ndim,) = struct.unpack("<B", take(1, "header"))
    if ndim > _MAX_NDIM:
        raise CorruptBlobError(f"array blob claims {ndim} dimensions (max {_MAX_NDIM})")
    shape = struct.unpack(f"<{ndim}Q", take(8 * ndim, "shape"))
    (length,) = struct.unpack("<Q", take(8, "header"))
    digest = bytes(take(32, "checksum"))
    dtype = np.dtype(code)
    expected = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if length != expected:
        raise CorruptBlobError(f"array blob length {length} does not match shape {shape} of "
                               f"{code} ({expected} bytes)")
    payload = take(length, "payload")
    if pos != len(buf):
        raise CorruptBlobError(f"array blob has {len(buf) - pos} bytes after its payload")
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptBlobError("array blob checksum mismatch: the stored bytes were altered")
    return np.frombuffer(payload, dtype=dtype).reshape(shape).copy()


def decode_prices(texts, where: str) -> list[np.ndarray]:
    """Per-level prices as versions written before schema revision 0003 kept them in their JSON
    header (base64 text of :func:`encode_array` blobs), every blob verified: 2-d finite float32
    arrays."""
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise CorruptBlobError(f"{where}: the prices in the header are not a list of blobs")
    out = []
    for lv, text in enumerate(texts):
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise CorruptBlobError(f"{where}: level-{lv + 1} prices are not base64") from None
        try:
            p = decode_array(raw)
        except CorruptBlobError as e:
            raise CorruptBlobError(f"{where}, level-{lv + 1} prices: {e}") from None
        if p.dtype != np.float32 or p.ndim != 2 or not np.isfinite(p).all():
            raise CorruptBlobError(f"{where}: level-{lv + 1} prices are {p.dtype} {p.shape}, "
                                   "not finite 2-d float32")
        out.append(p)
    return out
