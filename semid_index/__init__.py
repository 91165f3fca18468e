"""semid_index: hierarchical semantic IDs from item embeddings.

The persistent index is :class:`SemanticIdIndex` (:mod:`semid_index.index`), the quantizer
:mod:`semid_index.quantize`, the store :mod:`semid_index.storage`; the seed module's names
(``ResidualQuantization``, ``MiniBatchKMeans``, ...) in :mod:`semid_index.compat`. All are imported
lazily so that ``import semid_index`` stays cheap (no torch) for processes that only look IDs up.
"""

from __future__ import annotations

import importlib

from . import errors as _errors
from .errors import *  # noqa: F403 - the typed exceptions, listed in errors.__all__
from .ids import SemanticId as SemanticId

__version__ = "0.1.0"

_LAZY = {
    "SemanticIdIndex": "semid_index.index",
    "IndexedItem": "semid_index._results",
    "PrefixPage": "semid_index._results",
    "SimilarItem": "semid_index._results",
    "IdChange": "semid_index._results",
    "IndexStats": "semid_index._results",
    "VersionInfo": "semid_index._results",
    "DecodingTable": "semid_index.decoding",
    "TokenLayout": "semid_index.decoding",
    "ResidualKMeans": "semid_index.quantize",
    "QualityReport": "semid_index.quantize",
    "ResidualQuantization": "semid_index.compat",
    "MiniBatchKMeans": "semid_index.compat",
    "SquaredEuclideanDistance": "semid_index.compat",
    "KMeansPlusPlusInitInitializer": "semid_index.compat",
}

__all__ = sorted(["__version__", "SemanticId", *_errors.__all__, *_LAZY])


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'semid_index' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
