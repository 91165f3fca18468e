"""Engines, transactions and the translation of driver errors, for SQLite and PostgreSQL.

SQLite files created by semid_index use WAL mode (readers never block the one writer) with a
busy timeout, and every write transaction starts with ``BEGIN IMMEDIATE`` so two writers queue
on the lock instead of failing half-way when a reader upgrades to a writer. On PostgreSQL a write
transaction locks its index's row (``SELECT ... FOR UPDATE``), which orders concurrent writers of
one index, and waits at most ``lock_timeout`` for it.

Opening never changes a database: an existing SQLite file is opened ``mode=rw`` (a mistyped path
is an error, not a new empty file), its journal mode is left as it is, and a file this process
may not write (a read-only mount, file permissions) is opened read-only and serves reads. Only
``create`` makes a file, and puts a new one in WAL mode.

Every driver error that leaves a ``read()`` or ``write()`` block becomes a
:class:`~semid_index.errors.StoreError` (or a subclass) naming the operation and the URL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator
from urllib.parse import quote

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import Connection, Engine, make_url

from ..errors import (ConfigError, LockTimeoutError, ReadOnlyDatabaseError, SchemaError,
                      SemanticIdError, StoreClosedError, StoreError)
from ._sql import driver_connection
from ._wal import WalCheckpointer

log = logging.getLogger("semid_index.storage")

SUPPORTED = ("sqlite", "postgresql")
DEFAULT_BUSY_TIMEOUT = 60.0
SQLITE_WAL_PAGES = 100_000  # pages (4 KiB by default) in the WAL before an automatic checkpoint
SQLITE_WAL_KEEP_BYTES = 256 << 20  # WAL file size kept at a rewind (~60,000 frames)
SQLITE_CACHE_KIB = 128 * 1024  # page cache per connection, filled only as pages are read
SQLITE_MMAP_BYTES = 1 << 30  # reads through a memory map: no system call per page


def _sqlite_pragmas(busy_timeout: float, creating: bool):
    def on_connect(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        cur.execute("PRAGMA foreign_keys = ON")
        mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
        if mode not in ("wal", "memory") and creating and \
                cur.execute("PRAGMA page_count").fetchone()[0] == 0:
            # a new, empty database of our own: WAL from the start. An existing file (another
            # application's database, or a read-only one) keeps its journal mode.
            mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode == "wal":
            cur.execute("PRAGMA synchronous = NORMAL")  # durable at each checkpoint; safe in WAL
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


def _sqlite_open_mode(path: str, creating: bool) -> str:
    """The URI parameters a connection to ``path`` opens with (see the module docstring)."""
    if creating and not os.path.exists(path):
        return "mode=rwc"
    if not os.path.exists(path):
        raise ConfigError(f"cannot open {path}: there is no such SQLite database file (check "
                          "the path, or create an index there first: SemanticIdIndex.create, "
                          "semid init)")
    if os.access(path, os.W_OK) and os.access(os.path.dirname(path) or ".", os.W_OK):
        return "mode=rw"
    # read-only file or directory: readers must not try to create the -wal/-shm files. A WAL
    # database whose -shm cannot be created is only readable as immutable (nothing can write
    # it here anyway).
    shm = path + "-shm"
    if not os.path.exists(shm) and not os.access(os.path.dirname(path) or ".", os.W_OK):
        return "mode=ro&immutable=1"
    return "mode=ro"


def make_engine(target, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
                creating: bool = False) -> tuple[Engine, bool]:
    """(engine, owned) for a URL string / ``sqlalchemy.URL`` or an existing Engine.

    ``creating``: the caller may create the database (``create``); otherwise a SQLite file must
    exist already. An Engine passed in is used as is (SQLite pragmas are added to its new
    connections) and is not disposed by ``Store.close``.
    """
    if isinstance(target, Engine):
        engine, owned = target, False
    else:
        url = _url(target)
        backend = url.get_backend_name()
        if backend not in SUPPORTED:
            raise ConfigError(f"unsupported database {backend!r} in {url!r}: use sqlite:/// or "
                              "postgresql+psycopg://")
        kwargs = {}
        if backend == "sqlite":
            kwargs["connect_args"] = {"timeout": busy_timeout}
        elif url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")  # psycopg 3: COPY and binary params
        try:
            engine, owned = create_engine(url, **kwargs), True
        except (ImportError, exc.NoSuchModuleError) as e:
            raise ConfigError(f"cannot use {url.drivername!r} in {url!r}: {e}; semid_index "
                              "uses sqlite:/// and postgresql+psycopg:// (pip install "
                              "'semid-index[postgres]')") from None
        except (exc.ArgumentError, ValueError, TypeError) as e:  # e.g. ?timeout=abc
            raise ConfigError(f"bad database URL {url!r}: {e}") from None
    if engine.dialect.name not in SUPPORTED:
        raise ConfigError(f"unsupported database {engine.dialect.name!r}: semid_index runs on "
                          "SQLite and PostgreSQL")
    if engine.dialect.name == "sqlite" and not getattr(engine, "_semid_pragmas", False):
        path = sqlite_file(engine) if owned else None  # a caller's Engine opens as it says
        if path is not None:
            mode = _sqlite_open_mode(path, creating)

            @event.listens_for(engine, "do_connect")
            def _uri(dialect, conn_rec, cargs, cparams):  # noqa: ARG001 - SQLAlchemy's hook
                cargs[:] = [f"file:{quote(path)}?{mode}"]
                cparams["uri"] = True

            engine._semid_read_only = mode.startswith("mode=ro")  # type: ignore[attr-defined]
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout, creating))
        engine._semid_pragmas = True  # type: ignore[attr-defined]
    return engine, owned


def _url(target):
    """``target`` (a string or ``sqlalchemy.URL``) as a URL; ConfigError if it is not one."""
    try:
        return make_url(target if hasattr(target, "drivername") else str(target))
    except (exc.ArgumentError, ValueError, TypeError) as e:  # a bad port, an open bracket
        raise ConfigError(f"not a database URL: {target!r} ({e})") from None


def missing_sqlite_file(target) -> bool:
    """True if ``target`` is the URL of a SQLite file that does not exist (nothing is created)."""
    if isinstance(target, Engine):
        return False
    url = _url(target)
    db = url.database
    if url.get_backend_name() != "sqlite" or not db:
        return False
    return db != ":memory:" and not db.startswith("file:") and not url.query.get("uri") and \
        not os.path.exists(db)


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
    """Connections from one engine: ``read()`` and ``write()`` context managers that turn
    driver errors into :class:`StoreError`."""

    def __init__(self, engine: Engine, owned: bool, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        self.engine = engine
        self._owned = owned
        self.closed = False
        self.url = describe(engine)
        self.dialect = engine.dialect.name
        self.busy_timeout = busy_timeout
        self.read_only = bool(getattr(engine, "_semid_read_only", False))
        path = sqlite_file(engine)
        self.wal = None if path is None or self.read_only else WalCheckpointer(path)

    def close(self) -> None:
        if self.wal is not None:
            self.wal.close()
        if not self.closed and self._owned:
            self.engine.dispose()
        self.closed = True

    def check_open(self) -> None:
        if self.closed:
            raise StoreClosedError(f"the index on {self.url} is closed")

    @contextlib.contextmanager
    def read(self, operation: str = "read", *, snapshot: bool = False) -> Iterator[Connection]:
        """A connection for reading. ``snapshot`` makes several statements see one state (on
        SQLite an explicit ``BEGIN``; PostgreSQL uses REPEATABLE READ)."""
        self.check_open()
        with self.translate(operation), self.engine.connect() as conn:
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
    def write(self, operation: str = "write") -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back when it raises. Waits
        at most ``busy_timeout`` seconds for another writer."""
        self.check_open()
        if self.read_only:
            raise ReadOnlyDatabaseError(f"{operation}: {self.url} is read-only here (the file "
                                        "or its directory may not be written by this process)",
                                        operation=operation, url=self.url)
        with self.translate(operation), self.engine.connect() as conn:
            with conn.begin():
                if self.dialect == "sqlite":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                else:
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = "
                                         f"{max(1, int(self.busy_timeout * 1000))}")
                yield conn
            if self.wal is not None:
                self.wal.committed(driver_connection(conn), conn.connection.info)

    @contextlib.contextmanager
    def translate(self, operation: str) -> Iterator[None]:
        """Turn driver errors raised in the block into typed errors naming ``operation``."""
        try:
            yield
        except SemanticIdError:
            raise
        except Exception as e:  # noqa: BLE001 - only driver errors are translated, see below
            typed = translate_error(e, operation, self.url, self.busy_timeout)
            if typed is None:
                raise
            raise typed from e


