"""One rank of a distributed fit, for tests/test_distributed.py (run as a script, one process per
rank, with MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE set as torchrun sets them).

argv[1] is a JSON spec: data (.npy path), cuts (row where each rank's shard starts, plus the end),
what ("quantizer" or "index"), opts (ResidualKMeans options), db and index (for "index"), out
(a path prefix: the quantizer's rank writes <out>.<rank>.npz), init_far (start from
:func:`far_init`'s codebooks), and the faults a test injects
into one rank's own shard: nan_rank, flat_rank (a 1-d array), dup_rank (its first key repeats
rank 0's), seed_rank.
Prints "fitting" before the fit, then "ok" or "error <ErrorClass>: <message>" on stdout.
"""

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

from semid_index import SemanticIdError, SemanticIdIndex
from semid_index.quantize import ResidualKMeans


def far_init(path: str, n_levels: int, k: int) -> list:
    """Warm-start codebooks: the first k rows of the data, four of them moved far away, so
    those codes end up empty and Lloyd re-seeds them on the worst-served rows."""
    x = np.load(path, mmap_mode="r")
    books = []
    for lv in range(n_levels):
        b = np.array(x[lv * k:(lv + 1) * k]) * (1.0 if lv == 0 else 0.1)
        b[:4] = 1e3
        books.append(b)
    return books


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    lo, hi = spec["cuts"][rank], spec["cuts"][rank + 1]
    x = np.array(np.load(spec["data"], mmap_mode="r")[lo:hi])
    keys = [f"item-{i}" for i in range(lo, hi)]
    if spec.get("nan_rank") == rank:
        x[len(x) // 2, 3] = np.nan
    if spec.get("flat_rank") == rank:  # a malformed shard: one column, 1-d
        x = x[:, 0].copy()
    if spec.get("dup_rank") == rank:
        keys[0] = "item-0"
    opts = dict(spec.get("opts", {}))
    if spec.get("init_far"):
        opts["init"] = far_init(spec["data"], opts["n_levels"], opts["codebook_size"])
    if spec.get("seed_rank") == rank:
        opts["seed"] = opts.get("seed", 0) + 1
    print("fitting", flush=True)
    try:
        if spec["what"] == "quantizer":
            rq = ResidualKMeans(**opts).fit(x, distributed=True)
            np.savez(f"{spec['out']}.{rank}.npz", *[c.numpy() for c in rq.codebooks_],
                     reassigned=np.array([h.reassigned for h in rq.history_]))
        else:
            with SemanticIdIndex.open(spec["db"], spec["index"]) as idx:
                idx.fit(keys, x, distributed=True, progress=False)
    except SemanticIdError as e:
        print(f"error {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
    finally:  # (a process that exits with a live gloo group aborts)
        dist.destroy_process_group()
    print("ok", flush=True)


if __name__ == "__main__":
    main()
