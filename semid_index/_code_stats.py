"""Code statistics of a set of IDs: per-level usage, entropy, perplexity, collisions.

Numpy only (no torch), so ``semid stats`` and any serving process can report on stored IDs.
The quantizer's :class:`~semid_index.quantize.QualityReport` uses the same function.

Names used across the library, API and CLI alike:

- ``n_collided`` / ``collided_share``: items whose full L-level code at least one other item
  shares (every member of a group of two or more), and their share of all items;
- ``n_suffixed`` / ``suffixed_share`` (:class:`~semid_index.IndexStats`): items whose suffix is
  > 0, i.e. every collided item but the first of its group.

Balance of a level (:class:`LevelStats`) is measured over all K codes, dead codes counting as
size 0: ``gini`` (0 = every code holds as many items, (K-1)/K = every item in one code),
``size_min`` / ``size_max`` and ``size_cv`` (std / mean of the K sizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import EmptyInputError, InvalidCodesError

__all__ = ["LevelStats", "SortedCodeStatistics", "code_statistics"]


@dataclass
class LevelStats:
    """Usage of one codebook over a data set."""

    level: int            #: 1-based level
    codebook_size: int    #: K
    used: int             #: codes with at least one item
    dead: int             #: codes with no item (K - used)
    utilisation: float    #: used / K
    entropy_bits: float   #: Shannon entropy of the code distribution, bits
    perplexity: float     #: 2 ** entropy: the "effective" number of codes
    largest_share: float  #: share of items in the most popular code
    gini: float           #: Gini coefficient of the K code sizes (dead = 0): 0 = uniform
    size_min: int         #: items in the smallest of the K codes (0 if any code is dead)
    size_max: int         #: items in the largest code
    size_cv: float        #: coefficient of variation (population std / mean) of the K sizes


def _balance(counts: np.ndarray, k: int, n: int) -> tuple[float, int, int, float]:
    """Gini, min, max and coefficient of variation of the sizes of all ``k`` codes of a level,
    from ``counts`` (used,) float64, the sizes of the codes that occur (each >= 1, summing to
    ``n``); the ``k - used`` dead codes count as zeros without being allocated.

    Gini over sizes sorted ascending s_1..s_K is ``2 * sum(i * s_i) / (K * n) - (K + 1) / K``;
    with z = K - used leading zeros and the used counts c_1..c_used ascending it is
    ``(z + 2 * sum(j * c_j) / n - used - 1) / K``.
    """
    used = len(counts)
    zeros = k - used
    c = np.sort(counts)
    ranked = float((np.arange(1, used + 1, dtype=np.float64) * c).sum())
    gini = (zeros + 2.0 * ranked / n - used - 1.0) / k
    mean = n / k
    sq_dev = float(((c - mean) ** 2).sum()) + zeros * mean * mean
    cv = float(np.sqrt(sq_dev / k)) / mean
    return (min(max(float(gini), 0.0), 1.0), 0 if zeros else int(c[0]), int(c[-1]), cv)


def check_codes(codes, codebook_sizes: Sequence[int], what: str = "codes") -> np.ndarray:
    """``codes`` as an (N, L) integer array with every code inside 0..K-1 of its level's
    codebook size; raises :class:`InvalidCodesError` (wrong shape, type or range) or
    :class:`EmptyInputError` (N = 0). ``what`` names the array in the messages."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != len(codebook_sizes) or not codebook_sizes:
        raise InvalidCodesError(f"{what} must have shape (N, L) with L = {len(codebook_sizes)} "
                                f"codebook sizes >= 1, got {codes.shape}")
    if codes.shape[0] == 0:
        raise EmptyInputError(f"no {what}: statistics need at least one item")
    if codes.dtype.kind not in "iu" or (codes.min(axis=0) < 0).any() or \
            (codes.max(axis=0) >= np.asarray(codebook_sizes)).any():
        raise InvalidCodesError(f"{what} must be integers inside 0..K-1 for codebook sizes "
                                f"{list(codebook_sizes)}")
    return codes


