"""Peer semantic-ID libraries for the quality benchmark, behind one call each.

semantic-id 0.2.5 (``pip install semantic-id==0.2.5``; it pulls k-means-constrained and ortools)
--------------------------------------------------------------------------------------------------
``semantic_id.RQKMeans(n_levels=4, n_clusters=256, metric="l2", implementation="kmeans",
max_iter=100, tol=1e-4, random_state=None, verbose=False, n_init=None)``; ``fit(x, device="cpu")``
then ``encode(x) -> (N, L) int32`` (greedy nearest-centroid residual assignment, level by level).

* ``implementation="kmeans"``: per level, scikit-learn ``KMeans(n_clusters, max_iter=100,
  tol=1e-4, n_init=10)`` (Lloyd, k-means++) on all N residuals; no balancing.
* ``implementation="constrained"`` (the README's "Balanced Clustering" section, its only
  balancing / capacity option): per level, ``k_means_constrained.KMeansConstrained`` with
  ``size_min = max(1, N // K - 1)``, ``size_max = N // K + 1`` (hard, near-equal cluster sizes
  over all N residuals of that level, solved as a min-cost flow with ortools each iteration),
  ``n_init=3``, ``max_iter=100``, and ``n_jobs=-1`` hard-coded (joblib worker processes). The
  sizes are not user settable. Balance holds for the labels *inside fit*; ``encode`` then assigns
  each item to its nearest centroid, ignoring the capacities, so the returned codes are only
  approximately balanced. Levels >= 2 are balanced globally per level, not per parent prefix.
* ``fit(device=...)`` other than ``"cpu"`` switches to a PyTorch backend (plain k-means, or a
  Sinkhorn-balanced k-means for ``"constrained"``); we always use the CPU (NumPy/sklearn) path.
* Collisions: ``encode`` leaves them (items may share all L codes). ``SemanticIdEngine`` with the
  default ``UniqueIdResolver(InMemoryCollisionStore())`` turns codes into strings and appends a
  counter suffix to repeats (``"3-9-1"``, ``"3-9-1-1"``, ...) or the item's own id
  (``item_ids=``); ``SinkhornResolver`` (re-encoding collided items) works only with RQ-VAE.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import Any, Literal

import numpy as np

__all__ = ["semantic_id_codes"]


def semantic_id_codes(x: np.ndarray, n_levels: int, k: int, *, balanced: bool, seed: int = 0,
                      threads: int | None = None) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Train semantic-id 0.2.5's ``RQKMeans`` on ``x`` and return its codes for ``x``.

    Returns ``(codes (N, n_levels) int64, train_seconds, info)``. ``train_seconds`` covers
    ``fit`` only; ``info`` holds ``encode_seconds``, the settings used, ``n_distinct_codes``,
    ``collided_share`` (items sharing all L codes with another item), ``max_suffix`` (the
    largest counter semantic-id's ``UniqueIdResolver`` would append: biggest group - 1) and
    ``level1_sizes`` (min, max items per first-level code).

    ``balanced=False``: ``RQKMeans(n_levels, n_clusters=k, implementation="kmeans",
    random_state=seed)``, i.e. its defaults: scikit-learn KMeans, ``n_init=10``, ``max_iter=100``,
    ``tol=1e-4``. ``balanced=True``: ``implementation="constrained"`` as its README recommends
    for balanced codes, all else default: KMeansConstrained with ``size_min=N//k-1``,
    ``size_max=N//k+1``, ``n_init=3``, ``max_iter=100``, ``tol=1e-4``.

    Single process on the CPU: ``fit(device="cpu")``, and the ``n_jobs=-1`` that semantic-id
    hard-codes for KMeansConstrained runs under joblib's ``"sequential"`` backend (no worker
    processes; its n_init runs go one after another). BLAS / OpenMP threads stay as they are
    unless ``threads`` is given (then limited with threadpoolctl).
    """
    import joblib
    from semantic_id import RQKMeans

    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    impl: Literal["kmeans", "constrained"] = "constrained" if balanced else "kmeans"
    model = RQKMeans(n_levels=n_levels, n_clusters=k, implementation=impl, random_state=seed)

    limit: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if threads is not None:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(threads)
    with limit, joblib.parallel_config(backend="sequential"):
        t = time.perf_counter()
        model.fit(x, device="cpu")
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        codes = np.asarray(model.encode(x, device="cpu"), dtype=np.int64)
        encode_s = time.perf_counter() - t

    groups = Counter(map(bytes, codes))  # rows as bytes: one key per full code
    sizes = np.bincount(codes[:, 0], minlength=k)
    info: dict[str, Any] = {
        "library": "semantic-id 0.2.5",
        "implementation": impl,
        "n_init": model.n_init if model.n_init is not None else (3 if balanced else 10),
        "max_iter": model.max_iter,
        "tol": model.tol,
        "size_min_max": (max(1, n // k - 1), n // k + 1) if balanced else None,
        "encode_seconds": encode_s,
        "n_distinct_codes": len(groups),
        "collided_share": sum(c for c in groups.values() if c > 1) / n,
        "max_suffix": max(groups.values()) - 1,
        "level1_sizes": (int(sizes.min()), int(sizes.max())),
    }
    return codes, train_s, info


if __name__ == "__main__":
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _catalogs import CATALOGS

    p = argparse.ArgumentParser(description="time semantic-id's RQKMeans on a catalog")
    p.add_argument("catalog", choices=list(CATALOGS))
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("-k", type=int, default=32)
    p.add_argument("--rows", type=int, default=None, help="first N rows only")
    p.add_argument("--balanced", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    _, xx = CATALOGS[a.catalog]()
    if a.rows:
        xx = xx[: a.rows]
    c, s, inf = semantic_id_codes(xx, a.levels, a.k, balanced=a.balanced, threads=a.threads)
    print(f"{a.catalog} {xx.shape} {a.levels}x{a.k} balanced={a.balanced}: train {s:.1f} s, "
          f"codes {c.shape} {c.dtype}, {inf}")
