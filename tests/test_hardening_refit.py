"""Readers during writes see whole states: never a mix of two versions, or of two commits.

A writer *process* changes an index while the test reads it in a loop, through its own handle,
with ``lookup_many(all keys)`` and ``id_arrays()``; afterwards every read must equal, as a
whole, one state the index really had. The catalog has 6,000 items: more keys than the store
puts in one statement on SQLite (500 per ``IN`` list) and on PostgreSQL (5,000 per array), so a
read that does not run in one snapshot shows up as a read whose blocks of keys come from
different states (failure messages say which block matches which state).

- Refits: the writer refits the same keys on a new catalog (so nearly every ID changes) until
  the test tells it to stop; each read (of the active version) must be one version's mapping,
  as ``lookup_many(keys, version=v)`` gives it afterwards. The reader asks for
  ``active_version`` before and after each read (as a serving process watching for new
  versions would); the reads during which it changed overlapped a refit's commit, and there
  must be enough of them.
- Adds and removes: the writer removes 12 items, one in every block of 500 keys, and adds them
  back (new IDs: retired ones are never reissued) until the test has made 60 reads; each read
  must be the state after one of those commits (for a state without them, ``lookup_many``
  raises :class:`UnknownItemError` naming all 12 keys). Reads during which a whole write ran
  are counted: there must be enough.

Run as a script (``--writer KIND URL INDEX OUT``), this file is the writer process.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from semid_index import SemanticIdIndex
from semid_index.errors import UnknownItemError

from conftest import gaussian_mixture

N_ITEMS, DIM, N_LEVELS, CODEBOOK_SIZE = 6000, 16, 3, 16
BLOCK = 500  # keys per block in failure reports (SQLite's statement size)
MAX_REFITS = 60  # the writer stops earlier, when the reader has seen enough
MAX_CYCLES = 5000  # remove + add cycles, likewise
ENOUGH_STRADDLING = 12  # refit test: reads during which a refit committed
ENOUGH_READS = 60  # add/remove test: reads while the writer writes
MOVED = [i * BLOCK + BLOCK // 2 for i in range(N_ITEMS // BLOCK)]  # one key in every block
MIN_OVERLAPPING_READS = 8
WRITER_TIMEOUT = 180.0  # seconds

KEYS = [f"item-{i:05d}" for i in range(N_ITEMS)]


def _catalog(n: int) -> np.ndarray:
    """Catalog ``n`` (a different one per refit, same keys)."""
    return gaussian_mixture(N_ITEMS, DIM, 24, seed=100 + n)[0]


# ====================================================================== the writer process
def _writer_main(kind: str, url: str, name: str, out: str) -> None:
    """Refits (``kind == "refit"``) or remove/add cycles until told to stop, one JSON line per
    write to ``out``: its start and end (``time.monotonic``, the same clock in every process)
    and an add's IDs."""
    import torch

    torch.set_num_threads(1)
    x = _catalog(0)
    idx = SemanticIdIndex.open(url, name)
    print("ready", flush=True)
    sys.stdin.readline()  # the reader is reading: go

    def stopped() -> bool:  # "stop" (or the test's end) waiting on stdin
        return bool(select.select([sys.stdin], [], [], 0)[0])

    with open(out, "w") as log:
        def timed(op, fn, *args):
            t0 = time.monotonic()
            result = fn(*args)
            rec = {"op": op, "t0": t0, "t1": time.monotonic()}
            if op == "add":
                rec["ids"] = [str(sid) for sid in result]
            log.write(json.dumps(rec) + "\n")

        if kind == "refit":
            for n in range(1, MAX_REFITS + 1):
                catalog = _catalog(n)
                if stopped():
                    break
                timed("fit", idx.fit, KEYS, catalog)
        else:
            moved = [KEYS[i] for i in MOVED]
            for _ in range(MAX_CYCLES):
                if stopped():
                    break
                timed("remove", idx.remove, moved)
                timed("add", idx.add, moved, x[MOVED])
    idx.close()


