"""Hand-written SQL of the item paths, and the held read connections that run the hottest one.

Everything else in the store goes through SQLAlchemy Core; these statements are precompiled
strings because their callers (prefix pages, key and code probes, suffix allocation) run per
request or per item and must cost little more than the bare driver. Values are always bound
parameters (named: ``:name`` on SQLite, ``%(name)s`` on PostgreSQL).

A prefix is one key range of the binary ``code`` column (``_codes.CodeLayout.range``); every
statement here that selects by prefix takes it as ``lo`` and, when there is an upper bound,
``hi`` (:func:`code_range`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


def _ph(dialect: str) -> Callable[[str], str]:
    return (lambda n: f":{n}") if dialect == "sqlite" else (lambda n: f"%({n})s")


def code_range(dialect: str, has_hi: bool, lo: str = "lo", hi: str = "hi",
               column: str = "code") -> str:
    """The predicate ``lo <= code < hi`` (the upper bound only when ``has_hi``)."""
    p = _ph(dialect)
    return f"{column} >= {p(lo)}" + (f" AND {column} < {p(hi)}" if has_hi else "")


def _prefix_page(dialect: str, has_hi: bool, has_after: bool) -> str:
    """One page of a prefix on the serving path.

    PostgreSQL resolves the version in the statement (one round trip): ``v`` if given, else the
    index's active version, and only while the index row still has the id *and* creation stamp
    the caller knows (a dropped index yields no rows); every row carries the version. SQLite
    takes the version as ``v``, resolved just before by :data:`SQLITE_VERSION` on the same
    connection: an extra column costs more there than an extra statement."""
    p = _ph(dialect)
    pg = dialect == "postgresql"
    version = (f"(SELECT coalesce({p('v')}, active_version) FROM semid_indexes WHERE "
               f"id = {p('ix')} AND created_at = {p('stamp')})") if pg else p("v")
    where = [f"index_id = {p('ix')}", f"version = {version}", code_range(dialect, has_hi)]
    if has_after:
        where.append(f"code >= {p('ac')} AND (code > {p('ac')} OR suffix > {p('asuf')})")
    return (f"SELECT item_key, code, suffix{', version' if pg else ''} FROM semid_items WHERE "
            + " AND ".join(where) + f" ORDER BY code, suffix LIMIT {p('n')}")


def prefix_page_sql(dialect: str) -> dict[tuple[bool, bool], str]:
    """[(has upper bound, has cursor)] -> statement, see :func:`_prefix_page`."""
    return {(hi, after): _prefix_page(dialect, hi, after)
            for hi in (False, True) for after in (False, True)}


# SQLite's serving path: the version a page reads (``v`` if given, else the active one), while
# the index row has the id and creation stamp the caller knows.
SQLITE_VERSION = ("SELECT coalesce(:v, active_version) FROM semid_indexes WHERE id = :ix AND "
                  "created_at = :stamp")


def key_probe_sql(dialect: str) -> str:
    """Rows of many keys in one version. SQLite (positional parameters): ``{keys}`` stands for
    an IN list of at most ``IN_CHUNK`` parameters. PostgreSQL: the keys as one array, each probing the primary
    key (with stale statistics, as in a table filled by this very transaction, an IN list may be
    planned as a walk of the version)."""
    if dialect == "sqlite":
        return ("SELECT item_key, code, suffix, fingerprint FROM semid_items WHERE "
                "index_id = ? AND version = ? AND item_key IN ({keys})")
    return ("SELECT q.k, s.code, s.suffix, s.fingerprint FROM unnest(%(keys)b::text[]) AS q(k) "
            "JOIN LATERAL (SELECT code, suffix, fingerprint FROM semid_items WHERE "
            "index_id = %(ix)s AND version = %(v)s AND item_key = q.k) AS s ON true")


_PG_TOP = ("(SELECT max(suffix) FROM {table} WHERE index_id = %(ix)s AND version = %(v)s AND "
           "code = q.c)")
# PostgreSQL: insert new items (arrays of keys, codes, fingerprints) in one statement, each with
# the next suffix never issued for its code: the largest suffix the code has (one index seek per
# row, which lands on the leaf the row then goes to; the rows are inserted in code order) plus
# the row's rank among the batch's rows of that code, in input order. RETURNING gives each key
# its suffix. [the version has retired IDs]
PG_INSERT = {
    has_retired: "INSERT INTO semid_items (index_id, version, item_key, code, suffix, "
    "fingerprint) SELECT %(ix)s, %(v)s, q.k, q.c, " + (
        f"greatest({_PG_TOP.format(table='semid_items')}, "
        f"{_PG_TOP.format(table='semid_retired')}, -1)" if has_retired else
        f"coalesce({_PG_TOP.format(table='semid_items')}, -1)") +
    " + row_number() OVER (PARTITION BY q.c ORDER BY q.o), q.f FROM unnest(%(keys)b::text[], "
    "%(codes)b::bytea[], %(fps)b::int8[]) WITH ORDINALITY AS q(k, c, f, o) "
    "RETURNING item_key, suffix"
    for has_retired in (False, True)
}

_NEXT = ("coalesce((SELECT max(suffix) FROM {table} WHERE index_id = ?1 AND version = ?2 AND "
         "code = ?4), -1)")
# SQLite: insert new items, each with the next suffix never issued for its code, computed inside
# the INSERT (the seek for the code's largest suffix lands on the page the row then goes to).
# [the version has retired IDs]. semid_issued(x) is registered by the caller for the statement:
# it records x (the suffix) and returns it, so the suffixes need no read-back.
SQLITE_INSERT = {
    has_retired: "INSERT INTO semid_items (index_id, version, item_key, code, suffix, "
    "fingerprint) VALUES (?1, ?2, ?3, ?4, semid_issued(1 + " + (
        f"max({_NEXT.format(table='semid_items')}, {_NEXT.format(table='semid_retired')})"
        if has_retired else _NEXT.format(table="semid_items")) + "), ?5)"
    for has_retired in (False, True)
}


def driver_connection(conn: Connection) -> Any:
    """The DBAPI connection (sqlite3 or psycopg) under a SQLAlchemy connection in use.
    SQLAlchemy types it Optional: it is None only on a pool entry that was invalidated, and
    ``conn.connection`` revalidates (or raises for a closed connection) first."""
    raw = conn.connection.driver_connection
    assert raw is not None, "no DBAPI connection under a live SQLAlchemy connection"
    return raw


class Readers:
    """One held DBAPI connection and cursor per thread for single-statement reads (detached
    from the pool; PostgreSQL ones in autocommit mode, so a read costs one round trip)."""

    def __init__(self, engine):
        self._engine = engine
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()

    def _cursor(self):
        cur = getattr(self._local, "cur", None)
        if cur is None:
            proxy = self._engine.raw_connection()
            conn = proxy.driver_connection
            proxy.detach()  # ours until close(); never handed back in autocommit mode
            if self._engine.dialect.name == "postgresql":
                conn.autocommit = True
            cur = self._local.cur = conn.cursor()
            with self._lock:
                self._all.append(proxy)
        return cur

    def fetchall(self, sql: str, params: dict[str, Any]) -> list:
        cur = self._cursor()
        try:
            cur.execute(sql, params)
            return cur.fetchall()
        except Exception:
            self._local.cur = None  # a broken connection is replaced on the next read
            raise

    def close(self) -> None:
        with self._lock:
            for proxy in self._all:
                try:
                    proxy.close()
                except Exception:  # noqa: BLE001 - closing a dead connection
                    pass
            self._all.clear()
        self._local = threading.local()
