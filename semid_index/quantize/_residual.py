"""ResidualKMeans: hierarchical codes from a stack of mini-batch k-means codebooks."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .._inputs import MODEL_OPTIONS, hierarchy, model_options
from ..errors import (ConfigError, DimensionMismatchError, DistributedError, EmptyInputError,
                      NotFittedError, TooFewItemsError)
from ._data import Source, as_float_tensor, check_batch, make_source
from ._dist import Shard, abandon as _abandon, agree, group as _group, options_digest as _options_digest, rank as _rank
from ._kernels import Codebook, Encoder, normalize_rows_, row_sq_norms
from ._kmeans import REASSIGN_WINDOW, KMeansLevel, kmeans_plusplus
from ._inference import CodesMixin
from ._lloyd import lloyd

log = logging.getLogger("semid_index.quantize")

GRID_INIT_BUFFER = 3072
_BLOCK = 1 << 14  # rows per block for memory-bound passes over buffers
STEP_ROWS_PER_CENTROID = 1000  # default mini-batch budget per level, in rows per centroid
#: Default ``exact_work``: Lloyd runs on every row, to convergence, while one iteration costs at
#: most this many multiply-adds (N x K x D): 100k x 256 x 384 and GloVe's 400k x 256 x 50 qualify,
#: 1M x 256 x 768 does not. About 0.1 s per iteration on a 2-core machine.
EXACT_WORK = 1 << 34
EXACT_BYTES = 1 << 30  # ... and the rows fit in 1 GiB of float32
EXACT_ITERATIONS, EXACT_TOL = 100, 1e-4  # n_polish / polish_tol defaults of that regime
POLISH_ITERATIONS, POLISH_TOL = 10, 1e-3  # ... and after mini-batch training


@dataclass
class FitLog:
    """What happened while fitting one level (kept in ``ResidualKMeans.history_``)."""

    level: int
    steps: int             #: mini-batch steps (0 when the level trained by exact Lloyd)
    converged: bool        #: the Lloyd iterations reached polish_tol (mini-batch: early stop)
    reassigned: int
    inertia: float
    empty_codes: int
    iterations: int = 0    #: exact Lloyd iterations run
    largest_code: int = 0  #: rows in the most used code of the training rows


class ResidualKMeans(CodesMixin):
    """Residual mini-batch k-means: maps embeddings (N, D) to hierarchical codes (N, L).

    Level ``l`` clusters the residual left by levels ``< l``; an item's code at level ``l`` is the
    nearest centroid to its residual (greedy, so the level-1 code is the nearest level-1 centroid).

    Parameters
    ----------
    n_levels : int, default 3
        Number of codebooks L (hierarchy depth of the IDs).
    codebook_size : int or sequence of int, default 256
        Centroids per level: one int for every level, or one per level.
    normalize_residuals : bool, default False
        L2-normalise the input and every residual before it is quantised (GRID's behaviour). With
        ``False`` the sum of an item's centroids reconstructs it.
    train_layer_wise : bool, default True
        Train level 1 to the end, then level 2 on its residuals, and so on. ``False`` updates every
        level on every mini-batch (joint training).
    batch_size : int, default 4096
        Rows per mini-batch step.
    max_epochs : float, default 3.0
        Upper bound on mini-batch passes over the training sample per level.
    max_steps : int or None
        Upper bound on mini-batch steps per level; default enough steps for about 1000 rows per
        centroid (``ceil(1000 K / batch_size)``: 63 for K=256). Lloyd iterations follow.
    tol : float, default 1e-4
        Early stop when the squared centre shift of a step falls below ``tol`` times the data
        variance; ``0`` disables it.
    max_no_improvement : int or None, default 10
        Early stop after this many steps without improvement of the smoothed batch inertia.
    train_size : int or None
        Rows of the training sample, drawn uniformly from the whole input (all rows when N is
        smaller); default ``512 K`` rows or 256 MiB of them, whichever is smaller. Every level
        trains on it (faiss trains on ``256 K``); the input itself is only read, so N is bounded by
        the disk, not by RAM.
    init_size : int or None
        Rows of the training sample used for k-means++ seeding; default between ``32 K`` and
        ``64 K`` rows, as many as fit in about 12 MiB (8192 rows at D=768 and K=256, 16384 at
        D=50).
    n_init_trials : int or None
        Candidates per k-means++ step; default ``2 + int(ln K)``.
    reassign_empty : bool, default True
        During mini-batch steps, re-seed a centroid that got no point while ``min(n, 50 K)`` rows
        went by (a dead code) onto a poorly served point.
    exact_work : float, default 2**34
        Quality first where it is cheap: when one Lloyd iteration over *all* rows costs at most
        this many multiply-adds (N x K x D, largest K) and the rows fit in 1 GiB, every level
        trains by exact Lloyd iterations on all rows, to convergence (``n_polish`` up to 100,
        ``polish_tol`` 1e-4), with no mini-batch phase and no sampling (``train_size`` and
        ``max_steps`` unset). Larger inputs take the mini-batch path on a sample. ``0`` always
        takes the mini-batch path.
    n_polish : int or None
        At most this many exact Lloyd iterations at the end of each level (default 10 after
        mini-batch training, 100 in the exact regime); a code still empty then is re-seeded on the
        worst-served row, so training leaves no unused code (on the sample, hence on the data) when
        there are at least K distinct rows.
    polish_tol : float or None
        Lloyd iterations stop once one changes the inertia by less than this fraction (default
        1e-3 after mini-batch training, 1e-4 in the exact regime).
    balance : float or None, default None
        Balanced codes: with a slack ``s >= 0``, every level's assignment is capacity-constrained
        during the Lloyd iterations, no code holding more than ``ceil((1 + s) n / K)`` of the
        training rows, by per-code prices added to the distance (``prices_``; see
        :mod:`semid_index.quantize._balance`). Encoding adds the same prices, so new items spread
        like the training rows. Costs reconstruction error (dense regions are split), buys
        near-uniform code sizes; ``0.1`` is a good start, ``0`` asks for exact balance. The
        price auction stops at a round budget, so sizes end within about ``(1 +- (s + 0.1))``
        times the even share. A list gives one slack (or None: unbalanced) per level. Every
        level balances its codes over all items (prices (1, K_l)): even token frequencies per
        level. (Room for every item under its prefix is ``max_per_code``'s job; a balanced
        level takes no training cap from it.) Needs the layer-wise default mode.
    max_per_code : int or None, default None
        The capacity of a full code that an index will enforce by relocation (see
        :class:`~semid_index.SemanticIdIndex`). Training then keeps the prefixes of the first
        two levels (not the last) within what the levels below them can tell apart: at most
        ``max_per_code * K_(l+1) * ... * K_L`` rows on one level-``l`` prefix, by the same
        prices as ``balance``, raised only where a prefix overflows (scaled by the training
        share of the rows on the mini-batch path). Without it, a dense region can put more
        items on one prefix than it has full codes, and those items collide whatever relocation
        does. Nothing changes where no prefix overflows; a level whose codes cannot hold the
        catalog at that cap is left alone. Deeper prefixes (4+ levels), GRID mode and joint
        training rely on relocation only (they train as without it).
    precision : {"fp32", "bf16"}, default "fp32"
        How :meth:`encode` scores codes. ``"bf16"``: a bfloat16 first pass with a proven
        error bound, and fp32 re-scoring of the codes it cannot tell apart, so the codes are
        the fp32 codes (they can differ only at exact fp32 ties). Used where the hardware
        multiplies bf16 several times faster than fp32 (AMX, CUDA); elsewhere (AVX512-BF16
        alone, where it measured slower than fp32) it falls back to fp32 and logs it once (:func:`~semid_index.quantize.bf16_fast`; override with
        :func:`~semid_index.quantize.set_bf16_fast` or ``SEMID_BF16=0/1``). Training always
        runs in fp32.
    init : "k-means++", sequence of (K_l, D) arrays, or a fitted ResidualKMeans
        How each level starts: greedy k-means++ seeding, or given centroids (a warm start, e.g.
        the codebooks of a previous fit: a refit on a grown catalog then keeps most items'
        prefixes; a fitted model also passes its balanced prices). Given centroids skip the
        mini-batch phase and go straight to Lloyd iterations.
    check_input : bool, default True
        Read every row once to reject NaN/inf anywhere, not only in the sampled rows.
    seed : int, default 0
        Same seed and data give the same codes.
    device : str or torch.device, default "cpu"
        Where codebooks live and distances are computed ("cpu", "cuda", "cuda:1").
    verbose : bool, default False
        Show a progress bar per level (and log each level's result at INFO).
    mode : {"default", "grid"}
        ``"grid"`` reproduces GRID's training: input and residuals normalised, plain k-means++ on
        the first ``init_size`` (3072) rows each level sees, Sculley updates with counts starting
        after seeding, no reassignment and no polishing, ``max_steps`` split evenly over levels.
        Use :meth:`grid` to build one with GRID's defaults.

    Attributes (after fit)
    ----------------------
    codebooks_ : list of (K_l, D) float32 tensors
    prices_ : list of (K_l,) float32 tensors, per-code prices added to the squared distance when
        encoding (zeros unless trained with ``balance``)
    counts_ : list of (K_l,) float64 tensors, points assigned per centroid in the final pass
    residual_scales_ : (L,) float64 tensor, mean norm of the residual entering each level (before
        normalisation; only meaningful with ``normalize_residuals``)
    n_features_in_ : int
    history_ : list of :class:`FitLog`

    Example
    -------
    >>> import torch
    >>> from semid_index.quantize import ResidualKMeans
    >>> x = torch.randn(2000, 32, generator=torch.Generator().manual_seed(0))
    >>> rq = ResidualKMeans(n_levels=2, codebook_size=16, seed=0).fit(x)
    >>> rq.encode(x).shape
    torch.Size([2000, 2])
    """

    def __init__(self, n_levels: int = 3, codebook_size: int | Sequence[int] = 256, *,
                 normalize_residuals: bool = False, train_layer_wise: bool = True,
                 batch_size: int = 4096, max_epochs: float = 3.0, max_steps: int | None = None,
                 tol: float = 1e-4, max_no_improvement: int | None = 10,
                 init_size: int | None = None, n_init_trials: int | None = None,
                 reassign_empty: bool = True, n_polish: int | None = None,
                 polish_tol: float | None = None, train_size: int | None = None,
                 check_input: bool = True, seed: int = 0,
                 device: str | torch.device = "cpu", mode: str = "default",
                 exact_work: float = EXACT_WORK, balance: float | None = None,
                 max_per_code: int | None = None, init: str | Sequence = "k-means++",
                 precision: str = "fp32", verbose: bool = False):
        self.n_levels = n_levels
        self.codebook_size = codebook_size
        self.normalize_residuals = normalize_residuals
        self.train_layer_wise = train_layer_wise
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.max_steps = max_steps
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.init_size = init_size
        self.n_init_trials = n_init_trials
        self.reassign_empty = reassign_empty
        self.n_polish = n_polish
        self.train_size = train_size
        self.check_input = check_input
        self.polish_tol = polish_tol
        self.seed = seed
        self.device = device
        self.mode = mode
        self.exact_work = exact_work
        self.balance = balance
        self.max_per_code = max_per_code
        self.init = init
        self.precision = precision
        self.verbose = verbose

    @classmethod
    def grid(cls, n_levels: int = 3, codebook_size: int | Sequence[int] = 256, *,
             batch_size: int = 2048, total_steps: int = 30, init_buffer_size: int = GRID_INIT_BUFFER,
             train_layer_wise: bool = True, seed: int = 0,
             device: str | torch.device = "cpu") -> "ResidualKMeans":
        """A model configured like GRID's residual k-means (its defaults: 3 x 256, batch 2048,
        30 steps in total, 3072-row seeding buffer, normalised residuals, layer-wise)."""
        return cls(n_levels, codebook_size, normalize_residuals=True,
                   train_layer_wise=train_layer_wise, batch_size=batch_size, max_epochs=math.inf,
                   max_steps=total_steps, tol=0.0, max_no_improvement=None,
                   init_size=init_buffer_size, n_init_trials=1, reassign_empty=False,
                   n_polish=0, seed=seed, device=device, mode="grid")

    # ------------------------------------------------------------------ validation helpers
    def _check_params(self) -> list[int]:
        """The codebook sizes, after checking every parameter (the same rules as an index's
        stored options, :data:`semid_index._inputs.MODEL_OPTIONS`)."""
        sizes = hierarchy(self.n_levels, self.codebook_size)
        opts = {name: getattr(self, name) for name in MODEL_OPTIONS}
        opts["device"] = str(opts["device"])
        model_options(opts)
        if self.init_size is not None and self.init_size < max(sizes):
            raise ConfigError(f"init_size={self.init_size} is smaller than the largest codebook "
                              f"({max(sizes)})")
        if isinstance(self.balance, (list, tuple)) and len(self.balance) != len(sizes):
            raise ConfigError(f"balance has {len(self.balance)} entries for {len(sizes)} levels")
        self._initial_books(sizes, None)
        _ = self._device  # refuse a device this torch build cannot use, before any work
        return sizes

    @property
    def _device(self) -> torch.device:
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError, ValueError):
            raise ConfigError(f"device {self.device!r} is not a torch device name (e.g. 'cpu', "
                              "'cuda', 'cuda:1')") from None
        if not _device_available(dev):
            raise ConfigError(f"device {self.device!r}: this torch build has no usable "
                              f"{dev.type.upper()} device; use device='cpu'")
        return dev

    def _check_fitted(self) -> None:
        if not hasattr(self, "codebooks_"):
            raise NotFittedError(
                "this ResidualKMeans is not fitted yet: call fit() or partial_fit() first, "
                "or build it with ResidualKMeans.from_codebooks()")

    # ------------------------------------------------------------------ training
    def fit(self, X, y=None, *, distributed=False) -> "ResidualKMeans":
        """Train every level on X and return self.

        X: (N, D) ``torch.Tensor`` / ``numpy.ndarray`` (any real dtype, converted to float32 per
        chunk), a ``numpy.memmap`` or a path to a ``.npy`` file (streamed, never loaded whole), or a
        re-iterable of (B, D) batches (a list, a DataLoader, or a callable returning an iterator).
        Needs N >= max(codebook_size). Training runs on a uniform sample of ``train_size`` rows;
        a failed fit leaves the previous model untouched.

        distributed : False, True (the default torch.distributed process group) or a process
        group. Data-parallel training: every rank of an initialised group calls ``fit`` with
        the same options and *its own shard* of the rows (an array, a memmap slice or a
        ``.npy`` path; the shards in rank order make up the catalog, and may differ in size;
        a (0, D) array is an empty shard).
        Each rank reads only its rows of the training sample; every step adds up per-centroid
        sums and counts over the ranks with ``all_reduce``, so every rank ends with the same
        codebooks, equal to one process's fit of the concatenated rows up to float rounding
        (see the README's "Beyond one machine"). An error on any rank (bad rows, a dead peer)
        raises on every rank (:class:`~semid_index.DistributedError` where another rank
        failed) and leaves every model as it was. Not with ``balance``, ``max_per_code`` or
        GRID mode. The group must carry CPU tensors: ``init_process_group("gloo")``, or
        ``"cpu:gloo,cuda:nccl"`` when the model's device is a GPU.
        """
        group = _group(distributed)
        saved = dict(self.__dict__)
        try:
            if group is None:
                sizes = self._check_params()
                return self._fit(make_source(X), sizes)
            return self._fit_distributed(X, group)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)  # a failed fit leaves the previous model as it was
            raise

    def _fit(self, src: Source, sizes: list[int]) -> "ResidualKMeans":
        gen = torch.Generator().manual_seed(int(self.seed))
        if src.n_rows is None or (self.check_input and not src.checked):
            # one streaming pass: learns N for iterables and rejects NaN/inf anywhere in the data,
            # not only in the rows the training sample happens to draw
            for _ in src.chunks(1 << 16, copy=False):
                pass
        if not src.n_rows:
            raise EmptyInputError("embeddings are empty: the batches yielded no rows")
        _check_enough(sizes, src.n_rows)
        assert src.dim is not None  # known once a row was read
        self._reset(src.dim, sizes)
        if self.mode == "grid":
            return self._fit_grid(src, gen)
        self._exact = self._exact_regime(src.n_rows, max(sizes), src.dim)
        train_n = src.n_rows if self._exact else \
            min(src.n_rows, self.train_size or _default_train_size(max(sizes), src.dim))
        init_n = min(train_n, self.init_size or _default_init_size(max(sizes), src.dim))
        inits = self._initial_books(sizes, src.dim)
        if self._exact and type(src).materialize is not Source.materialize:
            # every row, in storage order (one copy, no shuffle); k-means++ seeds each level on
            # the same uniform random init_n of them
            x = src.materialize().to(self._device)
            self._init_rows: torch.Tensor | None = torch.randperm(x.shape[0], generator=gen)[:init_n].to(x.device)
        else:
            # one uniform sample in random order (any prefix of it is uniform too) trains every
            # level: the first init_n rows seed it, mini-batches and Lloyd run over all of it
            x = src.sample(train_n, gen).to(self._device)
        self._shard = Shard(x.shape[0])
        self._caps = _level_caps(self.max_per_code if self.train_layer_wise else None, sizes,
                                 x.shape[0], src.n_rows)
        return self._train(x, init_n, gen, inits)

    def _train(self, x: torch.Tensor, init_n: int, gen, inits) -> "ResidualKMeans":
        """Train every level on x (this process's rows of the training matrix, ``_shard``)."""
        if not self._exact:
            self._variance = _variance(x, self._shard)
        if self.train_layer_wise:
            for lv in range(len(self.codebook_sizes_)):
                self._fit_level(lv, x, init_n, gen, None if inits is None else inits[lv])
        else:
            self._fit_joint(x, init_n, gen)
        self._finish()
        return self

    def _fit_distributed(self, X, group) -> "ResidualKMeans":
        """fit() on this rank's shard X: see ``distributed`` there. Every check that can fail
        on one rank alone runs inside :func:`agree`, so all ranks fail together."""
        got: dict = {}

        def check() -> list[int]:
            sizes = got["sizes"] = self._check_params()
            src = got["src"] = _shard_source(X)
            if self.mode == "grid" or self.balance is not None or self.max_per_code is not None:
                raise ConfigError("a distributed fit takes neither balance, max_per_code nor "
                                  "GRID mode (their steps need every row in one process)")
            if src.n_rows is None:
                raise ConfigError("a distributed fit reads its training rows by position: give "
                                  "each rank an array, a memmap or a .npy path, not an "
                                  "iterable of batches")
            if self.check_input and not src.checked and src.n_rows:
                for _ in src.chunks(1 << 16, copy=False):
                    pass
            return [src.n_rows, -1 if src.dim is None else src.dim, int(self.seed) % (1 << 62),
                    _options_digest(self, sizes)]

        info = agree(group, check)
        src, sizes = got["src"], got["sizes"]
        gen = torch.Generator().manual_seed(int(self.seed))
        n_rows = [int(v) for v in info[:, 0]]
        dims = sorted({int(v) for v in info[:, 1]} - {-1})
        if len(dims) > 1:
            raise DimensionMismatchError(f"the ranks' embeddings have different dims: "
                                         f"{[int(v) for v in info[:, 1]]} (rank order)")
        if len({tuple(r[2:].tolist()) for r in info}) > 1:
            raise DistributedError(f"the ranks were given different seeds or options (seeds "
                                   f"{[int(v) for v in info[:, 2]]} in rank order); every rank "
                                   "must build the same ResidualKMeans")
        n = sum(n_rows)
        if n == 0:
            raise EmptyInputError("embeddings are empty: no rank has a row")
        _check_enough(sizes, n, f" on {len(n_rows)} ranks ({n_rows})")
        dim = dims[0]
        rank = _rank(group)
        lo, mine = sum(n_rows[:rank]), n_rows[rank]
        self._reset(dim, sizes)
        self._exact = self._exact_regime(n, max(sizes), dim)
        train_n = n if self._exact else \
            min(n, self.train_size or _default_train_size(max(sizes), dim))
        init_n = min(train_n, self.init_size or _default_init_size(max(sizes), dim))
        inits = self._initial_books(sizes, dim)
        if self._exact:  # every row in storage order, as in one process
            x = src.materialize() if mine else torch.empty(0, dim)
            pos = torch.arange(lo, lo + mine)
            self._init_rows = torch.randperm(n, generator=gen)[:init_n]
        else:  # this rank's rows of the one uniform sample, in sample order
            perm = torch.randperm(n, generator=gen)[:train_n]
            pos = ((perm >= lo) & (perm < lo + mine)).nonzero()[:, 0]
            order = (perm.index_select(0, pos) - lo).sort()
            x = src._take(order.values.numpy())[torch.argsort(order.indices)] if pos.numel() \
                else torch.empty(0, dim)
        self._shard = Shard(train_n, pos, group, distributed=True)
        self._caps = {}
        try:
            return self._train(x.to(self._device), init_n, gen, inits)
        except DistributedError:
            raise  # the group failed under us: nothing left to tell the others
        except BaseException:
            # failing here alone (interrupted, out of memory): the other ranks wait in a
            # collective this rank will not join; leaving the group ends their wait at once
            _abandon(group)
            raise

    def _exact_regime(self, n: int, k: int, dim: int) -> bool:
        """Whether fit() trains by exact Lloyd on all n rows (see ``exact_work``)."""
        return (self.train_layer_wise and self.train_size is None and self.max_steps is None
                and n * k * dim <= self.exact_work and 4 * n * dim <= EXACT_BYTES)

    def _initial_books(self, sizes: list[int], dim: int | None) -> list[torch.Tensor] | None:
        """The centroids of ``init`` (checked: one finite (K_l, D) array per level), or None for
        k-means++ seeding."""
        if isinstance(self.init, str):
            if self.init != "k-means++":
                raise ConfigError(f"init must be 'k-means++' or one (K_l, D) array per level, "
                                  f"got {self.init!r}")
            return None
        if self.mode != "default" or not self.train_layer_wise:
            raise ConfigError("init with given centroids needs the layer-wise default mode")
        source = self.init
        self._init_prices = None
        if isinstance(source, ResidualKMeans):  # a fitted model: its codebooks and prices
            prices = source.get_prices()
            if prices is not None:
                self._init_prices = _checked_prices(prices, sizes)
            source = source.get_codebooks()
        try:
            books = [as_float_tensor(b, name=f"init codebook {i + 1}")
                     for i, b in enumerate(source)]
        except TypeError:
            raise ConfigError("init must be 'k-means++' or a sequence of (K_l, D) arrays, got "
                              f"{type(self.init).__name__}") from None
        shapes = [tuple(b.shape) for b in books]
        want = [(k, dim if dim is not None else (b.shape[1] if b.ndim == 2 else -1))
                for k, b in zip(sizes, books)]
        if len(books) != len(sizes) or shapes != want:
            raise DimensionMismatchError(
                f"init has codebooks of shapes {shapes}; this model needs "
                f"{[(k, dim if dim is not None else 'D') for k in sizes]}")
        for i, b in enumerate(books):
            check_batch(b, None, name=f"init codebook {i + 1}")
        return [b.to(self._device, copy=True) for b in books]

    def _reset(self, dim: int, sizes: list[int]) -> None:
        for attr in ("codebooks_", "counts_", "residual_scales_", "prices_"):
            self.__dict__.pop(attr, None)
        self.n_features_in_ = dim
        self.codebook_sizes_ = sizes
        self._levels: list[KMeansLevel | None] = [None] * len(sizes)
        self._scales = [0.0] * len(sizes)
        self._buffers: list[list[torch.Tensor]] = [[] for _ in sizes]
        self._n_train = 1 << 62  # streaming (partial_fit): the data size is unknown
        self.history_: list[FitLog] = []
        self._exact = False  # fit() decides (exact Lloyd on all rows, or mini-batch)
        self._init_rows = None  # exact regime: the k-means++ rows (set by _fit)
        self._shard = Shard(0)  # the rows of the training matrix this process holds
        self._caps = {}  # training caps under max_per_code (set by _fit)

    def _finish(self) -> None:
        levels = [lv for lv in self._levels if lv is not None]
        assert len(levels) == len(self._levels), "every level is seeded before _finish()"
        self.codebooks_ = [lv.centroids for lv in levels]
        self.counts_ = [lv.counts for lv in levels]
        self.prices_ = [torch.zeros(1, lv.k, device=lv.centroids.device) if lv.price is None
                        else lv.price for lv in levels]
        self.__dict__.pop("_parent", None)
        self.__dict__.pop("_init_prices", None)
        self.__dict__.pop("_init_rows", None)
        self.__dict__.pop("_shard", None)
        self.residual_scales_ = torch.tensor(self._scales, dtype=torch.float64)
        self._books = [Codebook(c, p) for c, p in zip(self.codebooks_, self.prices_)]
        self._encoder = Encoder(self._books, self.normalize_residuals)

    def _seed_level(self, lv: int, x: torch.Tensor, gen: torch.Generator) -> KMeansLevel:
        centers = kmeans_plusplus(x, self.codebook_sizes_[lv], gen, self.n_init_trials)
        level = KMeansLevel(centers)
        level.reassign_window = min(self._n_train, REASSIGN_WINDOW * level.k)
        self._levels[lv] = level
        return level

    def _batches(self, x: torch.Tensor, gen: torch.Generator) -> Iterator[tuple]:
        """Mini-batches of the training matrix in a fresh random order, for ever (epoch after
        epoch): (this process's rows of the batch, their indices in it or None for all, the
        batch's size)."""
        shard = self._shard
        while True:
            perm = torch.randperm(shard.n, generator=gen)
            for a in range(0, shard.n, self.batch_size):
                sel, loc = shard.local(perm[a:a + self.batch_size])
                yield x.index_select(0, loc.to(x.device)), sel, \
                    min(self.batch_size, shard.n - a)

    def _step_budget(self, n_rows: int, k: int) -> int:
        cap = self.max_steps if self.max_steps is not None else \
            math.ceil(STEP_ROWS_PER_CENTROID * k / self.batch_size)
        if not math.isfinite(self.max_epochs):
            return cap
        return min(math.ceil(self.max_epochs * n_rows / self.batch_size), cap)

    def _fit_level(self, lv: int, x: torch.Tensor, init_n: int, gen,
                   init: torch.Tensor | None = None) -> None:
        """Layer-wise: seed level lv on x (its input rows) or start it at ``init``, mini-batch
        steps (not in the exact regime, nor from ``init``), Lloyd iterations; x is then advanced
        in place to the next level's input."""
        shard = self._shard
        self._n_train = shard.n
        self._normalize_input(lv, x)
        if init is not None:
            level = KMeansLevel(init)
            start = getattr(self, "_init_prices", None)
            if start is not None and bool(start[lv].any()):
                level.price = start[lv].to(self._device)
            level.reassign_window = min(self._n_train, REASSIGN_WINDOW * level.k)
            self._levels[lv] = level
        else:
            rows = getattr(self, "_init_rows", None)
            level = self._seed_level(lv, shard.rows(x, torch.arange(init_n) if rows is None
                                                    else rows), gen)
        if init is not None or getattr(self, "_exact", False):
            self._polish_level(lv, x, 0, False)
            return
        budget = self._step_budget(shard.n, level.k)
        stopper = _EarlyStop(self, shard.n)
        steps = 0
        with tqdm(total=budget, desc=f"level {lv + 1}/{len(self.codebook_sizes_)}",
                  unit="step", disable=not self.verbose, leave=False) as bar:
            for batch, sel, size in self._batches(x, gen):
                if steps >= budget or stopper.stopped:
                    break
                lab, dist = level.book.nearest(batch, with_dist=True)
                shift = level.step(batch, lab, dist, gen, self.reassign_empty, shard, sel, size)
                steps += 1
                stopper.update(shard.total(float(dist.double().sum())) / size, shift)
                bar.update()
        self._polish_level(lv, x, steps, stopper.stopped)

    def _normalize_input(self, lv: int, x: torch.Tensor) -> None:
        """With normalize_residuals: unit-normalise level lv's input rows in place and record their
        mean norm before normalisation."""
        if self.normalize_residuals:
            total = sum(float(normalize_rows_(blk).double().sum()) for blk in _blocks(x, _BLOCK))
            self._scales[lv] = self._shard.total(total) / self._shard.n

    def _polish_level(self, lv: int, x: torch.Tensor, steps: int, converged: bool) -> None:
        """Lloyd iterations on x (which re-seed empty codes), then x -= its centroids."""
        level = self._levels[lv]
        assert level is not None  # seeded by _fit_level / _fit_joint
        exact = getattr(self, "_exact", False)
        n_iter = self.n_polish if self.n_polish is not None else \
            EXACT_ITERATIONS if exact else POLISH_ITERATIONS
        tol = self.polish_tol if self.polish_tol is not None else \
            EXACT_TOL if exact else POLISH_TOL
        parent = getattr(self, "_parent", None) if lv > 0 else None
        res = lloyd(level, x, n_iter, tol, balance=_level_balance(self.balance, lv),
                    parent=parent, n_groups=self.codebook_sizes_[lv - 1] if lv else 1,
                    cap=None if _level_balance(self.balance, lv) is not None else
                    self._caps.get(lv), shard=self._shard)
        self._parent = res.labels
        level.counts = res.counts.clone()
        c = level.centroids
        for a in range(0, x.shape[0], _BLOCK):
            x[a:a + _BLOCK].sub_(c.index_select(0, res.labels[a:a + _BLOCK]))
        n_empty = int((res.counts == 0).sum())
        converged = res.converged if steps == 0 else converged
        self.history_.append(FitLog(lv, steps, converged, level.n_reassigned, res.inertia,
                                    n_empty, res.iterations, int(res.counts.max())))
        log.info("level %d: %d steps, %d Lloyd iterations%s, inertia %.6g, %d reassigned, "
                 "%d empty, largest code %d", lv + 1, steps, res.iterations,
                 " (converged)" if converged else "", res.inertia, level.n_reassigned, n_empty,
                 int(res.counts.max()))

    def _fit_joint(self, x: torch.Tensor, init_n: int, gen) -> None:
        """Joint training: seed all levels on the sample, then update every level per batch."""
        shard = self._shard
        self._n_train = shard.n
        r = shard.rows(x, torch.arange(init_n)).clone()
        for lv in range(len(self.codebook_sizes_)):
            if self.normalize_residuals:
                normalize_rows_(r)
            level = self._seed_level(lv, r, gen)
            r.sub_(level.centroids.index_select(0, level.book.nearest(r)))
        del r
        budget = self._step_budget(shard.n, max(self.codebook_sizes_))
        stopper = _EarlyStop(self, shard.n)
        steps = 0
        for batch, sel, size in self._batches(x, gen):
            if steps >= budget or stopper.stopped:
                break
            shift, resid = self._partial_step(batch, None, gen, (shard, sel, size))
            steps += 1
            stopper.update(shard.total(float(row_sq_norms(resid).double().sum())) / size, shift)
        # polish level by level: each level's Lloyd result fixes the next level's input
        for lv in range(len(self._levels)):
            self._normalize_input(lv, x)
            self._polish_level(lv, x, steps, stopper.stopped)

    def _fit_grid(self, src: Source, gen) -> "ResidualKMeans":
        """GRID's schedule: shuffled batches, ``max_steps`` split evenly over levels (layer-wise)
        or all levels per step (joint), seeding buffers filled from the stream."""
        total = self.max_steps if self.max_steps is not None else 30
        n_levels = len(self.codebook_sizes_)
        per_level = max(1, total // n_levels)
        step = 0
        while step < total:
            for x in src.chunks(self.batch_size, gen):
                level = min(step // per_level, n_levels - 1) if self.train_layer_wise else None
                self._partial_step(x.to(self._device), level, gen)
                step += 1
                if step >= total:
                    break
        missing = [i + 1 for i, lv in enumerate(self._levels) if lv is None]
        if missing:
            raise TooFewItemsError(
                f"GRID schedule ended before levels {missing} were seeded: {total} steps of "
                f"{self.batch_size} rows cannot fill their {self.init_size}-row buffers")
        self._finish()
        return self

    def partial_fit(self, X, y=None, *, level: int | None = None) -> "ResidualKMeans":
        """Update the model with one batch X (B, D) (streaming training).

        Each level buffers the first ``init_size`` rows it sees (default as in ``fit``) and seeds
        itself with k-means++ on them; later batches update it with the running-mean rule.
        ``level=None`` updates every level (joint); ``level=l`` (0-based) updates only level l,
        levels before it frozen (use it to train layer-wise from a stream).
        """
        sizes = self._check_params()
        x = as_float_tensor(X)
        if not hasattr(self, "_levels") or getattr(self, "codebook_sizes_", None) != sizes:
            if x.shape[0] == 0:
                raise EmptyInputError("embeddings are empty: got 0 rows")
            check_batch(x, None)
            self._reset(x.shape[1], sizes)
            self._gen = torch.Generator().manual_seed(int(self.seed))
        if x.shape[0] == 0:
            raise EmptyInputError("embeddings are empty: got 0 rows")
        check_batch(x, self.n_features_in_, expected_from="the model was trained with")
        if level is not None and not 0 <= level < len(sizes):
            raise ConfigError(f"level must be in 0..{len(sizes) - 1}, got {level}")
        self._partial_step(x.to(self._device, copy=True), level, self._gen)  # never the caller's
        if all(lv is not None for lv in self._levels):
            self._finish()
        return self

    def _partial_step(self, x: torch.Tensor, level: int | None, gen, part: tuple = (None,) * 3):
        """One streaming update with x (B, D), which is overwritten: every level (``level=None``)
        or only ``level``; a level not seeded yet buffers the rows instead. ``part``: (shard,
        indices of x in the batch, batch size) when x is this rank's part of a batch.

        Returns (summed centre shift, residual after the last level updated).
        """
        last = len(self._levels) - 1 if level is None else level
        shift = 0.0
        for lv in range(last + 1):
            state = self._levels[lv]
            if self.normalize_residuals:
                norms = normalize_rows_(x)
            if state is None:
                if level is not None and lv < level:
                    raise NotFittedError(
                        f"level {lv} is not seeded yet; train level {lv} before level {level}")
                self._buffer_rows(lv, x, gen, norms if self.normalize_residuals else None)
                return shift, x
            lab, dist = state.book.nearest(x, with_dist=True)
            resid = x - state.centroids.index_select(0, lab)
            if level is None or lv == level:
                shift += state.step(x, lab, dist, gen, self.reassign_empty, *part)
            x = resid
        return shift, x

    def _buffer_rows(self, lv: int, x: torch.Tensor, gen, norms) -> None:
        k = self.codebook_sizes_[lv]
        need = self.init_size or _default_init_size(k, self.n_features_in_)
        buf = self._buffers[lv]
        have = sum(b.shape[0] for b in buf)
        buf.append(x[:need - have])
        if norms is not None:
            self._scales[lv] = float(norms.mean())
        if have + x.shape[0] >= need:
            rows = torch.cat(buf)
            self._buffers[lv] = []
            self._seed_level(lv, rows, gen)

    @classmethod
    def from_codebooks(cls, codebooks: Sequence, *, normalize_residuals: bool = False,
                       residual_scales: Sequence[float] | None = None,
                       prices: Sequence | None = None,
                       device: str | torch.device = "cpu") -> "ResidualKMeans":
        """A fitted (frozen) model from stored codebooks: list of (K_l, D) arrays/tensors, and
        optionally the per-code prices of a balanced fit: one (K_l,) array per level."""
        books = [as_float_tensor(c, name=f"codebook {i + 1}") for i, c in enumerate(codebooks)]
        if not books:
            raise ConfigError("from_codebooks needs at least one codebook")
        dims = {b.shape[1] for b in books}
        if len(dims) != 1:
            raise DimensionMismatchError(f"codebooks have different dims {sorted(dims)}")
        for i, b in enumerate(books):
            check_batch(b, None, name=f"codebook {i + 1}")
        model = cls(len(books), [b.shape[0] for b in books],
                    normalize_residuals=normalize_residuals, device=device)
        model._reset(books[0].shape[1], [b.shape[0] for b in books])
        levels = [KMeansLevel(b.to(model._device)) for b in books]
        if prices is not None:
            for lv, p in zip(levels, _checked_prices(prices, [b.shape[0] for b in books])):
                lv.price = p.to(model._device) if bool(p.any()) else None
        model._levels = list(levels)
        if residual_scales is not None:
            model._scales = [float(s) for s in residual_scales]
        model._finish()
        return model

    def __repr__(self) -> str:
        return (f"ResidualKMeans(n_levels={self.n_levels}, codebook_size={self.codebook_size}, "
                f"normalize_residuals={self.normalize_residuals}, mode={self.mode!r})")


#: Share of its full capacity a capped level keeps when a capped level follows it (7/8): the
#: rows of a level-1 code at its cap then fill its 2-level prefixes to at most 7/8 on average,
#: which the price auction settles quickly; exactly full prefixes may never settle.
CAP_ROOM = 0.875


def _level_caps(max_per_code: int | None, sizes: list[int], n_train: int,
                n_rows: int) -> dict[int, int]:
    """The training cap of every level that has one under ``max_per_code``: level ``l`` holds at
    most ``max_per_code * prod(sizes[l+1:])`` items per (parent, code) pair, in training rows
    (``n_train`` of the ``n_rows`` items). Only the first two levels, whose parent code is the
    whole prefix, and not the last (the first of two capped levels gets ``CAP_ROOM`` of its
    cap, so the level below is not asked to pack its codes exactly full); left out where the
    cap cannot bind, or where the codes
    cannot hold the rows at that cap (the catalog outgrows the code space: suffixes are
    unavoidable, and forcing an even spread would cost more than it saves).

    >>> _level_caps(1, [32, 32, 32], 9066, 9066)
    {0: 896, 1: 32}
    >>> _level_caps(2, [4, 4, 4], 50, 100)   # a training sample of half the items
    {0: 14, 1: 4}
    >>> _level_caps(1, [16, 16], 300, 300)   # 300 items, 256 full codes
    {}
    """
    if max_per_code is None:
        return {}
    caps = {}
    last = min(2, len(sizes) - 1) - 1  # the deepest capped level
    for lv in range(last + 1):
        room = 1.0 if lv == last else CAP_ROOM
        rows = int(max_per_code * math.prod(sizes[lv + 1:]) * room * n_train // n_rows)
        pairs = math.prod(sizes[:lv + 1])
        if rows < n_train and rows * pairs >= n_train:
            caps[lv] = max(rows, 1)
    return caps


def _level_balance(balance, lv: int) -> float | None:
    """The balance slack of level ``lv``: ``balance`` itself, or its ``lv``-th entry."""
    if balance is None or isinstance(balance, (int, float, np.integer, np.floating)):
        return None if balance is None else float(balance)
    return None if balance[lv] is None else float(balance[lv])


def _checked_prices(prices: Sequence, sizes: list[int]) -> list[torch.Tensor]:
    """Per-level prices as (G_l, K_l) float32 tensors, checked: level l's are one row (or a
    (K_l,) vector) or one row per code of level l-1, all finite."""
    out = [torch.as_tensor(np.asarray(p, dtype=np.float32)) for p in prices]
    out = [p.unsqueeze(0) if p.ndim == 1 else p for p in out]
    shapes = [tuple(p.shape) for p in out]
    ok = len(out) == len(sizes) and all(
        s in ((1, k), (sizes[lv - 1] if lv else 1, k)) for lv, (s, k) in enumerate(zip(shapes, sizes)))
    if not ok:
        raise DimensionMismatchError(
            f"prices have shapes {shapes}; the codebooks need (1, K_l) or (K_l-1, K_l) per level: "
            f"{[(sizes[lv - 1] if lv else 1, k) for lv, k in enumerate(sizes)]}")
    if not all(bool(torch.isfinite(p).all()) for p in out):
        raise ConfigError("prices must be finite")
    return out


def _device_available(dev: torch.device) -> bool:
    """Whether this torch build can compute on ``dev`` (CPU always; CUDA, MPS, XPU when built
    in and a device is there)."""
    if dev.type == "cpu":
        return True
    if dev.type == "cuda":
        return torch.cuda.is_available()
    if dev.type == "mps":
        return bool(torch.backends.mps.is_available())
    xpu = getattr(torch, "xpu", None)
    return dev.type == "xpu" and xpu is not None and bool(xpu.is_available())


def _default_init_size(k: int, dim: int) -> int:
    """Rows for k-means++: 32 to 64 per centroid (GRID seeds on 12), more when rows are small.

    Each k-means++ step streams the whole sample, so a sample that stays in cache seeds several
    times faster; low-dimensional data gets a larger sample for the same cost.
    """
    return int(min(64 * k, max(32 * k, (3 << 20) // max(dim, 1))))


def _default_train_size(k: int, dim: int) -> int:
    """Rows of the training sample: up to 512 per centroid, at most 256 MiB of float32."""
    return int(max(k, min(512 * k, (256 << 20) // (4 * max(dim, 1)))))


def _check_enough(sizes: list[int], n: int, where: str = "") -> None:
    """TooFewItemsError unless n rows can fill the largest codebook."""
    if n < max(sizes):
        raise TooFewItemsError(
            f"need at least {max(sizes)} items for codebook size {max(sizes)} at level "
            f"{sizes.index(max(sizes)) + 1}, got {n}{where}")


def _shard_source(X) -> Source:
    """A rank's shard as a Source; an empty (0, D) array is an empty shard (a rank may hold no
    rows), not an error."""
    shape = getattr(X, "shape", None)
    if shape is not None and len(shape) == 2 and shape[0] == 0 and shape[1] > 0:
        return _EmptyShard(int(shape[1]))
    return make_source(X)


class _EmptyShard(Source):
    """No rows of D columns."""

    checked = True

    def __init__(self, dim: int):
        self.width = dim
        self.dim, self.n_rows = dim, 0

    def materialize(self) -> torch.Tensor:
        return torch.empty(0, self.width)

    def _take(self, idx) -> torch.Tensor:
        return torch.empty(0, self.width)


def _variance(x: torch.Tensor, shard: Shard) -> float:
    """Mean per-column variance of the training matrix (its local rows x, (n_local, D)), from
    float64 column sums added up over the ranks; 1.0 for fewer than 2 rows."""
    if shard.n < 2:
        return 1.0
    s = torch.zeros(2, x.shape[1], dtype=torch.float64)
    for blk in _blocks(x, _BLOCK):
        b = blk.double()
        s[0] += b.sum(0).cpu()
        s[1] += (b * b).sum(0).cpu()
    shard.sum_(s)
    return float(((s[1] - s[0] * s[0] / shard.n) / (shard.n - 1)).mean())


def _blocks(x: torch.Tensor, rows: int) -> Iterator[torch.Tensor]:
    for a in range(0, x.shape[0], rows):
        yield x[a:a + rows]


class _EarlyStop:
    """Stops mini-batch training on a flat smoothed inertia or a tiny centre shift."""

    def __init__(self, model: ResidualKMeans, n_rows: int):
        self.patience = model.max_no_improvement
        self.tol = model.tol * getattr(model, "_variance", 1.0)
        self.alpha = min(1.0, 2.0 * model.batch_size / (n_rows + 1))
        self.ewa: float | None = None
        self.best = math.inf
        self.no_improvement = 0
        self.stopped = False

    def update(self, batch_inertia: float, shift: float) -> bool:
        self.ewa = batch_inertia if self.ewa is None else \
            self.ewa * (1 - self.alpha) + batch_inertia * self.alpha
        if self.tol > 0 and shift <= self.tol:
            self.stopped = True
        if self.patience is not None:
            if self.ewa < self.best:
                self.best = self.ewa
                self.no_improvement = 0
            else:
                self.no_improvement += 1
                if self.no_improvement >= self.patience:
                    self.stopped = True
        return self.stopped
