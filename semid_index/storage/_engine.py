"""Engines and transactions for SQLite and PostgreSQL.

SQLite files are opened in WAL mode (readers never block the one writer) with a busy timeout,
and every write transaction starts with ``BEGIN IMMEDIATE`` so two writers queue on the lock
instead of failing half-way with "database is locked" when a reader upgrades to a writer.
On PostgreSQL a write transaction locks its index's row (``SELECT ... FOR UPDATE``), which orders
concurrent writers of one index; see ``Store.get_index(lock=True)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import Connection, Engine, make_url

from ..errors import ConfigError, SchemaError, StoreClosedError
from ._wal import WalCheckpointer

log = logging.getLogger("semid_index.storage")

SUPPORTED = ("sqlite", "postgresql")
DEFAULT_BUSY_TIMEOUT = 60.0
SQLITE_WAL_PAGES = 100_000  # pages (4 KiB by default) in the WAL before an automatic checkpoint
SQLITE_WAL_KEEP_BYTES = 256 << 20  # WAL file size kept at a rewind (~60,000 frames)
SQLITE_CACHE_KIB = 128 * 1024  # page cache per connection, filled only as pages are read
SQLITE_MMAP_BYTES = 1 << 30  # reads through a memory map: no system call per page


def _sqlite_pragmas(busy_timeout: float):
    def on_connect(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        cur.execute("PRAGMA foreign_keys = ON")
        mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
        if mode not in ("wal", "memory"):
            cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")  # durable at each WAL checkpoint; safe in WAL
        # Checkpoints and WAL rewinds run in a background thread (_wal.py), which rewinds at
        # ~40,000 frames. This is the backstop for when it falls behind: at ~400 MB of WAL the
        # committing writer copies what the thread has not yet. The WAL file may keep up to
        # 256 MB while the database is open (truncating it at every rewind costs a writer
        # ~150 ms); SQLite deletes it when the last connection closes.
        cur.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_WAL_PAGES}")
        cur.execute(f"PRAGMA journal_size_limit = {SQLITE_WAL_KEEP_BYTES}")
        # key and code probes of a large index hit random B-tree pages: keep them in memory
        cur.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
        cur.execute(f"PRAGMA mmap_size = {SQLITE_MMAP_BYTES}")
        cur.close()
    return on_connect


def make_engine(target, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> tuple[Engine, bool]:
    """(engine, owned) for a URL string / ``sqlalchemy.URL`` or an existing Engine.

    An Engine passed in is used as is (SQLite pragmas are added to its new connections) and is
    not disposed by ``Store.close``.
    """
    if isinstance(target, Engine):
        engine, owned = target, False
    else:
        try:
            url = make_url(str(target) if not hasattr(target, "drivername") else target)
        except exc.ArgumentError as e:
            raise ConfigError(f"not a database URL: {target!r} ({e})") from None
        backend = url.get_backend_name()
        if backend not in SUPPORTED:
            raise ConfigError(f"unsupported database {backend!r} in {url!r}: use sqlite:/// or "
                              "postgresql+psycopg://")
        kwargs = {}
        if backend == "sqlite":
            kwargs["connect_args"] = {"timeout": busy_timeout}
        elif url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")  # psycopg 3: COPY and binary params
        engine, owned = create_engine(url, **kwargs), True
    if engine.dialect.name not in SUPPORTED:
        raise ConfigError(f"unsupported database {engine.dialect.name!r}: semid_index runs on "
                          "SQLite and PostgreSQL")
    if engine.dialect.name == "sqlite" and not getattr(engine, "_semid_pragmas", False):
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout))
        engine._semid_pragmas = True
    return engine, owned


def sqlite_file(engine: Engine) -> str | None:
    """Absolute path of the engine's SQLite file; None for PostgreSQL, in-memory databases and
    ``file:`` URIs (whose options a second plain connection could not honour)."""
    if engine.dialect.name != "sqlite":
        return None
    db = engine.url.database
    if not db or db == ":memory:" or db.startswith("file:") or engine.url.query.get("uri"):
        return None
    return os.path.abspath(db)


def describe(engine: Engine) -> str:
    """The engine's URL without its password, for messages."""
    return engine.url.render_as_string(hide_password=True)


class Transactions:
    """Connections from one engine: ``read()`` and ``write()`` context managers."""

    def __init__(self, engine: Engine, owned: bool):
        self.engine = engine
        self._owned = owned
        self.closed = False
        self.url = describe(engine)
        self.dialect = engine.dialect.name
        path = sqlite_file(engine)
        self.wal = None if path is None else WalCheckpointer(path)

    def close(self) -> None:
        if self.wal is not None:
            self.wal.close()
        if not self.closed and self._owned:
            self.engine.dispose()
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise StoreClosedError(f"the index on {self.url} is closed")

    @contextlib.contextmanager
    def read(self, snapshot: bool = False) -> Iterator[Connection]:
        """A connection for reading. ``snapshot`` makes several statements see one state (on
        SQLite an explicit ``BEGIN``; PostgreSQL uses REPEATABLE READ)."""
        self._check_open()
        with _wrap_errors(self.url), self.engine.connect() as conn:
            if snapshot:
                if self.dialect == "sqlite":
                    conn.exec_driver_sql("BEGIN")
                else:
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
            try:
                yield conn
            finally:
                conn.rollback()

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        self._check_open()
        with _wrap_errors(self.url), self.engine.connect() as conn:
            with conn.begin():
                if self.dialect == "sqlite":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                yield conn
            if self.wal is not None:
                self.wal.committed(conn.connection.driver_connection, conn.connection.info)


@contextlib.contextmanager
def _wrap_errors(url: str):
    """Turn "this is not a database" driver errors into SchemaError naming the URL."""
    try:
        yield
    except exc.DatabaseError as e:
        text = str(getattr(e, "orig", e))
        if "file is not a database" in text or "file is encrypted" in text:
            raise SchemaError(f"{url} is not a SQLite database ({text})") from None
        if "unable to open database file" in text:
            raise ConfigError(f"cannot open {url}: {text} (does the directory exist, and may "
                              "this process write there?)") from None
        raise
