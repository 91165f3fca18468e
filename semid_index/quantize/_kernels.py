"""Distance kernels: squared Euclidean distances in GEMM form, chunked, fp32 accumulation.

``d(x, c) = ||x||^2 - 2 x.c + ||c||^2``. For the argmin only ``||c||^2 - 2 x.c`` matters, which is a
single ``linear(x, -2C, ||c||^2)`` call: one GEMM with the bias add fused, no (B, K, D) broadcast.

Two GEMM routes exist on CPU and give the same codes (tested):

* ``"mkldnn"``: oneDNN's inner product through ``torch.ops.mkldnn._linear_pointwise`` (an internal
  op): the default wherever this torch build has it. On the 2-core AMD EPYC (AVX-512) machine of
  2026-12-02 it ran the Lloyd products 1.8-3.5x faster than MKL's path (50k x 384 rows against 32
  and 256 centroids, 1 and 2 threads), and k-means++'s skinny (n x 7) products 2-3x faster; on
  another AMD machine an earlier session saw ``linear`` encode 5-10% faster, so it stays a choice;
* ``"linear"``: ``torch.nn.functional.linear`` (public API), what CUDA uses and the fallback.

``SEMID_GEMM=linear|mkldnn`` or :func:`set_gemm_backend` choose the route of the main products.
Choices never depend on timings taken at run time, so the same machine always computes the same
codes.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ._bf16 import Bf16Level, Bf16Stats

_BACKENDS = ("linear", "mkldnn")
_backend: str | None = os.environ.get("SEMID_GEMM") or None  # None: decided at first use
if _backend is not None and _backend not in _BACKENDS:  # pragma: no cover - misconfiguration
    raise ConfigError(f"SEMID_GEMM={_backend!r} is not one of {_BACKENDS}")

#: Upper bound on the (rows x K) score block computed at once, in floats (4 MiB): large enough
#: for efficient GEMMs, small enough that the argmin reads the block from cache. With 16 MiB
#: blocks, scoring GloVe's 400k x 50 rows against 32 centroids took 22-24 ms against 12-13
#: (64: 33 against 24; 100k x 384 against 256: 61-73 against 53); smaller blocks gain nothing.
SCORE_BLOCK = 1 << 20
#: The same bound on an accelerator (16 MiB), where there is no such cache effect and fewer,
#: larger kernels are cheaper.
DEVICE_SCORE_BLOCK = 4 << 20


def mkldnn_available() -> bool:
    """True if oneDNN's fp32 inner product can be called on this build."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        op(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(4), "none", [], "")
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False
    return True


def set_gemm_backend(name: str) -> None:
    """Select the CPU GEMM route of the distance products: ``"mkldnn"`` (default where
    available) or ``"linear"``."""
    global _backend
    if name not in _BACKENDS:
        raise ConfigError(f"unknown GEMM backend {name!r}; choose one of {_BACKENDS}")
    if name == "mkldnn" and not mkldnn_available():
        raise ConfigError("the mkldnn GEMM backend is not available in this torch build")
    _backend = name


def get_gemm_backend() -> str:
    """The CPU GEMM route of the distance products: ``"mkldnn"`` where this torch build has
    it, else ``"linear"``, unless set otherwise."""
    global _backend
    if _backend is None:
        _backend = "mkldnn" if mkldnn_available() else "linear"
    return _backend


_skinny_mkldnn: bool | None = None


def scores(x: torch.Tensor, neg2c: torch.Tensor, cnorm: torch.Tensor) -> torch.Tensor:
    """``||c||^2 - 2 x.c`` for every row and centroid.

    x: (B, D) float32; neg2c: (K, D) = -2 * centroids; cnorm: (K,) = ||c||^2. Returns (B, K).
    """
    if x.device.type == "cpu" and (_backend or get_gemm_backend()) == "mkldnn":
        return torch.ops.mkldnn._linear_pointwise(x, neg2c, cnorm, "none", [], "")
    return F.linear(x, neg2c, cnorm)


