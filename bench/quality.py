"""Benchmark: quality of semantic IDs from semid_index and its peers on three real catalogs.

    pip install -e '.[bench]'                      # faiss-cpu, scikit-learn, semantic-id, data
    python bench/quality.py                        # all catalogs, shapes 3 x 32 and 3 x 256
    python bench/quality.py --catalogs movielens --skip-semantic-id
    python bench/quality.py --quick                # smoke test: MovieLens, 3 x 32, 2 methods

Catalogs (bench/_catalogs.py, embeddings cached): ``movielens`` (9,066 x 384 MiniLM, unit norm),
``glove`` (400,000 x 50, not normalized), ``words`` (100,000 x 384 MiniLM, unit norm). Every
method gives every item of a catalog a 3-level code with K codes per level (``--shapes``, K = 32
and 256 by default), one process, all threads (``--threads``, default ``os.cpu_count()``; torch,
faiss and the BLAS behind numpy / scikit-learn all get it).

Methods
-------
* ``ours default``: ``semid_index.quantize.ResidualKMeans(3, K, seed=0).fit(x)``, codes
  ``model.encode(x)`` (greedy residual assignment).
* ``ours balanced``: the same with ``balance=0.1`` (a 10% size slack at every level).
* ``ours bal+reloc``: capacity-constrained training, ``max_per_code=1`` (no level-1 code holds
  more than K^2 items, no 2-level prefix more than K: per-code prices raised only where a prefix
  overflows), then collision relocation (``semid_index._relocate.relocate``, ``max_per_code=1``:
  a colliding item moves to the nearest free last-level code under its 2-level prefix, by true
  distance ``model.level_distances``), as an index with ``max_per_code=1`` does.
* ``ours reloc``: the ``ours default`` model (fitted once, reused) plus the same relocation.
* ``faiss all/20``: per level ``faiss.Kmeans(d, K, niter=20, seed=lv + 1,
  max_points_per_centroid=10**9)`` trained on ALL N residuals (no subsampling), then the residual
  minus its nearest centroid (IndexFlatL2); codes greedy, as ``bench/quantize.py``. The baseline of
  the ratio columns.
* ``faiss 256/c``: the same with faiss' defaults, ``niter=25, max_points_per_centroid=256``: when
  N > 256 K each level trains on a random subsample of 256 K residuals.
* ``sklearn MBKM``: per level ``sklearn.cluster.MiniBatchKMeans(K, batch_size=4096,
  random_state=lv)``, otherwise its defaults (``n_init="auto"`` = 1 run with k-means++, early
  stopping on), greedy codes from ``predict``.
* ``semantic-id`` / ``semantic-id bal``: PyPI semantic-id 0.2.5 through
  ``bench/_peers.semantic_id_codes(x, 3, K, balanced=..., seed=0)``: ``RQKMeans`` at its
  defaults, i.e. its best-quality settings (``implementation="kmeans"``: scikit-learn KMeans,
  ``n_init=10``, ``max_iter=100``, ``tol=1e-4`` on all residuals; ``balanced=True``:
  ``implementation="constrained"``, KMeansConstrained with cluster sizes N//K +- 1,
  ``n_init=3``, ``max_iter=100``), CPU path, codes from its ``encode`` (greedy nearest centroid,
  so not exactly balanced). Their running time grows fast with N and K; before each run its time
  is estimated from timed runs on random subsamples (max(512, 2K) rows and up, doubling until
  two ran and the last took >= 2 s; a power law N^e, e in [1, 2], through the last two), and a
  run estimated over ``--semantic-id-budget`` seconds (600) is skipped: its row says
  ``skipped (est. N s)``. The probes' time is not in ``train s``.

Columns
-------
* ``rel MSE``: sum ||x - x_hat||^2 / sum ||x||^2 over all items, x_hat the sum of the item's three
  centroids: ``model.decode`` for ours (after relocation, so its cost is included), the faiss
  centroids / scikit-learn ``cluster_centers_`` for those peers, semantic-id's own
  ``RQKMeans.decode`` (its ``codebooks_``; the fitted model is caught by wrapping
  ``RQKMeans.encode`` while ``_peers`` runs, as ``_peers`` returns only the codes).
* ``MSE / base``, ``train / base``: ratios against ``faiss all/20`` of the same catalog and shape.
* ``collided``: share of items whose full 3-level code at least one other item also has;
  ``largest group``: most items on one full code (``semid_index._code_stats.code_statistics``).
* ``NP@1..3``: neighbour preservation: over 2,000 random query items (seed 0) and each one's 10
  exact cosine nearest neighbours, the share of neighbours sharing the query's first 1, 2, 3 codes
  (as ``semid_index._quality.neighbour_preservation``; the neighbours are computed once per
  catalog and the result checked against that function once per catalog).
* ``entropy bits``: Shannon entropy of each level's code distribution (max log2 K).
* ``train s``: ``time.perf_counter`` around training only (the fit; for the relocating methods
  plus the relocation, not the encode before it); with ``--repeat R`` the best of R round-robin
  runs; ``relocated``: items relocation moved.

Timings need a quiet machine: torch, faiss and scikit-learn all use OpenMP thread pools, which
slow down many times over (scikit-learn's KMeans worst) when other processes compete for the
cores; each table's title gives the load average when it was printed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from _catalogs import CATALOGS
from quantize import (blas_kernels, faiss_books, faiss_encode, rel_mse, sklearn_encode,
                      sklearn_models)

from semid_index._code_stats import code_statistics
from semid_index._quality import _top_k, _unit_rows, neighbour_preservation
from semid_index._relocate import relocate
from semid_index.quantize import ResidualKMeans

LEVELS = 3
BASE = "faiss all/20"
METHODS = ["ours default", "ours balanced", "ours bal+reloc", "ours reloc", "faiss all/20",
           "faiss 256/c", "sklearn MBKM", "semantic-id", "semantic-id bal"]
N_NEIGHBOURS, NP_SAMPLE, NP_SEED = 10, 2000, 0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- neighbours
def neighbour_sets(x: np.ndarray, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The queries and their exact cosine neighbours (queries, (Q, 10)), exactly as
    ``neighbour_preservation(x, codes, n_neighbours=10, sample=2000, seed=0)`` draws and finds
    them, computed once so each method's codes only need :func:`preservation`."""
    n = len(x)
    k = min(N_NEIGHBOURS, n - 1)
    unit = _unit_rows(x)
    queries = np.random.default_rng(NP_SEED).choice(n, size=min(NP_SAMPLE, n), replace=False)
    nb = np.empty((len(queries), k), dtype=np.int64)
    for a in range(0, len(queries), block):
        q = queries[a:a + block]
        sims = unit[q] @ unit.T
        sims[np.arange(len(q)), q] = -np.inf
        nb[a:a + block] = _top_k(sims, k)
    return queries, nb


