"""Embedding fingerprints: exact, sensitive to any change, and stable (they are stored)."""

import struct

import numpy as np
import pytest

from semid_index._fingerprint import fingerprints

MASK = (1 << 64) - 1
PRIME = 268_435_399


def fmix64(k: int) -> int:
    for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        k ^= k >> 33
        k = (k * mult) & MASK
    return k ^ (k >> 33)


def reference(row: np.ndarray) -> int:
    """The documented definition in plain Python integers."""
    raw = np.asarray(row, dtype="<f4").tobytes()
    halves = struct.unpack(f"<{len(raw) // 2}H", raw)
    r = [sum(h * (fmix64((c << 32) + j + 1) % PRIME) for j, h in enumerate(halves)) % PRIME
         for c in range(3)]
    v = (r[0] | r[1] << 28 | r[2] << 56) & MASK
    return v - (1 << 64) if v >> 63 else v


@pytest.mark.parametrize("d", [1, 7, 256, 300, 1000])
def test_matches_the_definition_across_product_chunks(d):
    rng = np.random.default_rng(d)
    x = rng.standard_normal((5, d)).astype(np.float32) * 10.0 ** rng.integers(-30, 30, (5, d))
    assert fingerprints(x).tolist() == [reference(r) for r in x]


def test_row_blocks_do_not_change_the_result():
    x = np.random.default_rng(0).standard_normal((9000, 12)).astype(np.float32)  # > 2 blocks
    whole = fingerprints(x)
    parts = np.concatenate([fingerprints(x[a:a + 1000]) for a in range(0, 9000, 1000)])
    assert np.array_equal(whole, parts)
    assert len(set(whole.tolist())) == 9000
    assert fingerprints(x[:0]).shape == (0,)


def test_every_bit_flip_swap_and_sign_change_is_seen():
    row = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    base = int(fingerprints(row[None])[0])
    variants = []
    bits = row.view("<u4")
    for j in range(64):
        for b in range(32):
            v = bits.copy()
            v[j] ^= np.uint32(1 << b)
            variants.append(v.view("<f4"))
    swapped = row.copy()
    swapped[[3, 40]] = swapped[[40, 3]]
    variants += [swapped, -row]
    fps = fingerprints(np.stack(variants))
    assert base not in fps.tolist()
    assert len(set(fps.tolist())) == len(fps)  # 2,050 different rows, 2,050 fingerprints
    zero, neg_zero = np.zeros((1, 4), np.float32), np.full((1, 4), -0.0, np.float32)
    assert fingerprints(zero)[0] != fingerprints(neg_zero)[0]  # bit patterns, not values


def test_fingerprints_are_pinned():
    """Fingerprints are stored next to every item: a change here would make every re-added
    item of an existing index look changed. This value must never change."""
    row = np.arange(8, dtype=np.float32)[None] / 3
    assert int(fingerprints(row)[0]) == reference(row[0])
    assert int(fingerprints(row)[0]) == PINNED


PINNED = -1720409433712160660