def code_statistics(codes: np.ndarray, codebook_sizes: Sequence[int]) -> dict:
    """Per-level usage and collision statistics of codes (N, L) int.

    Returns a dict with keys ``levels`` (a :class:`LevelStats` per level), ``unique_share``
    (distinct prefixes / N at depth 1..L), ``n_distinct_codes``, ``n_collided`` (items whose
    full code another item shares), ``collided_share`` (``n_collided`` / N) and
    ``largest_group`` (the most items sharing one full code).

    >>> lv = code_statistics(np.array([[0], [1], [1], [2], [2], [2], [3], [3], [3], [3]]),
    ...                      [4])["levels"][0]
    >>> round(lv.gini, 4), lv.size_min, lv.size_max, round(lv.size_cv, 4)
    (0.25, 1, 4, 0.4472)
    """
    codes = check_codes(codes, codebook_sizes)
    n, n_levels = codes.shape
    level_counts = []
    for lv, k in enumerate(codebook_sizes):
        if k <= 4 * n + 1024:
            counts = np.bincount(codes[:, lv], minlength=k)
            counts = counts[counts > 0].astype(np.float64)
        else:  # a huge codebook: count only the codes that occur
            counts = np.unique(codes[:, lv], return_counts=True)[1].astype(np.float64)
        level_counts.append(counts)
    n_distinct = []
    full_counts: np.ndarray | None = None
    fits = float(np.prod([float(k) for k in codebook_sizes])) < 2.0 ** 62
    key = np.zeros(n, dtype=np.int64)
    for depth in range(1, n_levels + 1):
        if fits:  # mixed-radix key: one int64 per prefix, far faster than unique(axis=0)
            key = key * int(codebook_sizes[depth - 1]) + codes[:, depth - 1].astype(np.int64)
            _, inv_counts = np.unique(key, return_counts=True)
        else:
            _, inv_counts = np.unique(codes[:, :depth], axis=0, return_counts=True)
        n_distinct.append(len(inv_counts))
        full_counts = inv_counts
    assert full_counts is not None, "codes need at least one level"
    colliding = int(full_counts[full_counts > 1].sum())
    return _report(n, codebook_sizes, level_counts, n_distinct, colliding,
                   int(full_counts.max()))


def _report(n: int, codebook_sizes: Sequence[int], level_counts: list[np.ndarray],
            n_distinct: list[int], colliding: int, largest_group: int) -> dict:
    """The statistics dict from per-level sizes of the used codes (float64) and the counts."""
    levels = []
    for lv, (k, counts) in enumerate(zip(codebook_sizes, level_counts)):
        p = counts / n
        ent = float(-(p * np.log2(p)).sum())
        used = int(len(counts))
        gini, size_min, size_max, size_cv = _balance(counts, int(k), n)
        levels.append(LevelStats(lv + 1, int(k), used, int(k) - used, used / k, ent,
                                 float(2.0 ** ent), float(counts.max() / n), gini=gini,
                                 size_min=size_min, size_max=size_max, size_cv=size_cv))
    return dict(levels=levels, unique_share=[d / n for d in n_distinct],
                n_distinct_codes=int(n_distinct[-1]), n_collided=colliding,
                collided_share=colliding / n, largest_group=largest_group)


