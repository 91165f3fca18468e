"""Residual mini-batch k-means in pure PyTorch (no database code).

Public names:

* :class:`ResidualKMeans` - the estimator: ``fit`` / ``partial_fit`` / ``encode`` / ``decode`` /
  ``quality``;
* :class:`QualityReport`, :class:`LevelStats`, :func:`code_statistics` - quality metrics;
* :func:`kmeans_plusplus` - greedy k-means++ seeding;
* :func:`set_gemm_backend`, :func:`get_gemm_backend` - CPU GEMM route for distances;
* :func:`bf16_fast`, :func:`set_bf16_fast` - whether ``precision="bf16"`` runs in bf16 here;
* :func:`row_pool_available`, :func:`set_row_pool` - whether encoding and Lloyd assignments run
  cache-sized row blocks on one thread each (see the README's "Encoding speed").
"""

from ._bf16 import bf16_fast, set_bf16_fast
from ._kernels import (get_gemm_backend, mkldnn_available, row_pool_available,
                       set_gemm_backend, set_row_pool)
from ._kmeans import kmeans_plusplus
from ._metrics import LevelStats, QualityReport, code_statistics
from ._residual import FitLog, ResidualKMeans

__all__ = [
    "ResidualKMeans",
    "FitLog",
    "QualityReport",
    "LevelStats",
    "code_statistics",
    "kmeans_plusplus",
    "set_gemm_backend",
    "get_gemm_backend",
    "mkldnn_available",
    "bf16_fast",
    "set_bf16_fast",
    "row_pool_available",
    "set_row_pool",
]