def preservation(codes: np.ndarray, queries: np.ndarray, nb: np.ndarray) -> list[float]:
    same = codes[nb] == codes[queries][:, None, :]
    hits = np.logical_and.accumulate(same, axis=2).sum(axis=(0, 1))
    return [float(h) / nb.size for h in hits]


# ----------------------------------------------------------------------------- methods
# Each returns dict(codes (N, 3) int64, xhat (N, d), train_s, relocated=None | int).
def ours(x, k, cache, *, balance=None, reloc=False, max_per_code=None):
    key = ("model", k, repr(balance), max_per_code)
    if key in cache:  # "ours reloc" reuses the "ours default" fit (same settings, same seed)
        model, fit_s = cache[key]
    else:
        t = time.perf_counter()
        model = ResidualKMeans(LEVELS, k, seed=0, balance=balance,
                               max_per_code=max_per_code).fit(x)
        fit_s = time.perf_counter() - t
        cache[key] = (model, fit_s)
    codes = model.encode(x).numpy()
    out = {"train_s": fit_s, "relocated": None}
    if reloc:
        greedy = codes
        t = time.perf_counter()
        r = relocate(greedy, lambda idx: model.level_distances(x[idx], greedy[idx]).numpy(),
                     [k] * LEVELS, max_per_code=1)
        out["train_s"] += time.perf_counter() - t
        codes, out["relocated"] = r.codes, r.n_relocated
    out.update(codes=codes, xhat=model.decode(torch.from_numpy(codes)).numpy())
    return out


def faiss_method(x, k, cache, *, niter, max_points_per_centroid):
    t = time.perf_counter()
    books = faiss_books(x, LEVELS, k, niter=niter, max_points_per_centroid=max_points_per_centroid)
    train_s = time.perf_counter() - t
    codes = faiss_encode(x, books)
    xhat = sum(b[codes[:, lv]] for lv, b in enumerate(books))
    return {"codes": codes, "xhat": xhat, "train_s": train_s, "relocated": None}


def sklearn_method(x, k, cache, *, threads):
    from threadpoolctl import threadpool_limits
    with threadpool_limits(threads):
        t = time.perf_counter()
        models = sklearn_models(x, LEVELS, k)
        train_s = time.perf_counter() - t
        codes = sklearn_encode(x, models)
    xhat = sum(m.cluster_centers_[codes[:, lv]] for lv, m in enumerate(models))
    return {"codes": codes, "xhat": xhat, "train_s": train_s, "relocated": None}


