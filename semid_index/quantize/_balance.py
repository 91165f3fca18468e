"""Balanced codes: per-code prices under which every code holds about its share of the rows.

A level assigns a row to ``argmin_k ||x - c_k||^2 + p[g, k]``, ``g`` the row's group: one group
(one row of prices) for ``balance``, the row's code at the level above for the ``max_per_code``
caps. With every price 0 that is plain nearest-centroid assignment; :func:`balanced_prices`
moves the prices until the rows of every group spread over its codes within ``(1 +- slack)`` of
the even share, and/or no (group, code) holds more than a cap. The prices are the dual variables of
the size-constrained assignment problem (minimise the total squared distance subject to the size
bounds), found by an auction: each round, every code with ``m`` rows too many raises its price by
the ``m``-th smallest *regret* among its rows (the extra distance a row pays at its next best
code), which moves those rows out, or, when none is over-full (and every other round while some
code holds under half its lower bound, so that a code far from every row cannot starve),
every code ``m`` rows short lowers its price by the ``m``-th smallest extra cost of joining
it. Warm-started from the previous Lloyd
iteration's prices, a few rounds per iteration suffice.

The prices stay with the codebook: encoding new items adds them too, so items added after the
fit are spread like the training data instead of piling onto the popular codes, and the greedy
prefix property holds under the priced distance. The auction runs in numpy on the CPU; the
prices go back to the scores' device.
"""

from __future__ import annotations

