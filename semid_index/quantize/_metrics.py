"""Quality metrics of a code assignment: utilisation, dead codes, entropy, collisions.

``code_statistics`` needs only the codes (numpy, no torch), so any layer can report on stored IDs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np


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


@dataclass
class QualityReport:
    """Corpus-wide quality of residual codes.

    ``inertia[l]`` is the sum of squared residual norms after level l+1 (so the last one is the
    reconstruction error); ``relative_error`` = sum ||x - x_hat||^2 / sum ||x||^2.
    """

    n_items: int
    inertia: list[float]
    relative_error: float
    levels: list[LevelStats]
    unique_share: list[float]       #: distinct prefixes / N at depth 1..L
    unique_full_codes: int          #: distinct full L-level codes
    colliding_items: int            #: items whose full code is shared with another item
    largest_group: int              #: size of the largest group of identical full codes
    collision_rate: float = field(default=0.0)  #: colliding_items / N

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"items: {self.n_items}   relative error: {self.relative_error:.4f}   "
                 f"unique full codes: {self.unique_full_codes} "
                 f"({self.unique_share[-1]:.1%})   largest group: {self.largest_group}",
                 "level    K  used  dead  util  entropy(bits)  perplexity  inertia"]
        for s, inert in zip(self.levels, self.inertia):
            lines.append(f"{s.level:>5} {s.codebook_size:>4} {s.used:>5} {s.dead:>5} "
                         f"{s.utilisation:>5.1%} {s.entropy_bits:>14.3f} {s.perplexity:>11.1f}  "
                         f"{inert:.6g}")
        return "\n".join(lines)


def code_statistics(codes: np.ndarray, codebook_sizes: Sequence[int]) -> dict:
    """Per-level usage and collision statistics of codes (N, L) int.

    Returns a dict with keys ``levels``, ``unique_share``, ``unique_full_codes``,
    ``colliding_items``, ``largest_group`` and ``collision_rate``.
    """
    codes = np.asarray(codes)
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
        levels.append(LevelStats(lv + 1, int(k), used, int(k) - used, used / k, ent,
                                 float(2.0 ** ent), float(counts.max() / n)))
    unique_share = []
    full_counts = None
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
    colliding = int(full_counts[full_counts > 1].sum())
    return dict(levels=levels, unique_share=unique_share, unique_full_codes=int(len(full_counts)),
                colliding_items=colliding, largest_group=int(full_counts.max()),
                collision_rate=colliding / n)