@contextlib.contextmanager
def _catch_rqkmeans():
    """Collects every semantic_id.RQKMeans whose ``encode`` runs inside the block."""
    from semantic_id import RQKMeans
    seen, orig = [], RQKMeans.encode

    def encode(self, *args, **kwargs):
        seen.append(self)
        return orig(self, *args, **kwargs)

    RQKMeans.encode = encode
    try:
        yield seen
    finally:
        RQKMeans.encode = orig


def estimate_semantic_id(x, k, balanced, threads, budget, stop_s=2.0):
    """Seconds semantic-id's fit would take on all of ``x``: fits on random subsamples of
    max(512, 2K) rows, doubling until at least two ran and the last took >= ``stop_s`` (or the
    next could take a good part of ``budget``), then a power law N^e through the last two, e
    clipped to [1, 2] (1 with one run)."""
    from _peers import semantic_id_codes
    n_all = len(x)
    rng = np.random.default_rng(0)
    n, runs = max(512, 2 * k), []
    while n < n_all:
        sub = x[np.sort(rng.choice(n_all, n, replace=False))]
        _, s, _ = semantic_id_codes(sub, LEVELS, k, balanced=balanced, seed=0, threads=threads)
        runs.append((n, s))
        log(f"#   semantic-id balanced={balanced} probe {n:,} rows: {s:.1f} s")
        if (len(runs) >= 2 and s >= stop_s) or 4 * s > budget / 4:
            break
        n *= 2
    if not runs:
        return 0.0
    e = 1.0
    if len(runs) >= 2:
        (n1, s1), (n2, s2) = runs[-2:]
        e = min(max(math.log(max(s2, 1e-3) / max(s1, 1e-3)) / math.log(n2 / n1), 1.0), 2.0)
    n, s = runs[-1]
    return s * (n_all / n) ** e


def semantic_id_method(x, k, cache, *, balanced, threads, budget):
    from _peers import semantic_id_codes
    est = estimate_semantic_id(x, k, balanced, threads, budget)
    if est > budget:
        return {"skipped": f"skipped (est. {est:,.0f} s)"}
    with _catch_rqkmeans() as seen:
        codes, train_s, _info = semantic_id_codes(x, LEVELS, k, balanced=balanced, seed=0,
                                                  threads=threads)
    xhat = seen[-1].decode(codes)
    return {"codes": codes, "xhat": xhat, "train_s": train_s, "relocated": None}


def runners(threads, budget):
    return {
        "ours default": lambda x, k, c: ours(x, k, c),
        "ours balanced": lambda x, k, c: ours(x, k, c, balance=0.1),
        "ours bal+reloc": lambda x, k, c: ours(x, k, c, max_per_code=1, reloc=True),
        "ours reloc": lambda x, k, c: ours(x, k, c, reloc=True),
        "faiss all/20": lambda x, k, c: faiss_method(x, k, c, niter=20,
                                                     max_points_per_centroid=10**9),
        "faiss 256/c": lambda x, k, c: faiss_method(x, k, c, niter=25,
                                                    max_points_per_centroid=256),
        "sklearn MBKM": lambda x, k, c: sklearn_method(x, k, c, threads=threads),
        "semantic-id": lambda x, k, c: semantic_id_method(x, k, c, balanced=False,
                                                          threads=threads, budget=budget),
        "semantic-id bal": lambda x, k, c: semantic_id_method(x, k, c, balanced=True,
                                                              threads=threads, budget=budget),
    }


