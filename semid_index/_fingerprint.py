"""Fingerprints of embedding rows, stored next to every item.

They tell "the same item again" from "this item's embedding changed" when a key is added twice,
so they must be stable across versions and platforms (they are stored) and cheap (every added
item gets one); they need not be cryptographic. A Carter-Wegman hash does it with one small
matrix product: the row's 16-bit halves h_j (the little-endian float32 bit patterns) give three
sums ``r_c = sum_j h_j * k_cj mod p`` over fixed pseudo-random keys ``k_cj in [0, p)``, packed
into 64 bits as ``r_0 | r_1 << 28 | r_2 << 56``. For two rows that differ in any bit the three
sums agree with probability 1/p each, so they collide with probability ~2^-64.

The products run in float64 and are exact: every partial sum is an integer below 2^53 (at most
512 halves of < 2^16 times keys of < 2^28 per product), whatever order the BLAS adds them in.
They run on torch's thread pool, the one encoding already uses; numpy's BLAS would start a
second pool that spins against it on a small machine.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = ["fingerprints"]

PRIME = 268_435_399  # the largest prime below 2^28
COLS = 256  # floats (512 halves) per product: 512 * 2^16 * 2^28 = 2^53, still exact
ROWS = 4096  # rows per step: bounds the float64 temporaries


def _fmix64(k: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer on a uint64 array (a bijection with full avalanche)."""
    k = k.copy()
    for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        k ^= k >> np.uint64(33)
        k *= np.uint64(mult)
    k ^= k >> np.uint64(33)
    return k


@functools.lru_cache(maxsize=8)
def _keys(n_halves: int) -> torch.Tensor:
    """(n_halves, 3) float64 keys: k_cj = fmix64(c * 2^32 + j + 1) mod p, fixed for all time."""
    j = np.arange(n_halves, dtype=np.uint64)
    cols = [_fmix64(j + np.uint64((c << 32) + 1)) % np.uint64(PRIME) for c in range(3)]
    return torch.from_numpy(np.stack(cols, axis=1).astype(np.float64))


def fingerprints(rows: np.ndarray) -> np.ndarray:
    """(N, D) float32 rows -> (N,) int64 fingerprints, equal for bit-for-bit equal rows."""
    a = np.ascontiguousarray(rows, dtype="<f4")
    n = a.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    halves = a.reshape(n, -1).view("<u2")
    keys = _keys(halves.shape[1])
    step = 2 * COLS
    res = torch.zeros((n, 3), dtype=torch.float64)
    for r in range(0, n, ROWS):
        for c in range(0, halves.shape[1], step):
            part = torch.from_numpy(halves[r:r + ROWS, c:c + step].astype(np.float64))
            res[r:r + ROWS] += torch.fmod(part @ keys[c:c + step], PRIME)
    r0, r1, r2 = torch.fmod(res, PRIME).numpy().astype(np.uint64).T
    return (r0 | r1 << np.uint64(28) | r2 << np.uint64(56)).view(np.int64)
