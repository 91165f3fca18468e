"""Crash safety: a writer killed with SIGKILL at random moments never leaves a broken index.

Each backend test runs ``ROUNDS`` rounds on one database. In every round a fresh writer process
performs a seeded random sequence of operations on one index (an initial ``fit`` while the index
has no version, then ``add`` of a few dozen fresh items, ``remove`` of a few items and refits:
``fit`` on the live key set, which writes a new version) until the test kills it with SIGKILL at
a random moment: inside a fit, an add or a remove, between two operations, or at any time after
it started. The writer logs every operation to an acknowledgement file, fsynced: its intent
(kind and keys) before it starts, its result (the IDs an add returned, the version a fit wrote)
after it returns; then it reads back what it wrote (``lookup_many`` of an add's keys,
``count()``), outside any write transaction: "between" kills mostly land there. After each kill
the test checks the database against that log:

- SQLite's ``PRAGMA integrity_check`` is ``ok``; the index opens;
- every version is complete (all its codebooks, no orphan rows) and the active one exists;
- no ID is held twice in a version, and no retired ID is held by an item;
- every version holds exactly the items the acknowledged operations imply, where only the one
  operation in flight at the kill (intent logged, result not) may or may not have committed,
  and every ID ever seen (returned by an add, or read after an earlier round) is unchanged;
- the index still takes new items (the test adds a few and looks them up).

Startup cost: writers are forked from one "zygote" process that imported semid_index, torch and
numpy once (with one torch thread) but never created an engine or a connection, so a round costs
milliseconds, not an interpreter start and a torch import.

Rounds are seeded from ``SEMID_CRASH_SEED`` (default below); a failure names its round and seed.
The sequence of operations and the kill targets are reproducible with that seed; the exact kill
instant is timing, by design. ``SEMID_CRASH_ROUNDS`` changes the number of rounds.
Run as a script with ``--zygote``, this file is the zygote (the test starts it).
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import count
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, make_url, text

from conftest import gaussian_mixture

INDEX = "crash"
N_LEVELS, CODEBOOK_SIZE, DIM = 3, 8, 8
POOL = 4096  # item "k<n>" has the embedding _pool()[n % POOL]
ROUNDS = int(os.environ.get("SEMID_CRASH_ROUNDS", "24"))
BASE_SEED = int(os.environ.get("SEMID_CRASH_SEED", "7100"))
MIN_KILLS = 20
INITIAL_ITEMS = 600  # the first fit's catalog
ADD_ITEMS = (12, 48)  # items per add
REMOVE_ITEMS = (1, 6)  # items per remove
OP_WEIGHTS = {"add": 5, "remove": 3, "fit": 2}
KEY_STRIDE = 1_000_000  # writer of round r numbers its fresh keys from r * KEY_STRIDE
CHECK_KEY_BASE = 900_000_000  # keys the test itself adds after each kill
# Where a round's kill is aimed: inside an operation of that kind, right after an operation
# returned, or anywhere after the writer started (while it opens the index, too).
TARGETS = ("fit", "add", "remove", "between", "anytime")
ANYTIME_SPAN = 0.6  # seconds after the writer's start
EVENT_TIMEOUT = 60.0  # seconds without the expected event before the round fails


# ====================================================================== items
@lru_cache(maxsize=1)
def _pool() -> np.ndarray:
    return gaussian_mixture(POOL, DIM, 16, seed=5)[0]


def _embeddings(keys) -> np.ndarray:
    """Embeddings of items ``k<n>``: a fixed function of the key, so any process can rebuild a
    catalog from its keys alone."""
    pool = _pool()
    return pool[[int(k[1:]) % POOL for k in keys]]


# ====================================================================== the writer (child side)
def _emit(line: str) -> None:
    """One event line to the test, through the zygote's stdout (one unbuffered write: lines of
    the writer and the zygote never interleave)."""
    os.write(1, (line + "\n").encode())


def _ack(fd: int, record: dict) -> None:
    """Append one record to the acknowledgement file and make it durable before going on."""
    os.write(fd, (json.dumps(record) + "\n").encode())
    os.fsync(fd)


def _writer(cmd: dict) -> None:
    """Random operations on the index until killed (the test always kills it). Each one is
    logged before it starts and after it returns, then read back."""
    from semid_index import SemanticIdIndex

    rnd, rng = cmd["round"], random.Random(cmd["seed"])
    _emit(f"start {rnd} {os.getpid()}")
    ack = os.open(cmd["ack"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    fresh = (f"k{n}" for n in count(rnd * KEY_STRIDE))
    idx = SemanticIdIndex.open(cmd["url"], INDEX)
    fitted = idx.active_version is not None
    live = set(idx.id_arrays()[0]) if fitted else set()
    kinds, weights = list(OP_WEIGHTS), list(OP_WEIGHTS.values())
    for opno in count():
        kind = rng.choices(kinds, weights)[0] if fitted else "fit"
        if kind == "fit":
            keys = sorted(live) if fitted else [next(fresh) for _ in range(INITIAL_ITEMS)]
        elif kind == "add":
            keys = [next(fresh) for _ in range(rng.randint(*ADD_ITEMS))]
        else:
            keys = rng.sample(sorted(live), rng.randint(*REMOVE_ITEMS))
        _ack(ack, {"op": kind, "phase": "begin", "n": opno, "keys": keys})
        _emit(f"begin {rnd} {opno} {kind}")
        t0 = time.perf_counter()
        if kind == "fit":
            idx.fit(keys, _embeddings(keys))
            result = {"version": idx.active_version}
            live, fitted = set(keys), True
        elif kind == "add":
            result = {"ids": [str(sid) for sid in idx.add(keys, _embeddings(keys))]}
            live.update(keys)
        else:
            result = {"removed": idx.remove(keys)}
            live.difference_update(keys)
        took = time.perf_counter() - t0
        _ack(ack, {"op": kind, "phase": "done", "n": opno, **result})
        _emit(f"done {rnd} {opno} {kind} {took:.6f}")
        # read back what was just written (no write transaction open: "between" operations)
        if kind == "add":
            assert [str(sid) for sid in idx.lookup_many(keys)] == result["ids"], \
                f"round {rnd} op {opno}: lookup_many right after add differs"
        assert idx.count() == len(live), f"round {rnd} op {opno}: count() after {kind}"


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux), so that no zygote or
    writer outlives a test that failed or was interrupted."""
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