# ----------------------------------------------------------------------------- report
def header(threads: int) -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next(ln.split(":", 1)[1].strip() for ln in out.splitlines()
                   if ln.startswith("Model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "?"

    def ver(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    blas = blas_kernels()
    return (f"# CPU: {cpu}, {os.cpu_count()} logical CPUs; {threads} threads (torch, faiss, BLAS)\n"
            f"# torch {torch.__version__}, faiss-cpu {ver('faiss-cpu')}, scikit-learn "
            f"{ver('scikit-learn')}, numpy {np.__version__}, semantic-id {ver('semantic-id')}, "
            f"k-means-constrained {ver('k-means-constrained')}; BLAS: {blas}")


def table(name, n, d, k, results) -> str:
    base = results.get(BASE)
    load = "/".join(f"{v:.1f}" for v in os.getloadavg())
    title = (f"\n### {name} ({n:,} x {d}), {LEVELS} x {k} (max entropy {math.log2(k):.0f} bits; "
             f"load average {load} at the end)\n")
    cols = ("| method | rel MSE | MSE / base | collided | largest group | NP@1 | NP@2 | NP@3 | "
            "entropy bits L1/L2/L3 | train s | train / base | relocated |")
    lines = [title, cols, "|" + "---|" * 12]
    for m, r in results.items():
        if "skipped" in r:
            lines.append(f"| {m} | {r['skipped']} |" + " |" * 10)
            continue
        ok = base is not None and "skipped" not in base
        ratio_mse = f"{r['mse'] / base['mse']:.3f}" if ok else "-"
        ratio_t = f"{r['train_s'] / base['train_s']:.2f}" if ok else "-"
        ent = "/".join(f"{e:.2f}" for e in r["entropy"])
        np_ = " | ".join(f"{v:.3f}" for v in r["np"])
        rel = "-" if r["relocated"] is None else f"{r['relocated']:,}"
        lines.append(f"| {m} | {r['mse']:.4f} | {ratio_mse} | {r['collided']:.2%} | "
                     f"{r['largest']} | {np_} | {ent} | {r['train_s']:.2f} | {ratio_t} | {rel} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def warm_up(x, threads):
    """One tiny run of each library, so no method pays first-call set-up inside its timing."""
    sub = np.ascontiguousarray(x[:2000])
    ResidualKMeans(LEVELS, 8, seed=0).fit(sub).encode(sub)
    faiss_encode(sub, faiss_books(sub, LEVELS, 8, niter=2))
    sklearn_method(sub, 8, {}, threads=threads)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--catalogs", default="movielens,glove,words")
    p.add_argument("--shapes", default="32,256", help="codebook sizes K (3 levels each)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--skip-semantic-id", action="store_true")
    p.add_argument("--semantic-id-budget", type=float, default=600.0,
                   help="skip a semantic-id run estimated to train longer (seconds)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeat", type=int, default=1,
                   help="train every method (but semantic-id) this many times, round robin, "
                        "and report its best train time: shared VMs drift by tens of percent")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: movielens, 3 x 32, ours default and faiss all/20")
    a = p.parse_args(argv)
    if a.quick:
        a.catalogs, a.shapes, a.methods = "movielens", "32", f"ours default,{BASE}"
    methods = [m.strip() for m in a.methods.split(",")]
    if a.skip_semantic_id:
        methods = [m for m in methods if not m.startswith("semantic-id")]
    run = runners(a.threads, a.semantic_id_budget)
    for m in methods:
        if m not in run:
            raise SystemExit(f"unknown method {m!r}; choose from {METHODS}")
    catalogs = [c.strip() for c in a.catalogs.split(",")]
    for c in catalogs:
        if c not in CATALOGS:
            raise SystemExit(f"unknown catalog {c!r}; choose from {list(CATALOGS)}")
    shapes = [int(s) for s in a.shapes.split(",")]

    import faiss
    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    print(header(a.threads), flush=True)

    warmed = False
    for cname in catalogs:
        t = time.perf_counter()
        _keys, x = CATALOGS[cname]()
        x = np.ascontiguousarray(x, dtype=np.float32)
        queries, nb = neighbour_sets(x)
        log(f"# {cname}: {x.shape}, loaded + neighbours in {time.perf_counter() - t:.1f} s")
        if not warmed:
            warm_up(x, a.threads)
            warmed = True
        checked = False
        for k in shapes:
            results, cache = {}, {}
            for m in methods:
                gc.collect()
                t = time.perf_counter()
                r = run[m](x, k, cache)
                if "skipped" not in r:
                    codes = np.asarray(r.pop("codes"), dtype=np.int64)
                    assert codes.shape == (len(x), LEVELS), (m, codes.shape)
                    st = code_statistics(codes, [k] * LEVELS)
                    r.update(mse=rel_mse(x, r.pop("xhat")), collided=st["collided_share"],
                             largest=st["largest_group"], np=preservation(codes, queries, nb),
                             entropy=[lv.entropy_bits for lv in st["levels"]])
                    if not checked:  # our precomputed neighbours == the library function
                        ref = neighbour_preservation(x, codes, n_neighbours=N_NEIGHBOURS,
                                                     sample=NP_SAMPLE, seed=NP_SEED)
                        if not np.allclose(ref, r["np"], rtol=0, atol=1e-12):
                            raise SystemExit(f"neighbour preservation mismatch: {ref} vs "
                                             f"{r['np']}")
                        checked = True
                results[m] = r
                log(f"# {cname} {LEVELS}x{k} {m}: "
                    + (r["skipped"] if "skipped" in r else f"train {r['train_s']:.2f} s")
                    + f" ({time.perf_counter() - t:.1f} s in all)")
            for _ in range(a.repeat - 1):  # round robin: a slow spell hits every method alike
                cache = {}
                for m in methods:
                    if m.startswith("semantic-id") or "skipped" in results[m]:
                        continue
                    gc.collect()
                    again = run[m](x, k, cache)
                    results[m]["train_s"] = min(results[m]["train_s"], again["train_s"])
            print(table(cname, len(x), x.shape[1], k, results), flush=True)
        del x
        gc.collect()


if __name__ == "__main__":
    main()
