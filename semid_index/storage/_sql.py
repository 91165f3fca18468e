"""Hand-written SQL of the hot paths, and the held read connections that run it.

Everything else in the store goes through SQLAlchemy Core; these statements are precompiled
strings because their callers (prefix pages, key and code probes, suffix allocation) run per
request or per item and must cost little more than the bare driver. Values are always bound
parameters.
"""

from __future__ import annotations

import threading


def _prefix_sql(ph: str) -> dict:
    out = {}
    for has_hi in (False, True):
        for has_after in (False, True):
            where = [f"index_id = {ph}", f"version = {ph}", f"code >= {ph}"]
            if has_hi:
                where.append(f"code < {ph}")
            if has_after:
                where += [f"code >= {ph}", f"(code > {ph} OR suffix > {ph})"]
            out[(has_hi, has_after)] = (
                "SELECT item_key, code, suffix FROM semid_items WHERE " + " AND ".join(where)
                + f" ORDER BY code, suffix LIMIT {ph}")
    return out


PREFIX_SQL = {"sqlite": _prefix_sql("?"), "postgresql": _prefix_sql("%s")}


class Readers:
    """One held DBAPI connection per thread for single-statement reads (detached from the
    pool; PostgreSQL ones in autocommit mode, so a read costs one round trip)."""

    def __init__(self, engine):
        self._engine = engine
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            proxy = self._engine.raw_connection()
            conn = proxy.driver_connection
            proxy.detach()  # ours until close(); never handed back in autocommit mode
            if self._engine.dialect.name == "postgresql":
                conn.autocommit = True
            self._local.conn = conn
            with self._lock:
                self._all.append(proxy)
        return conn

    def fetchall(self, sql: str, params) -> list:
        conn = self._conn()
        try:
            cur = conn.cursor()
            try:
                cur.execute(sql, params)
                return cur.fetchall()
            finally:
                cur.close()
        except Exception:
            self._local.conn = None  # a broken connection is replaced on the next read
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


SQLITE_NEXT_SUFFIX = ("coalesce((SELECT max(suffix) FROM {table} WHERE index_id = ?1 AND "
                       "version = ?2 AND code = ?4), -1)")
# [the version has retired IDs]; a key already in the version is skipped. semid_issued(x) is
# registered by the caller for the statement: it records x (the suffix) and returns it.
SQLITE_ASSIGN = {
    has_retired: "INSERT OR IGNORE INTO semid_items (index_id, version, item_key, code, suffix, "
    "fingerprint) VALUES (?1, ?2, ?3, ?4, semid_issued(1 + " + (
        f"max({SQLITE_NEXT_SUFFIX.format(table='semid_items')}, "
        f"{SQLITE_NEXT_SUFFIX.format(table='semid_retired')})" if has_retired
        else SQLITE_NEXT_SUFFIX.format(table="semid_items")) + "), ?5)"
    for has_retired in (False, True)
}

# Existing items among many keys. SQLite: "?*" stands for an IN list of at most 500 keys.
# PostgreSQL: the keys as one array, each probing the primary key (with stale statistics, as in
# a table filled by this very transaction, an IN list may be planned as a walk of the version).
KEY_PROBE = {
    "sqlite": "SELECT item_key, code, suffix, fingerprint FROM semid_items WHERE index_id = ? "
              "AND version = ? AND item_key IN (?*)",
    "postgresql": "SELECT q.k, s.code, s.suffix, s.fingerprint FROM unnest(%b::text[]) AS q(k) "
                  "JOIN LATERAL (SELECT code, suffix, fingerprint FROM semid_items WHERE "
                  "index_id = %s AND version = %s AND item_key = q.k) AS s ON true",
}

# PostgreSQL: the largest suffix of each of many codes in a table (items or retired IDs), one
# index seek per code. (SQLite allocates suffixes inside its INSERT: SQLITE_ASSIGN.)
PG_MAX_SUFFIX = (
    "SELECT q.c, s.m FROM unnest(%b::bytea[]) AS q(c) JOIN LATERAL (SELECT max(suffix) AS m "
    "FROM {table} WHERE index_id = %s AND version = %s AND code = q.c) AS s ON s.m IS NOT NULL")
