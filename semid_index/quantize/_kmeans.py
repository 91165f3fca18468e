"""One level of mini-batch k-means: k-means++ seeding, the exact running-mean update and dead-centroid
reassignment. Pure PyTorch; callers pass valid float32 tensors."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ._kernels import Codebook, row_sq_norms, skinny_scores, sq_dists

if TYPE_CHECKING:
    from ._dist import Shard

#: A centroid with no point while this many rows per centroid went by is dead.
REASSIGN_WINDOW = 50


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator,
                    n_trials: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; greedy variant as in scikit-learn).

    x: (n, D) float32 sample, n >= k. At each step ``n_trials`` candidates are drawn with probability
    proportional to their squared distance to the nearest chosen centre and the one that lowers the
    total potential most is kept. ``n_trials=None`` means ``2 + int(ln k)``; 1 is plain k-means++.
    Returns (k, D) centres (copies of rows of x).
    """
    n = x.shape[0]
    trials = n_trials if n_trials is not None else 2 + int(math.log(k))
    dev = x.device
    centers = torch.empty(k, x.shape[1], dtype=x.dtype, device=dev)
    first = int(torch.randint(n, (1,), generator=generator))
    centers[0] = x[first]
    closest = sq_dists(x, x[first:first + 1])[:, 0]
    xnorm = row_sq_norms(x)
    for i in range(1, k):
        total = float(closest.sum())
        if total <= 0.0:  # every point coincides with a centre: fall back to uniform picks
            probs = torch.ones(n, device=dev)
        else:
            probs = closest
        cand = torch.multinomial(probs.cpu(), trials, replacement=True, generator=generator).to(dev)
        cx = x.index_select(0, cand)
        # (n, trials): the skinny GEMM streams x once; this layout runs ~2x faster than (trials, n)
        d = skinny_scores(x, -2.0 * cx, (cx * cx).sum(1)).add_(xnorm.unsqueeze(1))
        torch.minimum(d, closest.unsqueeze(1), out=d).clamp_(min=0.0)
        best = int(d.sum(0).argmin())
        closest = d[:, best].contiguous()
        centers[i] = cx[best]
    return centers


class KMeansLevel:
    """State of one codebook during training: centroids (K, D) and per-centroid counts (K,).

    ``counts`` start at zero after seeding, so the first update moves a centroid to the mean of its
    first points and every later one keeps it at the exact mean of all points assigned since seeding
    (Sculley 2010; the batch form of GRID's update).
    """

    def __init__(self, centroids: torch.Tensor):
        self.centroids = centroids.contiguous()
        self.counts = torch.zeros(centroids.shape[0], dtype=torch.float64, device=centroids.device)
        self._book: Codebook | None = None
        #: per-code prices of balanced training (None: plain nearest-centroid assignment)
        self.price: torch.Tensor | None = None
        self.n_reassigned = 0
        self.n_seen = 0
        #: rows seen when each centroid was (re)seeded
        self.born = torch.zeros(centroids.shape[0], dtype=torch.int64, device=centroids.device)
        #: rows a centroid may go without a single point before it counts as dead; the trainer
        #: sets it to min(N, REASSIGN_WINDOW * K), or to N for sources read in storage order
        self.reassign_window = REASSIGN_WINDOW * centroids.shape[0]

    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    @property
    def book(self) -> Codebook:
        if self._book is None:
            self._book = Codebook(self.centroids, self.price)
        return self._book

    def set_price(self, price: torch.Tensor | None) -> None:
        """Use per-code prices (K,) in every assignment from now on (None: none)."""
        self.price = price
        self._changed()

    def _changed(self) -> None:
        self._book = None

    # --- mini-batch step -------------------------------------------------------------------
    def step(self, x: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor,
             generator: torch.Generator, reassign: bool, shard: "Shard | None" = None,
             sel: torch.Tensor | None = None, n_batch: int | None = None) -> float:
        """Running-mean update with batch x (B, D) and its labels (B,); returns the centre shift.

        With ``reassign``, a centroid that has received no point at all while ``reassign_window``
        rows went by since it was seeded is dead: it is moved onto a batch point drawn with
        probability proportional to that point's squared distance ``dist`` (B,) to its centroid
        (a poorly served region), with its count back at zero, so the code comes back into use
        instead of wasting ID space. Rare but real clusters (one outlier) keep their centroid.

        Distributed (``shard``): x is this rank's part of a global batch of ``n_batch`` rows, at
        indices ``sel`` of it; sums and counts are added up over the ranks, so every rank makes
        the same update.
        """
        k = self.k
        n_k = torch.bincount(labels, minlength=k)
        # float64 sums: the same whichever way the batch is split over ranks
        sums = torch.zeros(self.centroids.shape, dtype=torch.float64,
                           device=x.device).index_add_(0, labels, x.double())
        if shard is not None:
            shard.sum_(n_k)
            shard.sum_(sums)
        seen = n_k > 0
        self.counts += n_k
        old = self.centroids[seen]
        rate = (1.0 / self.counts[seen]).unsqueeze(1)
        # c <- c + (sum - n c) / N_total   ==   (N_prev c + sum) / N_total
        new = (old.double() + (sums[seen] - n_k[seen].double().unsqueeze(1) * old.double())
               * rate).to(old.dtype)
        self.centroids[seen] = new
        shift = float(((new - old) ** 2).sum())
        n_batch = x.shape[0] if n_batch is None else n_batch
        self.n_seen += n_batch
        if reassign:
            self._reassign_dead(x, dist, generator, shard, sel, n_batch)
        self._changed()
        return shift

    def _reassign_dead(self, x, dist, generator, shard, sel, n_batch):
        dead = (self.counts == 0) & (self.n_seen - self.born >= self.reassign_window)
        n_dead = min(int(dead.sum()), n_batch // 2)
        if n_dead == 0:
            return
        idx = dead.nonzero()[:, 0][:n_dead]
        if shard is None or sel is None:
            weights = dist.double().cpu()
        else:  # the whole batch's distances, in batch order, on every rank
            weights = shard.assemble(n_batch, sel, dist.double().cpu())
        if float(weights.sum()) <= 0:
            weights = torch.ones_like(weights)
        picks = torch.multinomial(weights, n_dead, replacement=False, generator=generator)
        if shard is None or sel is None:
            rows = x[picks.to(x.device)]
        else:  # the picked rows, from the ranks holding them: the batch as a sharded matrix
            from ._dist import Shard

            rows = Shard(n_batch, sel, shard.group, distributed=True).rows(x, picks)
        self.reseed(idx, rows)

    # --- Lloyd support ----------------------------------------------------------------------
    def reseed(self, idx: torch.Tensor, rows: torch.Tensor) -> None:
        """Put centroids ``idx`` on ``rows`` (as many as there are rows), counts back to zero."""
        m = min(idx.numel(), rows.shape[0])
        self.centroids[idx[:m]] = rows[:m]
        self.counts[idx[:m]] = 0.0
        self.born[idx[:m]] = self.n_seen
        self.n_reassigned += m
        self._changed()

    def move_to_means(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """Lloyd update: every centroid with points goes to their mean; counts become ``counts``."""
        used = counts > 0
        self.centroids[used] = (sums[used] / counts[used].unsqueeze(1)).to(self.centroids.dtype)
        self.counts = counts.clone()
        self._changed()
