"""One level of mini-batch k-means: k-means++ seeding, the exact running-mean update, dead-centroid
reassignment and full-pass Lloyd polishing. Pure PyTorch; callers pass valid float32 tensors."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from ._kernels import Codebook, sq_dists

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
    xnorm = (x * x).sum(1)
    for i in range(1, k):
        total = float(closest.sum())
        if total <= 0.0:  # every point coincides with a centre: fall back to uniform picks
            probs = torch.ones(n, device=dev)
        else:
            probs = closest
        cand = torch.multinomial(probs.cpu(), trials, replacement=True, generator=generator).to(dev)
        cx = x.index_select(0, cand)
        d = torch.addmm(xnorm.unsqueeze(0) + (cx * cx).sum(1, keepdim=True), cx, x.t(),
                        alpha=-2.0).clamp_(min=0.0)  # (trials, n)
        torch.minimum(d, closest.unsqueeze(0), out=d)
        best = int(d.sum(1).argmin())
        closest = d[best]
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
            self._book = Codebook(self.centroids)
        return self._book

    def _changed(self) -> None:
        self._book = None

    # --- mini-batch step -------------------------------------------------------------------
    def step(self, x: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor,
             generator: torch.Generator, reassign: bool) -> float:
        """Running-mean update with batch x (B, D) and its labels (B,); returns the centre shift.

        With ``reassign``, a centroid that has received no point at all while ``reassign_window``
        rows went by since it was seeded is dead: it is moved onto a batch point drawn with
        probability proportional to that point's squared distance ``dist`` (B,) to its centroid
        (a poorly served region), with its count back at zero, so the code comes back into use
        instead of wasting ID space. Rare but real clusters (one outlier) keep their centroid.
        """
        k = self.k
        n_k = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(self.centroids).index_add_(0, labels, x)
        seen = n_k > 0
        self.counts += n_k
        old = self.centroids[seen]
        rate = (1.0 / self.counts[seen]).to(x.dtype).unsqueeze(1)
        # c <- c + (sum - n c) / N_total   ==   (N_prev c + sum) / N_total
        new = old + (sums[seen] - n_k[seen].to(x.dtype).unsqueeze(1) * old) * rate
        self.centroids[seen] = new
        shift = float(((new - old) ** 2).sum())
        self.n_seen += x.shape[0]
        if reassign:
            self._reassign_dead(x, dist, generator)
        self._changed()
        return shift

    def _reassign_dead(self, x, dist, generator):
        dead = (self.counts == 0) & (self.n_seen - self.born >= self.reassign_window)
        n_dead = min(int(dead.sum()), x.shape[0] // 2)
        if n_dead == 0:
            return
        idx = dead.nonzero()[:, 0][:n_dead]
        weights = dist.double().cpu()
        if float(weights.sum()) <= 0:
            weights = torch.ones_like(weights)
        picks = torch.multinomial(weights, n_dead, replacement=False, generator=generator)
        self.centroids[idx] = x[picks.to(x.device)]
        self.born[idx] = self.n_seen
        self.n_reassigned += n_dead

    # --- full pass (Lloyd) ---------------------------------------------------------------------
    def full_pass(self, blocks: Iterable[torch.Tensor], n_worst: int, keep_labels: bool):
        """Assign every row of the stream; accumulate per-centroid sums and counts.

        Returns (sums (K, D) float64, counts (K,), inertia float, worst rows (m, D), labels or None).
        ``worst`` holds the ``n_worst`` rows farthest from their centroid, candidates to re-seed
        codes that ended up empty.
        """
        k, d = self.centroids.shape
        dev = self.centroids.device
        sums = torch.zeros(k, d, dtype=torch.float64, device=dev)
        counts = torch.zeros(k, dtype=torch.float64, device=dev)
        inertia = 0.0
        worst_d = torch.empty(0, device=dev)
        worst_x = torch.empty(0, d, device=dev)
        labels_all = []
        book = self.book
        for x in blocks:
            lab, dist = book.nearest(x, with_dist=True)
            # fp32 sums per block, fp64 across blocks: exact enough for any N
            sums += torch.zeros(k, d, dtype=x.dtype, device=dev).index_add_(0, lab, x)
            counts += torch.bincount(lab, minlength=k)
            inertia += float(dist.double().sum())
            if n_worst:
                m = min(n_worst, x.shape[0])
                top_d, top_i = dist.topk(m)
                worst_d = torch.cat([worst_d, top_d])
                worst_x = torch.cat([worst_x, x.index_select(0, top_i)])
                if worst_d.shape[0] > n_worst:
                    keep = worst_d.topk(n_worst).indices
                    worst_d, worst_x = worst_d[keep], worst_x[keep]
            if keep_labels:
                labels_all.append(lab)
        labels = torch.cat(labels_all) if keep_labels and labels_all else None
        return sums, counts, inertia, worst_x, labels

    def lloyd_update(self, sums: torch.Tensor, counts: torch.Tensor, worst: torch.Tensor) -> int:
        """Move each used centroid to the mean of its points; re-seed empty ones on ``worst`` rows.

        Returns the number of centroids that were empty.
        """
        used = counts > 0
        self.centroids[used] = (sums[used] / counts[used].unsqueeze(1)).to(self.centroids.dtype)
        empty = (~used).nonzero()[:, 0]
        n_empty = int(empty.numel())
        if n_empty:
            m = min(n_empty, worst.shape[0])
            self.centroids[empty[:m]] = worst[:m]
            self.n_reassigned += m
        self.counts = counts.clone()
        self._changed()
        return n_empty


def polish(level: KMeansLevel, make_blocks: Callable[[], Iterable[torch.Tensor]], n_lloyd: int,
           keep_labels: bool, max_rounds: int = 5):
    """Run ``n_lloyd`` exact Lloyd passes, then passes until no code is empty (at most
    ``max_rounds`` extra). The last pass is made with the final centroids, so its labels and inertia
    describe them exactly. Returns (labels or None, inertia, counts).
    """
    rounds = 0
    while True:
        sums, counts, inertia, worst, labels = level.full_pass(
            make_blocks(), n_worst=level.k, keep_labels=keep_labels)
        n_empty = int((counts == 0).sum())
        if n_lloyd <= 0 and (n_empty == 0 or rounds >= max_rounds):
            level.counts = counts.clone()
            return labels, inertia, counts
        level.lloyd_update(sums, counts, worst)
        n_lloyd -= 1
        if n_lloyd < 0:
            rounds += 1
