"""Quality of code assignments beyond usage counts: do codes keep neighbours together, how many
IDs move between two assignments, how far the code distribution drifts.

Numpy only (no torch), like :mod:`semid_index._code_stats`, so serving processes can use it.

- :func:`neighbour_preservation`: for depth k = 1..L, the share of an item's exact cosine
  nearest neighbours that share its first k codes;
- :func:`churn`: for depth k = 1..L, the share of items whose first k codes changed between two
  assignments of the same items;
- :func:`code_size_shift`: per level, the total variation distance between the code
  distributions of two sets of codes (drift).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._code_stats import check_codes
from ._inputs import FINITE_BLOCK, embeddings
from .errors import ConfigError, DimensionMismatchError, EmptyInputError, InvalidCodesError

__all__ = ["churn", "code_size_shift", "neighbour_preservation"]


def _positive_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _code_array(codes, name: str) -> np.ndarray:
    """``codes`` as an (N, L) integer array, L >= 1 (N may be 0); InvalidCodesError else."""
    a = np.asarray(codes)
    if a.ndim != 2 or a.shape[1] == 0:
        raise InvalidCodesError(f"{name} must have shape (N, L) with L >= 1, got {a.shape}")
    if a.dtype.kind not in "iu":
        raise InvalidCodesError(f"{name} must be integers, got dtype {a.dtype}")
    return a


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (N, D) scaled to unit L2 norm, as float32 (N, D); zero rows stay zero.

    Computed in float64 blocks of ``FINITE_BLOCK`` rows, each row first divided by its largest
    absolute value, so no norm overflows whatever the scale of ``x``.
    """
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, x.shape[0], FINITE_BLOCK):
        b = np.asarray(x[start:start + FINITE_BLOCK], dtype=np.float64)
        peak = np.abs(b).max(axis=1, keepdims=True)
        peak[peak == 0] = 1.0
        b = b / peak
        norm = np.sqrt(np.einsum("ij,ij->i", b, b))[:, None]
        norm[norm == 0] = 1.0
        out[start:start + FINITE_BLOCK] = b / norm
    return out


def _top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """Column indices (B, k) of the k largest values of each row of ``sims`` (B, N), ties at
    the k-th value broken by lower index (each row's indices come out in increasing order)."""
    n = sims.shape[1]
    kth = np.partition(sims, n - k, axis=1)[:, n - k][:, None]  # the k-th largest value
    greater = sims > kth
    tied = sims == kth
    need = k - greater.sum(axis=1)  # tied columns to take, >= 1
    chosen = greater | tied
    for r in np.flatnonzero(tied.sum(axis=1) > need):  # more ties than places: lowest first
        chosen[r, np.flatnonzero(tied[r])[need[r]:]] = False
    return np.nonzero(chosen)[1].reshape(sims.shape[0], k)


def neighbour_preservation(x, codes, *, n_neighbours: int = 10, sample: int = 2000,
                           seed: int = 0, block: int = 256) -> list[float]:
    """How well codes keep cosine neighbours together, at each depth.

    x : (N, D) numbers, the items' embeddings (finite; a numpy array, anything
        :func:`semid_index._inputs.embeddings` accepts).
    codes : (N, L) int, the items' codes, row i for row i of ``x``.
    n_neighbours : neighbours per query, clipped to N - 1.
    sample : queries, ``min(sample, N)`` items drawn uniformly without replacement by
        ``numpy.random.default_rng(seed)``.
    block : queries per matrix product; memory is about ``11 * block * N`` bytes beyond the
        float32 copy (N, D) of the unit rows.

    For each query its ``n_neighbours`` exact nearest neighbours by cosine similarity among the
    N - 1 other items (float32; zero rows have similarity 0 to everything; ties broken by lower
    index). Returns L floats: for k = 1..L the mean over queries and their neighbours of
    [the neighbour shares the query's first k codes]. Non-increasing in k.

    Raises :class:`EmptyInputError` (N < 2), :class:`DimensionMismatchError` (``x`` not 2-d,
    D = 0, or rows of ``x`` != rows of ``codes``), :class:`NonFiniteError` (NaN/inf in ``x``),
    :class:`InvalidCodesError` (codes not (N, L) int) and :class:`ConfigError` (an argument
    that is not a positive int).

    >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> codes = np.array([[0, 0], [0, 1], [1, 0], [1, 0]])
    >>> neighbour_preservation(x, codes, n_neighbours=1)  # 0<->1 and 2<->3 are neighbours
    [1.0, 0.5]
    """
    n_neighbours = _positive_int(n_neighbours, "n_neighbours")
    sample = _positive_int(sample, "sample")
    block = _positive_int(block, "block")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative int, got {seed!r}")
    codes = _code_array(codes, "codes")
    x = embeddings(x, None)
    if x.shape[0] != codes.shape[0]:
        raise DimensionMismatchError(f"x has {x.shape[0]} rows but codes has {codes.shape[0]} "
                                     f"rows: shapes {x.shape} and {codes.shape}")
    n = x.shape[0]
    if n < 2:
        raise EmptyInputError(f"neighbour preservation needs at least 2 items, got {n}")
    k = min(n_neighbours, n - 1)
    unit = _unit_rows(x)
    queries = np.random.default_rng(int(seed)).choice(n, size=min(sample, n), replace=False)
    hits = np.zeros(codes.shape[1], dtype=np.int64)
    for start in range(0, len(queries), block):
        q = queries[start:start + block]
        sims = unit[q] @ unit.T  # (B, N) float32 cosine similarities
        sims[np.arange(len(q)), q] = -np.inf  # never its own neighbour
        nb = _top_k(sims, k)  # (B, k)
        same = codes[nb] == codes[q][:, None, :]  # (B, k, L)
        hits += np.logical_and.accumulate(same, axis=2).sum(axis=(0, 1))
    return [float(h) / (len(queries) * k) for h in hits]


