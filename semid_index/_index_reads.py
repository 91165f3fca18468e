"""Read side of :class:`~semid_index.SemanticIdIndex`: lookups, prefix pages, counts, similar
items, versions, stats and ID maps. Numpy and the store only: nothing here imports torch.

Every read sees the database as it is now, not as the handle last saw it: the index's record is
read again in the same transaction (or, on the serving path of :meth:`items_with_prefix`, the
active version is resolved inside its one statement), so a refit by another process is
followed, and an index dropped or created anew under the same name is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

import numpy as np
from sqlalchemy.engine import Connection

from . import _inputs
from ._results import IdChange, IndexedItem, IndexStats, PrefixPage, SimilarItem, VersionInfo
from .errors import ConfigError, InvalidCodesError, NotFittedError, UnknownItemError
from .ids import SemanticId
from .storage import IndexRecord, Space

if TYPE_CHECKING:
    from .storage import Store

_new_tuple = tuple.__new__  # NamedTuple construction without the Python-level __new__
_make_id = SemanticId._trusted


class IndexReads:
    """Mixin: the torch-free queries of ``SemanticIdIndex`` (which provides ``_store``,
    ``_record`` and ``name``)."""

    _store: "Store"
    _record: IndexRecord

    if TYPE_CHECKING:  # SemanticIdIndex's read-only property
        @property
        def name(self) -> str: ...

    # ================================================================== records and versions
    def _op(self, what: str) -> str:
        """An operation's description for error messages."""
        return f"{what} of index {self._record.name!r}"

    def _reread(self, conn: Connection, *, lock: bool = False) -> IndexRecord:
        """The index's record as the database has it now (under the lock when ``lock``)."""
        self._record = self._store.catalog.reread(conn, self._record, lock=lock)
        return self._record

    def _refresh(self) -> IndexRecord:
        with self._store.read(self._op("read the record")) as conn:
            return self._reread(conn)

    def _version(self, conn: Connection, rec: IndexRecord, version: int | None) -> int:
        """``version``, checked to exist, or the active one (NotFittedError if none)."""
        if version is None:
            if rec.active_version is None:
                raise _not_fitted(rec)
            return rec.active_version
        self._store.catalog.header(conn, rec, version)  # VersionNotFoundError if missing
        return version

    def _space(self, conn: Connection, version: int | None) -> Space:
        rec = self._reread(conn)
        return rec.space(self._version(conn, rec, version))

    # ================================================================== items
    def lookup(self, key, *, version: int | None = None) -> SemanticId:
        """The item's ID; :class:`UnknownItemError` if it is not in the index."""
        return self.lookup_many([key], version=version)[0]  # type: ignore[return-value]

    def lookup_many(self, keys, *, version: int | None = None,
                    missing: str = "raise") -> list[SemanticId | None]:
        """IDs of many items, in order, from one snapshot. missing: ``"raise"`` (default:
        :class:`UnknownItemError` naming the unknown keys) or ``"skip"`` (None in their place).
        """
        missing = _inputs.missing_policy(missing)
        keys = _inputs.item_keys(keys, allow_duplicates=True)
        version = _inputs.version_number(version)
        with self._store.read(self._op("look up items"), snapshot=True) as conn:
            found = self._store.reads.find(conn, self._space(conn, version), keys)
        if missing == "raise" and len(found) != len(set(keys)):
            _raise_unknown([k for k in dict.fromkeys(keys) if k not in found], self.name)
        out: list[SemanticId | None] = []
        for k in keys:
            hit = found.get(k)
            out.append(None if hit is None else _make_id(hit.levels, hit.suffix))
        return out

    def keys_of(self, ids, *, version: int | None = None) -> list[str | None]:
        """The item key that holds each ID (SemanticIds, ``"12-201-7-0"`` strings or (L + 1)
        int rows: the codes, then the suffix), in order, from one snapshot; None where no item
        holds it (never issued, or removed). The reverse of :meth:`lookup_many`."""
        version = _inputs.version_number(version)
        n_levels = self._record.n_levels
        if isinstance(ids, (str, SemanticId)) or not hasattr(ids, "__iter__"):
            raise ConfigError(f"ids must be a sequence of IDs, got {type(ids).__name__}: wrap "
                              "one ID in a list")
        parsed: list[tuple[tuple[int, ...], int]] = []
        for sid in ids:
            if isinstance(sid, str):
                sid = SemanticId.parse(sid, n_levels)
            if isinstance(sid, SemanticId):
                if sid.depth != n_levels:
                    raise InvalidCodesError(f"ID {sid} has {sid.depth} levels; index "
                                            f"{self.name!r} has {n_levels}")
                parsed.append((sid.levels, sid.suffix))
                continue
            try:
                row = list(sid)
            except TypeError:
                raise InvalidCodesError(f"an ID is a SemanticId, a string or a row of ints, got "
                                        f"{type(sid).__name__}") from None
            if len(row) != n_levels + 1 or not all(
                    isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                    and v >= 0 for v in row):
                raise InvalidCodesError(f"an ID row has {n_levels} codes and a suffix, all "
                                        f"non-negative ints; got {row!r:.80}")
            parsed.append((tuple(int(v) for v in row[:-1]), int(row[-1])))
        sizes = self._record.codebook_sizes
        with self._store.read(self._op("look up IDs"), snapshot=True) as conn:
            space = self._space(conn, version)
            inside = [p for p in parsed if all(c < k for c, k in zip(p[0], sizes))]
            found = self._store.reads.keys_at(conn, space, inside)
        return [found.get(p) for p in parsed]

    def items_with_prefix(self, prefix, *, limit: int = 100, cursor: str | None = None,
                          version: int | None = None) -> PrefixPage:
        """Items whose ID starts with ``prefix`` (depth 1..L: ints, ``"12-201"`` or a
        SemanticId's levels), ordered by ID, at most ``limit`` per page. Pass the page's
        ``cursor`` back for the next page: it names the version the first page was read from,
        so a refit meanwhile does not mix versions. One statement per page."""
        rec = self._record
        pre = _inputs.prefix_tuple(prefix, rec.codebook_sizes, min_depth=1)
        limit = _inputs.positive_int("limit", limit)
        version = _inputs.version_number(version)
        after = None
        if cursor is not None:
            last, suffix, of = _inputs.cursor(cursor, rec.codebook_sizes, pre)
            if of is not None and version is not None and of != version:
                raise ConfigError(f"cursor {cursor!r} pages version {of}, not version {version}")
            version = of if of is not None else version
            after = (last, suffix)
        self._store.check_open()
        at, keys, levels, suffixes = self._store.reads.page(rec, version, pre, limit + 1, after)
        if at is None:  # an empty prefix, or no such version / index any more: say which
            with self._store.read(self._op("read a prefix page")) as conn:
                at = self._space(conn, version).version
            return PrefixPage([], None, at)
        page = [_new_tuple(IndexedItem, (k, _make_id(lv, s)))
                for k, lv, s in zip(keys, levels[:limit], suffixes)]
        more = f"{page[-1].id}@v{at}" if len(keys) > limit else None
        return PrefixPage(page, more, at)

    def count(self, prefix=(), *, version: int | None = None) -> int:
        """Number of items under a prefix of depth 0..L (0: the whole version)."""
        pre = _inputs.prefix_tuple(prefix, self._record.codebook_sizes, min_depth=0)
        version = _inputs.version_number(version)
        with self._store.read(self._op("count items"), snapshot=True) as conn:
            return self._store.reads.count(conn, self._space(conn, version), pre)

    def child_counts(self, prefix=(), *, version: int | None = None) -> dict[int, int]:
        """Items per next-level code under a prefix of depth 0..L-1: ``{code: count}``, only
        codes in use (the valid next codes for constrained decoding)."""
        rec = self._record
        pre = _inputs.prefix_tuple(prefix, rec.codebook_sizes, min_depth=0)
        if len(pre) >= rec.n_levels:
            raise ConfigError(f"child_counts needs a prefix shorter than {rec.n_levels} levels")
        version = _inputs.version_number(version)
        with self._store.read(self._op("count next codes"), snapshot=True) as conn:
            return self._store.reads.children(conn, self._space(conn, version), pre)

    def similar(self, key, *, limit: int = 10, min_shared: int = 1,
                version: int | None = None) -> list[SimilarItem]:
        """Items sharing the longest ID prefix with ``key`` first (its collision group, then
        the rest of its level-(L-1) group, ...), down to ``min_shared`` shared levels; the
        item itself is left out. Within one depth, items come in ID order."""
        rec = self._record
        limit = _inputs.positive_int("limit", limit)
        min_shared = _inputs.positive_int("min_shared", min_shared)
        if min_shared > rec.n_levels:
            raise ConfigError(f"min_shared must be in 1..{rec.n_levels}, got {min_shared}")
        key = _inputs.item_keys([key])[0]
        version = _inputs.version_number(version)
        out: list[SimilarItem] = []
        with self._store.read(self._op("find similar items"), snapshot=True) as conn:
            space = self._space(conn, version)
            hit = self._store.reads.find(conn, space, [key]).get(key)
            if hit is None:
                _raise_unknown([key], rec.name)
            inner = None
            for depth in range(rec.n_levels, min_shared - 1, -1):
                want = limit - len(out)
                rows = self._store.reads.prefix_rows(conn, space, hit.levels[:depth], want + 1,
                                                     exclude=inner)
                out += [SimilarItem(k, _make_id(lv, s), depth)
                        for k, lv, s in rows if k != key][:want]
                if len(out) >= limit:
                    break
                inner = hit.levels[:depth]
        return out

    # ================================================================== versions and stats
    def versions(self) -> list[VersionInfo]:
        """Every codebook version of this index, oldest first."""
        with self._store.read(self._op("list versions"), snapshot=True) as conn:
            vs = self._store.catalog.versions(conn, self._reread(conn))
        return [VersionInfo(v.version, v.created_at, v.n_items, v.active, v.header["dim"],
                            tuple(v.header["codebook_sizes"])) for v in vs]

    def stats(self, *, version: int | None = None) -> IndexStats:
        """Counts for a version (default: the active one): items, distinct codes, collided and
        suffixed items, largest group, retired IDs, distinct prefixes per depth."""
        version = _inputs.version_number(version)
        with self._store.read(self._op("read statistics"), snapshot=True) as conn:
            rec = self._reread(conn)
            n_versions = len(self._store.catalog.versions(conn, rec))
            if version is None and rec.active_version is None:
                return IndexStats(rec.name, self._store.url, None, n_versions, rec.n_levels,
                                  rec.codebook_sizes, rec.dim, 0, 0, 0, 0, 0, None, 0, [])
            space = rec.space(self._version(conn, rec, version))
            c = self._store.reads.summary(conn, space)
            per_level = [self._store.reads.distinct_prefixes(conn, space, depth)
                         for depth in range(1, rec.n_levels)]
        per_level.append(c["n_distinct_codes"])  # full-depth prefixes are the distinct codes
        return IndexStats(rec.name, self._store.url, space.version, n_versions, rec.n_levels,
                          rec.codebook_sizes, rec.dim, c["n_items"], c["n_distinct_codes"],
                          c["n_suffixed"], c["n_collided"], c["largest_group"], c["max_suffix"],
                          c["n_retired"], per_level)

    def id_map(self, old_version: int, new_version: int | None = None) -> Iterator[IdChange]:
        """Every item's ID in two versions (default new: the active one), in key order; an item
        missing from one version has None there. For migrating stored IDs after a refit."""
        old_version = _inputs.positive_int("old_version", old_version)
        new_version = _inputs.version_number(new_version)
        with self._store.read(self._op("map IDs between versions"), snapshot=True) as conn:
            old = self._space(conn, old_version)
            new = self._space(conn, new_version)
            for key, o, n in self._store.reads.pairs(conn, old, new):
                yield IdChange(key, None if o is None else _make_id(*o),
                               None if n is None else _make_id(*n))

    def churn(self, old_version: int, new_version: int | None = None) -> dict:
        """How many items changed prefix between two versions (default new: the active one).

        Returns ``{"old_version", "new_version", "n_common", "n_only_old", "n_only_new",
        "churn"}`` where ``churn[k-1]`` is the share of the items present in both versions whose
        first k codes differ (k = 1..L); identical versions give all zeros. Torch-free, streamed.
        """
        old_version = _inputs.positive_int("old_version", old_version)
        new_version = _inputs.version_number(new_version)
        n_levels = self._record.n_levels
        changed = np.zeros(n_levels, dtype=np.int64)
        common = only_old = only_new = 0
        with self._store.read(self._op("compare versions"), snapshot=True) as conn:
            old = self._space(conn, old_version)
            new = self._space(conn, new_version)
            for _, o, n in self._store.reads.pairs(conn, old, new):
                if o is None:
                    only_new += 1
                elif n is None:
                    only_old += 1
                else:
                    common += 1
                    for lv in range(n_levels):
                        if o[0][lv] != n[0][lv]:
                            changed[lv:] += 1
                            break
        return {"old_version": old.version, "new_version": new.version, "n_common": common,
                "n_only_old": only_old, "n_only_new": only_new,
                "churn": [float(c) / common if common else 0.0 for c in changed]}

    def iter_items(self, *, version: int | None = None,
                   batch: int = 10_000) -> Iterator[IndexedItem]:
        """Every item of a version (default: the active one), ordered by ID, streamed in pages
        of ``batch`` from one snapshot."""
        for keys, ids in self.id_pages(version=version, batch=batch):
            for key, row in zip(keys, ids.tolist()):
                yield _new_tuple(IndexedItem, (key, _make_id(tuple(row[:-1]), row[-1])))

    def id_pages(self, *, version: int | None = None, batch: int = 50_000
                 ) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every item of a version, ordered by ID, in pages of at most ``batch``: (keys (B,),
        ids (B, L + 1) int64: the L level codes, then the suffix), all from one snapshot; memory
        stays that of one page whatever the index's size."""
        version = _inputs.version_number(version)
        batch = _inputs.positive_int("batch", batch)
        with self._store.read(self._op("read all IDs"), snapshot=True) as conn:
            yield from self._store.reads.pages(conn, self._space(conn, version), batch)

    def id_arrays(self, *, version: int | None = None) -> tuple[list[str], np.ndarray]:
        """All items of a version at once, ordered by ID: (keys (N,), ids (N, L + 1) int64, the L
        level codes then the suffix). ~8 (L + 1) bytes per item plus the keys."""
        keys: list[str] = []
        parts = [np.zeros((0, self._record.n_levels + 1), dtype=np.int64)]
        for k, ids in self.id_pages(version=version):
            keys += k
            parts.append(ids)
        return keys, np.concatenate(parts)


def _not_fitted(rec: IndexRecord) -> NotFittedError:
    return NotFittedError(f"index {rec.name!r} has no codebooks yet: call fit() first")


def _raise_unknown(keys: list[str], index_name: str) -> NoReturn:
    shown = ", ".join(map(repr, keys[:20])) + (" ..." if len(keys) > 20 else "")
    raise UnknownItemError(f"{len(keys)} item key(s) not in index {index_name!r}: {shown}",
                           keys[:20])
