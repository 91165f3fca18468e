"""The database schema (SQLAlchemy Core), one for SQLite and PostgreSQL.

Every table name starts with ``semid_`` so an index can live in a database the application also
uses; Alembic's bookkeeping goes to ``semid_alembic_version``. The Alembic revisions in
``migrations/`` build exactly this schema (a test compares them).

Tables
------
semid_indexes     one row per named index: levels, codebook sizes, model options, active version
semid_versions    codebook versions of an index (a refit writes a new one)
semid_codebooks   one self-checking raw array blob per (version, level)
semid_items       item key -> (code, suffix) per version; ``code`` is the binary key of
                  :mod:`._codes`, so prefixes are range scans of ``uq_semid_items_...``
semid_retired     IDs taken back from removed or reassigned items; never issued again
"""

from __future__ import annotations

from datetime import timezone

from sqlalchemy import (BigInteger, Column, DateTime, ForeignKeyConstraint, Index, Integer,
                        LargeBinary, MetaData, PrimaryKeyConstraint, String, Table, Text)
from sqlalchemy.types import TypeDecorator

from ..errors import ConfigError


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC timestamps on both backends (SQLite keeps no zone: stored as UTC and
    read back with ``tzinfo=UTC``)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ConfigError("naive datetime stored in a UTC column")
        return None if value is None else value.astimezone(timezone.utc)

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


__all__ = ["UtcDateTime", "metadata", "indexes", "versions", "codebooks", "items", "retired",
           "VERSION_TABLE",
           "NAMING_CONVENTION"]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
VERSION_TABLE = "semid_alembic_version"

metadata = MetaData(naming_convention=NAMING_CONVENTION)

indexes = Table(
    "semid_indexes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("n_levels", Integer, nullable=False),
    Column("codebook_sizes", Text, nullable=False),  # JSON list of ints
    Column("code_width", Integer, nullable=False),  # bytes per level in items.code
    Column("dim", Integer, nullable=True),  # known after the first fit
    Column("options", Text, nullable=False),  # JSON: the quantizer's options
    Column("active_version", Integer, nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
)

versions = Table(
    "semid_versions", metadata,
    Column("index_id", Integer, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("n_items", Integer, nullable=False),  # items assigned by the fit that wrote it
    Column("header", Text, nullable=False),  # JSON: dim, sizes, normalisation, residual scales
    PrimaryKeyConstraint("index_id", "version"),
    ForeignKeyConstraint(["index_id"], ["semid_indexes.id"], ondelete="CASCADE"),
)

codebooks = Table(
    "semid_codebooks", metadata,
    Column("index_id", Integer, nullable=False),
    Column("version", Integer, nullable=False),
    Column("level", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),  # storage._codec blob, (K, D) float32
    # storage._codec blob, (G, K) float32: the level's prices (G = 1 or K of the level above),
    # NULL when the version has none
    Column("prices", LargeBinary, nullable=True),
    PrimaryKeyConstraint("index_id", "version", "level"),
    ForeignKeyConstraint(["index_id", "version"],
                         ["semid_versions.index_id", "semid_versions.version"],
                         ondelete="CASCADE"),
)

items = Table(
    "semid_items", metadata,
    Column("index_id", Integer, nullable=False),
    Column("version", Integer, nullable=False),
    Column("item_key", Text, nullable=False),
    Column("code", LargeBinary, nullable=False),
    Column("suffix", Integer, nullable=False),
    Column("fingerprint", BigInteger, nullable=False),  # 64-bit hash of the float32 embedding
    PrimaryKeyConstraint("index_id", "version", "item_key"),
    Index(None, "index_id", "version", "code", "suffix", unique=True),
    sqlite_with_rowid=False,
)

retired = Table(
    "semid_retired", metadata,
    Column("index_id", Integer, nullable=False),
    Column("version", Integer, nullable=False),
    Column("code", LargeBinary, nullable=False),
    Column("suffix", Integer, nullable=False),
    Column("item_key", Text, nullable=False),
    Column("retired_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("index_id", "version", "code", "suffix"),
    sqlite_with_rowid=False,
)