def _zygote_main() -> None:
    """Import everything a writer needs, then fork one writer per command line on stdin and
    report ``reaped <pid> <wait status>`` when it is gone. No engine or connection is ever
    created here: each child makes its own after the fork."""
    _die_with_parent()
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    import alembic.command  # noqa: F401 - warm imports for the children
    import alembic.script  # noqa: F401
    import psycopg  # noqa: F401
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401
    import sqlalchemy.dialects.sqlite.pysqlite  # noqa: F401

    import semid_index._fingerprint  # noqa: F401
    import semid_index.index  # noqa: F401
    import semid_index.quantize  # noqa: F401
    from semid_index.storage import _migrate

    _migrate.head_revision()  # parses the revision scripts once
    torch.ones(4) @ torch.ones(4)
    _pool()
    _emit("ready")
    while line := sys.stdin.readline():
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                _die_with_parent()
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
                _writer(cmd)
            except BaseException:  # noqa: BLE001 - reported to the test, then exit
                traceback.print_exc()
                sys.stderr.flush()
                _emit(f"error {cmd['round']}")
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        _emit(f"reaped {pid} {status}")


# ====================================================================== the zygote (test side)
class Zygote:
    """The zygote process and the event lines it (and its writers) print."""

    def __init__(self, workdir: Path):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.log_path = workdir / "zygote.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--zygote"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=Path(__file__).parent)
        self._fd = self.proc.stdout.fileno()
        self._buf = b""
        event = self.next_event(120.0)
        assert event == ["ready"], f"zygote did not start: {event} {self.log()}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def fork(self, **cmd) -> None:
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def next_event(self, timeout: float) -> list[str]:
        """The next event line, split; TimeoutError after ``timeout`` seconds without one."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                raise TimeoutError(f"no event from the zygote in {timeout:.0f} s")
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise EOFError(f"the zygote exited (status {self.proc.poll()}): {self.log()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode().split()

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self._log.close()


# ====================================================================== expected states
@dataclass
class VersionState:
    """What one version holds: its keys, the IDs known for them, how many IDs it retired."""

    keys: set[str]
    ids: dict[str, str] = field(default_factory=dict)  # key -> ID string, for known ones
    n_retired: int = 0

    def copy(self) -> "VersionState":
        return VersionState(set(self.keys), dict(self.ids), self.n_retired)


@dataclass
class State:
    """An index's versions and active version, as implied by operations or as read back."""

    active: int | None = None
    versions: dict[int, VersionState] = field(default_factory=dict)

    def copy(self) -> "State":
        return State(self.active, {v: s.copy() for v, s in self.versions.items()})

    def apply(self, begin: dict, done: dict | None, ctx: str) -> None:
        """Apply one logged operation: ``done`` is its result, None if it never returned (then
        only what it must have done if it committed is applied, with unknown IDs)."""
        kind, keys = begin["op"], begin["keys"]
        if kind == "fit":
            if self.active is not None:
                live = self.versions[self.active].keys
                assert set(keys) == live, (
                    f"{ctx}: the writer refit {len(keys)} keys but the acknowledged operations "
                    f"leave {len(live)} live ({_diff(set(keys), live)})")
            version = max(self.versions, default=0) + 1
            if done is not None:
                assert done["version"] == version, (
                    f"{ctx}: fit wrote version {done['version']}, expected {version}")
            self.versions[version] = VersionState(set(keys))
            self.active = version
            return
        assert self.active is not None, f"{ctx}: {kind} before the first fit"
        cur = self.versions[self.active]
        if kind == "add":
            assert not cur.keys.intersection(keys), f"{ctx}: the writer re-added live keys"
            cur.keys.update(keys)
            if done is not None:
                assert len(done["ids"]) == len(keys), f"{ctx}: add returned a wrong count"
                cur.ids.update(zip(keys, done["ids"]))
        else:
            assert cur.keys.issuperset(keys), f"{ctx}: the writer removed keys not live"
            cur.keys.difference_update(keys)
            for k in keys:
                cur.ids.pop(k, None)
            cur.n_retired += len(keys)
            if done is not None:
                assert done["removed"] == len(keys), f"{ctx}: remove returned {done['removed']}"

    def mismatches(self, observed: "State") -> list[str]:
        """How ``observed`` differs from this expected state (empty: it matches). Known IDs
        must be equal; keys without a known ID may have any ID."""
        out = []
        if observed.active != self.active:
            out.append(f"active version {observed.active}, expected {self.active}")
        if set(observed.versions) != set(self.versions):
            out.append(f"versions: {_diff(set(observed.versions), set(self.versions))}")
        for v in sorted(set(observed.versions) & set(self.versions)):
            exp, got = self.versions[v], observed.versions[v]
            if got.keys != exp.keys:
                out.append(f"version {v}: keys {_diff(got.keys, exp.keys)}")
            changed = [(k, i, got.ids.get(k)) for k, i in exp.ids.items() if got.ids.get(k) != i]
            if changed:
                shown = ", ".join(f"{k}: {i} -> {g}" for k, i, g in changed[:5])
                out.append(f"version {v}: {len(changed)} known IDs differ ({shown})")
            if got.n_retired != exp.n_retired:
                out.append(f"version {v}: {got.n_retired} retired IDs, expected {exp.n_retired}")
        return out


