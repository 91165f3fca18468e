"""Writes of item IDs: bulk loads of a new version, inserts of new items with fresh suffixes,
retirement of IDs, fingerprint updates.

Every method runs inside the caller's write transaction (which holds the index's write lock)
and takes (N, L) code arrays; suffixes come back as (N,) int64 arrays. Inputs are valid (the
facade validated them) and the keys of :meth:`ItemWrites.insert_new` are not in the version
(the facade probed them under the same lock, or lets :meth:`ItemWrites.insert_if_new` find
out): nothing here decides what to write.

Suffix allocation: an item's suffix is one more than every suffix its code ever had in the
version, live or retired, so an ID once issued is never issued again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from datetime import datetime, timezone
from itertools import repeat

import numpy as np
from sqlalchemy import bindparam, delete, insert, update
from sqlalchemy.engine import Connection

from ..errors import StoreError
from ._catalog import Space
from ._codes import group_suffixes
from ._item_reads import IN_CHUNK, PG_CHUNK
from ._schema import NAMING_CONVENTION, items, retired
from ._sql import PG_INSERT, SQLITE_INSERT, driver_connection

__all__ = ["ItemWrites"]

BULK_BATCH = 50_000  # rows per executemany call or COPY stretch (progress granularity)
_COLS = "index_id, version, item_key, code, suffix, fingerprint"
# a duplicate item key as each backend reports it (a primary-key violation), from the schema
_PG_KEY_CONSTRAINT = NAMING_CONVENTION["pk"] % {"table_name": items.name}
_SQLITE_KEY_TAKEN = "UNIQUE constraint failed: " + ", ".join(
    f"{items.name}.{c.name}" for c in items.primary_key.columns)

Progress = Callable[[int], object] | None


def _collector(out: list) -> Callable[[int], int]:
    """An SQL function that records each value it passes through (``semid_issued``)."""
    append = out.append

    def issued(value: int) -> int:
        append(value)
        return value
    return issued


class ItemWrites:
    """Item writes of one database (``dialect``; ``url`` for messages)."""

    def __init__(self, dialect: str, url: str):
        self.dialect = dialect
        self.url = url
        ph = "?" if dialect == "sqlite" else "%s"
        self._retired_sql = (f"SELECT 1 FROM semid_retired WHERE index_id = {ph} AND "
                             f"version = {ph} LIMIT 1")
        self._retired: set[tuple[int, int]] = set()  # versions known to have retired IDs

    def load(self, conn: Connection, space: Space, keys: Sequence[str], codes: np.ndarray,
             fingerprints: np.ndarray, progress: Progress = None) -> np.ndarray:
        """Fill an empty (new) version: suffixes 0, 1, ... within each group of equal codes in
        input order; executemany in large batches on SQLite, binary COPY on PostgreSQL.
        Returns the suffixes (N,) int64."""
        suffixes = group_suffixes(codes)
        self._bulk(conn, space, keys, codes, suffixes, fingerprints, progress)
        return suffixes

    def insert_new(self, conn: Connection, space: Space, keys: Sequence[str],
                   codes: np.ndarray, fingerprints: np.ndarray,
                   progress: Progress = None) -> np.ndarray:
        """Insert items whose keys are not in the version, each with the next suffix never
        issued for its code, in input order among equal codes. Returns the suffixes (N,).
        The suffixes are computed inside the INSERT on both backends (no read before it)."""
        if len(keys) == 0:
            return np.zeros(0, dtype=np.int64)
        packed = space.layout.pack(codes)
        if self.dialect == "sqlite":
            return self._sqlite_insert(conn, space, keys, packed, fingerprints, progress)
        return self._pg_insert(conn, space, keys, packed, fingerprints, progress)

    def insert_if_new(self, conn: Connection, space: Space, keys: Sequence[str],
                      codes: np.ndarray, fingerprints: np.ndarray,
                      progress: Progress = None) -> np.ndarray | None:
        """:meth:`insert_new` on the guess that none of ``keys`` is in the version: the
        INSERT's own primary-key check is the probe, so none runs before it. If a key is there,
        everything this call wrote is rolled back (to a savepoint; the transaction goes on) and
        None is returned: the caller then probes the keys and decides. Any other failure
        raises."""
        raw = driver_connection(conn)
        with closing(raw.cursor()) as cur:
            cur.execute("SAVEPOINT semid_insert_if_new")
            try:
                suffixes = self.insert_new(conn, space, keys, codes, fingerprints, progress)
            except Exception as e:
                if not self._key_taken(e):
                    raise
                cur.execute("ROLLBACK TO SAVEPOINT semid_insert_if_new")
                cur.execute("RELEASE SAVEPOINT semid_insert_if_new")
                return None
            cur.execute("RELEASE SAVEPOINT semid_insert_if_new")
        return suffixes

    def _key_taken(self, e: Exception) -> bool:
        """Whether driver error ``e`` is a duplicate (index, version, item key)."""
        if self.dialect == "sqlite":
            return isinstance(e, sqlite3.IntegrityError) and str(e) == _SQLITE_KEY_TAKEN
        diag = getattr(e, "diag", None)
        return getattr(e, "sqlstate", None) == "23505" and diag is not None and \
            diag.constraint_name == _PG_KEY_CONSTRAINT

    def retire(self, conn: Connection, space: Space,
               rows: Mapping[str, tuple[tuple[int, ...], int]]) -> None:
        """Move items' IDs (key -> (levels, suffix) as stored) to the retired table, where
        they stay taken, and delete the items."""
        if not rows:
            return
        keys = list(rows)
        packed = space.layout.pack(np.array([rows[k][0] for k in keys], dtype=np.int64))
        stamp = datetime.now(timezone.utc)
        conn.execute(insert(retired), [
            {"index_id": space.index_id, "version": space.version, "code": code,
             "suffix": rows[k][1], "item_key": k, "retired_at": stamp}
            for k, code in zip(keys, packed)])
        stmt = delete(items).where(items.c.index_id == space.index_id,
                                   items.c.version == space.version,
                                   items.c.item_key.in_(bindparam("keys", expanding=True)))
        for a in range(0, len(keys), IN_CHUNK):
            conn.execute(stmt, {"keys": keys[a:a + IN_CHUNK]})

    def set_fingerprints(self, conn: Connection, space: Space,
                         pairs: Sequence[tuple[str, int]]) -> None:
        """Store new embedding fingerprints (key, fingerprint) of items that keep their ID."""
        if pairs:
            conn.execute(update(items).where(
                items.c.index_id == bindparam("i"), items.c.version == bindparam("v"),
                items.c.item_key == bindparam("k")).values(fingerprint=bindparam("fp")),
                [{"i": space.index_id, "v": space.version, "k": k, "fp": fp} for k, fp in pairs])

    # ------------------------------------------------------------------ internals
    def _bulk(self, conn: Connection, space: Space, keys: Sequence[str], codes: np.ndarray,
              suffixes: np.ndarray, fingerprints: np.ndarray, progress: Progress) -> None:
        """Write the rows in batches of BULK_BATCH, packing the (N, L) codes batch by batch (a
        load's memory then holds no list of N code keys)."""
        raw = driver_connection(conn)

        def batches():
            for a in range(0, len(keys), BULK_BATCH):
                b = min(a + BULK_BATCH, len(keys))
                yield b - a, zip(repeat(space.index_id), repeat(space.version), keys[a:b],
                                 space.layout.pack(codes[a:b]), suffixes[a:b].tolist(),
                                 fingerprints[a:b].tolist())
        if self.dialect == "sqlite":
            with closing(raw.cursor()) as cur:
                for size, rows in batches():
                    cur.executemany(f"INSERT INTO semid_items ({_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
                                    rows)
                    if progress:
                        progress(size)
        else:
            with raw.cursor() as cur, cur.copy(
                    f"COPY semid_items ({_COLS}) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["int4", "int4", "text", "bytea", "int4", "int8"])
                for size, rows in batches():
                    for row in rows:
                        cp.write_row(row)
                    if progress:
                        progress(size)

    def _sqlite_insert(self, conn: Connection, space: Space, keys: Sequence[str],
                       packed: list[bytes], fingerprints: np.ndarray,
                       progress: Progress) -> np.ndarray:
        """One INSERT pass with each suffix computed inside the statement; the suffixes come
        back through ``semid_issued``, a function the INSERT calls on each row's suffix, so no
        second pass reads them back."""
        n = len(keys)
        sql = SQLITE_INSERT[self._has_retired(conn, space)]
        # in code order (stable: equal codes keep input order, so suffixes still follow it):
        # consecutive rows then share B-tree pages, which are hot in the cache
        order = sorted(range(n), key=packed.__getitem__)
        fps = fingerprints.tolist()
        raw = driver_connection(conn)
        issued: list[int] = []
        raw.create_function("semid_issued", 1, _collector(issued))
        try:
            with closing(raw.cursor()) as cur:
                for a in range(0, n, BULK_BATCH):
                    part = order[a:a + BULK_BATCH]
                    cur.executemany(sql, zip(repeat(space.index_id), repeat(space.version),
                                             [keys[i] for i in part], [packed[i] for i in part],
                                             [fps[i] for i in part]))
                    if progress:
                        progress(len(part))
        finally:  # let go of the list; a stray call of the name now fails loudly
            raw.create_function("semid_issued", 1, None)
        if len(issued) != n:
            raise StoreError(f"the INSERT issued {len(issued)} suffixes for {n} rows in "
                             f"{self.url}", operation="insert items", url=self.url)
        suffixes = np.empty(n, dtype=np.int64)
        suffixes[order] = issued
        return suffixes

    def _pg_insert(self, conn: Connection, space: Space, keys: Sequence[str],
                   packed: list[bytes], fingerprints: np.ndarray,
                   progress: Progress) -> np.ndarray:
        """PostgreSQL: one INSERT ... SELECT per PG_CHUNK rows, suffixes computed in it
        (PG_INSERT); a later chunk sees the rows of the earlier ones, so its suffixes follow
        theirs."""
        sql = PG_INSERT[self._has_retired(conn, space)]
        n = len(keys)
        fps = fingerprints.tolist()
        suffixes = np.empty(n, dtype=np.int64)
        with closing(driver_connection(conn).cursor()) as cur:
            for a in range(0, n, PG_CHUNK):
                part = list(keys[a:a + PG_CHUNK])
                cur.execute(sql, {"ix": space.index_id, "v": space.version, "keys": part,
                                  "codes": packed[a:a + PG_CHUNK], "fps": fps[a:a + PG_CHUNK]})
                issued = dict(cur.fetchall())
                if len(issued) != len(part):
                    raise StoreError(f"the INSERT issued {len(issued)} suffixes for "
                                     f"{len(part)} rows in {self.url}",
                                     operation="insert items", url=self.url)
                suffixes[a:a + len(part)] = [issued[k] for k in part]
                if progress:
                    progress(len(part))
        return suffixes

    def _has_retired(self, conn: Connection, space: Space) -> bool:
        """Whether the version ever retired an ID (only then do allocations consult them).
        A yes is remembered: retired IDs are never deleted, short of dropping the index."""
        at = (space.index_id, space.version)
        if at not in self._retired and conn.exec_driver_sql(
                self._retired_sql, (space.index_id, space.version)).first() is not None:
            self._retired.add(at)
        return at in self._retired
