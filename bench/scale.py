"""Scale benchmark: every stage of an index's life at 1M and 10M items, time and peak memory.

    python bench/scale.py                                   # 1M and 10M x 128, SQLite (+ PG)
    python bench/scale.py --sizes 1000000 --pg-url postgresql+psycopg://semid:semid@127.0.0.1/x

Data: a 10.1M x 128 float32 Gaussian mixture written once as a memory-mapped ``.npy`` (~5 GB,
``--data``; reused by later runs); N items are its first N rows, and the 100k rows after them
are the items ``add`` brings.

Stages after ``add`` see N + 100k items. Every stage runs in a fresh process, which samples its anonymous resident memory (``RssAnon``:
the heap, not the memmap's page cache) every 20 ms: the "peak MiB" column is that peak minus the
process's own baseline after imports. Stages: the quantizer's streaming fit (3 x 256), encoding
all N, an index fit with that model on SQLite and on PostgreSQL (encode + one COPY / bulk
insert), prefix pages at depths 1-3 (p50 / p99), ``add`` of 100 x 1,000 items, ``code_report``
and every export. The last table gives the 10M / 1M ratio per stage: 10 is linear.

    python bench/scale.py --distributed 2 --sizes 1000000,10000000

runs the quantizer fit and the index fit (SQLite) under ``torchrun --nproc-per-node 2`` (gloo,
one thread per rank, each rank reading its contiguous part of the memmap) against one process
with 2 threads, and reports time, each rank's peak memory, and the largest codebook difference
and the share of identical codes (on the first 200k items) between the two.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DIM = 128
EXTRA = 100_000


def rss_anon_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


def make_data(path: str, n: int, seed: int = 0) -> np.ndarray:
    """The (n, DIM) float32 mixture at ``path``, written chunk by chunk the first time."""
    if os.path.exists(path):  # a file with at least n rows: its first n
        x = np.load(path, mmap_mode="r")
        if x.ndim == 2 and x.shape[0] >= n and x.shape[1] == DIM:
            return x[:n]
    r = np.random.default_rng(seed)
    centres = r.standard_normal((2000, DIM)).astype(np.float32) * 2
    scale = r.uniform(0.75, 1.5, 2000).astype(np.float32)
    out = np.lib.format.open_memmap(path + ".tmp", mode="w+", dtype=np.float32, shape=(n, DIM))
    for a in range(0, n, 1_000_000):
        m = min(1_000_000, n - a)
        rr = np.random.default_rng(seed + 1 + a // 1_000_000)
        w = rr.integers(0, 2000, m)
        out[a:a + m] = centres[w] + rr.standard_normal((m, DIM), dtype=np.float32) * scale[w, None]
    out.flush()
    del out
    os.replace(path + ".tmp", path)
    return np.load(path, mmap_mode="r")


# ---------------------------------------------------------------------------- stages
def keys_of(a: int, b: int) -> list[str]:
    return [f"item{i}" for i in range(a, b)]


def st_fit(ctx):
    from semid_index.quantize import ResidualKMeans

    x = np.load(ctx["data"], mmap_mode="r")[:ctx["n"]]
    model = ResidualKMeans(3, 256, seed=0).fit(x)
    model.save(ctx["model"])
    return ""


def st_encode(ctx):
    from semid_index.quantize import ResidualKMeans

    x = np.load(ctx["data"], mmap_mode="r")[:ctx["n"]]
    model = ResidualKMeans.load(ctx["model"])
    out = np.lib.format.open_memmap(ctx["codes"], mode="w+", dtype=np.int64,
                                    shape=(ctx["n"], 3))
    for a in range(0, ctx["n"], 500_000):
        out[a:a + 500_000] = model.encode(np.ascontiguousarray(x[a:a + 500_000])).numpy()
    out.flush()
    return ""


def st_index_fit(ctx):
    from semid_index import SemanticIdIndex
    from semid_index.quantize import ResidualKMeans

    x = np.load(ctx["data"], mmap_mode="r")[:ctx["n"]]
    if ctx["url"].startswith("postgresql"):
        for name in SemanticIdIndex.list_indexes(ctx["url"]):
            SemanticIdIndex.drop(ctx["url"], name)
    idx = SemanticIdIndex.create(ctx["url"], "scale", n_levels=3, codebook_size=256)
    idx.fit(keys_of(0, ctx["n"]), x, model=ResidualKMeans.load(ctx["model"]), progress=False)
    idx.close()
    return ""


def st_prefix(ctx):
    from semid_index import SemanticIdIndex

    idx = SemanticIdIndex.open(ctx["url"], "scale")
    rng = np.random.default_rng(0)
    sample = rng.integers(0, ctx["n"], 300)
    ids = idx.lookup_many([f"item{i}" for i in sample.tolist()])
    out = []
    for depth in (1, 2, 3):
        times = []
        for sid in ids:
            t = time.perf_counter_ns()
            idx.items_with_prefix(sid.levels[:depth], limit=100)
            times.append((time.perf_counter_ns() - t) / 1e3)
        times.sort()
        out.append(f"d{depth} {statistics.median(times):.0f}/{times[int(len(times) * .99)]:.0f}")
    idx.close()
    return "p50/p99 us: " + ", ".join(out)


def st_add(ctx):
    from semid_index import SemanticIdIndex

    x = np.load(ctx["data"], mmap_mode="r")
    idx = SemanticIdIndex.open(ctx["url"], "scale")
    n = ctx["n"]
    for b in range(100):
        a = n + b * 1000
        idx.add(keys_of(a, a + 1000), np.ascontiguousarray(x[a:a + 1000]), progress=False)
    idx.close()
    return "100 x 1,000 items"


def st_report(ctx):
    from semid_index import SemanticIdIndex

    with SemanticIdIndex.open(ctx["url"], "scale") as idx:
        r = idx.code_report()
        s = idx.stats()
    return f"{s.n_items:,} items, collided {r['collided_share']:.1%}"


def st_export(ctx):
    from semid_index.cli import main

    out = os.path.join(ctx["tmp"], ctx["file"])
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            main(["export", out, "--db", ctx["url"], "-i", "scale", "--what", ctx["what"]],
                 standalone_mode=False)
    finally:
        size = os.path.getsize(out) if os.path.exists(out) else 0
        for p in Path(ctx["tmp"]).glob(ctx["file"] + "*"):
            p.unlink()
    return f"{size / 2**20:,.0f} MiB"


EXPORTS = [("ids", "ids.jsonl"), ("ids", "ids.npz"), ("next-codes", "next.jsonl"),
           ("decoding", "codes.npy"), ("grid", "grid.npy"), ("sid2items", "sid2iid.json"),
           ("prefix-ngrams", "ngrams.npz")]


def _peak_sampler():
    """(stop, peak) of a thread sampling this process's RssAnon every 20 ms."""
    peak = [rss_anon_mib()]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss_anon_mib())
    threading.Thread(target=sample, daemon=True).start()
    return stop, peak