def _diff(got: set, expected: set) -> str:
    missing, extra = sorted(expected - got), sorted(got - expected)
    return (f"{len(got)} vs {len(expected)}: missing {len(missing)} {missing[:5]}, "
            f"extra {len(extra)} {extra[:5]}")


def _read_acks(path: Path, ctx: str) -> tuple[list[tuple[dict, dict]], dict | None]:
    """(completed operations as (intent, result) pairs, the intent of the operation in flight
    or None). A torn last line (the kill hit the write) is not a record."""
    data = path.read_bytes() if path.exists() else b""
    records = [json.loads(line) for line in data.split(b"\n")[:-1]]
    done, inflight = [], None
    for rec in records:
        if rec["phase"] == "begin":
            assert inflight is None, f"{ctx}: two intents without a result: {inflight['n']}"
            inflight = rec
        else:
            assert inflight is not None and rec["n"] == inflight["n"] and \
                rec["op"] == inflight["op"], f"{ctx}: result without its intent: {rec}"
            done.append((inflight, rec))
            inflight = None
    return done, inflight


# ====================================================================== reading the database back
def _observe(url: str, ctx: str) -> State:
    """Check the database's integrity and read every version back (raw SQL and the API)."""
    from semid_index import SemanticIdIndex

    engine = create_engine(url)
    try:
        if engine.dialect.name == "sqlite":
            with sqlite3.connect(make_url(url).database) as raw:
                check = raw.execute("PRAGMA integrity_check").fetchall()
                fks = raw.execute("PRAGMA foreign_key_check").fetchall()
            assert check == [("ok",)], f"{ctx}: PRAGMA integrity_check: {check}"
            assert fks == [], f"{ctx}: PRAGMA foreign_key_check: {fks}"
        with engine.connect() as c:
            raw = _raw_state(c, ctx)
    finally:
        engine.dispose()
    index_id, active, versions, n_items, n_retired = raw
    try:
        idx = SemanticIdIndex.open(url, INDEX)
    except Exception as e:  # noqa: BLE001 - the failure is the finding
        pytest.fail(f"{ctx}: the index does not open after the kill: {e!r}")
    with idx:
        assert idx.active_version == active, f"{ctx}: active_version {idx.active_version}"
        assert [v.version for v in idx.versions()] == versions, f"{ctx}: versions()"
        state = State(active)
        for v in versions:
            keys, ids = idx.id_arrays(version=v)
            strings = ["-".join(map(str, row)) for row in ids.tolist()]
            assert len(keys) == n_items.get(v, 0), f"{ctx}: id_arrays of version {v}"
            assert len(set(keys)) == len(keys), f"{ctx}: a key twice in version {v}"
            assert len(set(strings)) == len(strings), f"{ctx}: an ID twice in version {v}"
            state.versions[v] = VersionState(set(keys), dict(zip(keys, strings)),
                                             n_retired.get(v, 0))
        if active is not None:
            cur = state.versions[active]
            assert idx.count() == len(cur.keys), f"{ctx}: count() of the active version"
            keys = sorted(cur.keys)
            looked_up = [str(sid) for sid in idx.lookup_many(keys)]
            assert looked_up == [cur.ids[k] for k in keys], \
                f"{ctx}: lookup_many disagrees with id_arrays"
    return state