class SortedCodeStatistics:
    """:func:`code_statistics` of codes that arrive in pages sorted by code (as an index's
    ``id_pages`` yields them), in memory that does not grow with N: per-level code counts
    (K per level; a codebook of more than 2^22 codes keeps only the codes that occur), the last
    row of the previous page, and the current group's size.

    >>> acc = SortedCodeStatistics([4])
    >>> for page in (np.array([[0], [1]]), np.array([[1], [2], [2], [2]])):
    ...     acc.add(page)
    >>> r = acc.result()
    >>> r["n_collided"], r["largest_group"], r["n_distinct_codes"]
    (5, 3, 3)
    """

    DENSE_CODES = 1 << 22

    def __init__(self, codebook_sizes: Sequence[int]):
        self.sizes = [int(k) for k in codebook_sizes]
        self.n = 0
        self._dense = [np.zeros(k, dtype=np.int64) if k <= self.DENSE_CODES else None
                       for k in self.sizes]
        self._sparse: list[dict[int, int]] = [{} for _ in self.sizes]
        self._distinct = np.zeros(len(self.sizes), dtype=np.int64)
        self._last: np.ndarray | None = None
        self._run = 0           # size so far of the group of the last full code seen
        self._colliding = 0     # items in finished groups of two or more
        self._largest = 0

    def add(self, codes: np.ndarray) -> None:
        """One page (B, L) of codes, continuing the sorted order of the previous pages."""
        if len(codes) == 0:
            return
        codes = check_codes(codes, self.sizes)
        for lv, k in enumerate(self.sizes):
            dense = self._dense[lv]
            if dense is not None:
                dense += np.bincount(codes[:, lv], minlength=k)
            else:
                vals, cnt = np.unique(codes[:, lv], return_counts=True)
                sparse = self._sparse[lv]
                for v, c in zip(vals.tolist(), cnt.tolist()):
                    sparse[v] = sparse.get(v, 0) + c
        rows = codes if self._last is None else np.concatenate([self._last[None], codes])
        diff = rows[1:] != rows[:-1]
        if len(diff):
            first = diff.argmax(axis=1)
            changed = diff.any(axis=1)
            if (rows[1:][changed, first[changed]] < rows[:-1][changed, first[changed]]).any():
                raise InvalidCodesError("codes are not sorted: SortedCodeStatistics needs pages "
                                        "in code order")
        # a new d-prefix starts where any of its first d codes changes (the first row ever too)
        new = np.logical_or.accumulate(diff, axis=1) if len(diff) else diff
        if self._last is None:
            new = np.concatenate([np.ones((1, len(self.sizes)), dtype=bool), new])
        self._distinct += new.sum(axis=0)
        # groups of equal full codes: runs between the rows where the full code changes
        starts = np.flatnonzero(new[:, -1])
        if len(starts) == 0:
            self._run += len(codes)
        else:
            self._close(self._run + int(starts[0]))  # the group the page began inside, if any
            lengths = np.diff(starts)
            if len(lengths):
                self._colliding += int(lengths[lengths > 1].sum())
                self._largest = max(self._largest, int(lengths.max()))
            self._run = len(codes) - int(starts[-1])
        self.n += len(codes)
        self._last = codes[-1].copy()

    def _close(self, run: int) -> None:
        if run > 1:
            self._colliding += run
        self._largest = max(self._largest, run)

    def level_counts(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per level, (codes that occur, their item counts), both int64 and sorted by code."""
        out = []
        for lv in range(len(self.sizes)):
            dense = self._dense[lv]
            if dense is not None:
                vals = np.flatnonzero(dense)
                out.append((vals, dense[vals]))
            else:
                items = sorted(self._sparse[lv].items())
                out.append((np.array([v for v, _ in items], dtype=np.int64),
                            np.array([c for _, c in items], dtype=np.int64)))
        return out

    def result(self) -> dict:
        """The :func:`code_statistics` dict of every code added."""
        if self.n == 0:
            raise EmptyInputError("no codes: statistics need at least one item")
        colliding = self._colliding + (self._run if self._run > 1 else 0)
        level_counts = []
        for lv in range(len(self.sizes)):
            dense = self._dense[lv]
            counts = dense[dense > 0] if dense is not None else \
                np.array([c for _, c in sorted(self._sparse[lv].items())], dtype=np.int64)
            level_counts.append(counts.astype(np.float64))
        return _report(self.n, self.sizes, level_counts, self._distinct.tolist(), colliding,
                       max(self._largest, self._run))
