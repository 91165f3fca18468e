"""Persistence layer: SQLAlchemy + numpy only (never imports torch).

- :class:`Store`: one database's transactions, with ``catalog`` (indexes, versions, codebooks),
  ``reads`` and ``writes`` (item IDs). Callers speak level tuples and (N, L) code arrays; how
  codes are laid out in bytes stays inside this package.
- ``encode_array`` / ``decode_array``: the self-checking raw array format of codebooks.
- ``upgrade`` / ``check_schema``: the Alembic revisions in ``migrations/``.
"""

from ..errors import CorruptBlobError
from ._catalog import IndexRecord, Space, VersionRecord
from ._codec import ALLOWED_DTYPES, decode_array, decode_prices, encode_array
from ._engine import missing_sqlite_file
from ._migrate import check_schema, current_revision, head_revision, script_location, upgrade
from ._schema import metadata
from ._store import Store

__all__ = [
    "ALLOWED_DTYPES", "CorruptBlobError", "IndexRecord", "Space", "Store", "VersionRecord",
    "check_schema", "current_revision", "decode_array", "decode_prices", "encode_array",
    "head_revision",
    "metadata", "missing_sqlite_file", "script_location", "upgrade",
]
