"""Store benchmark: semid_index's database paths against the raw drivers, in one process.

    python bench/store.py                       # SQLite, plus PostgreSQL if SEMID_TEST_PG_URL is set
    python bench/store.py --n 200000 --pg-url postgresql+psycopg://semid:semid@127.0.0.1/semid_test

One items table, N items whose codes come from a residual k-means trained on a Gaussian mixture
(so prefixes and collisions look like a real catalog's). Measured, ours vs the raw driver on a
table with the identical DDL:

- bulk load rows/s: the fit's write transaction on precomputed codes (``_store_version``: code
  packing, suffixes, version and codebook rows, ``ItemWrites.load``, activation)
  vs ``sqlite3.executemany`` / psycopg binary ``COPY`` of prebuilt rows, one transaction each;
- prefix lookup p50/p99 at depths 1-3, limit 100: ``SemanticIdIndex.items_with_prefix`` vs the
  same SELECT through the raw driver;
- incremental add of 100 batches of 1,000 new items, encoding included (``SemanticIdIndex.add``),
  plus on SQLite the WAL checkpointing those writes owe (the background pass is waited for and
  a last checkpoint runs, inside the timing); three rounds on fresh items, each right after a
  round of the raw driver inserting the same number of prebuilt rows into its table, median
  reported, and the ratio taken round by round.

With PostgreSQL, ``--writers 1,2,4`` also times that many processes adding batches of 1,000 to
the same index at once (one thread each; the index's write lock serialises their writes, their
encoding runs in parallel).

Targets (issue 3): load >= 60% of raw on SQLite and >= 50% of raw COPY on PostgreSQL; prefix p50
<= 3x raw and <= 0.5 ms on SQLite; add >= 20,000 items/s on SQLite.
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import make_url  # noqa: E402
from sqlalchemy.schema import CreateIndex, CreateTable  # noqa: E402

from semid_index import SemanticIdIndex  # noqa: E402
from semid_index.datasets import gaussian_mixture  # noqa: E402
from semid_index.storage import _engine  # noqa: E402
from semid_index.storage._codes import CodeLayout, group_suffixes  # noqa: E402
from semid_index.storage._schema import items  # noqa: E402

COLS = "index_id, version, item_key, code, suffix, fingerprint"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def catalog(n: int, dim: int, levels: int, k: int, seed: int, extra: int = 20_000):
    """(model, codes (n, L), embeddings of ``extra`` more items for the add benchmark)."""
    from semid_index.quantize import ResidualKMeans

    x = gaussian_mixture(n + extra, dim, 500, seed=seed)
    model = ResidualKMeans(levels, k, seed=seed).fit(x[:n])
    codes = model.encode(x[:n]).numpy()
    return model, codes, x[n:]


def items_ddl(dialect, name: str) -> list[str]:
    """Our items table's DDL, renamed: the raw baseline writes to an identical table."""
    from sqlalchemy.dialects import postgresql, sqlite

    d = sqlite.dialect() if dialect == "sqlite" else postgresql.dialect()
    out = [str(CreateTable(items).compile(dialect=d))]
    out += [str(CreateIndex(ix).compile(dialect=d)) for ix in items.indexes]
    return [s.replace("semid_items", name).replace("ix_" + name, "ix_raw").strip() for s in out]


def rows_of(keys, packed, suffix):
    return list(zip([1] * len(keys), [1] * len(keys), keys, packed, suffix.tolist(),
                    [0] * len(keys)))


# ---------------------------------------------------------------------------- bulk loads
def ours_load(url: str, name: str, model, keys, codes) -> tuple[float, SemanticIdIndex]:
    """Seconds for the fit's write path (code packing, suffixes, one transaction storing the
    version and its items, activation) on precomputed codes; the index."""
    idx = SemanticIdIndex.create(url, name, n_levels=codes.shape[1],
                                 codebook_size=list(model.codebook_sizes_))
    t = time.perf_counter()
    idx._store_version(model, keys, codes, np.zeros(len(keys), dtype=np.int64), progress=False,
                       fit_stats={})
    return time.perf_counter() - t, idx


def raw_sqlite(path: str) -> sqlite3.Connection:
    """A plain sqlite3 connection with the settings semid_index uses (storage/_engine.py), so
    the comparison is between drivers, not configurations."""
    con = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL",
                   f"cache_size=-{_engine.SQLITE_CACHE_KIB}",
                   f"mmap_size={_engine.SQLITE_MMAP_BYTES}",
                   f"wal_autocheckpoint={_engine.SQLITE_WAL_PAGES}"):
        con.execute("PRAGMA " + pragma)
    return con