class WriterProcess:
    """This file run as a writer process; ``records()`` are its writes, once it has exited."""

    def __init__(self, kind: str, url: str, name: str, workdir: Path):
        self.out = workdir / f"writer-{kind}.jsonl"
        self.err = open(workdir / f"writer-{kind}.err", "w+")
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--writer", kind, url, name,
             str(self.out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
            env=env, cwd=Path(__file__).parent, text=True)
        line = self.proc.stdout.readline()  # blocks until the writer is ready (or died)
        assert line == "ready\n", f"writer did not start: {line!r} {self.stderr()}"
        self.deadline = time.monotonic() + WRITER_TIMEOUT

    def __enter__(self) -> "WriterProcess":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:  # the test failed while it ran
            self.proc.kill()
            self.proc.wait()

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()

    def running(self) -> bool:
        if time.monotonic() > self.deadline:
            self.proc.kill()
            pytest.fail(f"the writer ran longer than {WRITER_TIMEOUT} s")
        return self.proc.poll() is None

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()[-3000:]

    def records(self) -> list[dict]:
        assert self.proc.wait() == 0, f"the writer failed:\n{self.stderr()}"
        self.err.close()
        return [json.loads(line) for line in self.out.read_text().splitlines()]


# ====================================================================== reading
@dataclass
class Read:
    """One read: its call, start and end (``time.monotonic``), the active version polled just
    before and just after it, and what it saw: IDs (N, L + 1) aligned with KEYS, -1 rows for
    absent keys; or, for a ``lookup_many`` that raised, the keys its UnknownItemError named."""

    call: str
    start: float
    end: float
    versions: tuple[int, int]
    ids: np.ndarray | None = None
    missing: tuple[str, ...] = ()


def _ids_array(sids) -> np.ndarray:
    return np.array([(*s.levels, s.suffix) for s in sids], dtype=np.int64)


def _parse_ids(strings: list[str]) -> np.ndarray:
    return np.array([[int(p) for p in s.split("-")] for s in strings], dtype=np.int64)


def _aligned(keys: list[str], ids: np.ndarray) -> np.ndarray:
    """``id_arrays`` output (ID order) as rows aligned with KEYS; -1 rows for absent keys."""
    out = np.full((N_ITEMS, N_LEVELS + 1), -1, dtype=np.int64)
    pos = {k: i for i, k in enumerate(KEYS)}
    assert len(set(keys)) == len(keys), "id_arrays returned a key twice"
    out[[pos[k] for k in keys]] = ids
    return out


def _read_while(writer: WriterProcess, idx: SemanticIdIndex,
                enough: Callable[[list[Read]], bool]) -> list[Read]:
    """``lookup_many(KEYS)`` and ``id_arrays()`` in turn while the writer runs; the writer is
    told to stop once ``enough(reads)``. Results are converted after the loop, to keep the
    reads back to back."""
    reads, raw = [], []
    writer.go()
    while writer.running():
        for call in ("lookup_many", "id_arrays"):
            before = idx.active_version
            t0 = time.monotonic()
            try:
                got = idx.lookup_many(KEYS) if call == "lookup_many" else idx.id_arrays()
            except UnknownItemError as e:
                got = e
            t1 = time.monotonic()
            reads.append(Read(call, t0, t1, (before, idx.active_version)))
            raw.append(got)
        if len(reads) % 2 == 0 and enough(reads):
            writer.stop()
            break
    for r, got in zip(reads, raw):
        if isinstance(got, UnknownItemError):
            r.missing = tuple(got.keys)
        else:
            r.ids = _ids_array(got) if r.call == "lookup_many" else _aligned(*got)
    return reads


def _explain(ids: np.ndarray, states: dict[str, np.ndarray]) -> str:
    """Which states each block of keys of a read agrees with."""
    parts = []
    for a in range(0, N_ITEMS, BLOCK):
        same = [name for name, s in states.items()
                if np.array_equal(ids[a:a + BLOCK], s[a:a + BLOCK])]
        parts.append(f"keys {a}-{a + BLOCK - 1}: {', '.join(same[:3]) or 'no state'}"
                     f"{' ...' if len(same) > 3 else ''}")
    return "; ".join(parts)


