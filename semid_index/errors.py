"""Typed exceptions for semid_index: the only errors the library raises.

Every error derives from :class:`SemanticIdError` and from the builtin that best describes it
(``ValueError``, ``KeyError``, ``RuntimeError``, ``OSError``), so callers can catch either.
Messages name the offending values. Errors of the database driver are wrapped in a
:class:`StoreError` that names the operation and the database URL (password hidden); the driver's
exception stays available as ``__cause__``.

The tree::

    SemanticIdError
        ConfigError                 a bad argument or option (ValueError)
        DimensionMismatchError      embeddings of the wrong shape (ValueError)
        NonFiniteError              NaN or inf in embeddings (ValueError)
        EmptyInputError             no rows (ValueError)
        TooFewItemsError            fewer items than a codebook has codes (ValueError)
        DuplicateKeyError           one key twice in one call (ValueError)
        InvalidCodesError           codes or a prefix out of range or malformed (ValueError)
        ItemConflictError           a key already indexed with another embedding (ValueError)
        IndexExistsError            create() of a name that exists (ValueError)
        InputFileError              an input file that is missing, unreadable or malformed
        ModelFileError              a saved model file that is not one (ValueError)
        CorruptBlobError            a stored array failed its checks (ValueError)
        UnknownItemError            item keys not in the index (KeyError)
        IndexNotFoundError          no index of that name (KeyError)
            IndexReplacedError      the handle's index was dropped and created anew
        VersionNotFoundError        no such codebook version (KeyError)
        NotFittedError              used before fit (RuntimeError)
        SchemaError                 schema too old, too new, or not semid_index's (RuntimeError)
        StoreClosedError            used after close() (RuntimeError)
        StaleTableError             a decoding table of another version than the active one
        DistributedError            a distributed fit failed on another rank, or left it
        StoreError                  the database failed an operation (RuntimeError)
            LockTimeoutError        waited too long for another writer's lock
            ReadOnlyDatabaseError   a write on a database opened or mounted read-only
        OutputFileError             an output file could not be written (OSError)
        DataUnavailableError        the package carrying a data set is missing (ImportError)
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "CorruptBlobError",
    "DataUnavailableError",
    "DimensionMismatchError",
    "DistributedError",
    "DuplicateKeyError",
    "EmptyInputError",
    "IndexExistsError",
    "IndexNotFoundError",
    "IndexReplacedError",
    "InputFileError",
    "InvalidCodesError",
    "ItemConflictError",
    "LockTimeoutError",
    "ModelFileError",
    "NonFiniteError",
    "NotFittedError",
    "OutputFileError",
    "ReadOnlyDatabaseError",
    "SchemaError",
    "SemanticIdError",
    "StaleTableError",
    "StoreClosedError",
    "StoreError",
    "TooFewItemsError",
    "UnknownItemError",
    "VersionNotFoundError",
]


class SemanticIdError(Exception):
    """Base class of every error raised by semid_index."""


class ConfigError(SemanticIdError, ValueError):
    """A constructor or method argument is out of range or inconsistent, or an object is asked
    for something its state does not allow (training a model in eval mode)."""


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


class DuplicateKeyError(SemanticIdError, ValueError):
    """The same item key appears more than once in one call."""


class InvalidCodesError(SemanticIdError, ValueError):
    """Codes, a prefix or a cursor have the wrong shape or fall outside a codebook."""


class ItemConflictError(SemanticIdError, ValueError):
    """An item key is already indexed with a different embedding."""


class IndexExistsError(SemanticIdError, ValueError):
    """``create`` was asked for an index name that already exists."""


class InputFileError(SemanticIdError, ValueError):
    """An input file (embeddings, item keys) is missing, unreadable or not in the expected
    format. ``path`` names it."""

    def __init__(self, message: str, *, path: str | None = None):
        super().__init__(message)
        self.path = path


class ModelFileError(SemanticIdError, ValueError):
    """A file given to ``ResidualKMeans.load`` is not a saved semid_index model."""


class CorruptBlobError(SemanticIdError, ValueError):
    """A stored array or version header failed its format, shape, length or checksum check."""


class _KeyErrorMessage(KeyError):
    """KeyError whose str() is the plain message (KeyError quotes its argument by default)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownItemError(SemanticIdError, _KeyErrorMessage):
    """Item keys that are not in the index. ``keys`` lists them (first ones, at most 20)."""

    def __init__(self, message: str, keys: Iterable[str] = ()):
        super().__init__(message)
        self.keys = list(keys)


class IndexNotFoundError(SemanticIdError, _KeyErrorMessage):
    """No index of that name in the database (or no semid_index schema at all)."""


class IndexReplacedError(IndexNotFoundError):
    """The index this handle opened was dropped (and maybe created anew under the same name)
    by someone else: the handle refuses to read or write it. Open the index again."""


class VersionNotFoundError(SemanticIdError, _KeyErrorMessage):
    """The index has no codebook version with that number."""


class NotFittedError(SemanticIdError, RuntimeError):
    """A model or index was used before it was fitted."""


class SchemaError(SemanticIdError, RuntimeError):
    """The database schema is older or newer than this library, or not semid_index's at all."""


class StoreClosedError(SemanticIdError, RuntimeError):
    """The index (or store) was used after ``close()``."""


class StaleTableError(SemanticIdError, RuntimeError):
    """A decoding table built from another codebook version than the index's active one
    (rebuild it: ``DecodingTable.from_index`` or ``table.refresh(index)``)."""


class DistributedError(SemanticIdError, RuntimeError):
    """A distributed (torch.distributed) fit failed: another rank raised an error (named in the
    message), died, or left; or the ranks disagree (different dims, seeds or options). No rank
    keeps a partial model and nothing is written."""


class StoreError(SemanticIdError, RuntimeError):
    """The database failed an operation. ``operation`` says what was being done, ``url`` where
    (password hidden); the driver's exception is the ``__cause__``."""

    def __init__(self, message: str, *, operation: str = "", url: str = ""):
        super().__init__(message)
        self.operation = operation
        self.url = url


class LockTimeoutError(StoreError):
    """A write waited longer than the lock timeout for another writer to finish."""


class ReadOnlyDatabaseError(StoreError):
    """A write was attempted on a database that is read-only (file mode, mount, or role)."""


class OutputFileError(SemanticIdError, OSError):
    """An output file (an export) could not be written; nothing partial is left behind."""


class DataUnavailableError(SemanticIdError, ImportError):
    """The package carrying a data set (:mod:`semid_index.datasets`) is not installed."""