def skinny_scores(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``linear(x, w, b)`` for a handful of rows in w (k-means++ candidates): (n, t).

    oneDNN on the CPU whenever this torch build has it: MKL's path for such skinny products is
    2-3x slower here (a fixed choice: the same machine always seeds the same way).
    """
    global _skinny_mkldnn
    if x.device.type == "cpu":
        if _skinny_mkldnn is None:
            _skinny_mkldnn = mkldnn_available()
        if _skinny_mkldnn:
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return F.linear(x, w, b)


def block_rows(k: int, requested: int | None = None, device: torch.device | None = None) -> int:
    """Rows per score block so that a (rows, k) block stays under :data:`SCORE_BLOCK` floats
    (:data:`DEVICE_SCORE_BLOCK` on a device other than the CPU)."""
    limit = SCORE_BLOCK if device is None or device.type == "cpu" else DEVICE_SCORE_BLOCK
    rows = max(64, limit // max(k, 1))
    return min(rows, requested) if requested else rows


def argmin_rows(s: torch.Tensor) -> torch.Tensor:
    """Index of the smallest entry of every row of s (B, K): (B,) int64.

    On the CPU numpy's SIMD argmin is 2-6x faster than torch's for K >= 64, and it runs on
    torch's thread count, a slice of rows per thread (numpy releases the GIL): 16k x 256 takes
    0.64 ms on 2 threads against 0.89 on one and 2.0 for torch's. For fewer codes torch's
    (threaded) is as fast or faster (131k x 32: 4.0 ms against 6.0 for numpy on one thread). All
    return the first minimum, so the choice never changes a code.
    """
    if s.device.type != "cpu" or s.shape[1] < 64:
        return s.argmin(1)
    a = s.detach().numpy()
    parts = min(torch.get_num_threads(), a.shape[0] // ARGMIN_SLICE)
    if parts < 2 or in_row_pool():
        return torch.from_numpy(np.argmin(a, axis=1))
    out = np.empty(a.shape[0], dtype=np.int64)
    cuts = [a.shape[0] * i // parts for i in range(parts + 1)]

    def one(i: int) -> None:
        np.argmin(a[cuts[i]:cuts[i + 1]], axis=1, out=out[cuts[i]:cuts[i + 1]])

    list(_row_pool(parts).map(one, range(parts)))
    return torch.from_numpy(out)


#: Fewest rows per thread of a threaded argmin (below it one thread is as fast).
ARGMIN_SLICE = 1024
_pool: ThreadPoolExecutor | None = None


def _row_pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of at least ``workers`` threads, each of which runs torch's OpenMP
    regions on one thread (see :func:`row_parallel`); a forked child makes its own pool (the
    parent's threads do not exist there)."""
    global _pool
    if _pool is None or _pool._max_workers < workers:
        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool = ThreadPoolExecutor(workers, thread_name_prefix="semid-rows",
                                   initializer=_one_omp_thread)
    return _pool


def _forget_pool() -> None:
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)


def _omp_library():
    """The OpenMP runtime torch's CPU kernels (ATen and oneDNN) run on, as a ctypes library
    with ``omp_set_num_threads``, or None where it cannot be found (not Linux, torch not built
    on OpenMP, an unknown runtime): :func:`row_parallel` is then not used."""
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            maps = f.read()
    except OSError:
        return None
    names = sorted({line.split()[-1] for line in maps.splitlines()
                    if re.search(r"/lib(gomp|iomp5|omp)[^/]*\.so", line)})
    # other packages (faiss, scikit-learn) load their own copies: torch's is in its own folder
    home = os.path.dirname(os.path.realpath(torch.__file__)) + os.sep
    own = [p for p in names if os.path.realpath(p).startswith(home)]
    names = own or names
    if len(names) != 1:  # none, or several runtimes: which one torch uses is unclear
        return None
    try:
        lib = ctypes.CDLL(names[0])
        lib.omp_set_num_threads.argtypes = [ctypes.c_int]
        lib.omp_get_max_threads.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib


_omp: object | None = None
_omp_checked = False
_local = threading.local()
_pool_env = os.environ.get("SEMID_ROW_POOL")
if _pool_env is not None and _pool_env not in ("0", "1"):  # pragma: no cover - misconfiguration
    raise ConfigError(f"SEMID_ROW_POOL={_pool_env!r}: use 1 (use the row pool) or 0 (do not)")
_pool_on = _pool_env != "0"


def set_row_pool(enabled: bool) -> None:
    """Turn the row pool (:func:`row_parallel`) on (default, where the build allows it) or
    off: blocks then run one after another on torch's threads. The codes are the same either
    way. (Environment: ``SEMID_ROW_POOL=0`` / ``1``.)"""
    global _pool_on
    if not isinstance(enabled, bool):
        raise ConfigError(f"set_row_pool takes True or False, got {enabled!r}")
    _pool_on = enabled


