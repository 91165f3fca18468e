"""One level of mini-batch k-means: k-means++ seeding, the exact running-mean update, dead-centroid
reassignment and full-pass Lloyd polishing. Pure PyTorch; callers pass valid float32 tensors."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from ._kernels import Codebook, row_sq_norms, skinny_scores, sq_dists
from ._lloyd import lloyd

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
        self.reseed(idx, x[picks.to(x.device)])

    # --- full passes (Lloyd) -------------------------------------------------------------------
    def full_pass(self, blocks: Iterable[torch.Tensor], *, with_sums: bool, keep_labels: bool):
        """Assign every row of the stream to its nearest centroid.

        Returns (sums (K, D) float64 or None, counts (K,) float64, inertia float, labels or None).
        """
        k, d = self.centroids.shape
        dev = self.centroids.device
        sums = torch.zeros(k, d, dtype=torch.float64, device=dev) if with_sums else None
        counts = torch.zeros(k, dtype=torch.float64, device=dev)
        inertia = 0.0
        labels_all = []
        book = self.book
        for x in blocks:
            lab, dist = book.nearest(x, with_dist=True)
            if with_sums:  # fp32 sums per block, fp64 across blocks: exact enough for any N
                sums += torch.zeros(k, d, dtype=x.dtype, device=dev).index_add_(0, lab, x)
            counts += torch.bincount(lab, minlength=k)
            inertia += float(dist.sum(dtype=torch.float64))
            if keep_labels:
                labels_all.append(lab)
        labels = torch.cat(labels_all) if keep_labels and labels_all else None
        return sums, counts, inertia, labels

    def worst_rows(self, blocks: Iterable[torch.Tensor], m: int) -> torch.Tensor:
        """The m rows of the stream farthest from their centroid, (<= m, D)."""
        worst_d = torch.empty(0, device=self.centroids.device)
        worst_x = torch.empty(0, self.centroids.shape[1], device=self.centroids.device)
        for x in blocks:
            _, dist = self.book.nearest(x, with_dist=True)
            top_d, top_i = dist.topk(min(m, x.shape[0]))
            worst_d = torch.cat([worst_d, top_d])
            worst_x = torch.cat([worst_x, x.index_select(0, top_i)])
            if worst_d.shape[0] > m:
                keep = worst_d.topk(m).indices
                worst_d, worst_x = worst_d[keep], worst_x[keep]
        return worst_x

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


def polish(level: KMeansLevel, lloyd_rows: torch.Tensor,
           final_blocks: Callable[[], Iterable[torch.Tensor]] | None, n_lloyd: int,
           keep_labels: bool, tol: float = 0.0, max_rounds: int = 5):
    """Up to ``n_lloyd`` exact Lloyd iterations on the in-memory rows ``lloyd_rows`` (a sample, or
    all rows), stopping once one lowers the inertia by less than ``tol`` (relative); then, unless
    ``final_blocks`` is None (the Lloyd rows were all rows), one pass over ``final_blocks()`` with
    the final centroids.

    A code found empty in the final pass is re-seeded on the rows farthest from their centroid (one
    extra pass to find them, then the final pass again; at most ``max_rounds`` times), so training
    leaves no empty code when there are at least K distinct rows. Returns (labels of the final
    pass or None, inertia, counts, labels of ``lloyd_rows``).
    """
    sample_labels, counts, inertia = lloyd(level, lloyd_rows, n_lloyd, tol)
    if final_blocks is None:
        level.counts = counts.clone()
        return sample_labels if keep_labels else None, inertia, counts, sample_labels
    rounds = 0
    while True:
        _, counts, inertia, labels = level.full_pass(final_blocks(), with_sums=False,
                                                     keep_labels=keep_labels)
        if rounds >= max_rounds or not _reseed_empty(level, counts, final_blocks):
            level.counts = counts.clone()
            if rounds:  # centroids moved: the sample's labels must follow
                sample_labels = level.book.nearest(lloyd_rows)
            return labels, inertia, counts, sample_labels
        rounds += 1


def _reseed_empty(level: KMeansLevel, counts: torch.Tensor, make_blocks) -> bool:
    empty = (counts == 0).nonzero()[:, 0]
    if empty.numel() == 0:
        return False
    level.reseed(empty, level.worst_rows(make_blocks(), empty.numel()))
    return True
