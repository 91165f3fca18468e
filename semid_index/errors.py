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
]


class SemanticIdError(Exception):
    """Base class of every error raised by semid_index."""


class ConfigError(SemanticIdError, ValueError):
    """A constructor or method argument is out of range or inconsistent."""


class DimensionMismatchError(SemanticIdError, ValueError):
    """Embeddings have the wrong number of dimensions or columns."""


class NonFiniteError(SemanticIdError, ValueError):
    """Embeddings contain NaN or infinite values."""


class EmptyInputError(SemanticIdError, ValueError):
    """An operation received no rows."""


class TooFewItemsError(SemanticIdError, ValueError):
    """There are fewer items than centroids in a codebook."""


class NotFittedError(SemanticIdError, RuntimeError):
    """A model was used before it was fitted."""


class InvalidCodesError(SemanticIdError, ValueError):
    """Codes have the wrong shape or fall outside a codebook."""
