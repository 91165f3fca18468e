"""Schema, migrations, query plans and blob checks, on SQLite and PostgreSQL."""

import json
import logging
import re
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, event, inspect, text

from semid_index import SemanticIdIndex
from semid_index.errors import ConfigError, SchemaError
from semid_index.storage import CorruptBlobError, Store, head_revision, metadata
from semid_index.storage import _migrate
from semid_index.storage._codes import CodeLayout

from conftest import gaussian_mixture

IX = "ix_semid_items_index_id_version_code_suffix"


def _engine_conn(url):
    engine = create_engine(url)
    return engine, engine.connect()


# ------------------------------------------------------------------ migrations
def test_migrations_build_exactly_the_declared_schema(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    before, after = SemanticIdIndex.migrate(db_url)
    assert before is None and after == head_revision()
    engine, conn = _engine_conn(db_url)
    try:
        ctx = MigrationContext.configure(conn, opts={
            "compare_type": True, "version_table": "semid_alembic_version",
            "include_name": lambda n, t, p: t != "table" or n.startswith("semid_")})
        assert compare_metadata(ctx, metadata) == []
        assert {t for t in inspect(conn).get_table_names()} >= set(metadata.tables)
    finally:
        conn.close()
        engine.dispose()
    assert SemanticIdIndex.migrate(db_url) == (head_revision(), head_revision())  # idempotent


def test_older_schema_is_reported_then_upgraded_with_data_kept(db_url, mixture, caplog):
    keys = [f"k{i}" for i in range(len(mixture))]
    with SemanticIdIndex.create(db_url, "old", n_levels=2, codebook_size=8) as idx:
        idx.fit(keys, mixture)
        ids = idx.lookup_many(keys)
    engine = create_engine(db_url)
    with engine.begin() as conn:
        _migrate.downgrade(conn, "0001")
    engine.dispose()
    with pytest.raises(SchemaError, match="older semid_index schema revision 0001.*needs 0003"):
        SemanticIdIndex.open(db_url, "old", upgrade=False)
    with caplog.at_level(logging.WARNING, logger="semid_index.storage"):
        idx = SemanticIdIndex.open(db_url, "old")  # upgrades in one transaction, and says so
    assert "from revision 0001 to 0003" in caplog.text
    with idx:
        assert idx.lookup_many(keys) == ids
        assert idx.remove(keys[:3]) == 3  # the table 0002 adds works
        assert idx.stats().n_retired == 3


def test_newer_foreign_and_missing_schemas_are_refused(db_url, tmp_path):
    if db_url.startswith("sqlite"):  # opening never creates a file
        with pytest.raises(ConfigError, match="no such SQLite database file"):
            SemanticIdIndex.open(db_url, "x")
        assert SemanticIdIndex.list_indexes(db_url) == []
        assert not (tmp_path / "index.db").exists()
        sqlite3.connect(tmp_path / "index.db").close()  # an empty database: no schema
    with pytest.raises(SchemaError, match="no semid_index schema"):
        SemanticIdIndex.open(db_url, "x")
    assert SemanticIdIndex.list_indexes(db_url) == []
    # an application's own table beside ours is left alone
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE app_users (id integer primary key, name text)"))
        conn.execute(text("INSERT INTO app_users VALUES (1, 'ann')"))
    SemanticIdIndex.create(db_url, "x").close()
    with engine.begin() as conn:
        assert conn.execute(text("SELECT name FROM app_users")).scalar() == "ann"
        conn.execute(text("UPDATE semid_alembic_version SET version_num = '9999_future'"))
    with pytest.raises(SchemaError, match="9999_future.*newer semid_index"):
        SemanticIdIndex.open(db_url, "x")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM semid_alembic_version"))
    with pytest.raises(SchemaError, match="no semid_alembic_version"):
        SemanticIdIndex.open(db_url, "x", upgrade=False)
    engine.dispose()
    with pytest.raises(ConfigError, match="cannot open .*no_such_dir"):
        SemanticIdIndex.create(f"sqlite:///{tmp_path / 'no_such_dir' / 'x.db'}", "x")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(SchemaError, match="not a SQLite database"):
        SemanticIdIndex.open(f"sqlite:///{junk}", "x")
    assert junk.read_bytes() == b"this is not a database at all" * 100


def test_an_engine_works_like_a_url_and_stays_open(db_url, mixture):
    engine = create_engine(db_url)
    keys = [f"k{i}" for i in range(len(mixture))]
    with SemanticIdIndex.create(engine, "e", n_levels=2, codebook_size=8) as idx:
        idx.fit(keys, mixture)
        sid = idx.lookup("k3")
    with engine.connect() as conn:  # the caller's engine keeps working after close()
        assert conn.execute(text("SELECT count(*) FROM semid_items")).scalar() == len(keys)
    with SemanticIdIndex.open(db_url, "e") as idx:
        assert idx.lookup("k3") == sid
    engine.dispose()


def test_corrupt_codebook_blob_is_detected(db_url, mixture):
    keys = [f"k{i}" for i in range(len(mixture))]
    with SemanticIdIndex.create(db_url, "c", n_levels=2, codebook_size=8) as idx:
        idx.fit(keys, mixture)
    engine = create_engine(db_url)
    with engine.begin() as conn:
        blob = bytearray(conn.execute(text(
            "SELECT data FROM semid_codebooks WHERE level = 1")).scalar())
        blob[-5] ^= 0xFF
        conn.execute(text("UPDATE semid_codebooks SET data = :d WHERE level = 1"),
                     {"d": bytes(blob)})
    engine.dispose()
    with SemanticIdIndex.open(db_url, "c") as idx:
        assert idx.lookup(keys[0]).depth == 2  # lookups never read codebooks
        with pytest.raises(CorruptBlobError, match="checksum"):
            idx.add(["new"], mixture[:1])


# ------------------------------------------------------------------ query plans
def _loaded_index(db_url, n=30_000):
    """An index with n items spread over 3 x 64 codes, written through the bulk path."""
    x, _ = gaussian_mixture(2000, 8, 20, seed=5)
    idx = SemanticIdIndex.create(db_url, "plans", n_levels=3, codebook_size=64)
    idx.fit([f"seed-{i}" for i in range(2000)], x)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 64, size=(n, 3))
    store, rec = idx._store, idx._record
    with store.write() as conn:
        # a second version with synthetic codes, so the tables are big enough to plan on
        books, header, _ = store.catalog.codebooks(conn, rec, 1)
        v = store.catalog.add_version(conn, rec, books, header, n)
        store.writes.load(conn, rec.space(v), [f"item-{i}" for i in range(n)], codes,
                          np.zeros(n, dtype=np.int64))
        store.catalog.activate(conn, rec, v)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    idx._refresh()
    return idx, codes


