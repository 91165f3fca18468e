"""Persistence layer: SQLAlchemy + numpy only (never imports torch).

- :class:`Store`: indexes, codebook versions and item IDs in SQLite or PostgreSQL.
- ``encode_array`` / ``decode_array``: the self-checking raw array format of codebooks.
- ``pack_codes`` / ``prefix_range``: codes as sortable binary keys (prefix = key range).
- ``upgrade`` / ``check_schema``: the Alembic revisions in ``migrations/``.
"""

from ._codec import ALLOWED_DTYPES, CorruptBlobError, decode_array, encode_array
from ._codes import code_width, group_suffixes, pack_codes, prefix_range, unpack_codes
from ._migrate import check_schema, current_revision, head_revision, script_location, upgrade
from ._schema import metadata
from ._store import IndexRecord, Store, VersionRecord

__all__ = [
    "Store", "IndexRecord", "VersionRecord", "metadata",
    "encode_array", "decode_array", "CorruptBlobError", "ALLOWED_DTYPES",
    "code_width", "pack_codes", "unpack_codes", "prefix_range", "group_suffixes",
    "upgrade", "check_schema", "current_revision", "head_revision", "script_location",
]
