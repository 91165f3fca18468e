"""Reads of item IDs: key probes, prefix pages, counts, streamed pages and version pairs.

Every method takes the connection of the caller's read (or write) transaction and a
:class:`~semid_index.storage._catalog.Space`; prefixes are tuples of level codes and results
carry level tuples or (N, L) arrays. Byte keys never leave storage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from typing import NamedTuple

import numpy as np
from sqlalchemy import and_, bindparam, func, null as null_, or_, select, tuple_, union_all
from sqlalchemy.engine import Connection

from ._catalog import IndexRecord, Space
from ._schema import items, retired
from ._sql import SQLITE_VERSION, Readers, driver_connection, key_probe_sql, prefix_page_sql

__all__ = ["Found", "ItemReads", "IN_CHUNK", "PG_CHUNK", "Page"]

IN_CHUNK = 2000  # keys per IN (...) list on SQLite (far below its 32,766 parameters)
PG_CHUNK = 5000  # keys / codes per array parameter on PostgreSQL
RANGE_CHUNK = 250  # prefix ranges OR-ed in one statement (each an index range scan)

Levels = tuple[int, ...]
Row = tuple[str, Levels, int]  # (item key, level codes, suffix)


class Page(NamedTuple):
    """A prefix page as columns: the version it was read from, and per item its key, level
    codes and suffix, ordered by ID."""

    version: int | None
    keys: Sequence[str]
    levels: list[Levels]
    suffixes: Sequence[int]


class Found(NamedTuple):
    """An item as stored: its level codes, suffix and embedding fingerprint."""

    levels: Levels
    suffix: int
    fingerprint: int


def _range(col, lo: bytes, hi: bytes | None) -> list:
    return ([col >= lo] if lo else []) + ([col < hi] if hi is not None else [])


class ItemReads:
    """Item reads of one database (``dialect``) through the caller's connections; the serving
    path (:meth:`page`) on this thread's held connection."""

    def __init__(self, dialect: str, readers: Readers,
                 translate: Callable[[BaseException, str], Exception | None]):
        self.dialect = dialect
        self._readers = readers
        self._translate = translate
        self._page_sql = prefix_page_sql(dialect)
        self._probe_sql = key_probe_sql(dialect)

    # ------------------------------------------------------------------ by key
    def find(self, conn: Connection, space: Space, keys: Sequence[str]) -> dict[str, Found]:
        """key -> :class:`Found` for those of ``keys`` in the version (the probe of a write,
        and the lookup of a read)."""
        pg = self.dialect == "postgresql"
        chunk = PG_CHUNK if pg else IN_CHUNK
        out: dict[str, Found] = {}
        with closing(driver_connection(conn).cursor()) as cur:
            for a in range(0, len(keys), chunk):
                part = list(keys[a:a + chunk])
                if pg:
                    cur.execute(self._probe_sql, {"ix": space.index_id, "v": space.version,
                                                  "keys": part})
                else:
                    cur.execute(self._probe_sql.format(keys=", ".join("?" * len(part))),
                                (space.index_id, space.version, *part))
                rows = cur.fetchall()
                levels = space.layout.levels(r[1] for r in rows)
                out.update((r[0], Found(lv, r[2], r[3])) for r, lv in zip(rows, levels))
        return out

    # ------------------------------------------------------------------ by prefix
    def page(self, rec: IndexRecord, version: int | None, prefix: Levels, limit: int,
             after: tuple[Levels, int] | None = None) -> Page:
        """Serving path: at most ``limit`` items under ``prefix``, after the ID ``after`` =
        (levels, suffix), ordered by ID, in ONE statement on this thread's held connection, as
        columns (version, keys, levels, suffixes). ``version`` None reads the active version,
        resolved in that statement; no rows (version None) when the version is missing or the
        index was dropped."""
        lay = rec.layout
        lo, hi = lay.range(prefix)
        params = {"ix": rec.id, "stamp": rec.stamp, "v": version, "lo": lo, "n": limit}
        if hi is not None:
            params["hi"] = hi
        if after is not None:
            params["ac"] = lay.pack(np.array([after[0]]))[0]
            params["asuf"] = after[1]
        sql = self._page_sql[(hi is not None, after is not None)]
        try:
            if self.dialect == "sqlite":
                at = self._readers.fetchall(SQLITE_VERSION, params)
                params["v"] = at[0][0] if at else None
                rows = [] if params["v"] is None else self._readers.fetchall(sql, params)
            else:
                rows = self._readers.fetchall(sql, params)
        except Exception as e:  # noqa: BLE001 - the driver's errors become typed ones
            typed = self._translate(e, f"read a prefix page of index {rec.name!r}")
            if typed is None:
                raise
            raise typed from e
        if not rows:
            return Page(None, (), [], ())
        if self.dialect == "sqlite":
            keys, codes, suffixes = zip(*rows)
            return Page(params["v"], keys, lay.levels(codes), suffixes)
        keys, codes, suffixes, versions = zip(*rows)
        return Page(versions[0], keys, lay.levels(codes), suffixes)

    def prefix_rows(self, conn: Connection, space: Space, prefix: Levels, limit: int,
                    exclude: Levels | None = None) -> list[Row]:
        """At most ``limit`` items under ``prefix`` and not under ``exclude`` (a longer prefix
        of it), ordered by ID."""
        lo, hi = space.layout.range(prefix)
        conds = [items.c.index_id == space.index_id, items.c.version == space.version]
        conds += _range(items.c.code, lo, hi)
        if exclude is not None:
            xlo, xhi = space.layout.range(exclude)
            outside = [items.c.code < xlo] + ([items.c.code >= xhi] if xhi is not None else [])
            conds.append(or_(*outside))
        stmt = (select(items.c.item_key, items.c.code, items.c.suffix).where(*conds)
                .order_by(items.c.code, items.c.suffix).limit(limit))
        rows = conn.execute(stmt).all()
        levels = space.layout.levels(bytes(r[1]) for r in rows)
        return [(r[0], lv, r[2]) for r, lv in zip(rows, levels)]

    def count(self, conn: Connection, space: Space, prefix: Levels) -> int:
        lo, hi = space.layout.range(prefix)
        stmt = select(func.count()).select_from(items).where(
            items.c.index_id == space.index_id, items.c.version == space.version,
            *_range(items.c.code, lo, hi))
        return int(conn.execute(stmt).scalar_one())

    def children(self, conn: Connection, space: Space, prefix: Levels) -> dict[int, int]:
        """{next-level code: items} under a prefix of depth < L, codes in use only."""
        lay = space.layout
        lo, hi = lay.range(prefix)
        head = func.substr(items.c.code, 1, (len(prefix) + 1) * lay.width)
        stmt = (select(head, func.count()).where(
            items.c.index_id == space.index_id, items.c.version == space.version,
            *_range(items.c.code, lo, hi)).group_by(head).order_by(head))
        return {lay.child(bytes(h)): int(n) for h, n in conn.execute(stmt)}

    def code_counts(self, conn: Connection, space: Space,
                    prefixes: Sequence[Levels]) -> dict[Levels, int]:
        """{full code: items} for the codes in use under any of ``prefixes`` (each of any depth
        < L): one range per prefix on the code index, ``RANGE_CHUNK`` prefixes per statement."""
        lay = space.layout
        out: dict[Levels, int] = {}
        for a in range(0, len(prefixes), RANGE_CHUNK):
            ranges = [and_(*_range(items.c.code, *lay.range(p)))
                      for p in prefixes[a:a + RANGE_CHUNK]]
            stmt = select(items.c.code, func.count()).where(
                items.c.index_id == space.index_id, items.c.version == space.version,
                or_(*ranges)).group_by(items.c.code)
            rows = conn.execute(stmt).all()
            out.update(zip(lay.levels(bytes(c) for c, _ in rows), (int(n) for _, n in rows)))
        return out

    def keys_at(self, conn: Connection, space: Space,
                ids: Sequence[tuple[Levels, int]]) -> dict[tuple[Levels, int], str]:
        """{(levels, suffix): item key} for those of ``ids`` that an item holds: the codes go
        to the code index in IN lists (``IN_CHUNK`` per statement), the suffixes are matched
        here."""
        lay = space.layout
        want = set(ids)
        codes = sorted({c for c in lay.pack(np.array([lv for lv, _ in ids], dtype=np.int64)
                                            .reshape(len(ids), lay.n_levels))}) if ids else []
        out: dict[tuple[Levels, int], str] = {}
        stmt = select(items.c.code, items.c.suffix, items.c.item_key).where(
            items.c.index_id == space.index_id, items.c.version == space.version,
            items.c.code.in_(bindparam("codes", expanding=True)))
        for a in range(0, len(codes), IN_CHUNK):
            rows = conn.execute(stmt, {"codes": codes[a:a + IN_CHUNK]}).all()
            for lv, (_, suffix, key) in zip(lay.levels(bytes(r[0]) for r in rows), rows):
                if (lv, int(suffix)) in want:
                    out[(lv, int(suffix))] = key
        return out

    def distinct_prefixes(self, conn: Connection, space: Space, depth: int) -> int:
        """How many distinct prefixes of ``depth`` levels (1..L) the version's items have."""
        head = func.substr(items.c.code, 1, depth * space.layout.width)
        inner = select(head.label("h")).where(
            items.c.index_id == space.index_id, items.c.version == space.version).group_by(head)
        return int(conn.execute(select(func.count()).select_from(inner.subquery())).scalar_one())

    def summary(self, conn: Connection, space: Space) -> dict:
        """Counts of a version in one scan: n_items, n_distinct_codes, n_suffixed (suffix > 0),
        n_collided (items whose full code another item shares), largest_group, max_suffix;
        and n_retired."""
        n = func.count().label("n")
        groups = select(n, func.count().filter(items.c.suffix > 0).label("s"),
                        func.max(items.c.suffix).label("m")).where(
            items.c.index_id == space.index_id, items.c.version == space.version) \
            .group_by(items.c.code).subquery()
        total, distinct, suffixed, singles, largest, top = conn.execute(select(
            func.sum(groups.c.n), func.count(), func.sum(groups.c.s),
            func.count().filter(groups.c.n == 1), func.max(groups.c.n),
            func.max(groups.c.m))).one()
        n_retired = conn.execute(select(func.count()).select_from(retired).where(
            retired.c.index_id == space.index_id, retired.c.version == space.version)).scalar_one()
        total = int(total or 0)
        return {"n_items": total, "n_distinct_codes": int(distinct),
                "n_suffixed": int(suffixed or 0), "n_collided": total - int(singles or 0),
                "largest_group": int(largest or 0), "max_suffix": None if top is None
                else int(top), "n_retired": int(n_retired)}

    # ------------------------------------------------------------------ whole versions
    def pages(self, conn: Connection, space: Space,
              batch: int = 10_000) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every item of a version ordered by ID, as (keys (B,), ids (B, L + 1) int64: the level
        codes then the suffix) pages of at most ``batch``: keyset pages on the code index, so
        memory stays flat and each page is one range scan."""
        base = [items.c.index_id == space.index_id, items.c.version == space.version]
        after = None
        lay = space.layout
        while True:
            conds = list(base)
            if after is not None:
                conds.append(tuple_(items.c.code, items.c.suffix) > tuple_(*after))
            rows = conn.execute(select(items.c.item_key, items.c.code, items.c.suffix)
                                .where(*conds).order_by(items.c.code, items.c.suffix)
                                .limit(batch)).all()
            if not rows:
                return
            codes = [bytes(c) for _, c, _ in rows]
            ids = np.empty((len(rows), lay.n_levels + 1), dtype=np.int64)
            ids[:, :-1] = lay.unpack(codes)
            ids[:, -1] = [s for _, _, s in rows]
            yield [k for k, _, _ in rows], ids
            if len(rows) < batch:
                return
            after = codes[-1], rows[-1][2]

    def pairs(self, conn: Connection, old: Space, new: Space
              ) -> Iterator[tuple[str, tuple[Levels, int] | None, tuple[Levels, int] | None]]:
        """(key, (levels, suffix) in ``old``, the same in ``new``) for the items of either
        version, in key order; None for the version an item is missing from. Streamed."""
        o, n = items.alias("o"), items.alias("n")
        both = (select(o.c.item_key.label("k"), o.c.code.label("oc"), o.c.suffix.label("os"),
                       n.c.code.label("nc"), n.c.suffix.label("ns"))
                .select_from(o.outerjoin(n, (n.c.index_id == o.c.index_id)
                                         & (n.c.version == new.version)
                                         & (n.c.item_key == o.c.item_key)))
                .where(o.c.index_id == old.index_id, o.c.version == old.version))
        only_new = (select(n.c.item_key, null_(), null_(), n.c.code, n.c.suffix)
                    .where(n.c.index_id == new.index_id, n.c.version == new.version,
                           ~select(o.c.item_key).where(o.c.index_id == old.index_id,
                                                       o.c.version == old.version,
                                                       o.c.item_key == n.c.item_key).exists()))
        stmt = union_all(both, only_new).order_by("k")
        result = conn.execution_options(stream_results=True, yield_per=10_000).execute(stmt)
        levels = old.layout.levels
        for rows in result.partitions():
            olds = levels(bytes(r[1]) for r in rows if r[1] is not None)[::-1]
            news = levels(bytes(r[3]) for r in rows if r[3] is not None)[::-1]
            for key, oc, os_, nc, ns in rows:
                yield (key, None if oc is None else (olds.pop(), os_),
                       None if nc is None else (news.pop(), ns))