def churn(old, new) -> list[float]:
    """Share of items whose ID prefix changed between two code assignments, at each depth.

    old, new : (N, L) int, codes of the same N items in the same order.

    Returns L floats: for k = 1..L the share of items whose first k codes differ between ``old``
    and ``new`` (non-decreasing in k). Raises :class:`InvalidCodesError` (not (N, L) int, or the
    shapes differ) and :class:`EmptyInputError` (N = 0).

    >>> old = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]])
    >>> new = np.array([[0, 0, 0], [1, 5, 1], [2, 2, 2], [3, 3, 3]])  # item 1 moved at level 2
    >>> churn(old, new)
    [0.0, 0.25, 0.25]
    """
    old = _code_array(old, "old")
    new = _code_array(new, "new")
    if old.shape != new.shape:
        raise InvalidCodesError(f"old and new codes must have the same shape (N, L), got "
                                f"{old.shape} and {new.shape}")
    if old.shape[0] == 0:
        raise EmptyInputError("no items: churn needs at least one item")
    changed = np.logical_or.accumulate(old != new, axis=1)  # (N, L): prefix 1..k differs
    return [float(c) / old.shape[0] for c in changed.sum(axis=0)]


def code_size_shift(before, after, codebook_sizes: Sequence[int]) -> list[float]:
    """Drift of the code distribution of each level between two sets of codes.

    before : (N1, L) int and after : (N2, L) int, codes inside 0..K-1 of each level's codebook
    size in ``codebook_sizes`` (L,); N1 and N2 may differ.

    Returns L floats: per level the total variation distance ``0.5 * sum_c |p_c - q_c|`` between
    the level's code shares p (before) and q (after): 0 = same distribution, 1 = no code in
    common. Raises :class:`InvalidCodesError` (wrong shape, type or range) and
    :class:`EmptyInputError` (N1 or N2 = 0).

    >>> before = np.array([[0], [0], [1], [1]])  # p = (1/2, 1/2, 0)
    >>> after = np.array([[0], [1], [2], [2]])   # q = (1/4, 1/4, 1/2)
    >>> code_size_shift(before, after, [3])      # 0.5 * (1/4 + 1/4 + 1/2)
    [0.5]
    """
    before = check_codes(before, codebook_sizes, "before codes")
    after = check_codes(after, codebook_sizes, "after codes")
    n1, n2 = before.shape[0], after.shape[0]
    out = []
    for lv, k in enumerate(codebook_sizes):
        b, a = before[:, lv].astype(np.int64), after[:, lv].astype(np.int64)  # K <= 2**32
        if k <= 4 * (n1 + n2) + 1024:
            p = np.bincount(b, minlength=k) / n1
            q = np.bincount(a, minlength=k) / n2
        else:  # a huge codebook: only the codes that occur in either set
            inv = np.unique(np.concatenate([b, a]), return_inverse=True)[1].ravel()
            m = int(inv.max()) + 1
            p = np.bincount(inv[:n1], minlength=m) / n1
            q = np.bincount(inv[n1:], minlength=m) / n2
        out.append(min(float(0.5 * np.abs(p - q).sum()), 1.0))
    return out


def code_size_shift_from(before: list[tuple[np.ndarray, np.ndarray]], after,
                         codebook_sizes: Sequence[int]) -> list[float]:
    """:func:`code_size_shift` with the ``before`` side given as per-level (codes, counts) of the
    codes that occur (as :meth:`SortedCodeStatistics.level_counts` returns them), so the whole
    version never has to be in memory."""
    after = check_codes(after, codebook_sizes, "after codes")
    n2 = after.shape[0]
    out = []
    for (vals, cnt), lv in zip(before, range(len(codebook_sizes))):
        n1 = int(cnt.sum())
        if n1 == 0:
            raise EmptyInputError("no before codes")
        a_vals, a_cnt = np.unique(after[:, lv].astype(np.int64), return_counts=True)
        allv = np.union1d(vals, a_vals)
        p = np.zeros(len(allv))
        q = np.zeros(len(allv))
        p[np.searchsorted(allv, vals)] = cnt / n1
        q[np.searchsorted(allv, a_vals)] = a_cnt / n2
        out.append(min(float(0.5 * np.abs(p - q).sum()), 1.0))
    return out