import numpy as np
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
                    slack: float | None, prices: torch.Tensor | None = None,
                    max_rounds: int = MAX_ROUNDS, cap: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prices (G, K) under which ``argmin_k scores[i, k] + prices[groups[i], k]`` gives every
    code of every group between ``(1 - slack)`` and ``(1 + slack)`` times its even share of the
    group's rows (each bound give or take 2%, at least one row), and at most ``cap`` rows (exactly,
    or the even share where a group has more than ``cap`` rows per code; ``slack=None``: no other
    bound), and those labels (n,) int64.

    scores : (n, K) float32, ``||c_k||^2 - 2 x_i . c_k`` (any per-row constant may be added).
    groups : (n,) int64 in ``0..n_groups-1`` (the rows' parent codes), or None: one group.
    prices : (G, K) start values (the previous iteration's), copied; default zeros.

    Each round moves every over-full code's price up by the regret of its ``m``-th cheapest row
    to move (``m`` rows too many) and every under-full code's price down by the ``m``-th smallest
    extra cost a row of its group would pay to join it (``m`` rows short); stops when all codes
    are within bounds or after ``max_rounds`` (callers warm-start the next call). Runs in numpy
    (single-threaded: the rounds are many small array operations); results go back to the
    scores' device.

    Example
    -------
    >>> s = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0], [0.0, 5.0],
    ...                   [5.0, 0.0]])
    >>> p, lab = balanced_prices(s, None, 1, slack=0.0)
    >>> lab.tolist()       # 3 rows per code: the two rows that lose least by moving move
    [1, 1, 0, 0, 0, 1]
    """
    dev = scores.device
    s = scores.detach().cpu().numpy()
    n, k = s.shape
    g = np.zeros(n, dtype=np.int64) if groups is None else groups.cpu().numpy()
    p = np.zeros((n_groups, k), dtype=np.float32) if prices is None else \
        prices.detach().cpu().numpy().astype(np.float32, copy=True).reshape(n_groups, k)
    if k == 1 or n == 0:
        return torch.from_numpy(p).to(dev), torch.zeros(n, dtype=torch.int64, device=dev)
    mean = np.bincount(g, minlength=n_groups) / k
    if slack is None:  # only the cap
        high = np.full(n_groups, np.iinfo(np.int64).max // 2, dtype=np.int64)
        low = np.zeros(n_groups, dtype=np.int64)
    else:
        high = np.maximum(np.ceil((1.0 + slack) * mean - 1e-9), 1).astype(np.int64)    # (G,)
        low = np.maximum(np.floor((1.0 - slack) * mean + 1e-9), 0).astype(np.int64)
    hi_tol = high + np.maximum(high // 50, 1)
    if cap is not None:  # a hard bound, no tolerance; a group with more rows than its codes
        # can take at ``cap`` each spreads them evenly instead
        cap_g = np.maximum(cap, np.ceil(mean - 1e-9)).astype(np.int64)
        high, hi_tol = np.minimum(high, cap_g), np.minimum(hi_tol, cap_g)
    hi_tol = hi_tol[:, None]
    lo_tol = np.where(low > 0, low - np.maximum(low // 50, 1), 0)[:, None]
    flat = p.reshape(-1)
    step = None
    rows = np.arange(n)
    high_flat = np.repeat(high, k)
    # Rows are scored again only where a price moved under them: a price rise moves only the
    # rows of that code (every other row's best code stays best), so after the first round a
    # round costs the rows of the over-full codes, not all n x K (a fall rescores everything).
    lab, best, regret = _best_two(s + p[g], rows)
    stale = np.empty(0, dtype=np.int64)  # rows of the codes whose price rose last round
    for rnd in range(max_rounds):
        if stale.size:
            lab[stale], best[stale], regret[stale] = _best_two(s[stale] + p[g[stale]],
                                                               np.arange(stale.size))
        pair = g * k + lab
        counts = np.bincount(pair, minlength=n_groups * k)
        c2 = counts.reshape(n_groups, k)
        full = np.flatnonzero(c2 > hi_tol)
        under = np.flatnonzero(c2 < lo_tol)
        if full.size == 0 and under.size == 0:
            stale = stale[:0]
            break
        if step is None:  # the overshoot, fixed for the call: a share of the typical regret
            step = OVERSHOOT * float(np.median(regret)) + 1e-7 * float(np.abs(best).max())
        # one side per round (both at once overshoot and oscillate), over-full first; but a
        # code left with under half its lower bound also gets every other round, or it can
        # starve for good (a code far from every row, after a re-seed or beside outliers)
        # while re-fitted centroids keep some code over-full
        starved = under.size > 0 and bool(
            (2 * counts[under] < np.repeat(lo_tol[:, 0], k)[under]).any())
        if full.size and (not starved or rnd % 2 == 0):
            # the m cheapest rows of an over-full code (by regret: what moving costs them) are
            # the ones its price rise should move out. Their regrets must be current: a rise
            # elsewhere may have raised them since they were scored.
            hot = np.zeros(n_groups * k, dtype=bool)
            hot[full] = True
            stale = np.flatnonzero(hot[pair])
            _, best[stale], regret[stale] = _best_two(s[stale] + p[g[stale]],
                                                      np.arange(stale.size))
            order = stale[np.lexsort((regret[stale], pair[stale]))]
            starts = np.cumsum(counts[full]) - counts[full]
            over = counts[full] - high_flat[full]
            flat[full] += regret[order[starts + over - 1]] + step
        elif under.size:
            _lower(flat, s, best, lab, g, k, under, np.repeat(low, k)[under] - counts[under],
                   step)
            stale = rows  # prices fell: any row may move
    else:
        if stale.size:
            lab[stale] = _best_two(s[stale] + p[g[stale]], np.arange(stale.size))[0]
    return torch.from_numpy(p).to(dev), torch.from_numpy(lab).to(dev)


def _lower(flat, s, best, lab, g, k, under, need, step) -> None:
    """Lower the prices ``flat`` (G K,) of codes ``under`` (flat (group, code) indices) by the
    ``need``-th smallest extra cost a row of the group not in the code pays to join it (plus
    ``step``), so that about ``need`` rows come: an O(n) selection per code."""
    for u, m in zip(under.tolist(), need.tolist()):
        group, code = divmod(u, k)
        rows = (lab != code) if flat.size == k else (g == group) & (lab != code)
        extra = s[rows, code] + flat[u] - best[rows]  # the cost of joining, as scored
        m = min(m, extra.size)
        if m > 0:
            flat[u] -= np.partition(extra, m - 1)[m - 1] + step


def _best_two(a: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels (n,), best (n,), regret (n,)) of a (n, K): each row's smallest entry (the first
    on ties), its value, and how much more the second smallest is."""
    lab = np.argmin(a, axis=1)
    best = a[rows, lab]
    a[rows, lab] = np.inf
    second = a.min(axis=1)
    a[rows, lab] = best
    return lab, best, second - best
