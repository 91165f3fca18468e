"""Benchmark: how many items change prefix when a grown catalog is refitted, cold vs warm start.

    pip install -e '.[bench]'
    python bench/churn.py                          # MovieLens, GloVe 400k, 100k words; 3x32, 3x256
    python bench/churn.py --catalogs movielens --shapes 32

For each real catalog (bench/_catalogs.py) and shape: a fit on a random 90% of the items (the
catalog as it was), then two refits on all items: *cold* (k-means++, the default) and *warm*
(``init=`` the first fit's codebooks, what ``SemanticIdIndex.fit(..., warm_start=True)`` does).
Columns: churn@k, the share of the first fit's items whose first k codes differ under the refit
(k = 1..3); relative MSE of the refit on all items, and the warm one's ratio to the cold one;
train seconds. The same seed everywhere, so the cold refit differs from the first fit only by the
10% new items: cold churn is what a refit costs today, warm churn what it costs with warm start.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _catalogs import CATALOGS  # noqa: E402

from semid_index._quality import churn  # noqa: E402
from semid_index.quantize import ResidualKMeans  # noqa: E402


def rel_mse(model: ResidualKMeans, x: np.ndarray) -> float:
    codes = model.encode(x)
    xhat = model.decode(codes).numpy()
    return float(((x - xhat) ** 2).sum() / (x ** 2).sum())


def run(name: str, x: np.ndarray, k: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    old_rows = np.sort(rng.permutation(len(x))[: int(0.9 * len(x))])
    t = time.perf_counter()
    first = ResidualKMeans(3, k, seed=seed).fit(x[old_rows])
    t_first = time.perf_counter() - t
    before = first.encode(x[old_rows]).numpy()
    rows = []
    for label, kw in (("cold", {}), ("warm", {"init": first.get_codebooks()})):
        t = time.perf_counter()
        model = ResidualKMeans(3, k, seed=seed, **kw).fit(x)
        secs = time.perf_counter() - t
        after = model.encode(x[old_rows]).numpy()
        rows.append((label, churn(before, after), rel_mse(model, x), secs))
    cold_mse = rows[0][2]
    print(f"\n### {name} ({len(x):,} x {x.shape[1]}), 3 x {k}: first fit on 90% in "
          f"{t_first:.2f} s\n")
    print("| refit | churn@1 | churn@2 | churn@3 | rel MSE | vs cold | train s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, ch, mse, secs in rows:
        print(f"| {label} | {ch[0]:.2%} | {ch[1]:.2%} | {ch[2]:.2%} | {mse:.4f} | "
              f"{mse / cold_mse:.4f} | {secs:.2f} |", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalogs", default="movielens,glove,words")
    ap.add_argument("--shapes", default="32,256")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.catalogs.split(","):
        _, x = CATALOGS[name]()
        for k in (int(s) for s in args.shapes.split(",")):
            run(name, x, k)


if __name__ == "__main__":
    main()
