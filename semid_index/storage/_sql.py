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
SQLITE_ASSIGN = {  # [the version has retired IDs]
    has_retired: "INSERT INTO semid_items (index_id, version, item_key, code, suffix, fingerprint) "
    "VALUES (?1, ?2, ?3, ?4, 1 + " + (
        f"max({SQLITE_NEXT_SUFFIX.format(table='semid_items')}, "
        f"{SQLITE_NEXT_SUFFIX.format(table='semid_retired')})" if has_retired
        else SQLITE_NEXT_SUFFIX.format(table="semid_items")) + ", ?5)"
    for has_retired in (False, True)
}

# (SQLite with "?*" standing for the IN list, PostgreSQL with the values as one array first)
PROBES = {
    "keys": (
        "SELECT item_key, code, suffix, fingerprint FROM semid_items WHERE index_id = ? AND "
        "version = ? AND item_key IN (?*)",
        "SELECT q.k, s.code, s.suffix, s.fingerprint FROM unnest(%b::text[]) AS q(k) "
        "JOIN LATERAL (SELECT code, suffix, fingerprint FROM semid_items WHERE index_id = %s "
        "AND version = %s AND item_key = q.k) AS s ON true"),
    "items_max": (  # a correlated max() per code: one index seek, not a walk of the group
        "SELECT v.column1, (SELECT max(suffix) FROM semid_items WHERE index_id = ?1 AND "
        "version = ?2 AND code = v.column1) AS m FROM (VALUES ?*) AS v WHERE m IS NOT NULL",
        "SELECT q.c, s.m FROM unnest(%b::bytea[]) AS q(c) JOIN LATERAL (SELECT max(suffix) AS m "
        "FROM semid_items WHERE index_id = %s AND version = %s AND code = q.c) AS s "
        "ON s.m IS NOT NULL"),
    "retired_max": (
        "SELECT v.column1, (SELECT max(suffix) FROM semid_retired WHERE index_id = ?1 AND "
        "version = ?2 AND code = v.column1) AS m FROM (VALUES ?*) AS v WHERE m IS NOT NULL",
        "SELECT q.c, s.m FROM unnest(%b::bytea[]) AS q(c) JOIN LATERAL (SELECT max(suffix) AS m "
        "FROM semid_retired WHERE index_id = %s AND version = %s AND code = q.c) AS s "
        "ON s.m IS NOT NULL"),
}
