"""One transaction per logical write; concurrent writers; ID stability (both backends)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from semid_index import SemanticIdIndex
from semid_index.storage import _item_writes
from semid_index.errors import ItemConflictError, NonFiniteError, StoreError

from conftest import dump_tables, gaussian_mixture

D = 8


def _poison(url: str, key: str) -> None:
    """A real database trigger that rejects one item row: a failure in the middle of a bulk
    write, raised by the database itself."""
    engine = create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text(
                "CREATE TRIGGER semid_test_poison BEFORE INSERT ON semid_items "
                f"WHEN NEW.item_key = '{key}' BEGIN SELECT RAISE(ABORT, 'poisoned row {key}'); END"))
        else:
            conn.execute(text(
                "CREATE FUNCTION semid_test_poison() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN IF NEW.item_key = '{key}' THEN RAISE EXCEPTION 'poisoned row %', "
                "NEW.item_key; END IF; RETURN NEW; END $$"))
            conn.execute(text("CREATE TRIGGER semid_test_poison BEFORE INSERT ON semid_items "
                              "FOR EACH ROW EXECUTE FUNCTION semid_test_poison()"))
    engine.dispose()


@pytest.fixture
def small_index(db_url):
    x, _ = gaussian_mixture(40_000, D, 30, seed=11)
    keys = [f"it-{i}" for i in range(len(x))]
    idx = SemanticIdIndex.create(db_url, "atomic", n_levels=3, codebook_size=16, seed=1)
    idx.fit(keys[:5000], x[:5000])
    yield idx, keys, x
    idx.close()


def test_bulk_fit_failing_in_a_late_row_leaves_the_database_as_it_was(small_index, db_url):
    idx, keys, x = small_index
    _poison(db_url, keys[38_000])  # row 38,000 of 40,000: the bulk load is far along
    state = dump_tables(db_url)
    with pytest.raises(StoreError, match=f"poisoned row {keys[38_000]}"):
        idx.fit(keys, x)
    assert dump_tables(db_url) == state
    assert idx.active_version == 1 and idx.count() == 5000


def test_bulk_add_failing_in_a_late_batch_leaves_the_database_as_it_was(small_index, db_url,
                                                                       monkeypatch):
    idx, keys, x = small_index
    monkeypatch.setattr(_item_writes, "BULK_BATCH", 2000)  # several statements per add
    state = dump_tables(db_url)
    # a late key is already indexed with another embedding: the probe finds it before any write
    batch_keys = keys[5000:35_000] + [keys[10]]
    batch = np.concatenate([x[5000:35_000], x[10:11] + 100.0])
    with pytest.raises(ItemConflictError, match=f"'{keys[10]}'"):
        idx.add(batch_keys, batch)
    assert dump_tables(db_url) == state
    # a database-level failure in a late row of one chunk
    _poison(db_url, keys[33_333])
    state = dump_tables(db_url)
    with pytest.raises(StoreError, match=f"poisoned row {keys[33_333]}"):
        idx.add(keys[5000:35_000], x[5000:35_000])
    assert dump_tables(db_url) == state
    # NaN in the last row: found while encoding, before anything is written
    bad = x[5000:35_000].copy()
    bad[-1, 2] = np.nan
    with pytest.raises(NonFiniteError, match=f"'{keys[34_999]}'"):
        idx.add(keys[5000:35_000], bad)
    assert dump_tables(db_url) == state


WORKER = textwrap.dedent("""
    import sys, json
    import numpy as np
    from semid_index import SemanticIdIndex
    url, worker, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(100 + worker)
    x = rng.standard_normal((n, %d)).astype("float32") * 3
    keys = [f"w{worker}-{i}" for i in range(n)]
    ids = []
    with SemanticIdIndex.open(url, "shared") as idx:
        for a in range(0, n, batch):
            ids += [str(s) for s in idx.add(keys[a:a + batch], x[a:a + batch])]
    print(json.dumps(dict(zip(keys, ids))))
