"""Quality report of a fitted quantizer over a data set: reconstruction error and code usage.

The code statistics themselves (numpy only) live in :mod:`semid_index._code_stats`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .._code_stats import LevelStats, code_statistics

__all__ = ["LevelStats", "QualityReport", "code_statistics"]


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
    n_distinct_codes: int           #: distinct full L-level codes
    n_collided: int                 #: items whose full code another item shares
    collided_share: float           #: n_collided / N
    largest_group: int              #: size of the largest group of identical full codes

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"items: {self.n_items}   relative error: {self.relative_error:.4f}   "
                 f"distinct full codes: {self.n_distinct_codes} "
                 f"({self.unique_share[-1]:.1%})   largest group: {self.largest_group}",
                 "level    K  used  dead  util  entropy(bits)  perplexity  inertia"]
        for s, inert in zip(self.levels, self.inertia):
            lines.append(f"{s.level:>5} {s.codebook_size:>4} {s.used:>5} {s.dead:>5} "
                         f"{s.utilisation:>5.1%} {s.entropy_bits:>14.3f} {s.perplexity:>11.1f}  "
                         f"{inert:.6g}")
        return "\n".join(lines)
