"""PostgreSQL: one index, several writer processes at once, readers that never import torch.

    python examples/postgres_example.py --db postgresql+psycopg://user:pw@127.0.0.1/mydb
    SEMID_DB=postgresql+psycopg://... python examples/postgres_example.py

Needs ``pip install 'semid-index[postgres]'`` (psycopg 3) and a database the user may create
tables in (all of semid_index's tables are prefixed ``semid_``, so an application's own database
is fine). The example fits an index, then four processes add 2,000 new items each at the same
time: the index's row lock orders them, every ID comes out unique and no item is lost. Last, a
fresh process looks items up and reads prefix pages without importing torch.
"""

import argparse
import multiprocessing as mp
import os
import subprocess
import sys


from semid_index import SemanticIdIndex
from semid_index.datasets import gaussian_mixture

DIM = 32


def writer(db: str, name: str, w: int, per: int) -> None:
    x = gaussian_mixture(per, DIM, seed=100 + w)
    with SemanticIdIndex.open(db, name) as index:
        for a in range(0, per, 500):  # four transactions of 500 per process
            index.add([f"w{w}-{i}" for i in range(a, a + 500)], x[a:a + 500])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default=os.environ.get("SEMID_DB"),
                   help="PostgreSQL URL (default: $SEMID_DB)")
    p.add_argument("--name", default="pg_example", help="index name inside the database")
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--per-writer", type=int, default=2_000)
    a = p.parse_args(argv)
    if not a.db or not a.db.startswith("postgresql"):
        p.error("pass --db postgresql+psycopg://user:pw@host/db (or set SEMID_DB)")

    if a.name in SemanticIdIndex.list_indexes(a.db):
        SemanticIdIndex.drop(a.db, a.name)
    x = gaussian_mixture(20_000, DIM, seed=1)
    with SemanticIdIndex.create(a.db, a.name, n_levels=3, codebook_size=32, seed=0) as index:
        index.fit([f"base-{i}" for i in range(len(x))], x)
        print(f"fitted {index.count():,} items into {index.url} (index {a.name!r})")

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=writer, args=(a.db, a.name, w, a.per_writer))
             for w in range(a.writers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    assert all(proc.exitcode == 0 for proc in procs), "a writer failed"

    with SemanticIdIndex.open(a.db, a.name) as index:
        keys = [f"w{w}-{i}" for w in range(a.writers) for i in range(a.per_writer)]
        ids = index.lookup_many(keys)
        assert len(set(map(str, ids))) == len(keys), "two items got the same ID"
        print(f"{a.writers} processes added {len(keys):,} items concurrently: "
              f"{len(set(map(str, ids))):,} distinct IDs, {index.count():,} items in total")

    reader = (
        "import sys, semid_index\n"
        f"idx = semid_index.SemanticIdIndex.open({a.db!r}, {a.name!r})\n"
        "sid = idx.lookup('w0-0')\n"
        "page = idx.items_with_prefix(sid.prefix(2), limit=5)\n"
        "print('reader:', sid, 'prefix', '-'.join(map(str, sid.prefix(2))), '->', page.keys,\n"
        "      '| torch imported:', 'torch' in sys.modules)\n")
    print(subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True,
                         check=True).stdout.strip())


if __name__ == "__main__":
    main()
