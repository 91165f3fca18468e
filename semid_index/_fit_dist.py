"""SemanticIdIndex.fit across the ranks of a torch.distributed job (the bulk first fit).

Every rank trains on its shard (data-parallel, :meth:`ResidualKMeans.fit` with ``distributed``),
encodes its own items, and sends codes, fingerprints and keys to rank 0, which stores the version
in one transaction (one COPY on PostgreSQL). Every rank returns the same outcome: the version, or
an error (its own, or :class:`~semid_index.DistributedError` naming the rank that failed).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import numpy as np
import torch

from . import _inputs
from ._index_model import reconstruction
from .errors import ConfigError, NotFittedError
from .quantize._dist import Shard, agree, barrier, rank as _rank

log = logging.getLogger("semid_index")


def fit_distributed(index, keys, embeddings, model, warm_start: bool, progress, group) -> int:
    """Fit ``index`` on this rank's ``keys`` and ``embeddings`` (its shard); returns the new
    active version (the same on every rank)."""
    from .quantize import ResidualKMeans
    from .quantize._data import validated

    state: dict = {}

    def check() -> list[int]:
        k = _inputs.item_keys(keys)
        x = _inputs.embeddings(embeddings, len(k), keys=k)
        rec = index._refresh()
        if rec.options.get("max_per_code") is not None:
            raise ConfigError(f"index {index.name!r} has max_per_code: a distributed fit cannot "
                              "relocate (it needs every item's distances in one process); fit "
                              "in one process, or use an index without it")
        if model is None and warm_start and rec.active_version is None:
            raise NotFittedError(f"warm_start needs a fitted version; index {index.name!r} "
                                 "has none yet")
        if model is not None:
            index._check_model(model, x.shape[1])
        state.update(keys=k, x=x, rec=rec)
        return [len(k)]

    agree(group, check)
    k, x, rec = state["keys"], state["x"], state["rec"]
    fitted = model
    if fitted is None:
        opts = _inputs.quantizer_options(rec.options)
        if warm_start:
            opts["init"] = index.model
        fitted = ResidualKMeans(rec.n_levels, list(rec.codebook_sizes), **opts,
                                verbose=bool(progress) and _rank(group) == 0)
        fitted.fit(validated(x), distributed=group)
    codes, fps = index._encode(fitted, x, progress and _rank(group) == 0)
    shard = Shard(0, None, group, distributed=True)
    err = reconstruction(fitted, x, codes)
    sums = shard.sum_(torch.tensor([err["sq_error"], err["sq_norm"]], dtype=torch.float64))
    fit_stats: dict = {"warm_start": bool(warm_start), "sq_error": float(sums[0]),
                       "sq_norm": float(sums[1]),
                       "relative_error": float(sums[0]) / max(float(sums[1]), 1e-30),
                       "ranks": shard.world}
    all_keys, all_codes, all_fps = _to_rank0(shard, k, codes, fps)

    def store() -> list[int]:
        if _rank(group) != 0:
            return [0]
        # every rank checked its own keys; one key on two ranks is DuplicateKeyError here
        merged = _inputs._unique(all_keys, allow_duplicates=False)
        version = index._store_version(fitted, merged, all_codes, all_fps, progress, fit_stats)
        log.info("index %r: version %d active with %d items from %d ranks", index.name,
                 version, len(merged), fit_stats["ranks"])
        return [version]

    version = int(agree(group, store)[0, 0])
    index._refresh()
    index._model_cache = (version, fitted)
    return version


def _to_rank0(shard: Shard, keys: list[str], codes: np.ndarray, fps: np.ndarray):
    """Every rank's keys, codes (n, L) and fingerprints (n,), concatenated in rank order on
    rank 0 (None elsewhere). Keys travel as one NUL-separated UTF-8 blob (keys hold no NUL);
    rank 0 keeps its own key objects (no second copy of them)."""
    root = _rank(shard.group) == 0
    blob = np.frombuffer(b"" if root else "\0".join(keys).encode(), dtype=np.uint8)
    sizes = shard.gather(torch.tensor([len(keys), len(blob)], dtype=torch.int64))
    n_max, b_max = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    n_levels = codes.shape[1]
    # codes as int32 (codebook sizes < 2^31) and fingerprints: 4 L + 8 bytes per item
    rows = torch.zeros(n_max, n_levels + 2, dtype=torch.int32)
    rows[:len(keys), :n_levels] = torch.from_numpy(codes.astype(np.int32))
    rows[:len(keys), n_levels:] = torch.from_numpy(
        np.ascontiguousarray(fps, dtype=np.int64).view(np.int32).reshape(-1, 2))
    text = torch.zeros(b_max, dtype=torch.uint8)
    text[:len(blob)] = torch.from_numpy(blob.copy())
    world = sizes.shape[0]
    row_parts = shard.gather_to_root(rows)
    del rows
    text_parts = shard.gather_to_root(text)
    if row_parts is None or text_parts is None:  # not rank 0
        return None, None, None
    out_keys: list[str] = list(keys)
    for r in range(1, world):
        n, b = sizes[r].tolist()
        if n:
            out_keys += bytes(text_parts[r][:b].numpy()).decode().split("\0")
        text_parts[r] = text_parts[r][:0]  # free each rank's blob once decoded
    total = int(sizes[:, 0].sum())
    all_codes = np.empty((total, n_levels), dtype=np.int64)
    all_fps = np.empty(total, dtype=np.int64)
    at = 0
    for r in range(world):  # rank by rank, each part freed once copied
        n = int(sizes[r, 0])
        part = row_parts[r][:n].numpy()
        all_codes[at:at + n] = part[:, :n_levels]
        all_fps[at:at + n] = np.ascontiguousarray(part[:, n_levels:]).view(np.int64)[:, 0]
        row_parts[r] = row_parts[r][:0]
        at += n
    return out_keys, all_codes, all_fps


@contextlib.contextmanager
def torchrun_job() -> Iterator[tuple[int, int]]:
    """Join the torchrun job this process is a rank of (gloo; gloo and NCCL when CUDA is
    there), yield (rank, world size), and leave it."""
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        raise ConfigError("--distributed runs as one rank of a torchrun job (RANK and "
                          "WORLD_SIZE are not set): torchrun --nproc-per-node N -m semid_index "
                          "fit ... --distributed")
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend)
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def rank_first(rank: int) -> Iterator[None]:
    """Rank 0 runs the block before the others (it creates the index they then open)."""
    if rank:
        barrier()
    yield
    if not rank:
        barrier()
