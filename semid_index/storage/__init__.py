"""Persistence layer (SQLAlchemy + numpy only; never imports torch).

So far: the self-checking array codec used for codebooks. The schema, store and migrations come
with the persistent index.
"""

from ._codec import ALLOWED_DTYPES, CorruptBlobError, decode_array, encode_array

__all__ = ["encode_array", "decode_array", "CorruptBlobError", "ALLOWED_DTYPES"]
