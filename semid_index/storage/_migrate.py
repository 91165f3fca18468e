"""Apply and check the Alembic revisions that build the schema.

The revisions live in the repository's ``migrations/`` directory, which the wheel ships as the
``semid_index._migrations`` package; :func:`script_location` finds whichever is present.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from ..errors import SchemaError
from ._schema import VERSION_TABLE, metadata

log = logging.getLogger("semid_index.storage")

__all__ = ["script_location", "head_revision", "current_revision", "check_schema", "upgrade"]


@lru_cache(maxsize=1)
def script_location() -> Path:
    """Directory holding ``env.py`` and ``versions/``: installed package first, then the source
    checkout (editable installs)."""
    pkg = Path(__file__).resolve().parent.parent
    for cand in (pkg / "_migrations", pkg.parent / "migrations"):
        if (cand / "env.py").is_file() and (cand / "versions").is_dir():
            return cand
    raise SchemaError(f"semid_index's migrations are missing (looked in {pkg / '_migrations'} "
                      f"and {pkg.parent / 'migrations'}): the installation is broken")


def _config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    return cfg


@lru_cache(maxsize=1)
def _script():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    """The newest revision this library knows."""
    return _script().get_current_head()


def known_revisions() -> list[str]:
    """Every revision this library knows, oldest first."""
    return [s.revision for s in reversed(list(_script().walk_revisions()))]


def current_revision(conn: Connection) -> str | None:
    """The database's revision, or None when it has no semid_index schema."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(rows) > 1:
        raise SchemaError(f"{VERSION_TABLE} holds several revisions {rows}: not semid_index's")
    return rows[0] if rows else None


def check_schema(conn: Connection, url: str) -> None:
    """Raise :class:`SchemaError` unless the database is at this library's head revision."""
    rev = current_revision(conn)
    head = head_revision()
    if rev == head:
        return
    if rev is None:
        tables = [t for t in inspect(conn).get_table_names() if t in metadata.tables]
        if tables:
            raise SchemaError(
                f"{url} has semid tables {tables} but no {VERSION_TABLE}: it was not created by "
                "semid_index, or its bookkeeping was deleted")
        raise SchemaError(f"{url} has no semid_index schema: create an index there first")
    if rev in known_revisions():
        raise SchemaError(
            f"{url} uses the older semid_index schema revision {rev}; this version needs {head}. "
            "Upgrade it with SemanticIdIndex.migrate(url) or `semid migrate URL` (or open it "
            "with upgrade=True)")
    raise SchemaError(
        f"{url} has schema revision {rev!r}, which this semid_index (head {head}) does not know: "
        "it was written by a newer semid_index; upgrade the library")


def upgrade(conn: Connection, url: str, target: str = "head") -> tuple[str | None, str]:
    """Bring the schema to ``target`` inside the caller's transaction; (before, after).

    The caller holds the database's write lock (SQLite ``BEGIN IMMEDIATE``; on PostgreSQL this
    takes a transaction-scoped advisory lock) so concurrent openers migrate once.
    """
    from alembic import command

    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATE_LOCK})
    before = current_revision(conn)
    if before is not None and before not in known_revisions():
        check_schema(conn, url)  # raises: newer than this library
    head = head_revision() if target == "head" else target
    if before == head:
        return before, head
    cfg = _config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, target)
    if before is None:
        log.info("created the semid_index schema (revision %s) in %s", head, url)
    else:
        log.warning("upgraded the semid_index schema of %s from revision %s to %s", url, before,
                    head)
    return before, head


def downgrade(conn: Connection, target: str) -> None:
    """Take the schema back to ``target`` (a revision or "base"); for tests and manual repair."""
    from alembic import command

    cfg = _config()
    cfg.attributes["connection"] = conn
    command.downgrade(cfg, target)


_PG_MIGRATE_LOCK = 0x53454D4944  # "SEMID"
