"""Writes of item IDs: bulk loads of a new version, inserts of new items with fresh suffixes,
retirement of IDs, fingerprint updates.

Every method runs inside the caller's write transaction (which holds the index's write lock)
and takes (N, L) code arrays; suffixes come back as (N,) int64 arrays. Inputs are valid (the
facade validated them) and the keys of :meth:`ItemWrites.insert_new` are not in the version
(the facade probed them under the same lock): nothing here decides what to write.

Suffix allocation: an item's suffix is one more than every suffix its code ever had in the
version, live or retired, so an ID once issued is never issued again.
"""

from __future__ import annotations

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
from ._schema import items, retired
from ._sql import PG_MAX_SUFFIX, SQLITE_INSERT, driver_connection

__all__ = ["ItemWrites"]

BULK_BATCH = 50_000  # rows per executemany call or COPY stretch (progress granularity)
_COLS = "index_id, version, item_key, code, suffix, fingerprint"

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
        issued for its code, in input order among equal codes. Returns the suffixes (N,)."""
        if len(keys) == 0:
            return np.zeros(0, dtype=np.int64)
        packed = space.layout.pack(codes)
        if self.dialect == "sqlite":
            return self._sqlite_insert(conn, space, keys, packed, fingerprints, progress)
        nxt = self._next_suffixes(conn, space, sorted(set(packed)))  # in index order
        suffixes = np.empty(len(keys), dtype=np.int64)
        for i, code in enumerate(packed):
            suffixes[i] = nxt[code]
            nxt[code] += 1
        self._bulk(conn, space, keys, packed, suffixes, fingerprints, progress)
        return suffixes

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
    def _bulk(self, conn: Connection, space: Space, keys: Sequence[str],
              packed: list[bytes] | np.ndarray, suffixes: np.ndarray, fingerprints: np.ndarray,
              progress: Progress) -> None:
        """Write the rows in batches of BULK_BATCH. ``packed``: the binary codes, or the (N, L)
        codes to pack batch by batch (a load's memory then holds no list of N code keys)."""
        raw = driver_connection(conn)

        def batches():
            for a in range(0, len(keys), BULK_BATCH):
                b = min(a + BULK_BATCH, len(keys))
                codes = space.layout.pack(packed[a:b]) if isinstance(packed, np.ndarray) \
                    else packed[a:b]
                yield b - a, zip(repeat(space.index_id), repeat(space.version), keys[a:b],
                                 codes, suffixes[a:b].tolist(), fingerprints[a:b].tolist())
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

    def _next_suffixes(self, conn: Connection, space: Space,
                       codes: Sequence[bytes]) -> dict[bytes, int]:
        """code -> first suffix never issued for it (live items and retired IDs); 0 if unused.
        PostgreSQL's allocation (SQLite's happens inside its INSERT)."""
        out = dict.fromkeys(codes, 0)
        tables = ["semid_items"] + (["semid_retired"] if self._has_retired(conn, space) else [])
        with closing(driver_connection(conn).cursor()) as cur:
            for table in tables:
                for a in range(0, len(codes), PG_CHUNK):
                    cur.execute(PG_MAX_SUFFIX.format(table=table),
                                {"codes": list(codes[a:a + PG_CHUNK]), "ix": space.index_id,
                                 "v": space.version})
                    for code, top in cur.fetchall():
                        code = bytes(code)
                        out[code] = max(out[code], top + 1)
        return out

    def _has_retired(self, conn: Connection, space: Space) -> bool:
        """Whether the version ever retired an ID (only then do allocations consult them).
        A yes is remembered: retired IDs are never deleted, short of dropping the index."""
        at = (space.index_id, space.version)
        if at not in self._retired and conn.exec_driver_sql(
                self._retired_sql, (space.index_id, space.version)).first() is not None:
            self._retired.add(at)
        return at in self._retired