def row_pool_available() -> bool:
    """Whether :func:`row_parallel` runs blocks on the row pool in this process: turned on,
    several torch threads, the oneDNN GEMM route, and torch's OpenMP runtime found."""
    return _pool_on and torch.get_num_threads() >= 2 and \
        (_backend or get_gemm_backend()) == "mkldnn" and _get_omp() is not None


def in_row_pool() -> bool:
    """True in a thread of the row pool: work there runs on that thread alone (a nested
    :func:`row_parallel` or threaded argmin would wait on the pool it runs in)."""
    return getattr(_local, "worker", False)


def _get_omp():
    global _omp, _omp_checked
    if not _omp_checked:
        _omp, _omp_checked = _omp_library(), True
    return _omp


def _one_omp_thread() -> None:
    """Pool thread start: let torch initialise this thread's OpenMP setting (it does so on
    first use, to torch's global thread count), then lower it to 1 for this thread only (an
    OpenMP thread count belongs to the thread that sets it). Torch's own setting, and every
    other thread's, are unchanged."""
    _local.worker = True
    torch.get_num_threads()  # torch's lazy per-thread OpenMP initialisation happens here
    lib = _get_omp()
    if lib is not None:
        lib.omp_set_num_threads(1)


#: Fewest scores (rows x codes) a nearest-centroid search needs before it goes to the row pool.
#: Each call pays a fixed hand-over: the pool threads wake, and torch's own OpenMP workers spin
#: for a while after the caller's last parallel region, taking a core from them; a fit makes
#: tens of such calls per level. On 2 cores, fits of 9k-100k rows ran 4-30% slower on the pool
#: and fits of 200k-400k rows 12-21% faster (D = 32-384, K = 128-256; MovieLens 9,066 x 384 at
#: 3 x 256: 0.78 s on the pool, 0.61 s without).
POOL_MIN_SCORES = 1 << 25


def use_row_pool(n: int, k: int) -> bool:
    """Whether a call scoring ``n`` rows against ``k`` codes each (k >= 64) is worth the row
    pool (:data:`POOL_MIN_SCORES`); below 64 codes torch's threaded argmin of one large block
    is as fast."""
    return k >= 64 and n * k >= POOL_MIN_SCORES