def _captured(idx):
    seen = []

    def grab(conn, cursor, statement, parameters, context, executemany):
        if "semid_items" in statement and statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))
    event.listen(idx._store.engine, "before_cursor_execute", grab)
    readers = idx._store._readers  # the serving path's held connections: record, then run
    fetchall = readers.fetchall

    def recording(sql, params):
        seen.append((sql, params))
        return fetchall(sql, params)
    readers.fetchall = recording
    return seen


def _plan(idx, statement, parameters) -> str:
    with idx._store.engine.connect() as conn:
        cur = conn.connection.driver_connection.cursor()
        if idx._store.dialect == "sqlite":
            cur.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            return "\n".join(r[-1] for r in cur.fetchall())
        cur.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
        return json.dumps(cur.fetchone()[0])


def test_prefix_queries_are_index_range_scans(db_url):
    idx, codes = _loaded_index(db_url)
    try:
        seen = _captured(idx)
        c = codes[17].tolist()
        for depth in (1, 2, 3):
            page = idx.items_with_prefix(c[:depth], limit=20)
            idx.items_with_prefix(c[:depth], limit=20, cursor=page.cursor or str(page.items[-1].id))
            idx.count(c[:depth])
        idx.similar("item-17", limit=50)
        assert len(seen) >= 9
        for statement, params in seen:
            if "item_key IN" in statement or "item_key =" in statement \
                    or "FROM semid_items" not in statement:
                continue  # key lookups use the primary key; the index row, its own
            plan = _plan(idx, statement, params)
            if idx._store.dialect == "sqlite":
                assert f"SEARCH semid_items USING COVERING INDEX {IX}" in plan, plan
                assert "code>" in plan and "SCAN" not in plan, plan
            else:
                text_plan = json.dumps(json.loads(plan))
                assert not re.search(r'"Node Type": "Seq Scan"[^}]*"Relation Name": "semid_items"',
                                     text_plan), text_plan
                assert f'"Index Name": "{IX}"' in text_plan, text_plan
                assert "code >=" in text_plan and "code <" in text_plan, text_plan
    finally:
        idx.close()


def test_prefix_results_at_scale_match_numpy(db_url):
    idx, codes = _loaded_index(db_url, n=20_000)
    try:
        for depth in (1, 2, 3):
            pre = codes[123, :depth]
            mask = (codes[:, :depth] == pre).all(axis=1)
            assert idx.count(pre.tolist()) == int(mask.sum())
            got = idx.items_with_prefix(pre.tolist(), limit=100_000).keys
            assert sorted(got) == sorted(f"item-{i}" for i in np.flatnonzero(mask))
        heads = idx.child_counts(codes[5, :2].tolist())
        mask = (codes[:, :2] == codes[5, :2]).all(axis=1)
        want = dict(zip(*np.unique(codes[mask, 2], return_counts=True)))
        assert heads == {int(k): int(v) for k, v in want.items()}
    finally:
        idx.close()


# ------------------------------------------------------------------ binary keys
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 65535), min_size=3, max_size=3),
       st.lists(st.integers(0, 65535), min_size=1, max_size=3), st.sampled_from([2, 4]))
def test_prefix_range_holds_exactly_the_codes_with_that_prefix(code, prefix, width):
    layout = CodeLayout(3, width)
    key = layout.pack(np.array([code]))[0]
    lo, hi = layout.range(prefix)
    inside = lo <= key and (hi is None or key < hi)
    assert inside == (code[:len(prefix)] == prefix)


# ------------------------------------------------------------------ torch-free lookups
def test_lookup_path_never_imports_torch(tmp_path, mixture):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    keys = [f"k{i}" for i in range(len(mixture))]
    with SemanticIdIndex.create(url, "c", n_levels=2, codebook_size=8) as idx:
        idx.fit(keys, mixture)
    code = f"""
import sys
from semid_index import SemanticIdIndex
with SemanticIdIndex.open({url!r}, "c") as idx:
    sid = idx.lookup("k1")
    idx.items_with_prefix(sid.prefix(1), limit=5); idx.count(sid.prefix(2))
    idx.similar("k1"); idx.stats(); idx.child_counts(); list(idx.id_map(1))
assert "torch" not in sys.modules, "torch was imported"
print(sid)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(tuple("0123456789"))


def test_store_is_torch_free_by_construction():
    out = subprocess.run([sys.executable, "-c", "import sys, semid_index.storage, "
                          "semid_index.index; print('torch' in sys.modules)"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert Store.__module__ == "semid_index.storage._store"