def _raw_state(c, ctx: str):
    """Structural checks in SQL, all in one transaction; (index id, active version, versions,
    items per version, retired IDs per version)."""
    def rows(sql, **params):
        return c.execute(text(sql), params).all()

    found = rows("SELECT id, active_version FROM semid_indexes WHERE name = :n", n=INDEX)
    assert len(found) == 1, f"{ctx}: semid_indexes rows for {INDEX!r}: {found}"
    index_id, active = found[0]
    p = {"i": index_id}
    versions = [v for v, in rows("SELECT version FROM semid_versions WHERE index_id = :i "
                                 "ORDER BY version", **p)]
    books = {v: (n, lo, hi) for v, n, lo, hi in rows(
        "SELECT version, COUNT(*), MIN(level), MAX(level) FROM semid_codebooks "
        "WHERE index_id = :i GROUP BY version", **p)}
    n_items = dict(rows("SELECT version, COUNT(*) FROM semid_items WHERE index_id = :i "
                        "GROUP BY version", **p))
    n_ids = dict(rows("SELECT version, COUNT(*) FROM (SELECT DISTINCT version, code, suffix "
                      "FROM semid_items WHERE index_id = :i) d GROUP BY version", **p))
    n_retired = dict(rows("SELECT version, COUNT(*) FROM semid_retired WHERE index_id = :i "
                          "GROUP BY version", **p))
    reissued = rows("SELECT r.version, r.item_key, t.item_key FROM semid_retired r "
                    "JOIN semid_items t ON t.index_id = r.index_id AND t.version = r.version "
                    "AND t.code = r.code AND t.suffix = r.suffix WHERE r.index_id = :i", **p)
    if active is None:
        assert versions == [], f"{ctx}: versions {versions} but none active"
    else:
        assert active in versions, f"{ctx}: active version {active} not in {versions}"
    complete = (N_LEVELS, 0, N_LEVELS - 1)
    assert books == {v: complete for v in versions}, \
        f"{ctx}: codebooks (rows, min level, max level) per version {books}, versions {versions}"
    assert set(n_items) <= set(versions) and set(n_retired) <= set(versions), \
        f"{ctx}: item or retired rows of unknown versions: {n_items}, {n_retired}"
    assert n_ids == n_items, f"{ctx}: IDs held twice: items {n_items}, distinct IDs {n_ids}"
    assert reissued == [], f"{ctx}: retired IDs held by items: {reissued[:5]}"
    return index_id, active, versions, n_items, n_retired


