"""Data-parallel training: which rows of the training matrix a process holds, and the few
collectives (torch.distributed) that make every process take exactly the same steps.

Every process (rank) holds some rows of the training matrix (the uniform sample, or all rows in
the exact regime) at known global positions. Each step computes per-centroid sums and counts on
the local rows and adds them up with ``all_reduce``; the few operations that need particular rows
(k-means++ seeding rows, a dead centroid's new position, an empty code's farthest row) assemble
them from their owners, so every rank ends each step with the same centroids. In one process a
:class:`Shard` holds everything and every collective is a no-op, so there is one code path.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError, DistributedError, SemanticIdError

#: Longest error message one rank sends the others (UTF-8 bytes).
MESSAGE_BYTES = 1000


class Shard:
    """The rows of an (n, D) training matrix held by this process.

    One process (``distributed=False``): all n rows, in order. Distributed: ``pos`` (n_local,)
    int64, the increasing global positions of the local rows, in ``group`` (a process group,
    or :data:`DEFAULT`).
    """

    def __init__(self, n: int, pos: torch.Tensor | None = None, group=None,
                 distributed: bool = False):
        self.n = int(n)
        self.distributed = distributed
        self.group = group
        self.pos = pos
        self._where: torch.Tensor | None = None

    @property
    def world(self) -> int:
        """Ranks in the group (1 in one process)."""
        return _world(self.group) if self.distributed else 1

    # --- collectives ----------------------------------------------------------------------
    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over all ranks, in place (one process: unchanged); returns it."""
        if self.distributed:
            _collective(lambda: _all_reduce(t, self.group))
        return t

    def total(self, value: float) -> float:
        """A float summed over all ranks (float64)."""
        if not self.distributed:
            return float(value)
        return float(self.sum_(torch.tensor([value], dtype=torch.float64))[0])

    def count(self, value: int) -> int:
        """An int summed over all ranks."""
        if not self.distributed:
            return int(value)
        return int(self.sum_(torch.tensor([value], dtype=torch.int64))[0])

    # --- rows -----------------------------------------------------------------------------
    def where(self) -> torch.Tensor:
        """(n,) int64: the local row of every global position, -1 where another rank holds it."""
        if self._where is None:
            assert self.pos is not None
            w = torch.full((self.n,), -1, dtype=torch.int64)
            w[self.pos] = torch.arange(self.pos.numel())
            self._where = w
        return self._where

    def local(self, positions: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Which of ``positions`` (global, (m,)) this rank holds: (their indices into
        ``positions``, their local rows), in the order of ``positions``. One process: (None,
        positions)."""
        if self.pos is None:
            return None, positions
        loc = self.where().index_select(0, positions.cpu())
        sel = (loc >= 0).nonzero()[:, 0]
        return sel, loc.index_select(0, sel)

    def rows(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rows at global ``positions`` (m,) of the matrix whose local part is x: (m, D), the
        same on every rank."""
        sel, loc = self.local(positions)
        return self.assemble(positions.numel(), sel, x.index_select(0, loc.to(x.device)))

    def assemble(self, m: int, sel: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor:
        """A global (m, ...) tensor from each rank's ``values`` at indices ``sel`` (disjoint
        across ranks, covering 0..m-1): the same on every rank. One process: ``values``."""
        if sel is None:
            return values
        out = torch.zeros((m,) + tuple(values.shape[1:]), dtype=values.dtype,
                          device=values.device)
        out[sel.to(values.device)] = values
        return self.sum_(out)

    def top(self, values: torch.Tensor, m: int) -> torch.Tensor:
        """Global positions of the ``m`` largest of ``values`` (one per local row, (n_local,)),
        largest first, ties to the lower position: (m,) int64 on the CPU, the same on every
        rank (m <= n)."""
        if self.pos is None:
            return values.topk(m).indices.cpu()
        k = min(m, values.numel())
        v, i = values.topk(k)
        vals = torch.full((m,), float("-inf"), dtype=torch.float64)
        where = torch.full((m,), -1, dtype=torch.int64)
        vals[:k] = v.double().cpu()
        where[:k] = self.pos.index_select(0, i.cpu())
        vals, where = self.gather(vals).view(-1), self.gather(where).view(-1)
        keep = where >= 0
        vals, where = vals[keep], where[keep]
        order = torch.argsort(where)  # by position first, so ties go to the lower position
        vals, where = vals[order], where[order]
        return where[torch.sort(vals, descending=True, stable=True).indices[:m]]

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` (same shape on every rank), stacked in rank order: (world, ...)."""
        if not self.distributed:
            return t.unsqueeze(0)
        parts = [torch.empty_like(t) for _ in range(_world(self.group))]
        _collective(lambda: _all_gather(parts, t, self.group))
        return torch.stack(parts)

    def gather_to_root(self, t: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's ``t`` (same shape on every rank), in rank order, on rank 0 only (None
        on the others)."""
        import torch.distributed as dist

        root = rank(self.group) == 0
        parts = [torch.empty_like(t) for _ in range(self.world)] if root else None
        _collective(lambda: dist.gather(t, parts, dst=0, group=_pg(self.group)))
        return parts


#: The default process group. Not ``dist.group.WORLD`` itself: a reference to that object left
#: in a traceback outlives destroy_process_group(), and gloo then aborts the process at exit.
DEFAULT = "default"


def group(distributed):
    """The process group of ``fit(..., distributed=...)``: None for one process (False),
    :data:`DEFAULT` for True, or the group given; checked to be initialised."""
    if distributed is False or distributed is None:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ConfigError("distributed=True needs an initialised torch.distributed process group "
                          "(run under torchrun and call torch.distributed.init_process_group("
                          "'gloo') first, or 'nccl' on GPUs)")
    return DEFAULT if distributed is True else distributed


def rank(group) -> int:
    """This process's rank in ``group`` (0 outside torch.distributed)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return 0
    return dist.get_rank(_pg(group))


def agree(group, check) -> torch.Tensor:
    """Run ``check()`` (returning a list of ints) on every rank and return every rank's list,
    stacked: (world, m) int64. If it raised a semid_index error on any rank, every rank raises:
    that rank its own error, the others a :class:`DistributedError` naming it and its message,
    so no rank goes on into a collective the failed one will never join."""
    err: SemanticIdError | None = None
    values: list[int] = []
    try:
        values = [int(v) for v in check()]
    except SemanticIdError as e:
        err = e
    text = b"" if err is None else f"{type(err).__name__}: {err}".encode()[:MESSAGE_BYTES]
    everyone = Shard(0, None, group, True)
    # the widest rank's list (a rank that failed has none), the same on every rank
    width = int(everyone.gather(torch.tensor([max(len(values), 1)])).max())
    buf = torch.zeros(2 + MESSAGE_BYTES + width, dtype=torch.int64)
    buf[0] = err is not None
    buf[1] = len(text)
    buf[2:2 + len(text)] = torch.tensor(list(text), dtype=torch.int64)
    if values:
        buf[2 + MESSAGE_BYTES:2 + MESSAGE_BYTES + len(values)] = torch.tensor(values)
    every = everyone.gather(buf)
    if err is not None:
        raise err
    failed = (every[:, 0] == 1).nonzero()[:, 0]
    if failed.numel():
        r = int(failed[0])
        msg = bytes(every[r, 2:2 + int(every[r, 1])].tolist()).decode("utf-8", "replace")
        raise DistributedError(f"rank {r} failed: {msg}")
    return every[:, 2 + MESSAGE_BYTES:2 + MESSAGE_BYTES + len(values)]


def barrier(group=DEFAULT) -> None:
    """torch.distributed.barrier, failing with :class:`DistributedError` when a rank is gone."""
    import torch.distributed as dist

    _collective(lambda: dist.barrier(group=_pg(group)))


def abandon(group) -> None:
    """Leave ``group`` after failing alone mid-fit (interrupted, out of memory), so the other
    ranks do not wait for this one: NCCL's abort ends their pending collectives now. Gloo's
    connections close only when the process exits (torchrun then stops the job); until then
    the others wait up to the group's timeout. The group is unusable afterwards, but still
    there to be destroyed by its owner."""
    import torch.distributed as dist

    pg = dist.group.WORLD if group == DEFAULT else group
    if pg is None:
        return
    try:
        pg.abort()  # (not destroy_process_group: the caller's own cleanup still calls it)
    except Exception:  # a backend without abort(), or already gone
        pass
    del pg


def options_digest(model, sizes: list[int]) -> int:
    """A 62-bit digest of a model's options and codebook sizes (ranks must agree on them)."""
    import hashlib

    from .._inputs import MODEL_OPTIONS

    text = repr(sorted((name, repr(getattr(model, name))) for name in MODEL_OPTIONS
                       if name != "device")) + repr(sizes)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 2


def _collective(fn) -> None:
    try:
        fn()
    except RuntimeError as e:  # gloo/NCCL: a peer died, left, or timed out
        raise DistributedError(
            f"a torch.distributed collective failed on rank {rank(None)}: another rank failed "
            f"or left the job ({str(e).splitlines()[0][:200]})") from e


def _all_reduce(t: torch.Tensor, group) -> None:
    import torch.distributed as dist

    dist.all_reduce(t, group=_pg(group))


def _all_gather(parts: list, t: torch.Tensor, group) -> None:
    import torch.distributed as dist

    dist.all_gather(parts, t, group=_pg(group))


def _world(group) -> int:
    import torch.distributed as dist

    return dist.get_world_size(_pg(group))


def _pg(group):
    """The ``group`` argument of torch.distributed's calls (None: the default group)."""
    return None if group is None or group == DEFAULT else group
