"""Soak test: many writer and reader processes on one index, then a full consistency check.

    python bench/soak.py                                  # SQLite (temp dir), + PostgreSQL if
                                                          # SEMID_TEST_PG_URL is set; 60 s each
    python bench/soak.py --seconds 10 --writers 4 --readers 4
    python bench/soak.py --pg-url postgresql+psycopg://semid:semid@127.0.0.1/semid_test
    python bench/soak.py --sqlite-path /data/soak.db --backends sqlite

Not part of the test suite. Per backend: the main process creates an index and fits it on a
catalog of ``--initial`` items, then starts ``--writers`` writer and ``--readers`` reader
processes (spawned, one torch thread each) that run for ``--seconds`` after all are ready.

- Writers add batches of ``--batch`` fresh items, each writer in its own key namespace
  (``w<writer>-<n>``), and record every ID an add returned. A shared counter per writer tells
  the readers how many of its keys are acknowledged.
- Readers look up random acknowledged keys (half from the initial fit, whose IDs they know,
  half from the writers) and, after every other lookup, read a page of up to 100 items under a
  random prefix of that item's ID (``items_with_prefix``). They record latencies and check that
  every acknowledged key is found, that a key's ID never changes between two lookups, and that
  the page under an existing item's prefix is not empty.

At the end the main process reads every item back (``id_arrays``) and reports, per backend:
duplicate IDs, lost items (an acknowledged key missing, or with another ID than it was told),
items nobody acknowledged, reader and writer errors, throughput and latency percentiles. The
exit status is 1 if any of those counts is not 0.

On PostgreSQL a throw-away database is created next to the one in the URL (and dropped at the
end, unless ``--keep``) when the role may CREATE DATABASE; otherwise the URL's database is used
with an index of a unique name. On SQLite the file is a new one in a temporary directory unless
``--sqlite-path`` names one (the index name is unique, so an existing file is fine too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

N_LEVELS = 3
MAX_ERRORS_KEPT = 5  # error messages kept per worker


# ====================================================================== data
def embeddings(n: int, dim: int, seed: int) -> np.ndarray:
    """A Gaussian mixture (64 clusters whose centres depend only on ``dim``): items from any
    process share one embedding distribution."""
    centers = np.random.default_rng(1234).standard_normal((64, dim)).astype(np.float32) * 4
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, len(centers), n)] + rng.standard_normal((n, dim))
    return x.astype(np.float32)


def percentiles(values, qs=(50, 99)) -> list[float]:
    return [float(np.percentile(values, q)) if len(values) else float("nan") for q in qs]


# ====================================================================== workers
def _single_threaded() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"


def writer(w: int, url: str, name: str, cfg: dict, acked, barrier, out: str) -> None:
    """Add batches of fresh items until the time is up; record every ID an add returned."""
    _single_threaded()
    import torch

    torch.set_num_threads(1)
    from semid_index import SemanticIdIndex

    told: list[tuple[str, str]] = []
    latencies, errors = [], []
    with SemanticIdIndex.open(url, name) as idx:
        idx.add([f"w{w}-warmup"], embeddings(1, cfg["dim"], seed=10_000 + w))  # imports torch
        told.append((f"w{w}-warmup", str(idx.lookup(f"w{w}-warmup"))))
        barrier.wait()
        end = time.monotonic() + cfg["seconds"]
        batch_no = 0
        while time.monotonic() < end:
            start = len(told) - 1  # keys w<w>-0 .. are numbered after the warm-up item
            keys = [f"w{w}-{start + i}" for i in range(cfg["batch"])]
            x = embeddings(len(keys), cfg["dim"], seed=w * 1_000_003 + batch_no)
            batch_no += 1
            t0 = time.perf_counter_ns()
            try:
                ids = idx.add(keys, x)
            except Exception:  # noqa: BLE001 - counted and reported; the soak goes on
                errors.append(traceback.format_exc(limit=3))
                continue
            latencies.append((time.perf_counter_ns() - t0) / 1e3)
            told.extend(zip(keys, map(str, ids)))
            acked[w] = len(told) - 1  # keys w<w>-0 .. w<w>-(n-1) are acknowledged
    Path(out).write_text(json.dumps({"told": told, "add_us": latencies, "n_errors": len(errors),
                                     "errors": errors[:MAX_ERRORS_KEPT]}))


def reader(r: int, url: str, name: str, cfg: dict, base_ids: dict, acked, barrier,
           out: str) -> None:
    """Look up random acknowledged keys and prefix pages until the time is up."""
    _single_threaded()
    from semid_index import SemanticIdIndex
    from semid_index.errors import UnknownItemError

    rng = random.Random(r)
    base_keys = list(base_ids)
    seen: dict[str, str] = dict(base_ids)  # key -> the ID it had
    lookup_us, page_us, errors = [], [], []
    n_errors = lost = changed = empty_pages = 0
    n_writers = len(acked)
    with SemanticIdIndex.open(url, name) as idx:
        idx.lookup(base_keys[0])
        barrier.wait()
        end = time.monotonic() + cfg["seconds"]
        while time.monotonic() < end:
            w = rng.randrange(n_writers)
            n = acked[w]
            key = f"w{w}-{rng.randrange(n)}" if n and rng.random() < 0.5 else \
                rng.choice(base_keys)
            try:
                t0 = time.perf_counter_ns()
                sid = idx.lookup(key)
                lookup_us.append((time.perf_counter_ns() - t0) / 1e3)
                if seen.setdefault(key, str(sid)) != str(sid):
                    changed += 1
                    errors.append(f"{key}: ID {seen[key]} then {sid}")
                if len(lookup_us) % 2 == 0:
                    prefix = sid.levels[:rng.randint(1, N_LEVELS)]
                    t0 = time.perf_counter_ns()
                    page = idx.items_with_prefix(prefix, limit=100)
                    page_us.append((time.perf_counter_ns() - t0) / 1e3)
                    if not len(page):
                        empty_pages += 1
                        errors.append(f"empty page under {prefix}, the prefix of {key}")
            except UnknownItemError:
                lost += 1
                errors.append(f"acknowledged key {key} not found")
            except Exception:  # noqa: BLE001 - counted and reported; the soak goes on
                n_errors += 1
                errors.append(traceback.format_exc(limit=3))
    np.save(Path(out).with_suffix(".lookup.npy"), np.asarray(lookup_us))
    np.save(Path(out).with_suffix(".page.npy"), np.asarray(page_us))
    Path(out).write_text(json.dumps({"n_errors": n_errors, "lost": lost, "changed": changed,
                                     "empty_pages": empty_pages,
                                     "errors": errors[:MAX_ERRORS_KEPT]}))


# ====================================================================== one backend
@contextlib.contextmanager
def postgres_database(url: str, keep: bool):
    """A throw-away database next to ``url``'s (dropped at the end unless ``keep``), or
    ``url`` itself when the role may not create databases."""
    from sqlalchemy import create_engine, exc, make_url

    base = make_url(url)
    admin = create_engine(base, isolation_level="AUTOCOMMIT", pool_size=1)
    name = "semid_soak_" + uuid.uuid4().hex[:10]
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except exc.DBAPIError as e:
        print(f"  (cannot create a database: {str(e.orig).strip()}; using {base.database})")
        admin.dispose()
        yield url
        return
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        if keep:
            print(f"  kept database {name}")
        else:
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def run_backend(backend: str, url: str, args) -> dict:
    """Fit, soak, check; the row of the report."""
    from semid_index import SemanticIdIndex

    name = "soak_" + uuid.uuid4().hex[:8]
    cfg = {"seconds": args.seconds, "batch": args.batch, "dim": args.dim}
    base_keys = [f"base-{i}" for i in range(args.initial)]
    with SemanticIdIndex.create(url, name, n_levels=N_LEVELS, codebook_size=args.codebook_size,
                                seed=0) as idx:
        idx.fit(base_keys, embeddings(args.initial, args.dim, seed=0))
        keys, ids = idx.id_arrays()
    base_ids = {k: "-".join(map(str, row)) for k, row in zip(keys, ids.tolist())}

    ctx = mp.get_context("spawn")
    acked = ctx.Array("q", args.writers, lock=False)
    barrier = ctx.Barrier(args.writers + args.readers + 1)
    work = Path(tempfile.mkdtemp(prefix="semid_soak_"))
    procs = [ctx.Process(target=writer, args=(w, url, name, cfg, acked, barrier,
                                              str(work / f"writer{w}.json")))
             for w in range(args.writers)]
    procs += [ctx.Process(target=reader, args=(r, url, name, cfg, base_ids, acked, barrier,
                                               str(work / f"reader{r}.json")))
              for r in range(args.readers)]
    for p in procs:
        p.start()
    barrier.wait(timeout=600)  # every worker has imported, connected and warmed up
    for p in procs:
        p.join()
    elapsed = args.seconds  # each worker ran that long after the barrier
    crashed = [p.exitcode for p in procs if p.exitcode != 0]

    writers = [json.loads((work / f"writer{w}.json").read_text())
               for w in range(args.writers) if (work / f"writer{w}.json").exists()]
    readers = [json.loads((work / f"reader{r}.json").read_text())
               for r in range(args.readers) if (work / f"reader{r}.json").exists()]
    lookup_us = np.concatenate([np.load(work / f"reader{r}.lookup.npy")
                                for r in range(len(readers))] or [np.zeros(0)])
    page_us = np.concatenate([np.load(work / f"reader{r}.page.npy")
                              for r in range(len(readers))] or [np.zeros(0)])
    add_us = np.concatenate([np.asarray(w["add_us"]) for w in writers] or [np.zeros(0)])
    shutil.rmtree(work)

    # the final check: every item read back at once
    with SemanticIdIndex.open(url, name) as idx:
        keys, ids = idx.id_arrays()
        count = idx.count()
    stored = dict(zip(keys, ("-".join(map(str, row)) for row in ids.tolist())))
    duplicates = len(ids) - len({tuple(row) for row in ids.tolist()})
    told = {k: i for w in writers for k, i in w["told"]}
    told.update(base_ids)
    lost = sum(k not in stored for k in told)
    wrong = sum(k in stored and stored[k] != i for k, i in told.items())
    unacked = len(set(stored) - set(told))
    messages = [m for w in writers + readers for m in w["errors"]]
    new_items = sum(len(w["told"]) - 1 for w in writers)  # less each writer's warm-up item
    return {
        "backend": backend, "seconds": elapsed, "writers": args.writers,
        "readers": args.readers, "items": count, "added": new_items,
        "adds_per_s": new_items / elapsed, "add_calls_per_s": len(add_us) / elapsed,
        "add_ms": [v / 1e3 for v in percentiles(add_us)],
        "lookups": len(lookup_us), "lookup_us": percentiles(lookup_us),
        "pages": len(page_us), "page_us": percentiles(page_us),
        "duplicates": duplicates, "lost": lost + wrong, "unacked": unacked,
        "reader_lost": sum(r["lost"] for r in readers),
        "reader_changed": sum(r["changed"] for r in readers),
        "empty_pages": sum(r["empty_pages"] for r in readers),
        "errors": sum(w["n_errors"] for w in writers) + sum(r["n_errors"] for r in readers)
        + len(crashed) + (count != len(stored)),
        "messages": messages[:10] + [f"worker exit codes {crashed}"] * bool(crashed),
    }


# ====================================================================== report
COLUMNS = [  # (header, format)
    ("backend", "{backend:<10}"), ("secs", "{seconds:>5.1f}"), ("W", "{writers:>2}"),
    ("R", "{readers:>2}"), ("items added", "{added:>11,}"), ("adds/s", "{adds_per_s:>8,.0f}"),
    ("add calls/s", "{add_calls_per_s:>11,.1f}"), ("add p50 ms", "{add_ms[0]:>10.2f}"),
    ("add p99 ms", "{add_ms[1]:>10.2f}"), ("lookups", "{lookups:>9,}"),
    ("lookup p50 µs", "{lookup_us[0]:>13,.0f}"), ("lookup p99 µs", "{lookup_us[1]:>13,.0f}"),
    ("pages", "{pages:>8,}"), ("page p50 µs", "{page_us[0]:>11,.0f}"),
    ("page p99 µs", "{page_us[1]:>11,.0f}"),
]
CHECKS = [("duplicate IDs", "duplicates"), ("lost items", "lost"),
          ("unacknowledged items", "unacked"), ("reader: acked key missing", "reader_lost"),
          ("reader: ID changed", "reader_changed"), ("reader: empty prefix page", "empty_pages"),
          ("errors", "errors")]


def report(rows: list[dict]) -> bool:
    """Print the table; True when every check is 0."""
    widths = [len(fmt.format(**rows[0])) if rows else len(h) for h, fmt in COLUMNS]
    widths = [max(w, len(h)) for w, (h, _) in zip(widths, COLUMNS)]
    print()
    print("  ".join(h.rjust(w) if i else h.ljust(w)
                    for i, ((h, _), w) in enumerate(zip(COLUMNS, widths))))
    for row in rows:
        print("  ".join(fmt.format(**row).rjust(w) if i else fmt.format(**row).ljust(w)
                        for i, ((_, fmt), w) in enumerate(zip(COLUMNS, widths))))
    print()
    width = max(len(label) for label, _ in CHECKS)
    print(f"{'check':<{width}}  " + "  ".join(f"{r['backend']:>10}" for r in rows))
    for label, key in CHECKS:
        print(f"{label:<{width}}  " + "  ".join(f"{r[key]:>10,}" for r in rows))
    ok = all(r[key] == 0 for r in rows for _, key in CHECKS)
    for r in rows:
        for m in r["messages"]:
            print(f"[{r['backend']}] {m}")
    print("\nOK: no duplicate IDs, no lost items" if ok else "\nFAILED: see the counts above")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="soak time per backend")
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=50, help="items per add")
    ap.add_argument("--initial", type=int, default=20_000, help="items of the initial fit")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--codebook-size", type=int, default=64)
    ap.add_argument("--pg-url", default=os.environ.get("SEMID_TEST_PG_URL"),
                    help="PostgreSQL URL (default $SEMID_TEST_PG_URL; none: SQLite only)")
    ap.add_argument("--sqlite-path", help="SQLite file (default: a new one in a temp dir)")
    ap.add_argument("--backends", default="sqlite,postgresql",
                    help="comma-separated subset of sqlite,postgresql")
    ap.add_argument("--keep", action="store_true", help="keep the databases")
    args = ap.parse_args(argv)
    _single_threaded()  # inherited by the spawned workers, too

    rows = []
    wanted = args.backends.split(",")
    if "sqlite" in wanted:
        tmp = None if args.sqlite_path else tempfile.mkdtemp(prefix="semid_soak_db_")
        path = args.sqlite_path or os.path.join(tmp, "soak.db")
        print(f"sqlite: {path}, {args.writers} writers + {args.readers} readers, "
              f"{args.seconds:g} s")
        rows.append(run_backend("sqlite", f"sqlite:///{path}", args))
        if tmp and not args.keep:
            shutil.rmtree(tmp)
    if "postgresql" in wanted and args.pg_url:
        with postgres_database(args.pg_url, args.keep) as url:
            print(f"postgresql: {url.split('@')[-1]}, {args.writers} writers + "
                  f"{args.readers} readers, {args.seconds:g} s")
            rows.append(run_backend("postgresql", url, args))
    elif "postgresql" in wanted:
        print("postgresql: skipped (no --pg-url and no SEMID_TEST_PG_URL)")
    return 0 if report(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
