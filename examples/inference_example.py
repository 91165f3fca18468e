"""Load saved codebooks and assign semantic IDs to items (the seed's inference example).

    python examples/train_example.py --out codebooks.npz
    python examples/inference_example.py --codebooks codebooks.npz

With GloVe installed (and pyarrow for the words) it also prints, for a few words, the words that
share their first two levels: items with a common prefix are semantically close.
"""

import argparse
from collections import defaultdict

import numpy as np

from semid_index import ResidualQuantization
from semid_index.datasets import DataUnavailableError, gaussian_mixture, glove


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--codebooks", default="codebooks.npz")
    p.add_argument("--limit", type=int, default=100_000)
    p.add_argument("--words", default="king,banana,paris,guitar")
    a = p.parse_args(argv)

    model = ResidualQuantization.load(a.codebooks)  # eval mode, no pickle involved
    try:
        vectors, words = glove(a.limit)
    except DataUnavailableError as exc:
        print(f"({exc}; using a synthetic mixture)")
        vectors, words = gaussian_mixture(a.limit, model.embedding_dim, seed=1), None

    ids = model.predict_step(vectors)  # (N, 3) int64
    print(f"assigned {len(ids)} semantic IDs, e.g. {ids[0].tolist()}")
    groups = defaultdict(list)
    for i, row in enumerate(ids.tolist()):
        groups[tuple(row)].append(i)
    sizes = np.array([len(v) for v in groups.values()])
    print(f"{len(groups)} distinct IDs; items per ID: mean {sizes.mean():.2f}, max {sizes.max()}")

    if words is None:
        return
    index = {w: i for i, w in enumerate(words)}
    prefix2 = defaultdict(list)
    for i, row in enumerate(ids[:, :2].tolist()):
        prefix2[tuple(row)].append(i)
    for w in a.words.split(","):
        if w not in index:
            print(f"{w!r} is not among the first {a.limit} words")
            continue
        code = ids[index[w]].tolist()
        near = [words[j] for j in prefix2[tuple(code[:2])] if words[j] != w][:12]
        print(f"{w:>8} {'-'.join(map(str, code))}: shares 2 levels with {', '.join(near)}")


if __name__ == "__main__":
    main()
