"""Plain result types returned by :class:`semid_index.SemanticIdIndex` (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from .ids import SemanticId

__all__ = ["IndexedItem", "PrefixPage", "SimilarItem", "IdChange", "IndexStats", "VersionInfo"]


class IndexedItem(NamedTuple):
    """An item key and its semantic ID."""

    key: str
    id: SemanticId


@dataclass(frozen=True)
class PrefixPage:
    """One page of :meth:`SemanticIdIndex.items_with_prefix`, ordered by ID.

    ``cursor`` is the ID string of the last item; pass it back to get the next page. It is
    ``None`` when this page ends the prefix.
    """

    items: list[IndexedItem]
    cursor: str | None

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def keys(self) -> list[str]:
        return [it.key for it in self.items]


class SimilarItem(NamedTuple):
    """An item sharing the first ``shared_levels`` codes with the query item."""

    key: str
    id: SemanticId
    shared_levels: int


class IdChange(NamedTuple):
    """An item's ID in two versions; ``None`` where the item is absent from that version."""

    key: str
    old: SemanticId | None
    new: SemanticId | None


@dataclass(frozen=True)
class VersionInfo:
    """A codebook version: number, creation time, items its fit assigned, whether active."""

    version: int
    created_at: datetime
    n_items_at_fit: int
    active: bool
    dim: int
    codebook_sizes: tuple[int, ...]


@dataclass(frozen=True)
class IndexStats:
    """Summary of an index's active (or chosen) version.

    ``prefixes_per_level[l]`` counts distinct prefixes of depth ``l + 1`` (codes in use at level 1,
    then pairs, ...); ``n_collided`` counts items whose suffix is > 0; ``n_retired`` counts IDs
    taken back from removed or reassigned items (never issued again).
    """

    name: str
    url: str
    version: int | None
    n_versions: int
    n_levels: int
    codebook_sizes: tuple[int, ...]
    dim: int | None
    n_items: int
    n_distinct_codes: int
    n_collided: int
    max_suffix: int | None
    n_retired: int
    prefixes_per_level: list[int] = field(default_factory=list)

    @property
    def collision_rate(self) -> float:
        """Fraction of items that needed a suffix > 0."""
        return self.n_collided / self.n_items if self.n_items else 0.0
