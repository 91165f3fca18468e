"""Read side of :class:`~semid_index.SemanticIdIndex`: lookups, prefix pages, counts, similar
items, versions, stats and ID maps. Numpy and the store only: nothing here imports torch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import _inputs
from ._results import IdChange, IndexedItem, IndexStats, PrefixPage, SimilarItem, VersionInfo
from .errors import ConfigError, UnknownItemError
from .ids import SemanticId
from .storage._codes import pack_codes, prefix_range, unpack_codes

_new_tuple = tuple.__new__  # NamedTuple construction without the Python-level __new__


class IndexReads:
    """Mixin: the torch-free queries of ``SemanticIdIndex`` (which provides ``_store``,
    ``_record``, ``_refresh`` and ``_require_version``)."""

    def lookup(self, key, *, version: int | None = None) -> SemanticId:
        """The item's ID; :class:`UnknownItemError` if it is not in the index."""
        return self.lookup_many([key], version=version)[0]

    def lookup_many(self, keys, *, version: int | None = None,
                    missing: str = "raise") -> list[SemanticId | None]:
        """IDs of many items, in order. missing: ``"raise"`` (default) or ``"none"`` (None for
        unknown keys)."""
        if missing not in ("raise", "none"):
            raise ConfigError(f"missing must be 'raise' or 'none', got {missing!r}")
        keys = _inputs.item_keys(keys, allow_duplicates=True)
        version = self._version_or_active(version)
        rec = self._record
        with self._store.read() as conn:
            found = self._store.lookup(conn, rec.id, version, keys)
        if missing == "raise" and len(found) != len(set(keys)):
            _raise_unknown([k for k in dict.fromkeys(keys) if k not in found], rec.name)
        decode = self._store.decoder(rec.n_levels, rec.code_width)
        out = []
        for k in keys:
            hit = found.get(k)
            out.append(None if hit is None else SemanticId._trusted(decode(hit[0]), hit[1]))
        return out

    def items_with_prefix(self, prefix, *, limit: int = 100, cursor: str | None = None,
                          version: int | None = None) -> PrefixPage:
        """Items whose ID starts with ``prefix`` (depth 1..L: ints, ``"12-201"`` or a
        SemanticId's levels), ordered by ID, at most ``limit`` per page. Pass the page's
        ``cursor`` back for the next page; it is None on the last one."""
        rec = self._record
        pre = _inputs.prefix_tuple(prefix, rec.codebook_sizes, min_depth=1)
        if not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit must be a positive int, got {limit!r}")
        version = self._version_or_active(version)
        lo, hi = prefix_range(pre, rec.code_width)
        after = None
        if cursor is not None:
            sid = SemanticId.parse(cursor, rec.n_levels)
            if sid.levels[:len(pre)] != pre:
                raise ConfigError(f"cursor {cursor!r} does not belong to prefix {pre}")
            after = (pack_codes(np.array([sid.levels]), rec.code_width)[0], sid.suffix)
        rows = self._store.fast_prefix_page(rec.id, version, lo, hi, limit + 1, after)
        decode = self._store.decoder(rec.n_levels, rec.code_width)
        make_id, make_item = SemanticId._trusted, _new_tuple
        page = [make_item(IndexedItem, (k, make_id(decode(c), s))) for k, c, s in rows[:limit]]
        more = len(rows) > limit
        return PrefixPage(page, str(page[-1].id) if more else None)

    def count(self, prefix=(), *, version: int | None = None) -> int:
        """Number of items under a prefix of depth 0..L (0: the whole version)."""
        rec = self._record
        pre = _inputs.prefix_tuple(prefix, rec.codebook_sizes, min_depth=0)
        version = self._version_or_active(version)
        lo, hi = prefix_range(pre, rec.code_width)
        with self._store.read() as conn:
            return self._store.count_range(conn, rec.id, version, lo, hi)

    def child_counts(self, prefix=(), *, version: int | None = None) -> dict[int, int]:
        """Items per next-level code under a prefix of depth 0..L-1: ``{code: count}``, only
        codes in use (the valid next codes for constrained decoding)."""
        rec = self._record
        pre = _inputs.prefix_tuple(prefix, rec.codebook_sizes, min_depth=0)
        if len(pre) >= rec.n_levels:
            raise ConfigError(f"child_counts needs a prefix shorter than {rec.n_levels} levels")
        version = self._version_or_active(version)
        lo, hi = prefix_range(pre, rec.code_width)
        w = rec.code_width
        with self._store.read() as conn:
            rows = self._store.child_counts(conn, rec.id, version, lo, hi, (len(pre) + 1) * w)
        return {int.from_bytes(h[-w:], "big"): n for h, n in rows}

    def similar(self, key, *, limit: int = 10, min_shared: int = 1,
                version: int | None = None) -> list[SimilarItem]:
        """Items sharing the longest ID prefix with ``key`` first (its collision group, then
        the rest of its level-(L-1) group, ...), down to ``min_shared`` shared levels; the
        item itself is left out. Within one depth, items come in ID order."""
        rec = self._record
        if not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit must be a positive int, got {limit!r}")
        if not 1 <= min_shared <= rec.n_levels:
            raise ConfigError(f"min_shared must be in 1..{rec.n_levels}, got {min_shared}")
        key = _inputs.item_keys([key])[0]
        version = self._version_or_active(version)
        decode = self._store.decoder(rec.n_levels, rec.code_width)
        out: list[SimilarItem] = []
        with self._store.read(snapshot=True) as conn:
            hit = self._store.lookup(conn, rec.id, version, [key]).get(key)
            if hit is None:
                _raise_unknown([key], rec.name)
            levels = decode(hit[0])
            inner = None
            for depth in range(rec.n_levels, min_shared - 1, -1):
                lo, hi = prefix_range(levels[:depth], rec.code_width)
                want = limit - len(out)
                rows = self._store.prefix_page(conn, rec.id, version, lo, hi, want + 1,
                                               exclude=inner)
                out += [SimilarItem(k, SemanticId._trusted(decode(c), s), depth)
                        for k, c, s in rows if k != key][:want]
                if len(out) >= limit:
                    break
                inner = (lo, hi)
        return out

    def _version_or_active(self, version: int | None) -> int:
        if version is None:
            version = self._record.active_version
            if version is None:
                version = self._require_version(None)  # refreshes: someone may have fitted
            return version
        return self._require_version(version)

    # ================================================================== versions and stats
    def versions(self) -> list[VersionInfo]:
        """Every codebook version of this index, oldest first."""
        rec = self._refresh()
        with self._store.read() as conn:
            vs = self._store.list_versions(conn, rec)
        return [VersionInfo(v.version, v.created_at, v.n_items, v.active, v.header["dim"],
                            tuple(v.header["codebook_sizes"])) for v in vs]

    def stats(self, *, version: int | None = None) -> IndexStats:
        """Counts for a version (default: the active one)."""
        if version is not None:
            self._require_version(version)
        rec = self._refresh()
        version = rec.active_version if version is None else version
        w = rec.code_width
        with self._store.read(snapshot=True) as conn:
            n_versions = len(self._store.list_versions(conn, rec))
            if version is None:
                return IndexStats(rec.name, self.url, None, n_versions, rec.n_levels,
                                  rec.codebook_sizes, rec.dim, 0, 0, 0, None, 0, [])
            c = self._store.version_counts(conn, rec.id, version)
            per_level = [len(self._store.child_counts(conn, rec.id, version, b"", None,
                                                      (lv + 1) * w))
                         for lv in range(rec.n_levels - 1)]
        per_level.append(c["n_distinct_codes"])  # full-depth prefixes are the distinct codes
        return IndexStats(rec.name, self.url, version, n_versions, rec.n_levels,
                          rec.codebook_sizes, rec.dim, c["n_items"], c["n_distinct_codes"],
                          c["n_collided"], c["max_suffix"], c["n_retired"], per_level)

    def id_map(self, old_version: int, new_version: int | None = None) -> Iterator[IdChange]:
        """Every item's ID in two versions (default new: the active one), in key order; an item
        missing from one version has None there. For migrating stored IDs after a refit."""
        old_version = self._require_version(old_version)
        new_version = self._require_version(new_version)
        rec = self._record
        decode = self._store.decoder(rec.n_levels, rec.code_width)

        def sid(code, suffix):
            return None if code is None else SemanticId._trusted(decode(bytes(code)), suffix)

        with self._store.read(snapshot=True) as conn:
            for key, oc, os_, nc, ns in self._store.id_pairs(conn, rec.id, old_version,
                                                             new_version):
                yield IdChange(key, sid(oc, os_), sid(nc, ns))

    def iter_items(self, *, version: int | None = None,
                   batch: int = 10_000) -> Iterator[IndexedItem]:
        """Every item of a version (default: the active one), ordered by ID, streamed in pages
        of ``batch`` from one snapshot."""
        version = self._version_or_active(version)
        rec = self._record
        decode = self._store.decoder(rec.n_levels, rec.code_width)
        with self._store.read(snapshot=True) as conn:
            for page in self._store.iter_rows(conn, rec.id, version, batch):
                for key, code, suffix in page:
                    yield _new_tuple(IndexedItem, (key, SemanticId._trusted(decode(code), suffix)))

    def id_pages(self, *, version: int | None = None, batch: int = 50_000
                 ) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every item of a version, ordered by ID, in pages of at most ``batch``: (keys (B,),
        ids (B, L + 1) int64: the L level codes, then the suffix), all from one snapshot; memory
        stays that of one page whatever the index's size."""
        version = self._version_or_active(version)
        rec = self._record
        with self._store.read(snapshot=True) as conn:
            for page in self._store.iter_rows(conn, rec.id, version, batch):
                ids = np.empty((len(page), rec.n_levels + 1), dtype=np.int64)
                ids[:, :-1] = unpack_codes([c for _, c, _ in page], rec.n_levels, rec.code_width)
                ids[:, -1] = [s for _, _, s in page]
                yield [k for k, _, _ in page], ids

    def id_arrays(self, *, version: int | None = None) -> tuple[list[str], np.ndarray]:
        """All items of a version at once, ordered by ID: (keys (N,), ids (N, L + 1) int64, the L
        level codes then the suffix). ~8 (L + 1) bytes per item plus the keys."""
        keys: list[str] = []
        parts = [np.zeros((0, self._record.n_levels + 1), dtype=np.int64)]
        for k, ids in self.id_pages(version=version):
            keys += k
            parts.append(ids)
        return keys, np.concatenate(parts)


def _raise_unknown(keys: list[str], index_name: str):
    shown = ", ".join(map(repr, keys[:20])) + (" ..." if len(keys) > 20 else "")
    raise UnknownItemError(f"{len(keys)} item key(s) not in index {index_name!r}: {shown}", keys[:20])
