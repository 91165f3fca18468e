"""Exact Lloyd iterations on an in-memory matrix (the sample, or all rows)."""

from __future__ import annotations

import math

import torch

from ._kernels import row_sq_norms


def _sums(x: torch.Tensor, lab: torch.Tensor, k: int, rows: int) -> torch.Tensor:
    """Per-centroid sums of rows, fp32 per block and fp64 across blocks: (K, D) float64."""
    out = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    for a in range(0, x.shape[0], rows):
        out += torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(
            0, lab[a:a + rows], x[a:a + rows])
    return out


def _inertia(xsq: float, centroids: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor):
    """sum ||x - c_label||^2 from per-centroid sums: ||x||^2 - 2 c.S + n ||c||^2 (fp64)."""
    c = centroids.double()
    return xsq - 2.0 * float((c * sums).sum()) + float((counts * (c * c).sum(1)).sum())


def lloyd(level, x: torch.Tensor, n_iter: int, tol: float, rows: int = 4096):
    """Up to ``n_iter`` exact Lloyd iterations of ``level`` on x (n, D), stopping once one lowers
    the inertia by less than ``tol`` (relative). A code left empty is re-seeded on the row farthest
    from its centroid, so it is used again.

    Returns (labels (n,) int64 for the final centroids, counts (K,) float64, inertia float).
    """
    k = level.k
    xsq = float(row_sq_norms(x).double().sum())

    def assign():
        return torch.cat([level.book.nearest(x[a:a + rows]) for a in range(0, x.shape[0], rows)])

    lab = assign()
    prev = math.inf
    for _ in range(n_iter):
        counts = torch.bincount(lab, minlength=k).double()
        sums = _sums(x, lab, k, rows)
        inertia = _inertia(xsq, level.centroids, sums, counts)
        level.move_to_means(sums, counts)  # never raises the inertia
        empty = (counts == 0).nonzero()[:, 0]
        if empty.numel():
            _, dist = level.book.nearest(x, with_dist=True)
            level.reseed(empty, x.index_select(0, dist.topk(min(empty.numel(), len(x))).indices))
        lab = assign()
        if empty.numel() == 0 and prev - inertia <= tol * inertia:
            break
        prev = inertia
    counts = torch.bincount(lab, minlength=k).double()
    inertia = _inertia(xsq, level.centroids, _sums(x, lab, k, rows), counts)
    return lab, counts, max(inertia, 0.0)