_DRIVER_ERRORS: tuple[type[BaseException], ...] = (exc.SQLAlchemyError, sqlite3.Error)


def _is_driver_error(e: BaseException) -> bool:
    if isinstance(e, _DRIVER_ERRORS):
        return True
    return type(e).__module__.split(".")[0] == "psycopg"  # psycopg.Error, without importing it


def translate_error(e: BaseException, operation: str, url: str,
                    busy_timeout: float) -> SemanticIdError | None:
    """The typed error for driver error ``e`` (None when ``e`` is not a driver error)."""
    if not _is_driver_error(e):
        return None
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip()
    first = text.splitlines()[0] if text else type(orig).__name__
    state = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "diag", None),
                                                       "sqlstate", None)
    low = text.lower()
    if "file is not a database" in low or "file is encrypted" in low:
        return SchemaError(f"{url} is not a SQLite database ({first})")
    if "unable to open database file" in low:
        return ConfigError(f"cannot open {url}: {first} (does the file and its directory "
                           "exist, and may this process read them?)")
    if state == "55P03" or "database is locked" in low or "database table is locked" in low:
        return LockTimeoutError(
            f"{operation} on {url}: waited more than {busy_timeout:g} s for another writer's "
            f"lock ({first}); retry later, or raise busy_timeout", operation=operation, url=url)
    if state == "25006" or "readonly database" in low:
        return ReadOnlyDatabaseError(f"{operation} on {url}: the database is read-only "
                                     f"({first})", operation=operation, url=url)
    if "malformed" in low or "disk image" in low:
        return StoreError(f"{operation} on {url}: the database file is damaged ({first}); "
                          "restore it from a backup", operation=operation, url=url)
    if isinstance(e, exc.OperationalError) and state is None and "connect" in low:
        return StoreError(f"{operation}: cannot connect to {url} ({first})",
                          operation=operation, url=url)
    return StoreError(f"{operation} on {url} failed: {first}", operation=operation, url=url)
