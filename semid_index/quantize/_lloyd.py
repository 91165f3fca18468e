"""Exact Lloyd iterations on an in-memory matrix (the sample, or all rows), optionally balanced."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from ._balance import PRICE_FLOATS, balanced_prices
from ._kernels import row_sq_norms, scores


@dataclass
class LloydResult:
    """Outcome of :func:`lloyd`: labels (n,) int64 for the final centroids (and prices), counts
    (K,) float64, the inertia (sum of squared distances to the assigned centroids), iterations
    run and whether the relative tolerance was reached."""

    labels: torch.Tensor
    counts: torch.Tensor
    inertia: float
    iterations: int
    converged: bool


def _sums(x: torch.Tensor, lab: torch.Tensor, k: int, rows: int = 1 << 16) -> torch.Tensor:
    """Per-centroid sums of rows, fp32 per block of ``rows`` and fp64 across blocks: (K, D)
    float64. On the CPU each block is one sparse (K x rows) one-hot times (rows x D) product
    (5-10x faster than ``index_add_``, whose scatter serialises on repeated labels)."""
    out = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    for a in range(0, x.shape[0], rows):
        xb, lb = x[a:a + rows], lab[a:a + rows]
        if x.device.type == "cpu":
            order = torch.argsort(lb, stable=True)
            crow = torch.zeros(k + 1, dtype=torch.int64)
            torch.cumsum(torch.bincount(lb, minlength=k), 0, out=crow[1:])
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                onehot = torch.sparse_csr_tensor(crow, order, torch.ones(len(lb), dtype=x.dtype),
                                                 (k, len(lb)), check_invariants=False)
                out += torch.mm(onehot, xb)
        else:
            out += torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(
                0, lb, xb)
    return out


def _inertia(xsq: float, centroids: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor):
    """sum ||x - c_label||^2 from per-centroid sums: ||x||^2 - 2 c.S + n ||c||^2 (fp64)."""
    c = centroids.double()
    return xsq - 2.0 * float((c * sums).sum()) + float((counts * (c * c).sum(1)).sum())


def lloyd(level, x: torch.Tensor, n_iter: int, tol: float, rows: int = 4096,
          balance: float | None = None, parent: torch.Tensor | None = None,
          n_groups: int = 1) -> LloydResult:
    """Up to ``n_iter`` exact Lloyd iterations of ``level`` on x (n, D), stopping once one lowers
    the inertia by less than ``tol`` (relative). A code left empty is re-seeded on the row farthest
    from its centroid, so it is used again.

    With ``balance`` (a slack s >= 0) every assignment is balanced: per-code prices
    (:func:`._balance.balanced_prices`, kept in ``level.price``, (n_groups, K)) keep the rows of
    each parent code (``parent`` (n,), the rows' codes at the level above, in 0..n_groups-1)
    between ``(1 - s)`` and ``(1 + s)`` times their even share of every code. They are solved on
    the first ``PRICE_FLOATS / K`` rows of x (x is in random order, so any prefix is a uniform
    sample) and every row is assigned with them.
    """
    k = level.k
    n = x.shape[0]
    xsq = float(row_sq_norms(x).double().sum())
    m = n if balance is None else min(n, max(k, PRICE_FLOATS // k))
    groups = None if parent is None or n_groups == 1 else parent[:m]

    def assign():
        if balance is not None:
            s = torch.cat([scores(x[a:a + rows], level.book.neg2c,
                                  level.centroids.square().sum(1)) for a in range(0, m, rows)])
            price, lab = balanced_prices(s, groups, n_groups if groups is not None else 1,
                                         balance, level.price)
            del s
            level.set_price(price)
            if m == n:
                return lab
        return torch.cat([level.book.nearest(x[a:a + rows], parent=None if parent is None
                                             else parent[a:a + rows])
                          for a in range(0, n, rows)])

    lab = assign()
    prev = math.inf
    done = 0
    converged = False
    for _ in range(n_iter):
        counts = torch.bincount(lab, minlength=k).double()
        sums = _sums(x, lab, k)
        inertia = _inertia(xsq, level.centroids, sums, counts)
        level.move_to_means(sums, counts)  # never raises the inertia
        empty = (counts == 0).nonzero()[:, 0]
        if empty.numel():
            _, dist = level.book.nearest(x, with_dist=True, parent=parent)
            level.reseed(empty, x.index_select(0, dist.topk(min(empty.numel(), len(x))).indices))
        lab = assign()
        done += 1
        if empty.numel() == 0 and abs(prev - inertia) <= tol * inertia:
            converged = True
            break
        prev = inertia
    counts = torch.bincount(lab, minlength=k).double()
    inertia = _inertia(xsq, level.centroids, _sums(x, lab, k), counts)
    return LloydResult(lab, counts, max(inertia, 0.0), done, converged)
