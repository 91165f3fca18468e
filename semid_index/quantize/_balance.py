"""Balanced codes: per-code prices under which no code takes more than its capacity.

A level assigns a row to ``argmin_k ||x - c_k||^2 + p_k``. With every price ``p_k = 0`` that is
plain nearest-centroid assignment; :func:`capacity_prices` raises the prices of over-full codes
just enough that each holds at most ``cap`` of the rows it is solved on. The prices are the dual
variables of the capacity-constrained assignment problem (minimise the total squared distance
subject to ``|code k| <= cap``), found by an auction: each round, every code with ``m`` rows
too many raises its price by the ``m``-th smallest *regret* among its rows (the extra distance a
row pays at its next best code), which moves exactly those ``m`` rows out; the rows that leave
may overfill their next code, which the next round handles. Prices only rise, so it settles in a
few rounds (warm-started from the previous Lloyd iteration's prices: usually one or two).

The prices stay with the codebook: encoding new items adds them too, so items added after the
fit are spread like the training data instead of piling onto the popular codes, and the greedy
prefix property holds under the priced distance. Pure PyTorch, any device.
"""

from __future__ import annotations

import math

import torch

#: Upper bound on the (rows x K) score matrix the prices are solved on, in floats (512 MiB):
#: larger training samples solve the prices on a uniform subset of rows and assign every row
#: with them.
PRICE_FLOATS = 1 << 27
MAX_ROUNDS = 40
#: Each price move overshoots by this fraction of the median regret (epsilon-scaling: without
#: it, rows ping-pong between two nearly full codes for hundreds of rounds).
OVERSHOOT = 0.1


def balanced_prices(scores: torch.Tensor, groups: torch.Tensor | None, n_groups: int,
                    slack: float, prices: torch.Tensor | None = None,
                    max_rounds: int = MAX_ROUNDS) -> tuple[torch.Tensor, torch.Tensor]:
    """Prices (G, K) under which ``argmin_k scores[i, k] + prices[groups[i], k]`` gives every
    code of every group between :func:`bounds` rows of that group (each within
    :func:`tolerance`), and those labels (n,) int64.

    scores : (n, K) float32, ``||c_k||^2 - 2 x_i . c_k`` (any per-row constant may be added).
    groups : (n,) int64 in ``0..n_groups-1`` (the rows' parent codes), or None: one group.
    slack : the balance slack s of :func:`bounds`.
    prices : (G, K) start values (the previous iteration's), copied; default zeros.

    Each round moves every over-full code's price up by the regret of its ``m``-th cheapest row
    to move (``m`` rows too many) and every under-full code's price down by the ``m``-th smallest
    extra cost a row of its group would pay to join it (``m`` rows short); stops when all codes
    are within bounds (give or take the tolerance) or after ``max_rounds`` (callers warm-start
    the next call).

    Example
    -------
    >>> s = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [5.0, 0.0]])
    >>> p, lab = balanced_prices(s, None, 1, slack=0.0)
    >>> lab.tolist()       # the row that loses least by moving (regret 1) moves
    [1, 0, 0, 1]
    """
    n, k = scores.shape
    dev = scores.device
    g = torch.zeros(n, dtype=torch.int64, device=dev) if groups is None else groups
    p = torch.zeros(n_groups, k, dtype=scores.dtype, device=dev) if prices is None else \
        prices.to(dev, scores.dtype).clone()
    if k == 1 or n == 0:
        return p, torch.zeros(n, dtype=torch.int64, device=dev)
    sizes = torch.bincount(g, minlength=n_groups).double()
    mean = sizes / k
    high = torch.ceil((1.0 + slack) * mean - 1e-9).clamp(min=1).long()      # (G,)
    low = torch.floor((1.0 - slack) * mean + 1e-9).clamp(min=0).long()
    hi_tol = high + torch.clamp(high // 50, min=1)
    lo_tol = torch.where(low > 0, low - torch.clamp(low // 50, min=1), low)
    flat = p.view(-1)
    step = None
    for _ in range(max_rounds):
        a = scores + p.index_select(0, g)
        lab, best, regret = _best_two(a)
        pair = g * k + lab
        counts = torch.bincount(pair, minlength=n_groups * k)                # (G K,)
        over = counts.view(n_groups, k) - high.unsqueeze(1)
        short = lo_tol.unsqueeze(1) - counts.view(n_groups, k)
        full = (counts.view(n_groups, k) > hi_tol.unsqueeze(1)).view(-1).nonzero()[:, 0]
        under = (short > 0).view(-1).nonzero()[:, 0]
        if full.numel() == 0 and under.numel() == 0:
            return p, lab
        if step is None:  # the overshoot, fixed for the call: a share of the typical regret
            step = OVERSHOOT * float(regret.median()) + 1e-7 * float(best.abs().max())
        if full.numel():
            # rows grouped by (group, code), each run in ascending regret: the m cheapest rows
            # of an over-full code are the ones its price increase should move out
            order = _grouped_order(regret, pair)
            starts = torch.cumsum(counts, 0) - counts
            pick = order.index_select(0, starts.index_select(0, full) +
                                      over.view(-1).index_select(0, full) - 1)
            flat.index_add_(0, full, regret.index_select(0, pick) + step)
        if under.numel():
            # the m-th smallest extra cost of joining an under-full code, over the rows of its
            # group not in it: lower its price by that much and those m rows come
            want = torch.zeros(n_groups * k, dtype=torch.bool, device=dev)
            want[under] = True
            cand = want.view(n_groups, k).index_select(0, g)                  # (n, K)
            cand.scatter_(1, lab.unsqueeze(1), False)
            rows, cols = cand.nonzero(as_tuple=True)
            extra = a[rows, cols] - best.index_select(0, rows)
            target = g.index_select(0, rows) * k + cols
            order = _grouped_order(extra, target)
            avail = torch.bincount(target, minlength=n_groups * k)
            starts = torch.cumsum(avail, 0) - avail
            need = torch.minimum(low.unsqueeze(1).expand(n_groups, k).reshape(-1)
                                 .index_select(0, under) - counts.index_select(0, under),
                                 avail.index_select(0, under)).clamp(min=1)
            ok = avail.index_select(0, under) > 0
            under, need = under[ok], need[ok]
            pick = order.index_select(0, starts.index_select(0, under) + need - 1)
            flat.index_add_(0, under, -(extra.index_select(0, pick) + step))
    return p, _best_two(scores + p.index_select(0, g))[0]


def _grouped_order(values: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Indices sorting by ``keys``, then by ``values`` within equal keys (both (m,))."""
    order = torch.argsort(values, stable=True)
    return order.index_select(0, torch.argsort(keys.index_select(0, order), stable=True))


def _best_two(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(labels (n,), best (n,), regret (n,)) of a (n, K): each row's smallest entry, its value,
    and how much more the second smallest is."""
    vals, idx = torch.topk(a, 2, dim=1, largest=False, sorted=True)
    return idx[:, 0].contiguous(), vals[:, 0], vals[:, 1] - vals[:, 0]