def raw_sqlite_load(path: str, rows) -> float:
    con = raw_sqlite(path)
    for ddl in items_ddl("sqlite", "raw_items"):
        con.execute(ddl)
    t = time.perf_counter()
    con.execute("BEGIN IMMEDIATE")
    for a in range(0, len(rows), 50_000):
        con.executemany(f"INSERT INTO raw_items ({COLS}) VALUES (?, ?, ?, ?, ?, ?)",
                        rows[a:a + 50_000])
    con.execute("COMMIT")
    dt = time.perf_counter() - t
    con.close()
    return dt


def pg_connect(url: str):
    import psycopg

    u = make_url(url)
    return psycopg.connect(host=u.host, port=u.port or 5432, user=u.username,
                           password=u.password, dbname=u.database)


def raw_pg_load(url: str, rows) -> float:
    con = pg_connect(url)
    con.execute("DROP TABLE IF EXISTS raw_items")
    for ddl in items_ddl("postgresql", "raw_items"):
        con.execute(ddl)
    con.commit()
    t = time.perf_counter()
    with con.cursor() as cur, cur.copy(f"COPY raw_items ({COLS}) FROM STDIN (FORMAT BINARY)") as cp:
        cp.set_types(["int4", "int4", "text", "bytea", "int4", "int8"])
        for r in rows:
            cp.write_row(r)
    con.commit()
    dt = time.perf_counter() - t
    con.close()
    return dt