def _check_takes_new_items(url: str, state: State, rnd: int, ctx: str) -> None:
    """Add a few fresh items through the API, look them up, and record them in ``state``."""
    from semid_index import SemanticIdIndex

    if state.active is None:  # the initial fit never committed: nothing to add to yet
        return
    keys = [f"k{CHECK_KEY_BASE + rnd * 10 + j}" for j in range(3)]
    with SemanticIdIndex.open(url, INDEX) as idx:
        ids = [str(sid) for sid in idx.add(keys, _embeddings(keys))]
        assert [str(sid) for sid in idx.lookup_many(keys)] == ids, f"{ctx}: fresh items"
        assert idx.active_version == state.active, f"{ctx}: add changed the active version"
    cur = state.versions[state.active]
    cur.keys.update(keys)
    cur.ids.update(zip(keys, ids))


# ====================================================================== one round
@dataclass
class Round:
    """One round's plan (seeded) and where its kill went."""

    number: int
    seed: int
    target: str
    skip: int  # the kill waits for the (skip + 1)-th matching event
    delay: float = 0.0
    landed: str = ""

    def ctx(self, backend: str) -> str:
        return (f"[{backend} round {self.number} seed {self.seed} target {self.target} "
                f"delay {self.delay * 1e3:.2f} ms landed {self.landed or '?'}; rerun with "
                f"SEMID_CRASH_SEED={BASE_SEED}]")


def _plan(number: int) -> Round:
    seed = BASE_SEED * 1000 + number
    rng = random.Random(seed)
    target = TARGETS[number % len(TARGETS)]  # every target every len(TARGETS) rounds
    return Round(number, seed, target, rng.randint(0, 2))