""" % D)


def test_four_processes_adding_at_once_lose_nothing_and_never_share_an_id(db_url, tmp_path):
    import json

    x, _ = gaussian_mixture(2000, D, 20, seed=2)
    # 4 x 4 x 4 = 64 codes for 22,000 items: every add contends for the same suffix counters
    with SemanticIdIndex.create(db_url, "shared", n_levels=3, codebook_size=4) as idx:
        idx.fit([f"base-{i}" for i in range(2000)], x)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), db_url, str(w), "5000", "250"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for w in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    issued = {}
    for out, _ in outs:
        issued.update(json.loads(out.strip().splitlines()[-1]))
    assert len(issued) == 20_000
    with SemanticIdIndex.open(db_url, "shared") as idx:
        assert idx.count() == 22_000
        stored = idx.lookup_many(list(issued))
        assert [str(s) for s in stored] == list(issued.values())  # what each worker was told
        every = stored + idx.lookup_many([f"base-{i}" for i in range(2000)])
        assert len({str(s) for s in every}) == 22_000  # every full ID unique
        # no suffix skipped or doubled: per code, suffixes are exactly 0..n-1
        groups = {}
        for s in every:
            groups.setdefault(s.levels, []).append(s.suffix)
        assert all(sorted(v) == list(range(len(v))) for v in groups.values())


# ------------------------------------------------------------------ stability property
OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 40)),
    st.tuples(st.just("remove"), st.integers(1, 15)),
    st.tuples(st.just("readd"), st.integers(1, 10)),
    st.tuples(st.just("reassign"), st.integers(1, 5)),
), min_size=1, max_size=12)


@pytest.fixture
def prefit(db_url):
    from semid_index.quantize import ResidualKMeans

    x, _ = gaussian_mixture(400, D, 10, seed=4)
    model = ResidualKMeans(2, 4, seed=0).fit(x)
    return db_url, model, x


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, seed=st.integers(0, 2**16))
def test_issued_ids_never_change_and_retired_ids_never_return(prefit, ops, seed):
    url, model, base = prefit
    rng = np.random.default_rng(seed)
    name = f"prop-{seed}-{rng.integers(1 << 30)}"
    with SemanticIdIndex.create(url, name, n_levels=2, codebook_size=4) as idx:
        idx.fit([f"b{i}" for i in range(100)], base[:100], model=model)
        live = dict(zip([f"b{i}" for i in range(100)], map(str, idx.lookup_many(
            [f"b{i}" for i in range(100)]))))
        owner = {sid: key for key, sid in live.items()}  # every ID ever issued -> its item
        emb = {f"b{i}": base[i] for i in range(100)}
        removed = []
        counter = 0
        for op, n in ops:
            if op == "add":
                keys = [f"n{counter + i}" for i in range(n)]
                counter += n
                x = base[rng.integers(0, 400, n)] + rng.normal(0, 0.1, (n, D)).astype("float32")
                got = idx.add(keys, x)
                emb.update(zip(keys, x))
            elif op == "remove" and live:
                keys = list(rng.choice(sorted(live), min(n, len(live)), replace=False))
                assert idx.remove(keys) == len(keys)
                for k in keys:
                    del live[k]
                removed += keys
                continue
            elif op == "readd" and removed:
                keys = removed[:n]
                removed = removed[n:]
                got = idx.add(keys, np.stack([emb[k] for k in keys]))
            elif op == "reassign" and live:
                keys = list(rng.choice(sorted(live), min(n, len(live)), replace=False))
                x = np.stack([emb[k] for k in keys]) + 5.0
                got = idx.add(keys, x, on_conflict="reassign")
                for k in keys:
                    del live[k]
                emb.update(zip(keys, x))
            else:
                continue
            for k, sid in zip(keys, map(str, got)):
                assert owner.setdefault(sid, k) == k, f"ID {sid} of {owner[sid]} reissued to {k}"
                live[k] = sid
            # every ID issued before is unchanged
            now = dict(zip(live, map(str, idx.lookup_many(list(live)))))
            assert now == live
        assert idx.count() == len(live)
    SemanticIdIndex.drop(url, name)
