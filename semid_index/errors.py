"""Typed exceptions for semid_index.

Every error raised on purpose by the library derives from :class:`SemanticIdError` and from the
builtin that best describes it (``ValueError``, ``KeyError``, ``RuntimeError``...), so callers can
catch either. Messages name the offending values.
"""

from __future__ import annotations

__all__ = [
    "SemanticIdError",
    "ConfigError",
    "DimensionMismatchError",
    "NonFiniteError",
    "EmptyInputError",
    "TooFewItemsError",
    "NotFittedError",
    "InvalidCodesError",
    "UnknownItemError",
    "DuplicateKeyError",
    "ItemConflictError",
    "IndexNotFoundError",
    "IndexExistsError",
    "SchemaError",
    "StoreClosedError",
]


class SemanticIdError(Exception):
    """Base class of every error raised by semid_index."""


class ConfigError(SemanticIdError, ValueError):
    """A constructor or method argument is out of range or inconsistent."""


class DimensionMismatchError(SemanticIdError, ValueError):
    """Embeddings have the wrong number of dimensions or columns."""


class NonFiniteError(SemanticIdError, ValueError):
    """Embeddings contain NaN or infinite values.

    ``row`` and ``column`` locate the first bad value when known (``None`` otherwise).
    """

    def __init__(self, message: str, *, row: int | None = None, column: int | None = None):
        super().__init__(message)
        self.row = row
        self.column = column


class EmptyInputError(SemanticIdError, ValueError):
    """An operation received no rows."""


class TooFewItemsError(SemanticIdError, ValueError):
    """There are fewer items than centroids in a codebook."""


class NotFittedError(SemanticIdError, RuntimeError):
    """A model was used before it was fitted."""


class InvalidCodesError(SemanticIdError, ValueError):
    """Codes have the wrong shape or fall outside a codebook."""


class _KeyErrorMessage(KeyError):
    """KeyError whose str() is the plain message (KeyError quotes its argument by default)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownItemError(SemanticIdError, _KeyErrorMessage):
    """Item keys that are not in the index. ``keys`` lists them (first ones, at most 20)."""

    def __init__(self, message: str, keys=()):
        super().__init__(message)
        self.keys = list(keys)


class DuplicateKeyError(SemanticIdError, ValueError):
    """The same item key appears more than once in one call."""


class ItemConflictError(SemanticIdError, ValueError):
    """An item key is already indexed with a different embedding."""


class IndexNotFoundError(SemanticIdError, _KeyErrorMessage):
    """No index of that name in the database (or no semid_index schema at all)."""


class IndexExistsError(SemanticIdError, ValueError):
    """``create`` was asked for an index name that already exists."""


class SchemaError(SemanticIdError, RuntimeError):
    """The database schema is older or newer than this library, or not semid_index's at all."""


class StoreClosedError(SemanticIdError, RuntimeError):
    """The index (or store) was used after ``close()``."""
