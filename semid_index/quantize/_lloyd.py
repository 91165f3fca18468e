"""Exact Lloyd iterations on an in-memory matrix (the sample, or all rows), optionally balanced."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._balance import PRICE_FLOATS, balanced_prices

#: Balanced Lloyd: auction rounds per iteration (the prices carry over, so a few suffice until
#: the last assignment, which gets FINAL_ROUNDS), and the share of rows changing code below which
#: the iterations stop.
ROUNDS_PER_ITERATION = 8
FINAL_ROUNDS = 160
SETTLED = 1e-3
from ._kernels import block_rows, row_sq_norms, scores


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
    float64."""
    out = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    for a in range(0, x.shape[0], rows):
        out += torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(
            0, lab[a:a + rows], x[a:a + rows])
    return out


def _inertia(xsq: float, centroids: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor):
    """sum ||x - c_label||^2 from per-centroid sums: ||x||^2 - 2 c.S + n ||c||^2 (fp64)."""
    c = centroids.double()
    return xsq - 2.0 * float((c * sums).sum()) + float((counts * (c * c).sum(1)).sum())


def lloyd(level, x: torch.Tensor, n_iter: int, tol: float, rows: int | None = None,
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
    rows = block_rows(k, rows)  # score blocks of up to 16 MiB: few, large GEMMs
    xsq = float(row_sq_norms(x).double().sum())
    m = n if balance is None else min(n, max(k, PRICE_FLOATS // k))
    groups = None if parent is None or n_groups == 1 else parent[:m]

    def assign(rounds: int = ROUNDS_PER_ITERATION):
        if balance is not None:
            s = torch.cat([scores(x[a:a + rows], level.book.neg2c,
                                  level.centroids.square().sum(1)) for a in range(0, m, rows)])
            price, lab = balanced_prices(s, groups, n_groups if groups is not None else 1,
                                         balance, level.price, max_rounds=rounds)
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
        before = lab
        lab = assign()
        done += 1
        # balanced: the prices move the inertia a little every iteration, so also stop once
        # hardly any row changes code
        settled = balance is not None and int((lab != before).sum()) <= SETTLED * n
        if empty.numel() == 0 and (abs(prev - inertia) <= tol * inertia or settled):
            converged = True
            break
        prev = inertia
    if balance is not None:  # the final labels: prices solved to the end
        lab = assign(FINAL_ROUNDS)
    counts = torch.bincount(lab, minlength=k).double()
    inertia = _inertia(xsq, level.centroids, _sums(x, lab, k), counts)
    return LloydResult(lab, counts, max(inertia, 0.0), done, converged)
