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

    ``cursor`` is the last item's ID and the version it was read from (``"12-201-7-0@v1"``);
    pass it back to get the next page of the same version. It is ``None`` when this page ends
    the prefix. ``version`` is the version the page was read from (None for an empty page).
    """

    items: list[IndexedItem]
    cursor: str | None
    version: int | None = None

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
    then pairs, ...). ``n_collided`` counts items whose full code at least one other item shares
    (every member of such a group), ``n_suffixed`` those with a suffix > 0 (all but the first of
    each group); ``largest_group`` is the most items sharing one full code. ``n_retired``
    counts IDs taken back from removed or reassigned items (never issued again).
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
    n_suffixed: int
    n_collided: int
    largest_group: int
    max_suffix: int | None
    n_retired: int
    prefixes_per_level: list[int] = field(default_factory=list)

    @property
    def suffixed_share(self) -> float:
        """Share of items whose suffix is > 0."""
        return self.n_suffixed / self.n_items if self.n_items else 0.0

    @property
    def collided_share(self) -> float:
        """Share of items whose full code another item shares."""
        return self.n_collided / self.n_items if self.n_items else 0.0
