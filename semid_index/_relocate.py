"""Collision relocation: a per-code capacity, overflow moved to the nearest free code under the
same prefix.

With ``max_per_code = c`` at most ``c`` items share one full L-level code. An item whose code is
full takes the nearest last-level code (by its true squared distance) that keeps its first L-1
codes and still has room; only when every code under that prefix is full does it keep its code
and take the next suffix, as without a capacity. Items that were given IDs before are never
moved: they only count against the capacity (``occupied``). Numpy only, deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, DimensionMismatchError

__all__ = ["Relocation", "relocate"]


@dataclass(frozen=True)
class Relocation:
    """What :func:`relocate` did: the final codes (N, L) int64, which items moved (N,) bool,
    each item's extra squared error over its nearest code (N,) float64 (0 for items that kept
    theirs), and how many items stayed over capacity (no free code under their prefix)."""

    codes: np.ndarray
    moved: np.ndarray
    extra_error: np.ndarray
    n_over_capacity: int

    @property
    def n_relocated(self) -> int:
        return int(self.moved.sum())

    @property
    def relocation_error(self) -> float:
        """Sum over items of the extra squared error their relocation cost."""
        return float(self.extra_error.sum())


def relocate(codes: np.ndarray, last_dist: np.ndarray | Callable[[np.ndarray], np.ndarray],
             sizes, max_per_code: int,
             occupied: Mapping[int, int] | Callable[[np.ndarray], Mapping[int, int]] | None = None
             ) -> Relocation:
    """Apply a capacity of ``max_per_code`` items per full code to new items' codes.

    codes : (N, L) int, the new items' greedy codes. sizes : the L codebook sizes.
    last_dist : (N, K_L) squared distances of each item's level-L input to every level-L centroid,
        or a function giving them for an index array of items (called only for items that may
        move, so a big catalog with few collisions costs little).
    occupied : full-code key -> items already holding it (IDs issued before), or a function
        giving that mapping for an array of (L-1)-prefix keys; keys are the mixed-radix
        ``prefix_key * K_L + code`` of :func:`full_keys`. None: nothing issued yet (a fit).

    Within a group of new items on one full code, the items nearest to it keep it (ties: input
    order); the others move in the order of how little moving costs them.

    Example
    -------
    >>> codes = np.array([[0, 1], [0, 1], [1, 1]])
    >>> d = np.array([[5.0, 1.0, 2.0], [5.0, 1.5, 1.6], [3.0, 0.0, 9.0]])
    >>> r = relocate(codes, d, sizes=(2, 3), max_per_code=1)
    >>> r.codes.tolist(), r.moved.tolist(), round(r.relocation_error, 2)
    ([[0, 1], [0, 2], [1, 1]], [False, True, False], 0.1)
    """
    codes = np.asarray(codes, dtype=np.int64)
    sizes = [int(k) for k in sizes]
    if isinstance(max_per_code, bool) or not isinstance(max_per_code, (int, np.integer)) or \
            max_per_code < 1:
        raise ConfigError(f"max_per_code must be an int >= 1, got {max_per_code!r}")
    if codes.ndim != 2 or codes.shape[1] != len(sizes):
        raise DimensionMismatchError(f"codes must be (N, {len(sizes)}), got {codes.shape}")
    n = codes.shape[0]
    k_last = sizes[-1]
    keys = full_keys(codes, sizes)
    prefix = keys // k_last
    moved = np.zeros(n, dtype=bool)
    extra = np.zeros(n, dtype=np.float64)
    out = codes.copy()
    if n == 0:
        return Relocation(out, moved, extra, 0)
    # which new items could be over capacity: those sharing a code with another new item, or
    # landing on a code issued before
    uniq, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    crowded = counts[inv] > 1
    if callable(occupied):
        occupied = occupied(np.unique(prefix))
    occ: dict[int, int] = dict(occupied or {})
    if occ:
        crowded |= np.fromiter((occ.get(int(k), 0) > 0 for k in keys), bool, n)
    cand = np.flatnonzero(crowded)
    if cand.size == 0:
        return Relocation(out, moved, extra, 0)
    dist = last_dist(cand) if callable(last_dist) else np.asarray(last_dist)[cand]
    dist = np.asarray(dist, dtype=np.float64)
    if dist.shape != (cand.size, k_last):
        raise DimensionMismatchError(f"last-level distances must be ({cand.size}, {k_last}), "
                                     f"got {dist.shape}")
    own = dist[np.arange(cand.size), codes[cand, -1]]
    # items nearest their code keep it first; the rest move in order of their cheapest move
    order = np.lexsort((cand, own, keys[cand]))
    taken = dict(occ)  # every code's holders so far: issued IDs, then the new items that stay
    for key in keys[~crowded].tolist():
        taken[key] = taken.get(key, 0) + 1
    n_over = 0
    waiting = []
    for j in order:
        key = int(keys[cand[j]])
        if taken.get(key, 0) < max_per_code:
            taken[key] = taken.get(key, 0) + 1
        else:
            waiting.append(j)
    if waiting:
        w = np.asarray(waiting)
        alt = dist[w].copy()
        alt[np.arange(w.size), codes[cand[w], -1]] = np.inf
        cost = alt.min(axis=1) - own[w]
        for j in w[np.argsort(cost, kind="stable")]:
            i = cand[j]
            base = int(prefix[i]) * k_last
            for code in np.argsort(dist[j], kind="stable"):
                if taken.get(base + int(code), 0) < max_per_code:
                    break
            else:
                code = codes[i, -1]  # the prefix is full: keep the code, take a suffix
                n_over += 1
                taken[base + int(code)] = taken.get(base + int(code), 0) + 1
                continue
            taken[base + int(code)] = taken.get(base + int(code), 0) + 1
            if code != codes[i, -1]:
                out[i, -1] = code
                moved[i] = True
                extra[i] = float(dist[j, code] - own[j])
    return Relocation(out, moved, extra, n_over)


def full_keys(codes: np.ndarray, sizes) -> np.ndarray:
    """Mixed-radix int64 key of every full code (N,), ``((c1 K2 + c2) K3 + c3) ...``."""
    if float(np.prod([float(k) for k in sizes])) >= 2.0 ** 62:
        raise ConfigError(f"codebook sizes {list(sizes)} give more than 2^62 full codes: too many "
                          "for a capacity per code")
    key = np.zeros(codes.shape[0], dtype=np.int64)
    for lv, k in enumerate(sizes):
        key = key * int(k) + codes[:, lv]
    return key
