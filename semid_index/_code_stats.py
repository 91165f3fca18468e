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

__all__ = ["LevelStats", "code_statistics"]


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
    levels = []
    for lv, k in enumerate(codebook_sizes):
        if k <= 4 * n + 1024:
            counts = np.bincount(codes[:, lv], minlength=k)
            counts = counts[counts > 0].astype(np.float64)
        else:  # a huge codebook: count only the codes that occur
            counts = np.unique(codes[:, lv], return_counts=True)[1].astype(np.float64)
        p = counts / n
        ent = float(-(p * np.log2(p)).sum())
        used = int(len(counts))
        gini, size_min, size_max, size_cv = _balance(counts, int(k), n)
        levels.append(LevelStats(lv + 1, int(k), used, int(k) - used, used / k, ent,
                                 float(2.0 ** ent), float(counts.max() / n), gini=gini,
                                 size_min=size_min, size_max=size_max, size_cv=size_cv))
    unique_share = []
    full_counts: np.ndarray | None = None
    fits = float(np.prod([float(k) for k in codebook_sizes])) < 2.0 ** 62
    key = np.zeros(n, dtype=np.int64)
    for depth in range(1, n_levels + 1):
        if fits:  # mixed-radix key: one int64 per prefix, far faster than unique(axis=0)
            key = key * int(codebook_sizes[depth - 1]) + codes[:, depth - 1].astype(np.int64)
            _, inv_counts = np.unique(key, return_counts=True)
        else:
            _, inv_counts = np.unique(codes[:, :depth], axis=0, return_counts=True)
        unique_share.append(len(inv_counts) / n)
        full_counts = inv_counts
    assert full_counts is not None, "codes need at least one level"
    colliding = int(full_counts[full_counts > 1].sum())
    return dict(levels=levels, unique_share=unique_share, n_distinct_codes=int(len(full_counts)),
                n_collided=colliding, collided_share=colliding / n,
                largest_group=int(full_counts.max()))