def raw_adds(kind: str, target: str, packed_new: list[bytes], batch: int, round_: int) -> float:
    """rows/s of the raw driver inserting prebuilt rows (codes already computed, suffixes made
    up) into its 1M-row table, one transaction per batch, plus SQLite's checkpoint: the floor
    under ``add``, which also encodes, fingerprints, probes keys and allocates suffixes."""
    n = len(packed_new)
    base = 10_000_000 + 1_000_000 * round_
    rows = [(1, 1, f"raw-add-{round_}-{i}", c, base + i, 0) for i, c in enumerate(packed_new)]
    if kind == "sqlite":
        con = raw_sqlite(target)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        t = time.perf_counter()
        for a in range(0, n, batch):
            con.execute("BEGIN IMMEDIATE")
            con.executemany(f"INSERT INTO raw_items ({COLS}) VALUES (?, ?, ?, ?, ?, ?)",
                            rows[a:a + batch])
            con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(PASSIVE)")
    else:
        con = pg_connect(target)
        t = time.perf_counter()
        for a in range(0, n, batch):
            with con.cursor() as cur, cur.copy(
                    f"COPY raw_items ({COLS}) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["int4", "int4", "text", "bytea", "int4", "int8"])
                for r in rows[a:a + batch]:
                    cp.write_row(r)
            con.commit()
    dt = time.perf_counter() - t
    con.close()
    return n / dt


# ---------------------------------------------------------------------------- prefix lookups
def percentiles(ns: list[int]) -> tuple[float, float]:
    a = np.asarray(ns) / 1000.0
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def time_prefix(idx: SemanticIdIndex, raw_query, prefixes, limit: int = 100):
    """(ours p50, p99, raw p50, p99) in microseconds, interleaved query by query."""
    rec = idx._record
    ours, raw = [], []
    for pre in prefixes:
        t = time.perf_counter_ns()
        page = idx.items_with_prefix(pre, limit=limit)
        ours.append(time.perf_counter_ns() - t)
        t = time.perf_counter_ns()
        rows = raw_query(rec.id, rec.active_version, pre, limit)
        raw.append(time.perf_counter_ns() - t)
        if len(rows) != len(page):
            raise SystemExit(f"raw and ours disagree on prefix {pre}: {len(rows)} vs {len(page)}")
    return (*percentiles(ours), *percentiles(raw))


PREFIX_SQL = ("SELECT item_key, code, suffix FROM semid_items WHERE index_id = {p} AND "
              "version = {p} AND code >= {p} AND code < {p} ORDER BY code, suffix LIMIT {p}")


def raw_prefix_fn(cursor, placeholder: str, layout: CodeLayout):
    sql = PREFIX_SQL.format(p=placeholder)

    def run(index_id, version, pre, limit):
        lo, hi = layout.range(pre)
        cursor.execute(sql, (index_id, version, lo, hi, limit))
        return cursor.fetchall()
    return run


def time_adds(idx: SemanticIdIndex, x: np.ndarray, batch: int, n_batches: int, tag: str) -> float:
    """items/s of ``n_batches`` adds, plus (SQLite) the WAL checkpointing they owe: the
    background pass still running is waited for and a last checkpoint copies the rest, so
    deferring checkpoints cannot flatter the number."""
    t = time.perf_counter()
    for b in range(n_batches):
        keys = [f"{tag}-{b}-{i}" for i in range(batch)]
        idx.add(keys, x[b * batch:(b + 1) * batch])
    if idx._store.dialect == "sqlite":
        idx._store.wal.wait()
        with idx._store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
    return n_batches * batch / (time.perf_counter() - t)


# ---------------------------------------------------------------------------- main
def backend_run(kind: str, url: str, model, keys, codes, prefixes, extra, args, raw_conn_url):
    layout = CodeLayout(codes.shape[1], 2)
    rows = rows_of(keys, layout.pack(codes), group_suffixes(codes))
    if kind == "sqlite":
        raw_t = raw_sqlite_load(raw_conn_url, rows)
    else:
        raw_t = raw_pg_load(raw_conn_url, rows)
    del rows
    ours_t, idx = ours_load(url, "bench", model, keys, codes)
    n = len(keys)
    res = {"load_ours": n / ours_t, "load_raw": n / raw_t}
    if kind == "sqlite":
        con = raw_sqlite(make_url(url).database)
        raw = raw_prefix_fn(con.cursor(), "?", layout)
    else:
        con = pg_connect(url)
        raw = raw_prefix_fn(con.cursor(), "%s", layout)
    for depth in (1, 2, 3):
        pres = [tuple(p) for p in prefixes[:, :depth].tolist()]
        time_prefix(idx, raw, pres[:50])  # warm caches and prepared statements
        res[f"prefix{depth}"] = time_prefix(idx, raw, pres)
    con.close()
    if kind == "sqlite":  # the bulk load's own checkpoint is not the adds' to pay
        with idx._store.engine.connect() as c:
            c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    time_adds(idx, extra[-1000:], 1000, 1, "warm")  # first add loads the codebooks
    # rounds alternate the raw driver and ours, each on new items, so both see the same state
    # of the machine and of their (equally grown) tables; the ratio is taken per round
    per_round = args.add_batches * 1000
    res["add"], res["add_raw"] = [], []
    for r in range(args.add_rounds):
        x = extra[r * per_round:(r + 1) * per_round]
        res["add_raw"].append(raw_adds(kind, raw_conn_url, layout.pack(model.encode(x).numpy()),
                                       1000, r))
        res["add"].append(time_adds(idx, x, 1000, args.add_batches, f"{kind}-{r}"))
    if kind == "postgresql":
        con = pg_connect(raw_conn_url)
        con.execute("DROP TABLE raw_items")
        con.commit()
        con.close()
    idx.close()
    return res


def _writer(url: str, rows_path: str, worker: int, n_writers: int, batches: int, barrier,
            out) -> None:
    """One of ``n_writers`` processes adding ``batches`` x 1,000 new items to index "bench"."""
    import torch

    torch.set_num_threads(1)
    x = np.load(rows_path, mmap_mode="r")
    with SemanticIdIndex.open(url, "bench") as idx:
        idx.add([f"warm-{n_writers}-{worker}"], np.ascontiguousarray(x[:1]))  # load the model
        barrier.wait()
        t = time.perf_counter()
        for b in range(batches):
            rows = np.ascontiguousarray(x[(b * 1000) % (len(x) - 1000):][:1000])
            idx.add([f"w{n_writers}-{worker}-{b}-{i}" for i in range(1000)], rows)
        out.put(time.perf_counter() - t)


def writers_run(url: str, extra: np.ndarray, counts: list[int], batches: int) -> dict:
    """items/s of N processes adding to one PostgreSQL index at once, for each N in counts."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows_path = os.path.join(tmp, "rows.npy")
        np.save(rows_path, extra)
        for n in counts:
            barrier, out = ctx.Barrier(n + 1), ctx.Queue()
            procs = [ctx.Process(target=_writer, args=(url, rows_path, w, n, batches, barrier,
                                                       out)) for w in range(n)]
            for p in procs:
                p.start()
            barrier.wait()
            t = time.perf_counter()
            times = [out.get() for _ in procs]
            wall = time.perf_counter() - t
            for p in procs:
                p.join()
            res[n] = (n * batches * 1000 / wall, max(times))
            print(f"  {n} writer(s): {res[n][0]:,.0f} items/s in all", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="items in the table")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000, help="prefix queries per depth")
    ap.add_argument("--add-batches", type=int, default=100,
                    help="batches of 1,000 new items (a day's arrivals; long enough that WAL "
                         "checkpoints are paid at their steady-state rate)")
    ap.add_argument("--add-rounds", type=int, default=3,
                    help="rounds of --add-batches, each on new items; the median is reported "
                         "(this machine's timings drift by tens of percent)")
    ap.add_argument("--pg-url", default=os.environ.get("SEMID_TEST_PG_URL"),
                    help="PostgreSQL database (default $SEMID_TEST_PG_URL; omit to skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--writers", default="1,2,4",
                    help="PostgreSQL: numbers of concurrent add processes to time (each one "
                         "thread; empty to skip)")
    ap.add_argument("--writer-batches", type=int, default=30,
                    help="batches of 1,000 items each concurrent writer adds")
    args = ap.parse_args()

    t = time.perf_counter()
    model, codes, extra = catalog(args.n, args.dim, args.levels, args.k, args.seed,
                                  extra=(args.add_rounds * args.add_batches + 1) * 1000)
    print(f"catalog: {args.n:,} items, D={args.dim}, {args.levels} x {args.k} codes "
          f"({time.perf_counter() - t:.1f} s to make and encode)", flush=True)
    keys = [f"item-{i:08d}" for i in range(args.n)]
    rng = np.random.default_rng(args.seed)
    prefixes = codes[rng.integers(0, args.n, args.queries)]

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["SQLite"] = backend_run("sqlite", f"sqlite:///{tmp}/ours.db", model, keys, codes,
                                        prefixes, extra, args, f"{tmp}/raw.db")
    if args.pg_url:
        if "bench" in SemanticIdIndex.list_indexes(args.pg_url):  # left by an interrupted run
            SemanticIdIndex.drop(args.pg_url, "bench")
        results["PostgreSQL"] = backend_run("postgresql", args.pg_url, model, keys, codes,
                                            prefixes, extra, args, args.pg_url)
        writers = [int(v) for v in args.writers.split(",") if v.strip()]
        if writers:
            results["PostgreSQL"]["writers"] = writers_run(args.pg_url, extra, writers,
                                                           args.writer_batches)
        SemanticIdIndex.drop(args.pg_url, "bench")

    print(f"\n{args.n:,} items; codes from a {args.levels} x {args.k} residual k-means; "
          f"prefix queries: {args.queries} per depth, limit 100; adds: "
          f"{args.add_rounds} rounds of {args.add_batches} x 1,000 items incl. encoding "
          f"(D={args.dim})\n")
    print("| backend | metric | semid_index | raw driver | ours / raw |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        raw_name = "executemany" if name == "SQLite" else "COPY"
        print(f"| {name} | bulk load rows/s | {r['load_ours']:,.0f} | {r['load_raw']:,.0f} "
              f"({raw_name}) | {r['load_ours'] / r['load_raw']:.0%} |")
        for depth in (1, 2, 3):
            op50, op99, rp50, rp99 = r[f"prefix{depth}"]
            print(f"| {name} | prefix depth {depth} p50 / p99 µs | {op50:.0f} / {op99:.0f} | "
                  f"{rp50:.0f} / {rp99:.0f} | {op50 / rp50:.2f}x p50 |")
        adds, raws = r["add"], r["add_raw"]
        ratios = [a / b for a, b in zip(adds, raws)]
        raw_how = "prebuilt rows, checkpoints in the commit" if name == "SQLite" else \
            "prebuilt rows"
        print(f"| {name} | add, batches of 1,000, items/s (median of {len(adds)} rounds, "
              f"alternating with the raw driver; min-max) | {np.median(adds):,.0f} "
              f"({min(adds):,.0f}-{max(adds):,.0f}; encoding included) | "
              f"{np.median(raws):,.0f} ({min(raws):,.0f}-{max(raws):,.0f}; {raw_how}) | "
              f"{np.median(ratios):.0%} (per round: {', '.join(f'{v:.0%}' for v in ratios)}) |")
        for n, (rate, _) in r.get("writers", {}).items():
            one = r["writers"][min(r["writers"])][0]
            print(f"| {name} | add, {n} concurrent writer process(es) x {args.writer_batches} x "
                  f"1,000 items, items/s in all | {rate:,.0f} | - | {rate / one:.2f}x of "
                  f"{min(r['writers'])} writer |")
    print(f"\npeak RSS {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