def row_parallel(n: int, rows: int, fn) -> bool:
    """Run ``fn(a, b)`` on every row block [a, b) of ``rows`` rows of 0..n, spread over torch's
    thread count of pool threads that each run torch single-threaded, and return True; or
    return False (nothing run) where that is not possible: fewer than two blocks, called from
    the pool, or not :func:`row_pool_available` (turned off, one thread, no OpenMP runtime
    found, or the GEMM not on oneDNN: MKL's threads are not per thread).

    Why: a (rows, K) score block made by one thread and reduced by the same thread stays in
    that core's L2 cache; one GEMM split over all threads writes the whole block out to shared
    cache before the argmin reads it back. For narrow rows (GloVe's D = 50 at K = 256) that
    traffic is a third of the time. Every block is computed exactly as in one thread, so the
    results do not depend on which thread took it. ``fn`` must not itself use the pool.
    """
    if n < 2 * rows or in_row_pool() or not row_pool_available():
        return False
    threads = torch.get_num_threads()
    starts = iter(range(0, n, rows))
    lock = threading.Lock()

    def work(_: int) -> None:
        while True:  # blocks are taken in turn, so a thread slowed by a neighbour takes fewer
            with lock:
                a = next(starts, None)
            if a is None:
                return
            fn(a, min(n, a + rows))

    list(_row_pool(threads).map(work, range(min(threads, -(-n // rows)))))
    return True


def cache_rows(width: int, dim: int) -> int:
    """Rows per block of :func:`row_parallel` work on rows of ``dim`` floats scored against
    ``width`` centroids: the block and its scores in about 2 MiB, a core's L2 cache on the
    machines measured; 512 to 4096 rows (smaller blocks make the GEMM itself slower)."""
    return int(min(4096, max(512, (1 << 19) // max(width + dim, 1))))


class Codebook:
    """Precomputed GEMM operands of one codebook: centroids (K, D), -2C and ||c||^2, and the
    prices of a balanced fit.

    ``price`` (G, K), when given, is added to every code's squared distance before the argmin:
    row ``g`` for items whose code at the level above is ``g`` (G = 1 at the first level). These
    are the prices of balanced training (:mod:`._balance`), under which the items of each parent
    code spread near-evenly over this level's codes. Distances returned by :meth:`nearest` are
    true squared distances (the price is not in them).
    """

    __slots__ = ("centroids", "neg2c", "cnorm", "price")

    def __init__(self, centroids: torch.Tensor, price: torch.Tensor | None = None):
        self.centroids = centroids
        self.neg2c = (-2.0 * centroids).contiguous()
        self.cnorm = (centroids * centroids).sum(1)
        self.price = None if price is None or not bool(price.any()) else price

    def priced(self, s: torch.Tensor, parent: torch.Tensor | None) -> torch.Tensor:
        """Add the prices to scores s (B, K) in place, row by row of the items' parent codes."""
        if self.price is not None:
            s.add_(self.price[0] if self.price.shape[0] == 1 or parent is None
                   else self.price.index_select(0, parent))
        return s

    def nearest(self, x: torch.Tensor, *, with_dist: bool = False,
                parent: torch.Tensor | None = None):
        """Nearest centroid of every row of x (B, D) (under the prices, for items whose code at
        the level above is ``parent`` (B,)): labels (B,) int64 [, squared dist (B,)].

        Processed in row blocks so the score matrix stays small for any K; on a CPU with
        several threads and a large call (:func:`use_row_pool`), blocks that fit a core's
        cache, one per thread at a time (:func:`row_parallel`: GloVe's 400k x 50 rows against
        256 centroids in 46 ms instead of 63, against 64 in 22 instead of 28).
        """
        k = self.centroids.shape[0]
        n = x.shape[0]
        if x.device.type == "cpu" and use_row_pool(n, k):
            lab = torch.empty(n, dtype=torch.int64)
            dist = torch.empty(n, dtype=x.dtype) if with_dist else None

            def block(a: int, b: int) -> None:
                got = self._nearest(x[a:b], with_dist, None if parent is None else parent[a:b])
                if dist is None:
                    lab[a:b] = got
                else:
                    lab[a:b], dist[a:b] = got

            if row_parallel(n, cache_rows(k, x.shape[1]), block):
                return (lab, dist) if with_dist else lab
        rows = block_rows(k, device=x.device)
        if n <= rows:
            return self._nearest(x, with_dist, parent)
        parts = [self._nearest(x[a:a + rows], with_dist,
                               None if parent is None else parent[a:a + rows])
                 for a in range(0, n, rows)]
        if with_dist:
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return torch.cat(parts)

    def _nearest(self, x, with_dist, parent):
        s = self.priced(scores(x, self.neg2c, self.cnorm), parent)
        lab = argmin_rows(s)
        if not with_dist:
            return lab
        m = ((self.centroids.index_select(0, lab) * x).sum(1).mul_(-2.0)
             .add_(self.cnorm.index_select(0, lab))) if self.price is not None else \
            s.gather(1, lab.unsqueeze(1)).squeeze(1)
        return lab, m.add_(row_sq_norms(x)).clamp_(min=0.0)


def row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of every row of x (B, D) -> (B,), without a (B, D) temporary."""
    return torch.linalg.vector_norm(x, dim=1).square_()


def sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact-form squared Euclidean distances, (B, D) x (K, D) -> (B, K), clamped at 0."""
    d = F.linear(x, -2.0 * y, (y * y).sum(1))
    d += (x * x).sum(1, keepdim=True)
    return d.clamp_(min=0.0)


def normalize_rows_(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalise rows in place (``x / max(||x||, eps)``) and return the original norms (B,)."""
    norms = torch.linalg.vector_norm(x, dim=1)
    x.div_(norms.clamp(min=eps).unsqueeze(1))
    return norms


class Encoder:
    """Greedy residual encoding of row blocks with every level fused.

    Two exact formulations of the same greedy argmin, picked by shape:

    * *cross-term* (D >= largest K, plain residuals): one GEMM ``x @ [C_1; ...; C_L]^T`` gives
      every level's ``x.c``; the residual's effect on later levels is the precomputed
      ``c_l . c_m`` table, so level l adds one (B, K_m) row gather per later level instead of
      touching the (B, D) residual. The input block is only read, never copied.
    * *residual*: per level one ``linear(r, -2C, ||c||^2)`` and ``r -= C[codes]`` on a work copy
      (used for small D, for normalised residuals, and when residual norms are wanted).
    """

    def __init__(self, books: list[Codebook], normalize: bool, bf16: bool = False):
        self.books = books
        self.normalize = normalize
        self.sizes = [b.centroids.shape[0] for b in books]
        self.dim = dim = books[0].centroids.shape[1]
        self.cross = not normalize and len(books) > 1 and dim >= max(self.sizes)
        if self.cross:
            cents = [b.centroids for b in books]
            self.neg2c_all = torch.cat([b.neg2c for b in books])       # (sum K, D)
            self.cnorm_all = torch.cat([b.cnorm for b in books])       # (sum K,)
            self.offsets = np.cumsum([0] + self.sizes).tolist()
            # 2 c_l . c_m in float64 then cast: added back when level l picks a centroid
            self.cross_terms = {(l, m): (2.0 * cents[l].double() @ cents[m].double().T).float()
                                for l in range(len(cents)) for m in range(l + 1, len(cents))}
        #: bf16 first pass (see :mod:`._bf16`): per-level operands and bound weights, and
        #: what it did (rows, rows re-scored in fp32, near-ties among them)
        self.bf16 = [Bf16Level(b) for b in books] if bf16 else None
        self.stats = Bf16Stats()

    def encode(self, x: torch.Tensor, out: torch.Tensor, work: torch.Tensor | None = None,
               residual_dist: list[torch.Tensor] | None = None) -> None:
        """Codes of block x (B, D) into out (B, L) int64.

        ``work``, if given, is a (>= B, D) scratch buffer for the residual form (x is then left
        untouched); without it x itself is overwritten by that form. With ``residual_dist`` (a list)
        the squared norm of the residual entering each level (before any normalisation) and of the
        final one are appended as (B,) tensors.
        """
        if self.bf16 is not None and residual_dist is None:
            self._encode_bf16(x, out, work)
            return
        if self.cross and residual_dist is None:
            self._encode_cross(x, out)
            return
        if work is not None:
            w = work[:x.shape[0]]
            w.copy_(x)
            x = w
        encode_block(x, self.books, self.normalize, out, residual_dist)

    def _encode_cross(self, x, out):
        s = scores(x, self.neg2c_all, self.cnorm_all)  # ||c||^2 - 2 x.c, every level at once
        off = self.offsets
        lab = None
        for l in range(len(self.sizes)):
            lab = argmin_rows(self.books[l].priced(s[:, off[l]:off[l + 1]], lab))
            out[:, l] = lab
            for m in range(l + 1, len(self.sizes)):
                # score of level m against r = x - c_l[lab]: ... - 2 r.c_m = ... - 2 x.c_m + 2 c_l.c_m
                s[:, off[m]:off[m + 1]].add_(self.cross_terms[(l, m)].index_select(0, lab))


    def _encode_bf16(self, x: torch.Tensor, out: torch.Tensor, work: torch.Tensor | None):
        """Residual encoding with the bf16 first pass of :mod:`._bf16` at every level: the fp32
        codes (x is left untouched)."""
        assert self.bf16 is not None
        n = x.shape[0]
        r = x.clone() if work is None else work[:n]
        if work is not None:
            r.copy_(x)
        lab = None
        for level, book in enumerate(self.books):
            if self.normalize:
                normalize_rows_(r)
            lab = self.bf16[level].nearest(r, book, lab, self.stats)
            out[:, level] = lab
            r.sub_(book.centroids.index_select(0, lab))
        self.stats.rows += n


def encode_block(x: torch.Tensor, books: list[Codebook], normalize: bool,
                 out: torch.Tensor, residual_dist: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Greedy residual encoding of one row block, level by level; x is overwritten.

    x: (B, D) float32 work buffer holding the input rows; out: (B, L) int64 receives the codes.
    If ``residual_dist`` is a list, the squared norm of the residual entering each level (before any
    normalisation) and of the one left after the last level are appended ((B,) tensors).
    Returns x, which now holds the final residual.
    """
    lab = None
    for level, book in enumerate(books):
        if residual_dist is not None:
            residual_dist.append(row_sq_norms(x))
        if normalize:
            normalize_rows_(x)
        lab = book.nearest(x, parent=lab)
        out[:, level] = lab
        x.sub_(book.centroids.index_select(0, lab))
    if residual_dist is not None:
        residual_dist.append(row_sq_norms(x))
    return x