def rank_main(args) -> None:
    """One rank of ``--distributed``: fit its shard (quantizer, then index), write its figures."""
    import json

    import torch
    import torch.distributed as dist

    from semid_index import SemanticIdIndex
    from semid_index.quantize import ResidualKMeans

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    n = args.rank_n
    lo, hi = n * rank // world, n * (rank + 1) // world
    x = np.load(args.data, mmap_mode="r")[lo:hi]
    base = rss_anon_mib()
    stop, peak = _peak_sampler()
    out = {}
    t0 = time.perf_counter()
    model = ResidualKMeans(3, 256, seed=0).fit(x, distributed=True)
    out["fit"] = time.perf_counter() - t0
    out["fit_peak"] = max(peak[0], rss_anon_mib()) - base
    base = peak[0] = rss_anon_mib()
    if rank == 0:
        model.save(os.path.join(args.rank_out, "model.npz"))
    url = f"sqlite:///{os.path.join(args.rank_out, 'dist.db')}"
    if rank == 0:
        SemanticIdIndex.create(url, "scale", n_levels=3, codebook_size=256).close()
    dist.barrier()
    t0 = time.perf_counter()
    with SemanticIdIndex.open(url, "scale") as idx:
        idx.fit(keys_of(lo, hi), x, model=model, distributed=True, progress=False)
    out["index_fit"] = time.perf_counter() - t0
    stop.set()
    out["index_peak"] = max(peak[0], rss_anon_mib()) - base
    with open(os.path.join(args.rank_out, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()


def distributed_compare(args, sizes: list[int]) -> None:
    """``--distributed N``: torchrun with N ranks against one process, per size."""
    import json
    import subprocess

    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(dir=os.path.dirname(args.data)) as tmp:
            ctx = {"data": args.data, "n": n, "model": os.path.join(tmp, "model.npz"),
                   "codes": os.path.join(tmp, "codes.npy"), "tmp": tmp}
            one_fit = run_stage("st_fit", ctx)
            one_index = run_stage("st_index_fit", {
                **ctx, "url": f"sqlite:///{os.path.join(tmp, 'one.db')}"})
            t0 = time.perf_counter()
            p = subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc-per-node", str(args.distributed), __file__, "--data", args.data,
                 "--rank-n", str(n), "--rank-out", tmp],
                env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if p.returncode:
                raise SystemExit(f"torchrun failed:\n{p.stderr[-3000:]}")
            ranks = [json.load(open(os.path.join(tmp, f"rank{r}.json")))
                     for r in range(args.distributed)]
            from semid_index.quantize import ResidualKMeans

            a = ResidualKMeans.load(ctx["model"])
            b = ResidualKMeans.load(os.path.join(tmp, "model.npz"))
            diff = max(float((u - v).abs().max()) for u, v in zip(a.codebooks_, b.codebooks_))
            sub = np.ascontiguousarray(np.load(args.data, mmap_mode="r")[:min(n, 200_000)])
            same = float((a.encode(sub) == b.encode(sub)).all(1).float().mean())
            rows.append((n, one_fit, one_index, ranks, wall, diff, same))
            print(f"{n:,}: one process fit {one_fit[0]:.1f} s ({one_fit[1]:.0f} MiB), index fit "
                  f"{one_index[0]:.1f} s ({one_index[1]:.0f} MiB); {args.distributed} ranks fit "
                  f"{max(r['fit'] for r in ranks):.1f} s, index fit "
                  f"{max(r['index_fit'] for r in ranks):.1f} s, peaks "
                  f"{[(round(r['fit_peak']), round(r['index_peak'])) for r in ranks]} MiB, torchrun wall {wall:.1f} s; "
                  f"codebooks differ by {diff:.2g}, identical codes {same:.4%}", flush=True)
    print(f"\n| items | stage | 1 process, 2 threads | {args.distributed} ranks x 1 thread "
          f"(slowest rank) | peak MiB: 1 process | peak MiB per rank |")
    print("|---:|---|---:|---:|---:|---:|")
    for n, one_fit, one_index, ranks, wall, diff, same in rows:
        print(f"| {n:,} | quantizer fit (3 x 256) | {one_fit[0]:.1f} s | "
              f"{max(r['fit'] for r in ranks):.1f} s | {one_fit[1]:,.0f} | "
              + " / ".join(f"{r['fit_peak']:,.0f}" for r in ranks) + " |")
        print(f"| {n:,} | index fit, SQLite (encode; rank 0 loads all) | {one_index[0]:.1f} s | "
              f"{max(r['index_fit'] for r in ranks):.1f} s | {one_index[1]:,.0f} | "
              + " / ".join(f"{r['index_peak']:,.0f}" for r in ranks) + " |")
        print(f"| {n:,} | codebooks: largest difference; identical codes (first 200k) | "
              f"{diff:.2g} | {same:.4%} | | |")


def _child(fn_name, ctx, conn):
    import torch

    torch.set_num_threads(2)
    base = rss_anon_mib()
    stop, peak = _peak_sampler()
    try:
        t0 = time.perf_counter()
        note = globals()[fn_name](ctx)
        dt = time.perf_counter() - t0
        stop.set()
        peak[0] = max(peak[0], rss_anon_mib())
        conn.send((dt, peak[0] - base, note, None))
    except BaseException as e:  # noqa: BLE001 - reported by the parent
        stop.set()
        conn.send((0.0, 0.0, "", f"{type(e).__name__}: {e}"))


def run_stage(fn_name: str, ctx: dict) -> tuple[float, float, str]:
    parent, child = mp.Pipe()
    p = mp.get_context("spawn").Process(target=_child, args=(fn_name, ctx, child))
    p.start()
    dt, peak, note, err = parent.recv()
    p.join()
    if err:
        raise SystemExit(f"stage {fn_name} failed: {err}")
    return dt, peak, note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "semid-scale.npy"))
    ap.add_argument("--pg-url", default=os.environ.get("SEMID_TEST_PG_URL"))
    ap.add_argument("--distributed", type=int, metavar="RANKS",
                    help="compare a torchrun fit with this many ranks to one process")
    ap.add_argument("--rank-n", type=int, help=argparse.SUPPRESS)  # a rank of --distributed
    ap.add_argument("--rank-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_n:
        return rank_main(args)
    sizes = [int(v) for v in args.sizes.split(",")]
    t0 = time.perf_counter()
    make_data(args.data, max(sizes) + EXTRA)
    print(f"data: {max(sizes) + EXTRA:,} x {DIM} float32 at {args.data} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.distributed:
        return distributed_compare(args, sizes)
    results: dict[tuple[int, str], tuple[float, float, str]] = {}
    for n in sizes:
        with tempfile.TemporaryDirectory(dir=os.path.dirname(args.data)) as tmp:
            ctx = {"data": args.data, "n": n, "model": os.path.join(tmp, "model.npz"),
                   "codes": os.path.join(tmp, "codes.npy"), "tmp": tmp}
            stages = [("fit (quantizer, streaming)", "st_fit", {}),
                      ("encode all", "st_encode", {})]
            backends = [("SQLite", f"sqlite:///{os.path.join(tmp, 'scale.db')}")]
            if args.pg_url:
                backends.append(("PostgreSQL", args.pg_url))
            for name, url in backends:
                stages += [(f"{name}: index fit (encode + bulk load)", "st_index_fit",
                            {"url": url}),
                           (f"{name}: prefix pages", "st_prefix", {"url": url}),
                           (f"{name}: add 100 x 1,000", "st_add", {"url": url})]
            url = backends[0][1]
            stages += [("SQLite: code_report + stats", "st_report", {"url": url})]
            stages += [(f"SQLite: export {what} ({file.split('.')[-1]})", "st_export",
                        {"url": url, "what": what, "file": file}) for what, file in EXPORTS]
            for label, fn, extra in stages:
                dt, peak, note = run_stage(fn, {**ctx, **extra})
                results[(n, label)] = (dt, peak, note)
                print(f"{n:>10,}  {label:<44} {dt:8.1f} s  peak {peak:7.0f} MiB  {note}",
                      flush=True)
    labels = list(dict.fromkeys(label for _, label in results))
    head = " | ".join(f"{n:,} time | {n:,} peak MiB" for n in sizes)
    print(f"\n| stage | {head} |" + (" ratio |" if len(sizes) > 1 else ""))
    print("|---|" + "---:|---:|" * len(sizes) + ("---:|" if len(sizes) > 1 else ""))
    for label in labels:
        cells = []
        for n in sizes:
            dt, peak, note = results[(n, label)]
            cells.append(f"{dt:,.1f} s | {peak:,.0f}")
        ratio = ""
        if len(sizes) > 1:
            a, b = results[(sizes[0], label)][0], results[(sizes[-1], label)][0]
            ratio = f" {b / a:.1f}x |" if a > 0 else " - |"
        print(f"| {label} | " + " | ".join(cells) + " |" + ratio)


if __name__ == "__main__":
    main()
