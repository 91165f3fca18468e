"""The store: indexes, codebook versions and item IDs in SQLite or PostgreSQL.

Numpy and SQLAlchemy only (a serving process that looks IDs up never imports torch). Every method
takes the connection of the caller's transaction (``Store.write()`` / ``Store.read()``) so the
facade composes one logical write (version + codebooks + items + active switch) into one
transaction. Inputs are assumed valid: the facade validates them.
"""

from __future__ import annotations

import json
import struct
from contextlib import closing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice, repeat

import numpy as np
from sqlalchemy import (bindparam, delete, func, insert, null as null_, or_, select, tuple_,
                        union_all, update)
from sqlalchemy.engine import Connection

from ..errors import IndexExistsError, IndexNotFoundError
from . import _migrate
from ._codec import decode_array, encode_array
from ._engine import Transactions, make_engine
from ._schema import codebooks, indexes, items, retired, versions
from ._sql import KEY_PROBE, PG_MAX_SUFFIX, PREFIX_SQL, SQLITE_ASSIGN, Readers

__all__ = ["Store", "IndexRecord", "VersionRecord"]

IN_CHUNK = 500  # keys per IN (...) list on SQLite
PG_CHUNK = 5000  # keys / codes per array parameter on PostgreSQL
BULK_BATCH = 50_000  # rows per executemany call or COPY stretch (progress granularity)


@dataclass(frozen=True)
class IndexRecord:
    """One row of semid_indexes, decoded."""

    id: int
    name: str
    n_levels: int
    codebook_sizes: tuple[int, ...]
    code_width: int
    dim: int | None
    options: dict
    active_version: int | None
    created_at: datetime


@dataclass(frozen=True)
class VersionRecord:
    """One codebook version of an index."""

    version: int
    created_at: datetime
    n_items: int
    header: dict
    active: bool


def now() -> datetime:
    return datetime.now(timezone.utc)


def _collector(out: list) -> Callable[[int], int]:
    """An SQL function that records each value it passes through (``semid_issued``)."""
    append = out.append

    def issued(value: int) -> int:
        append(value)
        return value
    return issued