def _check_reads(reads: list[Read], states: dict[str, np.ndarray], ctx: str) -> set[str]:
    """Every read must equal one state as a whole; the names of the states seen."""
    seen, bad = set(), []
    absent = {name: {KEYS[i] for i in np.flatnonzero(s[:, 0] < 0)} for name, s in states.items()}
    for n, r in enumerate(reads):
        if r.ids is None:  # lookup_many raised: the keys absent in the state it saw
            match = [name for name, a in absent.items() if a and a == set(r.missing)]
            if not match:
                bad.append(f"read {n} ({r.call}) raised UnknownItemError naming "
                           f"{len(r.missing)} keys (it lists at most 20) {list(r.missing)}: "
                           "no state lacks just those")
        else:
            match = [name for name, s in states.items() if np.array_equal(r.ids, s)]
            if not match:
                bad.append(f"read {n} ({r.call}) is no single state: {_explain(r.ids, states)}")
        seen.update(match)
    assert not bad, f"{ctx}: {len(bad)} of {len(reads)} reads mixed states:\n  " + \
        "\n  ".join(bad[:6])
    return seen


def _straddling(reads: list[Read]) -> int:
    """Reads during which the active version changed (a refit committed)."""
    return sum(r.versions[0] != r.versions[1] for r in reads)


def _backend(url: str) -> str:
    return url.split(":")[0].split("+")[0]


# ====================================================================== the tests
def test_a_reader_during_refits_sees_one_whole_version_per_read(db_url, tmp_path):
    with SemanticIdIndex.create(db_url, "refit", n_levels=N_LEVELS,
                                codebook_size=CODEBOOK_SIZE, seed=0) as idx:
        idx.fit(KEYS, _catalog(0))
    with WriterProcess("refit", db_url, "refit", tmp_path) as writer, \
            SemanticIdIndex.open(db_url, "refit") as idx:
        reads = _read_while(writer, idx, lambda rs: _straddling(rs) >= ENOUGH_STRADDLING)
        refits = len(writer.records())
        versions = [v.version for v in idx.versions()]
        assert len(versions) == refits + 1
        states = {f"v{v}": _ids_array(idx.lookup_many(KEYS, version=v)) for v in versions}
        for v in versions:  # the two read paths agree on every version
            assert np.array_equal(_aligned(*idx.id_arrays(version=v)), states[f"v{v}"]), v
    mappings = list(states.values())
    changed = [float((a != b).any(axis=1).mean()) for a, b in zip(mappings, mappings[1:])]
    assert min(changed) > 0.5, f"refits changed too few IDs to tell versions apart: {changed}"
    straddling = _straddling(reads)
    ctx = (f"[{_backend(db_url)}: {len(reads)} reads, {straddling} of them while a refit "
           f"committed, {refits} refits]")
    seen = _check_reads(reads, states, ctx)
    print(f"{ctx} versions seen: {len(seen)}")
    assert straddling >= MIN_OVERLAPPING_READS, f"{ctx}: too few reads overlapped a commit"


def test_a_reader_during_adds_and_removes_sees_one_committed_state_per_read(db_url, tmp_path):
    with SemanticIdIndex.create(db_url, "moves", n_levels=N_LEVELS,
                                codebook_size=CODEBOOK_SIZE, seed=0) as idx:
        idx.fit(KEYS, _catalog(0))
        state = _ids_array(idx.lookup_many(KEYS))
    with WriterProcess("moves", db_url, "moves", tmp_path) as writer, \
            SemanticIdIndex.open(db_url, "moves") as idx:
        reads = _read_while(writer, idx, lambda rs: len(rs) >= ENOUGH_READS)
        records = writer.records()
        final = _ids_array(idx.lookup_many(KEYS))
    states = {"fit": state}
    for n, rec in enumerate(records):  # the state after each commit
        state = state.copy()
        state[MOVED] = -1 if rec["op"] == "remove" else _parse_ids(rec["ids"])
        states[f"{rec['op']}-{n}"] = state
    assert np.array_equal(final, state), "the final state is not the last add's"
    overlapping = sum(any(r.start <= w["t0"] and w["t1"] <= r.end for w in records)
                      for r in reads)
    ctx = (f"[{_backend(db_url)}: {len(reads)} reads, {overlapping} of them across a whole "
           f"write, {len(records)} writes]")
    seen = _check_reads(reads, states, ctx)
    print(f"{ctx} states seen: {len(seen)}")
    assert overlapping >= MIN_OVERLAPPING_READS, f"{ctx}: too few reads overlapped a write"


if __name__ == "__main__" and sys.argv[1:2] == ["--writer"]:
    _writer_main(*sys.argv[2:])
