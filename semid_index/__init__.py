"""semid_index: hierarchical semantic IDs from item embeddings.

The quantizer lives in :mod:`semid_index.quantize`; the seed module's names
(``ResidualQuantization``, ``MiniBatchKMeans``, ...) in :mod:`semid_index.compat`. Both are imported
lazily so that ``import semid_index`` stays cheap (no torch) for processes that only look IDs up.
"""

from __future__ import annotations

import importlib

from .errors import (ConfigError, DimensionMismatchError, EmptyInputError, InvalidCodesError,
                     NonFiniteError, NotFittedError, SemanticIdError, TooFewItemsError)
from .ids import SemanticId

__version__ = "0.1.0"

_LAZY = {
    "ResidualKMeans": "semid_index.quantize",
    "QualityReport": "semid_index.quantize",
    "ResidualQuantization": "semid_index.compat",
    "MiniBatchKMeans": "semid_index.compat",
    "SquaredEuclideanDistance": "semid_index.compat",
    "KMeansPlusPlusInitInitializer": "semid_index.compat",
}

__all__ = [
    "__version__",
    "SemanticId",
    "SemanticIdError",
    "ConfigError",
    "DimensionMismatchError",
    "NonFiniteError",
    "EmptyInputError",
    "TooFewItemsError",
    "NotFittedError",
    "InvalidCodesError",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'semid_index' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