def _run_round(zyg: Zygote, rnd: Round, url: str, workdir: Path, est: dict, backend: str
               ) -> tuple[Path, int]:
    """Fork the round's writer, wait for its target event, kill it after a random delay; the
    ack file and the zygote's wait status."""
    rng = random.Random(rnd.seed + 1)
    ack = workdir / f"ack-{rnd.number:03d}.jsonl"
    log = workdir / f"writer-{rnd.number:03d}.log"
    zyg.fork(round=rnd.number, seed=rnd.seed, url=url, ack=str(ack), log=str(log))
    pid, seen, status = None, 0, None

    def failed(why: str) -> str:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        return f"{rnd.ctx(backend)}: {why}\nwriter log:\n{tail}"

    while True:  # until the target event
        event = zyg.next_event(EVENT_TIMEOUT)
        if event[0] == "reaped":
            pytest.fail(failed(f"the writer exited on its own (wait status {event[2]})"))
        if event[0] == "error":
            continue  # its "reaped" follows
        name, number = event[0], int(event[1])
        assert number == rnd.number, failed(f"event of another round: {event}")
        if name == "start":
            pid = int(event[2])
            if rnd.target == "anytime":
                rnd.delay = rng.uniform(0, ANYTIME_SPAN)
                break
        elif name == "done":
            est[event[3]] = float(event[4])
            if rnd.target == "between":
                if seen == rnd.skip:
                    rnd.delay = rng.uniform(0, 0.001)  # while it reads its write back
                    break
                seen += 1
        elif name == "begin" and event[3] == rnd.target:
            if seen == rnd.skip:
                lo = 0.15 if rnd.target == "fit" else 0.0  # fits: aim at the write, mostly
                rnd.delay = est[rnd.target] * rng.uniform(lo, 1.2)
                break
            seen += 1
    time.sleep(rnd.delay)  # the random kill instant is the point of the test
    os.kill(pid, signal.SIGKILL)
    while status is None:
        event = zyg.next_event(EVENT_TIMEOUT)
        if event[0] == "reaped":
            assert int(event[1]) == pid, failed(f"reaped another process: {event}")
            status = int(event[2])
        elif event[0] == "done":
            est[event[3]] = float(event[4])
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
        failed(f"the writer was not killed by SIGKILL (wait status {status})")
    return ack, status


def _landed(done: list, inflight: dict | None) -> str:
    if inflight is not None:
        return f"in-{inflight['op']}"
    return "between" if done else "startup"


# ====================================================================== the test
def test_writer_killed_at_random_moments_leaves_a_consistent_index(db_url, tmp_path):
    from semid_index import SemanticIdIndex

    backend = make_url(db_url).get_backend_name()
    SemanticIdIndex.create(db_url, INDEX, n_levels=N_LEVELS, codebook_size=CODEBOOK_SIZE,
                           seed=0).close()
    model = State()  # everything known to be in the database
    est = {"fit": 0.05, "add": 0.005, "remove": 0.003}  # seconds, updated from the writers
    landed, committed_unacked, kills = Counter(), Counter(), 0
    started = time.monotonic()
    zyg = Zygote(tmp_path)
    try:
        for number in range(ROUNDS):
            rnd = _plan(number)
            ack, _ = _run_round(zyg, rnd, db_url, tmp_path, est, backend)
            kills += 1
            done, inflight = _read_acks(ack, rnd.ctx(backend))
            rnd.landed = _landed(done, inflight)
            landed[rnd.landed] += 1
            ctx = rnd.ctx(backend)

            expected = model.copy()
            for begin, result in done:
                expected.apply(begin, result, ctx)
            observed = _observe(db_url, ctx)
            problems = expected.mismatches(observed)
            if problems and inflight is not None:
                with_inflight = expected.copy()
                with_inflight.apply(inflight, None, ctx)
                also = with_inflight.mismatches(observed)
                if not also:
                    problems = []
                    committed_unacked[inflight["op"]] += 1
                else:
                    problems += [f"or, if the {inflight['op']} in flight committed: {p}"
                                 for p in also]
            assert not problems, f"{ctx}: the database after the kill is not the acknowledged " \
                                 f"state:\n  " + "\n  ".join(problems)
            model = observed  # exactly the acknowledged state (+ the op in flight, maybe)
            _check_takes_new_items(db_url, model, number, ctx)
    finally:
        zyg.close()
    elapsed = time.monotonic() - started
    summary = (f"{backend}: {kills} kills in {elapsed:.1f} s; kills landed {dict(landed)}; "
               f"operations in flight found committed: {dict(committed_unacked)}; "
               f"final active version {model.active} with "
               f"{len(model.versions[model.active].keys) if model.active else 0} items")
    print(summary)
    assert kills >= MIN_KILLS, summary
    # the kills must have hit the interesting places, or the test proved little
    assert landed["in-fit"] and landed["in-add"] + landed["in-remove"] and landed["between"], \
        summary


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    _zygote_main()
