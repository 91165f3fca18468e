"""How level codes are laid out in the items table (private to storage).

An item's L level codes are stored in one binary column: each level big-endian in ``width``
bytes (2 when every codebook has at most 65,536 centroids, else 4). Byte order then equals
numeric order level by level, so every prefix (c_1, ..., c_k) is one contiguous key range
``[lo, hi)`` that a B-tree answers with a range scan, on SQLite and PostgreSQL alike.

Only this module knows the bytes: the rest of storage hands it (N, L) arrays and level tuples.

>>> import numpy as np
>>> layout = CodeLayout(3, 2)
>>> keys = layout.pack(np.array([[12, 201, 7]]))
>>> keys[0].hex()
'000c00c90007'
>>> layout.levels(keys), layout.unpack(keys).tolist()
([(12, 201, 7)], [[12, 201, 7]])
>>> [k.hex() for k in layout.range((12, 201))]
['000c00c9', '000c00ca']
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

from ..errors import InvalidCodesError

__all__ = ["CodeLayout", "code_width", "group_suffixes", "layout"]


def code_width(codebook_sizes: Sequence[int]) -> int:
    """Bytes per level: 2 when every codebook has at most 65,536 centroids, else 4."""
    return 2 if max(codebook_sizes) <= 1 << 16 else 4


class CodeLayout:
    """The binary form of one index's codes: ``n_levels`` levels of ``width`` bytes each.

    ``pack`` / ``unpack`` / ``levels`` convert between (N, L) arrays or level tuples and the
    stored keys; ``range`` gives the key range of a prefix. Immutable; get one with
    :func:`layout`.
    """

    __slots__ = ("n_levels", "width", "_dtype", "_unpack")

    def __init__(self, n_levels: int, width: int):
        if width not in (2, 4):
            raise InvalidCodesError(f"code width must be 2 or 4 bytes, got {width}")
        self.n_levels = n_levels
        self.width = width
        self._dtype = np.dtype(">u2" if width == 2 else ">u4")
        self._unpack = struct.Struct(">" + ("H" if width == 2 else "I") * n_levels).unpack

    def pack(self, codes: np.ndarray) -> list[bytes]:
        """(N, L) non-negative integer codes -> N binary keys of ``L * width`` bytes."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.n_levels:
            raise InvalidCodesError(f"codes must have shape (N, {self.n_levels}), got "
                                    f"{codes.shape}")
        limit = 1 << (8 * self.width)
        if codes.size and (codes.min() < 0 or codes.max() >= limit):
            raise InvalidCodesError(
                f"codes must lie in 0..{limit - 1} for {self.width}-byte levels, got "
                f"{int(codes.min())}..{int(codes.max())}")
        big = np.ascontiguousarray(codes, dtype=self._dtype)
        row = np.dtype((np.void, self.n_levels * self.width))
        return big.view(row).ravel().tolist()

    def unpack(self, keys: Sequence[bytes]) -> np.ndarray:
        """N stored keys -> (N, L) int64 codes."""
        buf = b"".join(keys)
        if len(buf) != len(keys) * self.n_levels * self.width:
            raise InvalidCodesError(
                f"stored codes are not {self.n_levels} levels of {self.width} bytes each (got "
                f"{len(buf)} bytes for {len(keys)} items)")
        return np.frombuffer(buf, dtype=self._dtype).reshape(len(keys), self.n_levels) \
            .astype(np.int64)

    def levels(self, keys: Iterable[bytes]) -> list[tuple[int, ...]]:
        """Stored keys -> their level codes as tuples (the row form of :meth:`unpack`, for
        results made of Python objects; one C-level pass)."""
        try:
            return list(map(self._unpack, keys))
        except struct.error:
            raise InvalidCodesError(
                f"a stored code is not {self.n_levels} levels of {self.width} bytes: the items "
                "table does not belong to this index's layout") from None

    def range(self, prefix: Sequence[int]) -> tuple[bytes, bytes | None]:
        """Key range ``[lo, hi)`` holding every code that starts with ``prefix`` (depth 0..L);
        ``hi`` is None when no upper bound is needed (the empty prefix, or the largest one)."""
        lo = np.asarray(prefix, dtype=self._dtype).tobytes()
        if not lo:
            return b"", None
        value = int.from_bytes(lo, "big") + 1
        if value >> (8 * len(lo)):
            return lo, None
        return lo, value.to_bytes(len(lo), "big")

    def child(self, head: bytes) -> int:
        """The last level code of a stored prefix ``head`` (its final ``width`` bytes)."""
        return int.from_bytes(head[-self.width:], "big")

    def __repr__(self) -> str:
        return f"CodeLayout(n_levels={self.n_levels}, width={self.width})"


@lru_cache(maxsize=64)
def layout(n_levels: int, width: int) -> CodeLayout:
    """The (shared, immutable) layout of ``n_levels`` levels of ``width`` bytes."""
    return CodeLayout(n_levels, width)


def group_suffixes(codes: np.ndarray) -> np.ndarray:
    """Disambiguation suffixes for a fresh set of codes (N, L): 0, 1, 2, ... within each group of
    equal rows, in input order. (N,) int64."""
    codes = np.asarray(codes, dtype=np.int64)
    n = codes.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # one int64 per row when the codes fit a mixed-radix number (a stable integer sort is what
    # keeps this fast at 10^6), else a lexicographic sort of the columns
    radix = codes.max(axis=0) + 1
    if float(np.prod(radix.astype(np.float64))) < 2.0 ** 62:
        key = np.zeros(n, dtype=np.int64)
        for lv in range(codes.shape[1]):
            key = key * int(radix[lv]) + codes[:, lv]
        order = np.argsort(key, kind="stable")
        ranked = key[order]
        new_group = np.r_[True, ranked[1:] != ranked[:-1]]
    else:
        order = np.lexsort(codes.T[::-1])  # stable; the first level is the primary key
        ranked2 = codes[order]
        new_group = np.r_[True, (ranked2[1:] != ranked2[:-1]).any(axis=1)]
    starts = np.flatnonzero(new_group)
    run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    suffix = np.empty(n, dtype=np.int64)
    suffix[order] = np.arange(n) - run_start
    return suffix
