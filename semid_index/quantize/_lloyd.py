"""Exact Lloyd iterations on an in-memory matrix (the sample, or all rows), optionally balanced."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ._balance import PRICE_FLOATS, balanced_prices
from ._dist import Shard
from ._kernels import block_rows, row_sq_norms, scores

#: Balanced Lloyd: auction rounds per iteration (the prices carry over, so a few suffice until
#: the last assignment, which gets FINAL_ROUNDS), and the share of rows changing code below which
#: the iterations stop.
ROUNDS_PER_ITERATION = 8
FINAL_ROUNDS = 160
SETTLED = 1e-3


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


def _sums(x: torch.Tensor, lab: torch.Tensor, k: int, rows: int = 1 << 12) -> torch.Tensor:
    """Per-centroid sums of rows (blocks of ``rows``) in float64: (K, D) float64. float64
    makes them independent of how the rows are split (into blocks, or over the ranks of a
    distributed fit) far below float32 resolution, so the centroids come out the same."""
    out = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    for a in range(0, x.shape[0], rows):
        out.index_add_(0, lab[a:a + rows], x[a:a + rows].double())
    return out


def _update_sums(sums: torch.Tensor, x: torch.Tensor, old: torch.Tensor, new: torch.Tensor,
                 k: int) -> tuple[torch.Tensor, int]:
    """Per-centroid sums (K, D) float64 after labels went from ``old`` to ``new`` (n,), and how
    many rows changed code. Only the rows that moved are read (after the first iterations a few
    percent), unless a quarter or more moved: then all rows are summed again. float64 sums of
    float32 rows take the moves back out exactly enough (the error stays ~1e-16 relative)."""
    moved = (old != new).nonzero()[:, 0]
    if moved.numel() * 4 >= x.shape[0]:
        return _sums(x, new, k), int(moved.numel())
    if moved.numel():
        rows = x.index_select(0, moved).double()
        sums.index_add_(0, new.index_select(0, moved), rows)
        sums.index_add_(0, old.index_select(0, moved), rows.neg_())
    return sums, int(moved.numel())


def _inertia(xsq: float, centroids: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor):
    """sum ||x - c_label||^2 from per-centroid sums: ||x||^2 - 2 c.S + n ||c||^2 (fp64)."""
    c = centroids.double()
    return xsq - 2.0 * float((c * sums).sum()) + float((counts * (c * c).sum(1)).sum())


def lloyd(level, x: torch.Tensor, n_iter: int, tol: float, rows: int | None = None,
          balance: float | None = None, parent: torch.Tensor | None = None,
          n_groups: int = 1, cap: int | None = None, shard: Shard | None = None) -> LloydResult:
    """Up to ``n_iter`` exact Lloyd iterations of ``level`` on x (n, D), stopping once one lowers
    the inertia by less than ``tol`` (relative). A code left empty is re-seeded on the row farthest
    from its centroid, so it is used again.

    With ``balance`` (a slack s >= 0) every assignment is balanced: per-code prices
    (:func:`._balance.balanced_prices`, kept in ``level.price``, (1, K)) keep every code between
    ``(1 - s)`` and ``(1 + s)`` times its even share of the rows. They are solved on at most
    ``PRICE_FLOATS / K`` rows spread evenly over x (all rows when they fit) and every row is
    assigned with them.

    With ``cap`` (an int) no (parent code, code) pair holds more than ``cap`` rows (a parent
    with more than ``cap`` rows per code spreads them evenly instead): the same
    prices, raised only where a pair overflows, and solved only on the rows of parent codes
    that have an overflowing pair (nearest-centroid assignment everywhere else), so a cap that
    binds in a few places costs little. Not with ``balance``.

    Distributed (``shard``): x is this rank's part of the rows; sums, counts and the inertia are
    added up over the ranks (every rank takes the same decisions) and the labels returned are
    the local rows'. Neither ``balance`` nor ``cap`` (their price auction needs every row).
    """
    k = level.k
    n = x.shape[0]
    if balance is not None and cap is not None:
        raise ConfigError("a level is balanced or capped, not both")
    if shard is not None and shard.distributed and (balance is not None or cap is not None):
        raise ConfigError("a distributed fit takes neither balance nor max_per_code")
    one = Shard(n) if shard is None else shard
    rows = block_rows(k, rows, x.device)  # score blocks of up to 4 MiB (SCORE_BLOCK) on a CPU
    xsq = one.total(float(row_sq_norms(x).double().sum()))
    m = n if balance is None else min(n, max(k, PRICE_FLOATS // k))
    # the rows the prices are solved on: all, or a systematic sample of m spread over x
    sub = None if m == n else (torch.arange(m, device=x.device) * n) // m
    if balance is not None and level.price is not None and level.price.shape[0] != 1:
        level.set_price(None)  # per-parent prices (a warm start from an older fit): start over

    def solve(xs: torch.Tensor, g: torch.Tensor | None, rounds: int,
              share: float = 1.0) -> torch.Tensor:
        """Solve the prices on rows xs (their parents g; ``share`` of the rows they stand
        for) and return their labels."""
        book = level.book  # prices are added by the auction, not here
        s = torch.cat([scores(xs[a:a + rows], book.neg2c, book.cnorm)
                       for a in range(0, xs.shape[0], rows)])
        price, lab = balanced_prices(
            s, g, n_groups if g is not None else 1, balance, level.price, max_rounds=rounds,
            cap=None if cap is None else max(1, int(cap * share)))
        level.set_price(price)
        return lab

    def nearest() -> torch.Tensor:
        if n == 0:  # a rank of a distributed fit may hold no rows
            return torch.zeros(0, dtype=torch.int64, device=x.device)
        return level.book.nearest(x, parent=parent)

    def assign(rounds: int = ROUNDS_PER_ITERATION):
        if balance is not None:
            lab = solve(x if sub is None else x.index_select(0, sub), None, rounds, m / n)
            if m == n:
                return lab
            return nearest()
        lab = nearest()
        if cap is None:
            return lab
        # the cap alone: only parents with an overflowing code take part in the auction
        g = torch.zeros_like(lab) if parent is None else parent
        pairs = torch.bincount(g * k + lab, minlength=n_groups * k).view(n_groups, k)
        hot = (pairs > cap).any(1)
        if not bool(hot.any()):
            return lab
        idx = hot.index_select(0, g).nonzero()[:, 0]
        m_hot = min(idx.numel(), max(k, PRICE_FLOATS // k))
        if m_hot == idx.numel():
            lab[idx] = solve(x.index_select(0, idx), None if parent is None else g[idx], rounds)
            return lab
        # too many rows for one score matrix: solve on an even spread of them, assign all
        pick = idx.index_select(0, (torch.arange(m_hot, device=x.device) * idx.numel()) // m_hot)
        solve(x.index_select(0, pick), None if parent is None else g[pick], rounds,
              m_hot / idx.numel())
        return nearest()

    def total(local_sums: torch.Tensor) -> torch.Tensor:  # all ranks' sums (local kept)
        return one.sum_(local_sums.clone()) if one.distributed else local_sums

    def counted(lab: torch.Tensor) -> torch.Tensor:
        return one.sum_(torch.bincount(lab, minlength=k).double())

    lab = assign()
    sums = _sums(x, lab, k)
    prev = math.inf
    done = 0
    converged = False
    for _ in range(n_iter):
        counts = counted(lab)
        all_sums = total(sums)
        inertia = _inertia(xsq, level.centroids, all_sums, counts)
        level.move_to_means(all_sums, counts)  # never raises the inertia
        empty = (counts == 0).nonzero()[:, 0]
        if empty.numel():
            _, dist = level.book.nearest(x, with_dist=True, parent=parent)
            far = one.top(dist, min(empty.numel(), one.n))
            level.reseed(empty, one.rows(x, far.to(x.device) if one.pos is None else far))
        before = lab
        lab = assign()
        sums, n_changed = _update_sums(sums, x, before, lab, k)
        n_changed = one.count(n_changed)
        done += 1
        # priced: the prices move the inertia a little every iteration, so also stop once
        # hardly any row changes code (a cap that never bound leaves plain Lloyd)
        settled = (balance is not None or level.price is not None) and \
            n_changed <= SETTLED * one.n
        if empty.numel() == 0 and (abs(prev - inertia) <= tol * inertia or settled):
            converged = True
            break
        prev = inertia
    if balance is not None or level.price is not None:  # final labels: prices solved to the end
        before = lab
        lab = assign(FINAL_ROUNDS)
        sums, _ = _update_sums(sums, x, before, lab, k)
    counts = counted(lab)
    inertia = _inertia(xsq, level.centroids, total(sums), counts)
    return LloydResult(lab, counts, max(inertia, 0.0), done, converged)