class Store(Transactions):
    """Persistence for semantic-ID indexes on one database (URL or Engine).

    ``read()``/``write()`` give connections; the methods below run inside them.
    """

    def __init__(self, target, *, busy_timeout: float | None = None):
        kw = {} if busy_timeout is None else {"busy_timeout": busy_timeout}
        engine, owned = make_engine(target, **kw)
        super().__init__(engine, owned)
        self._unpack: dict[tuple[int, int], Callable] = {}
        self._readers = Readers(engine)

    def close(self) -> None:
        self._readers.close()
        super().close()

    # ------------------------------------------------------------------ hot reads
    def fast_prefix_page(self, index_id: int, version: int, lo: bytes, hi: bytes | None,
                         limit: int, after: tuple[bytes, int] | None = None) -> list:
        """One page of a prefix, after the ``(code, suffix)`` of ``after``, on this thread's held
        read connection with precompiled SQL: the serving path, a few microseconds over the raw
        driver."""
        self._check_open()
        sql = PREFIX_SQL[self.dialect][(hi is not None, after is not None)]
        params = [index_id, version, lo]
        if hi is not None:
            params.append(hi)
        if after is not None:
            params += [after[0], after[0], after[1]]
        params.append(limit)
        return self._readers.fetchall(sql, params)

    # ------------------------------------------------------------------ schema
    def upgrade_schema(self) -> tuple[str | None, str]:
        """Apply pending revisions (one transaction); (revision before, revision after)."""
        with self.write() as conn:
            return _migrate.upgrade(conn, self.url)

    def check_schema(self, conn: Connection) -> None:
        _migrate.check_schema(conn, self.url)

    # ------------------------------------------------------------------ indexes
    def create_index(self, conn: Connection, name: str, *, n_levels: int,
                     codebook_sizes: Sequence[int], code_width: int, options: dict) -> int:
        if conn.execute(select(indexes.c.id).where(indexes.c.name == name)).first():
            raise IndexExistsError(f"an index named {name!r} already exists in {self.url}")
        res = conn.execute(insert(indexes).values(
            name=name, n_levels=n_levels, codebook_sizes=json.dumps(list(codebook_sizes)),
            code_width=code_width, dim=None, options=json.dumps(options), active_version=None,
            created_at=now()))
        return int(res.inserted_primary_key[0])

    def get_index(self, conn: Connection, name: str, *, lock: bool = False) -> IndexRecord:
        """The index's record; ``lock`` takes its row lock for the rest of the transaction
        (PostgreSQL ``FOR UPDATE``; SQLite's write transaction already holds the database)."""
        stmt = select(indexes).where(indexes.c.name == name)
        if lock and self.dialect == "postgresql":
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).mappings().first()
        if row is None:
            raise IndexNotFoundError(f"no index named {name!r} in {self.url}; existing: "
                                     f"{self.index_names(conn) or 'none'}")
        return IndexRecord(
            id=row["id"], name=row["name"], n_levels=row["n_levels"],
            codebook_sizes=tuple(json.loads(row["codebook_sizes"])), code_width=row["code_width"],
            dim=row["dim"], options=json.loads(row["options"]),
            active_version=row["active_version"], created_at=row["created_at"])

    def index_names(self, conn: Connection) -> list[str]:
        return list(conn.execute(select(indexes.c.name).order_by(indexes.c.name)).scalars())

    def drop_index(self, conn: Connection, index_id: int) -> None:
        for table in (items, retired, codebooks, versions):
            conn.execute(delete(table).where(table.c.index_id == index_id))
        conn.execute(delete(indexes).where(indexes.c.id == index_id))

    # ------------------------------------------------------------------ versions
    def add_version(self, conn: Connection, index_id: int, books: Sequence[np.ndarray],
                    header: dict, n_items: int) -> int:
        """Store a new codebook version (not yet active); its number."""
        last = conn.execute(select(func.max(versions.c.version))
                            .where(versions.c.index_id == index_id)).scalar()
        version = (last or 0) + 1
        conn.execute(insert(versions).values(index_id=index_id, version=version,
                                             created_at=now(), n_items=n_items,
                                             header=json.dumps(header)))
        conn.execute(insert(codebooks), [
            {"index_id": index_id, "version": version, "level": lv,
             "data": encode_array(np.asarray(b, dtype="<f4"))}
            for lv, b in enumerate(books)])
        return version

    def activate(self, conn: Connection, index_id: int, version: int, dim: int) -> None:
        conn.execute(update(indexes).where(indexes.c.id == index_id)
                     .values(active_version=version, dim=dim))

    def analyze(self, conn: Connection) -> None:
        """Refresh the planner's statistics of the items table after a bulk load (PostgreSQL;
        SQLite's planner needs none for these queries)."""
        if self.dialect == "postgresql":
            conn.exec_driver_sql("ANALYZE semid_items")

    def list_versions(self, conn: Connection, index: IndexRecord) -> list[VersionRecord]:
        rows = conn.execute(select(versions).where(versions.c.index_id == index.id)
                            .order_by(versions.c.version)).mappings()
        return [VersionRecord(r["version"], r["created_at"], r["n_items"],
                              json.loads(r["header"]), r["version"] == index.active_version)
                for r in rows]

    def load_codebooks(self, conn: Connection, index_id: int,
                       version: int) -> tuple[list[np.ndarray], dict]:
        """(codebooks (K_l, D) float32 per level, header) of one version; blobs are checked."""
        header = conn.execute(select(versions.c.header).where(
            versions.c.index_id == index_id, versions.c.version == version)).scalar()
        if header is None:
            raise IndexNotFoundError(f"index has no codebook version {version}")
        rows = conn.execute(select(codebooks.c.level, codebooks.c.data).where(
            codebooks.c.index_id == index_id, codebooks.c.version == version)
            .order_by(codebooks.c.level)).all()
        return [decode_array(bytes(r.data)) for r in rows], json.loads(header)

    # ------------------------------------------------------------------ bulk item writes
    def insert_items(self, conn: Connection, index_id: int, version: int, keys: Sequence[str],
                     codes: Sequence[bytes], suffixes: np.ndarray, fingerprints: np.ndarray,
                     progress: Callable[[int], None] | None = None) -> None:
        """Insert new item rows: executemany in large batches on SQLite, COPY on PostgreSQL."""
        rows = zip(repeat(index_id), repeat(version), keys, codes, suffixes.tolist(),
                   fingerprints.tolist())  # tuples made as the driver consumes them
        sizes = [min(BULK_BATCH, len(keys) - a) for a in range(0, len(keys), BULK_BATCH)]
        raw = conn.connection.driver_connection
        cols = "index_id, version, item_key, code, suffix, fingerprint"
        if self.dialect == "sqlite":
            with closing(raw.cursor()) as cur:
                for size in sizes:
                    cur.executemany(f"INSERT INTO semid_items ({cols}) VALUES (?, ?, ?, ?, ?, ?)",
                                    islice(rows, size))
                    if progress:
                        progress(size)
        else:
            with raw.cursor() as cur, cur.copy(
                    f"COPY semid_items ({cols}) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["int4", "int4", "text", "bytea", "int4", "int8"])
                for size in sizes:
                    for row in islice(rows, size):
                        cp.write_row(row)
                    if progress:
                        progress(size)

    def add_items(self, conn: Connection, index_id: int, version: int, keys: Sequence[str],
                  codes: Sequence[bytes], fingerprints: np.ndarray
                  ) -> tuple[np.ndarray, dict[str, tuple[bytes, int, int]]]:
        """Insert those of ``keys`` not yet in the version, each with the next suffix never
        issued for its code (live or retired), suffixes following input order.

        Returns (suffixes (N,) int64, -1 for keys that were already there; key -> (code,
        suffix, fingerprint) as stored, for those keys only). An existing key keeps its row: the
        caller compares fingerprints to see whether it changed. Under the index's write lock.
        SQLite: one INSERT pass (``_sqlite_insert``); PostgreSQL probes the keys, then COPYs
        the new ones (``assign_items``)."""
        if self.dialect == "sqlite":
            return self._sqlite_insert(conn, index_id, version, keys, codes, fingerprints)
        got = self.existing_items(conn, index_id, version, keys)
        suffixes = np.full(len(keys), -1, dtype=np.int64)
        new = [i for i, k in enumerate(keys) if k not in got] if got else range(len(keys))
        if new:
            suffixes[new] = self.assign_items(conn, index_id, version, [keys[i] for i in new],
                                              [codes[i] for i in new], fingerprints[new])
        return suffixes, got

    def assign_items(self, conn: Connection, index_id: int, version: int, keys: Sequence[str],
                     codes: Sequence[bytes], fingerprints: np.ndarray) -> np.ndarray:
        """Insert items whose keys are not in the version, each with the next suffix never
        issued for its code (live or retired), in input order; their suffixes (N,) int64.
        Under the index's write lock. PostgreSQL probes all codes in one statement, then
        COPYs the rows."""
        if self.dialect == "sqlite":
            suffixes, there = self._sqlite_insert(conn, index_id, version, keys, codes,
                                                  fingerprints)
            if there:
                raise RuntimeError(f"assign_items: {next(iter(there))!r} is already in the "
                                   f"version ({self.url})")
            return suffixes
        nxt = self.next_suffixes(conn, index_id, version, list(set(codes)))
        suffixes = np.empty(len(keys), dtype=np.int64)
        for i, code in enumerate(codes):
            suffixes[i] = nxt[code]
            nxt[code] += 1
        self.insert_items(conn, index_id, version, keys, codes, suffixes, fingerprints)
        return suffixes

    def _sqlite_insert(self, conn: Connection, index_id: int, version: int, keys: Sequence[str],
                       codes: Sequence[bytes], fingerprints: np.ndarray
                       ) -> tuple[np.ndarray, dict[str, tuple[bytes, int, int]]]:
        """``INSERT OR IGNORE`` with each suffix computed inside the INSERT (the seek for the
        code's largest suffix lands on the page the row then goes to: one B-tree descent per
        item, not two). The suffixes come back through ``semid_issued``, a function the INSERT
        calls on each row's suffix, so no second pass reads them back; only when some keys
        were already there (the INSERT skipped them) are all rows read back by key."""
        n = len(keys)
        sql = SQLITE_ASSIGN[self._has_retired(conn, index_id, version)]
        # in code order (stable: equal codes keep input order, so suffixes still follow it):
        # consecutive rows then share B-tree pages, which are hot in the cache
        order = sorted(range(n), key=codes.__getitem__)
        fps = fingerprints.tolist()
        raw = conn.connection.driver_connection
        issued: list[int] = []
        raw.create_function("semid_issued", 1, _collector(issued))
        try:
            with closing(raw.cursor()) as cur:
                cur.executemany(sql, zip(repeat(index_id), repeat(version),
                                         [keys[i] for i in order], [codes[i] for i in order],
                                         [fps[i] for i in order]))
                inserted = cur.rowcount
        finally:  # let go of the list; a stray call of the name now fails loudly
            raw.create_function("semid_issued", 1, None)
        if len(issued) != n:
            raise RuntimeError(f"the INSERT issued {len(issued)} suffixes for {n} rows in "
                               f"{self.url}")
        suffixes = np.empty(n, dtype=np.int64)
        suffixes[order] = issued
        if inserted == n:
            return suffixes, {}
        # Some keys were there before: a row is new iff it holds the suffix issued for it (that
        # suffix exceeds every suffix its code had, so an older row cannot hold it).
        got = self.existing_items(conn, index_id, version, keys)
        there = {}
        for i, k in enumerate(keys):
            row = got.get(k)
            if row is None:  # OR IGNORE skipped it for a reason other than its key
                raise RuntimeError(f"item {k!r} was neither inserted nor found in {self.url}")
            if row[0] != codes[i] or row[1] != suffixes[i]:
                there[k] = row
                suffixes[i] = -1
        if n - len(there) != inserted:
            raise RuntimeError(f"{inserted} rows inserted, {n - len(there)} found new in "
                               f"{self.url}")
        return suffixes, there

    def existing_items(self, conn: Connection, index_id: int, version: int,
                       keys: Sequence[str]) -> dict[str, tuple[bytes, int, int]]:
        """key -> (code, suffix, fingerprint) for those of ``keys`` already in the version."""
        pg = self.dialect == "postgresql"
        chunk = PG_CHUNK if pg else IN_CHUNK
        out = {}
        with closing(conn.connection.driver_connection.cursor()) as cur:
            for a in range(0, len(keys), chunk):
                part = list(keys[a:a + chunk])
                if pg:
                    cur.execute(KEY_PROBE["postgresql"], (part, index_id, version))
                else:
                    cur.execute(KEY_PROBE["sqlite"].replace("?*", ", ".join("?" * len(part))),
                                (index_id, version, *part))
                for k, code, suffix, fp in cur.fetchall():
                    out[k] = (bytes(code), suffix, fp)
        return out

    def next_suffixes(self, conn: Connection, index_id: int, version: int,
                      codes: Sequence[bytes]) -> dict[bytes, int]:
        """code -> first suffix never issued for it (live items and retired IDs); 0 if unused.
        PostgreSQL's allocation (SQLite's happens inside ``assign_items``' INSERT).

        Call under the index's write lock: the answer is only final while no one else writes.
        """
        out = dict.fromkeys(codes, 0)
        tables = ["semid_items"]
        if self._has_retired(conn, index_id, version):
            tables.append("semid_retired")  # only versions that ever retired an ID
        with closing(conn.connection.driver_connection.cursor()) as cur:
            for table in tables:
                for a in range(0, len(codes), PG_CHUNK):
                    cur.execute(PG_MAX_SUFFIX.format(table=table),
                                (list(codes[a:a + PG_CHUNK]), index_id, version))
                    for code, top in cur.fetchall():
                        code = bytes(code)
                        out[code] = max(out[code], top + 1)
        return out

    def _has_retired(self, conn: Connection, index_id: int, version: int) -> bool:
        return conn.execute(select(retired.c.suffix).where(
            retired.c.index_id == index_id, retired.c.version == version).limit(1)).first() \
            is not None

    def retire_items(self, conn: Connection, index_id: int, version: int,
                     found: dict[str, tuple[bytes, int, int]]) -> None:
        """Move items' IDs to the retired table and delete the items."""
        if not found:
            return
        stamp = now()
        conn.execute(insert(retired), [
            {"index_id": index_id, "version": version, "code": code, "suffix": suffix,
             "item_key": key, "retired_at": stamp} for key, (code, suffix, _) in found.items()])
        stmt = delete(items).where(items.c.index_id == index_id, items.c.version == version,
                                   items.c.item_key.in_(bindparam("keys", expanding=True)))
        keys = list(found)
        for a in range(0, len(keys), IN_CHUNK):
            conn.execute(stmt, {"keys": keys[a:a + IN_CHUNK]})

    def update_fingerprints(self, conn: Connection, index_id: int, version: int,
                            pairs: Sequence[tuple[str, int]]) -> None:
        if pairs:
            conn.execute(update(items).where(
                items.c.index_id == bindparam("i"), items.c.version == bindparam("v"),
                items.c.item_key == bindparam("k")).values(fingerprint=bindparam("fp")),
                [{"i": index_id, "v": version, "k": k, "fp": fp} for k, fp in pairs])

    # ------------------------------------------------------------------ reads
    def decoder(self, n_levels: int, width: int) -> Callable[[bytes], tuple[int, ...]]:
        """bytes key -> tuple of level codes (a cached ``struct`` unpacker)."""
        fn = self._unpack.get((n_levels, width))
        if fn is None:
            fn = struct.Struct(">" + ("H" if width == 2 else "I") * n_levels).unpack
            self._unpack[(n_levels, width)] = fn
        return fn

    def lookup(self, conn: Connection, index_id: int, version: int,
               keys: Sequence[str]) -> dict[str, tuple[bytes, int]]:
        """key -> (code, suffix) for the keys present."""
        return {k: (c, s) for k, (c, s, _) in
                self.existing_items(conn, index_id, version, keys).items()}

    def prefix_page(self, conn: Connection, index_id: int, version: int, lo: bytes,
                    hi: bytes | None, limit: int,
                    exclude: tuple[bytes, bytes | None] | None = None) -> list:
        """Rows (item_key, code, suffix) with ``lo <= code < hi`` outside the ``exclude`` key
        range, ordered by (code, suffix); at most ``limit``. (Pages of one prefix, the serving
        path, go through :meth:`fast_prefix_page`.)"""
        conds = [items.c.index_id == index_id, items.c.version == version]
        conds += _range(items.c.code, lo, hi)
        if exclude is not None:
            xlo, xhi = exclude
            outside = [items.c.code < xlo] + ([items.c.code >= xhi] if xhi is not None else [])
            conds.append(or_(*outside))
        stmt = (select(items.c.item_key, items.c.code, items.c.suffix).where(*conds)
                .order_by(items.c.code, items.c.suffix).limit(limit))
        return conn.execute(stmt).all()

    def iter_rows(self, conn: Connection, index_id: int, version: int,
                  batch: int = 10_000) -> Iterator[list[tuple[str, bytes, int]]]:
        """Every item of a version as (item_key, code, suffix), ordered by (code, suffix), in
        lists of at most ``batch`` rows: keyset pages on the code index, so memory stays flat
        and each page is one range scan."""
        base = [items.c.index_id == index_id, items.c.version == version]
        after = None
        while True:
            conds = list(base)
            if after is not None:
                conds.append(tuple_(items.c.code, items.c.suffix) > tuple_(*after))
            rows = conn.execute(select(items.c.item_key, items.c.code, items.c.suffix)
                                .where(*conds).order_by(items.c.code, items.c.suffix)
                                .limit(batch)).all()
            if not rows:
                return
            page = [(k, bytes(c), s) for k, c, s in rows]
            yield page
            if len(rows) < batch:
                return
            after = page[-1][1], page[-1][2]

    def count_range(self, conn: Connection, index_id: int, version: int, lo: bytes,
                    hi: bytes | None) -> int:
        stmt = select(func.count()).select_from(items).where(
            items.c.index_id == index_id, items.c.version == version,
            *_range(items.c.code, lo, hi))
        return int(conn.execute(stmt).scalar())

    def child_counts(self, conn: Connection, index_id: int, version: int, lo: bytes,
                     hi: bytes | None, child_bytes: int) -> list[tuple[bytes, int]]:
        """(first ``child_bytes`` of the code, count) for the codes in ``[lo, hi)``."""
        head = func.substr(items.c.code, 1, child_bytes)
        stmt = (select(head, func.count()).where(
            items.c.index_id == index_id, items.c.version == version,
            *_range(items.c.code, lo, hi)).group_by(head).order_by(head))
        return [(bytes(h), int(n)) for h, n in conn.execute(stmt)]

    def version_counts(self, conn: Connection, index_id: int, version: int) -> dict:
        """n_items, items with a suffix > 0, largest suffix, distinct full codes."""
        base = [items.c.index_id == index_id, items.c.version == version]
        n, top, collided, distinct = conn.execute(select(
            func.count(), func.max(items.c.suffix), func.count().filter(items.c.suffix > 0),
            func.count(func.distinct(items.c.code))).where(*base)).one()
        n_retired = conn.execute(select(func.count()).select_from(retired).where(
            retired.c.index_id == index_id, retired.c.version == version)).scalar()
        return {"n_items": int(n), "max_suffix": None if top is None else int(top),
                "n_collided": int(collided or 0), "n_distinct_codes": int(distinct),
                "n_retired": int(n_retired)}

    def id_pairs(self, conn: Connection, index_id: int, old: int, new: int) -> Iterator[tuple]:
        """(key, old code, old suffix, new code, new suffix) for items of either version, in
        key order; None for the version an item is missing from. Streamed."""
        o, n = items.alias("o"), items.alias("n")
        both = (select(o.c.item_key.label("k"), o.c.code.label("oc"), o.c.suffix.label("os"),
                       n.c.code.label("nc"), n.c.suffix.label("ns"))
                .select_from(o.outerjoin(n, (n.c.index_id == o.c.index_id)
                                         & (n.c.version == new) & (n.c.item_key == o.c.item_key)))
                .where(o.c.index_id == index_id, o.c.version == old))
        only_new = (select(n.c.item_key, null_(), null_(), n.c.code, n.c.suffix)
                    .where(n.c.index_id == index_id, n.c.version == new,
                           ~select(o.c.item_key).where(o.c.index_id == index_id,
                                                       o.c.version == old,
                                                       o.c.item_key == n.c.item_key).exists()))
        stmt = union_all(both, only_new).order_by("k")
        result = conn.execution_options(stream_results=True, yield_per=10_000).execute(stmt)
        for row in result:
            yield row[0], row[1], row[2], row[3], row[4]


def _range(col, lo: bytes, hi: bytes | None) -> list:
    out = []
    if lo:
        out.append(col >= lo)
    if hi is not None:
        out.append(col < hi)
    return out


