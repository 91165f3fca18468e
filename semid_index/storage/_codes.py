"""Semantic codes as sortable binary keys.

An item's L level codes are stored in one binary column: each level big-endian in ``width``
bytes (2 when every codebook has at most 65,536 centroids, else 4). Byte order then equals
numeric order level by level, so every prefix (c_1, ..., c_k) is one contiguous key range
``[lo, hi)`` that a B-tree answers with a range scan, on SQLite and PostgreSQL alike.

>>> import numpy as np
>>> keys = pack_codes(np.array([[12, 201, 7]]), width=2)
>>> keys[0].hex()
'000c00c90007'
>>> unpack_codes(keys, n_levels=3, width=2).tolist()
[[12, 201, 7]]
>>> [k.hex() for k in prefix_range((12, 201), width=2)]
['000c00c9', '000c00ca']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidCodesError

__all__ = ["code_width", "pack_codes", "unpack_codes", "prefix_range", "group_suffixes"]


def code_width(codebook_sizes: Sequence[int]) -> int:
    """Bytes per level: 2 when every codebook has at most 65,536 centroids, else 4."""
    return 2 if max(codebook_sizes) <= 1 << 16 else 4


def _dtype(width: int) -> np.dtype:
    if width not in (2, 4):
        raise InvalidCodesError(f"code width must be 2 or 4 bytes, got {width}")
    return np.dtype(">u2" if width == 2 else ">u4")


def pack_codes(codes: np.ndarray, width: int) -> list[bytes]:
    """(N, L) non-negative integer codes -> N binary keys of ``L * width`` bytes."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise InvalidCodesError(f"codes must be 2-d (N, L), got shape {codes.shape}")
    limit = 1 << (8 * width)
    if codes.size and (codes.min() < 0 or codes.max() >= limit):
        raise InvalidCodesError(
            f"codes must lie in 0..{limit - 1} for {width}-byte levels, got "
            f"{int(codes.min())}..{int(codes.max())}")
    big = np.ascontiguousarray(codes, dtype=_dtype(width))
    row = np.dtype((np.void, big.shape[1] * width))
    return big.view(row).ravel().tolist()


def unpack_codes(keys: Sequence[bytes], n_levels: int, width: int) -> np.ndarray:
    """N binary keys -> (N, L) int64 codes."""
    buf = b"".join(keys)
    if len(buf) != len(keys) * n_levels * width:
        raise InvalidCodesError(
            f"stored codes are not {n_levels} levels of {width} bytes each (got {len(buf)} bytes "
            f"for {len(keys)} items)")
    return np.frombuffer(buf, dtype=_dtype(width)).reshape(len(keys), n_levels).astype(np.int64)


def prefix_range(prefix: Sequence[int], width: int) -> tuple[bytes, bytes | None]:
    """Key range ``[lo, hi)`` holding every code that starts with ``prefix``; ``hi`` is None when
    the prefix is the largest possible (no upper bound needed)."""
    lo = np.asarray(prefix, dtype=_dtype(width)).tobytes()
    if not lo:
        return b"", None
    value = int.from_bytes(lo, "big") + 1
    if value >> (8 * len(lo)):
        return lo, None
    return lo, value.to_bytes(len(lo), "big")


def group_suffixes(keys: Sequence[bytes]) -> np.ndarray:
    """Disambiguation suffixes for a fresh set of codes: 0, 1, 2, ... within each group of equal
    keys, in input order. (N,) int64."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # the keys as rows of native uint64 words (left-padded with zero bytes, so numeric order is
    # byte order): a stable sort on integers, not on raw bytes, is what keeps this fast at 10^6
    width = len(keys[0])
    words = -(-width // 8)
    raw = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(n, width)
    padded = np.zeros((n, 8 * words), dtype=np.uint8)
    padded[:, 8 * words - width:] = raw
    cols = padded.view(">u8").astype(np.uint64)  # (n, words)
    if words == 1:
        order = np.argsort(cols[:, 0], kind="stable")
    else:
        order = np.lexsort(cols.T[::-1])  # stable; the first word is the primary key
    ranked = cols[order]
    new_group = np.r_[True, (ranked[1:] != ranked[:-1]).any(axis=1)]
    starts = np.flatnonzero(new_group)
    run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    suffix = np.empty(n, dtype=np.int64)
    suffix[order] = np.arange(n) - run_start
    return suffix
