"""What ``add`` writes: the conflict policy as a pure function on plain data.

``add`` is probe -> decide -> write. The store probes which keys the version already holds
(:class:`~semid_index.storage._item_reads.Found`: levels, suffix, fingerprint); :func:`plan_add`
decides, without a database, what happens to every input row; the store then writes the plan.
A new rule (a capacity per code, say) is a change to this function and its tests.

>>> import numpy as np
>>> from semid_index.storage._item_reads import Found
>>> found = {"b": Found((1, 2), 0, 7)}
>>> plan = plan_add(["a", "b"], np.array([[1, 2], [3, 4]]), np.array([5, 7]), found, "error")
>>> plan.new.tolist(), plan.kept
([0], {1: ((1, 2), 0)})
>>> plan.ids(np.array([[1, 2], [3, 4]]), np.array([1]))
[((1, 2), 1), ((1, 2), 0)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError, ItemConflictError
from .ids import id_string

__all__ = ["ON_CONFLICT", "AddPlan", "plan_add"]

ON_CONFLICT = ("error", "keep", "reassign")

Levels = tuple[int, ...]


@dataclass(frozen=True)
class AddPlan:
    """What one ``add`` writes, by input row.

    kept : row -> (levels, suffix), rows whose key keeps the ID it has.
    new : (M,) int64, rows to insert with fresh suffixes, in input order.
    retire : key -> (levels, suffix), IDs taken back because their key is re-encoded to other
        codes (the key is among ``new``); retired IDs are never issued again.
    refresh : (key, fingerprint) of kept items whose embedding changed but whose codes did not
        (``on_conflict="reassign"``): the stored fingerprint is updated.
    """

    kept: dict[int, tuple[Levels, int]]
    new: np.ndarray
    retire: dict[str, tuple[Levels, int]] = field(default_factory=dict)
    refresh: list[tuple[str, int]] = field(default_factory=list)

    def ids(self, codes: np.ndarray, suffixes: np.ndarray) -> list[tuple[Levels, int]]:
        """Every row's (levels, suffix), given the suffixes the insert of ``new`` returned."""
        out: list[tuple[Levels, int] | None] = [None] * len(codes)
        for i, sid in self.kept.items():
            out[i] = sid
        rows = codes[self.new].tolist()
        for i, levels, suffix in zip(self.new.tolist(), rows, suffixes.tolist()):
            out[i] = (tuple(levels), suffix)
        return out  # type: ignore[return-value]  # every row is kept or new


def plan_add(keys: Sequence[str], codes: np.ndarray, fingerprints: np.ndarray,
             found: Mapping[str, tuple[Levels, int, int]], on_conflict: str) -> AddPlan:
    """Decide what ``add`` does with each row.

    keys : N distinct keys; codes : (N, L) int64, the rows' codes under the active version;
    fingerprints : (N,) int64 of their embeddings; found : key -> (levels, suffix, fingerprint)
    for the keys the version already holds; on_conflict : ``"error"``, ``"keep"`` or
    ``"reassign"``.

    A key not found is new. A found key whose fingerprint is unchanged keeps its ID. Otherwise
    ``"error"`` raises :class:`ItemConflictError` (so nothing is written), ``"keep"`` keeps the
    ID, and ``"reassign"`` keeps the ID when the new codes are the stored ones (updating the
    fingerprint) and otherwise retires it and inserts the key as new.
    """
    if on_conflict not in ON_CONFLICT:
        raise ConfigError(f"on_conflict must be one of {ON_CONFLICT}, got {on_conflict!r}")
    if not found:
        return AddPlan({}, np.arange(len(keys), dtype=np.int64))
    kept: dict[int, tuple[Levels, int]] = {}
    retire: dict[str, tuple[Levels, int]] = {}
    refresh: list[tuple[str, int]] = []
    new: list[int] = []
    for i, key in enumerate(keys):
        hit = found.get(key)
        if hit is None:
            new.append(i)
            continue
        levels, suffix, stored_fp = hit
        fp = int(fingerprints[i])
        if stored_fp == fp or on_conflict == "keep":
            kept[i] = (levels, suffix)
        elif on_conflict == "error":
            raise ItemConflictError(
                f"item {key!r} is already indexed as {id_string((*levels, suffix))} with a "
                "different embedding; pass on_conflict='reassign' to give it a new ID (or "
                "'keep'), or remove it first")
        elif tuple(codes[i].tolist()) == tuple(levels):  # reassign, same codes: same ID
            kept[i] = (levels, suffix)
            refresh.append((key, fp))
        else:  # reassign to other codes: the old ID is retired, the key inserted anew
            retire[key] = (levels, suffix)
            new.append(i)
    return AddPlan(kept, np.asarray(new, dtype=np.int64), retire, refresh)
