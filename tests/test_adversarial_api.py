"""Failures found by trying the library as a careful user and an attacker would (issue 10):
each case raises a typed error and leaves the database exactly as it was. Both backends."""

import sqlite3
import threading

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from semid_index import SemanticIdIndex
from semid_index.errors import (ConfigError, CorruptBlobError, DimensionMismatchError,
                                IndexNotFoundError, IndexReplacedError, InputFileError,
                                InvalidCodesError, LockTimeoutError, SchemaError,
                                SemanticIdError)
from semid_index.storage import encode_array

from conftest import dump_tables, gaussian_mixture

D = 8


@pytest.fixture
def catalog():
    x, _ = gaussian_mixture(1500, D, 20, seed=21)
    return [f"k{i}" for i in range(len(x))], x


@pytest.fixture
def index(db_url, catalog):
    keys, x = catalog
    idx = SemanticIdIndex.create(db_url, "adv", n_levels=3, codebook_size=[4, 4, 4], seed=0)
    idx.fit(keys[:1000], x[:1000])
    yield idx
    idx.close()


def _sql(url, *statements, params=None):
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for s in statements:
                conn.execute(text(s), params or {})
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------- F1
def test_a_handle_refuses_an_index_dropped_and_created_anew(index, db_url, catalog):
    keys, x = catalog
    SemanticIdIndex.drop(db_url, "adv")
    with SemanticIdIndex.create(db_url, "adv", n_levels=2, codebook_size=[4, 4]) as other:
        other.fit(keys[:300], x[:300])  # on SQLite it may even get the dropped index's id
    state = dump_tables(db_url)
    with pytest.raises(IndexReplacedError, match="dropped and created anew"):
        index.add(["new"], x[1000:1001])
    for read in (lambda: index.lookup("k1"), lambda: index.count(),
                 lambda: index.items_with_prefix((1,)), lambda: index.stats()):
        with pytest.raises(IndexReplacedError):
            read()
    assert dump_tables(db_url) == state
    with SemanticIdIndex.open(db_url, "adv") as fresh:  # the new index is whole
        assert fresh.count() == 300 and fresh.stats().n_items == 300
        assert sum(1 for _ in fresh.iter_items()) == 300
    SemanticIdIndex.drop(db_url, "adv")
    with pytest.raises(IndexNotFoundError, match="was dropped"):
        index.remove(["k1"])


@pytest.mark.parametrize("damage", ["deleted row", "wrong shape", "bad header"])
def test_damaged_codebooks_are_refused_before_anything_is_written(index, db_url, catalog, damage):
    keys, x = catalog
    if damage == "deleted row":
        _sql(db_url, "DELETE FROM semid_codebooks WHERE level = 2")
    elif damage == "wrong shape":  # a blob whose checksum is right, for a (4, D + 1) array
        blob = encode_array(np.zeros((4, D + 1), dtype="<f4"))
        _sql(db_url, "UPDATE semid_codebooks SET data = :d WHERE level = 1", params={"d": blob})
    else:
        _sql(db_url, "UPDATE semid_versions SET header = '{not json'")
    state = dump_tables(db_url)
    with SemanticIdIndex.open(db_url, "adv") as idx:
        with pytest.raises(CorruptBlobError):
            idx.add(["new"], x[1000:1001])
        with pytest.raises(CorruptBlobError):
            idx.activate(1)
        assert idx.lookup("k3").depth == 3  # lookups need no codebooks
    assert dump_tables(db_url) == state


# ---------------------------------------------------------------------------- F2
def test_a_handle_follows_a_refit_by_another_handle(index, db_url, catalog):
    keys, x = catalog
    pre = index.lookup("k0").prefix(1)
    first = index.items_with_prefix(pre, limit=5)
    assert first.version == 1 and first.cursor.endswith("@v1")
    v1_all = index.items_with_prefix(pre, limit=10_000, version=1).keys
    with SemanticIdIndex.open(db_url, "adv") as other:
        other.fit(keys[:1200], x[:1200] * -1.0)  # another process refits: version 2
    assert index.active_version == 2
    new_id = index.add(["fresh"], x[1300:1301])[0]
    assert index.lookup("fresh") == new_id  # read from the version the add wrote to
    assert index.count() == 1201 and index.lookup("k1100") is not None
    # a cursor taken under version 1 keeps paging version 1
    got, cursor = list(first.keys), first.cursor
    while cursor:
        page = index.items_with_prefix(pre, limit=7, cursor=cursor)
        assert page.version == 1
        got += page.keys
        cursor = page.cursor
    assert got == v1_all
    with pytest.raises(ConfigError, match="pages version 1, not version 2"):
        index.items_with_prefix(pre, cursor=first.cursor, version=2)


# ---------------------------------------------------------------------------- F4
def test_a_writer_waits_a_bounded_time_for_a_held_lock(index, db_url, catalog):
    keys, x = catalog
    state = dump_tables(db_url)
    if db_url.startswith("sqlite"):
        holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    else:
        import psycopg

        holder = psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql"))
        holder.execute("SELECT id FROM semid_indexes WHERE name = 'adv' FOR UPDATE")
    try:
        with SemanticIdIndex.open(db_url, "adv", busy_timeout=0.5) as idx:
            with pytest.raises(LockTimeoutError, match=r"add items of index 'adv'.*0\.5 s") as e:
                idx.add(["blocked"], x[1000:1001])
            assert e.value.operation.startswith("add items") and e.value.url == idx.url
            assert "semid:semid@" not in str(e.value)  # the password stays hidden
            assert idx.lookup("k1") is not None  # reads do not wait for writers
    finally:
        holder.rollback()
        holder.close()
    assert dump_tables(db_url) == state
    assert index.add(["unblocked"], x[1000:1001])[0].depth == 3


# ---------------------------------------------------------------------------- F7, F8
@pytest.mark.parametrize("call, error, message", [
    (lambda i, x: i.add(["a", "b"], [[1.0] * D, [1.0] * (D - 1)]), DimensionMismatchError,
     "rectangular"),
    (lambda i, x: i.add(["a"], "/no/such/file.npy"), InputFileError, "no such file"),
    (lambda i, x: i.add(["\udcff"], x[:1]), ConfigError, "not valid Unicode"),
    (lambda i, x: i.lookup("\ud800"), ConfigError, "not valid Unicode"),
    (lambda i, x: i.items_with_prefix((1.7,)), InvalidCodesError, "integer level codes"),
    (lambda i, x: i.items_with_prefix(b"\x01\x02"), InvalidCodesError, "bytes"),
    (lambda i, x: i.count((True,)), InvalidCodesError, "integer level codes"),
    (lambda i, x: i.items_with_prefix("\u00b2"), InvalidCodesError, "malformed prefix"),
    (lambda i, x: i.items_with_prefix((1,), cursor="1-0-0-99999999999999999999"),
     InvalidCodesError, "malformed cursor"),
    (lambda i, x: i.items_with_prefix((1,), limit=1.5), ConfigError, "limit"),
    (lambda i, x: i.lookup_many(["k1"], missing="maybe"), ConfigError, "missing"),
])
def test_bad_arguments_raise_typed_errors_and_change_nothing(index, db_url, catalog, call,
                                                             error, message):
    keys, x = catalog
    state = dump_tables(db_url)
    with pytest.raises(error, match=message):
        call(index, x[1000:])
    assert dump_tables(db_url) == state


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": "abc"}, "seed must be"),
    ({"batch_size": 0}, "batch_size must be"),
    ({"device": "banana"}, "device must be"),
    ({"name": "bad\x00name"}, "index name"),
    ({"name": "tab\there"}, "index name"),
    ({"codebook_size": 0}, "codebook sizes"),
])
def test_create_checks_options_at_once(db_url, kwargs, message):
    kwargs = {"name": "opts", **kwargs}
    with pytest.raises(ConfigError, match=message):
        SemanticIdIndex.create(db_url, kwargs.pop("name"), n_levels=2, **kwargs)
    if db_url.startswith("postgresql"):
        assert SemanticIdIndex.list_indexes(db_url) == []


def test_cuda_on_a_machine_without_it_is_a_config_error(db_url, catalog):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    keys, x = catalog
    with SemanticIdIndex.create(db_url, "gpu", n_levels=2, codebook_size=4, device="cuda") as idx:
        state = dump_tables(db_url)
        with pytest.raises(ConfigError, match="no usable CUDA device"):
            idx.fit(keys[:200], x[:200])
        assert dump_tables(db_url) == state


def test_deprecated_missing_spellings_still_work(index):
    with pytest.warns(DeprecationWarning, match="missing='skip'"):
        assert index.lookup_many(["k1", "ghost"], missing="none")[1] is None
    with pytest.warns(DeprecationWarning):
        assert index.remove(["ghost"], missing="ignore") == 0
    assert index.lookup_many(["ghost"], missing="skip") == [None]


# ---------------------------------------------------------------------------- F9
def test_lookup_many_is_one_snapshot_while_a_batch_commits(tmp_path, catalog, monkeypatch):
    """More keys than one statement holds: a batch committed between the statements is seen
    entirely or not at all (a write lands exactly between the first and second statement)."""
    from sqlalchemy import event

    from semid_index.storage import _item_reads

    keys, x = catalog
    url = f"sqlite:///{tmp_path / 'snap.db'}"
    monkeypatch.setattr(_item_reads, "IN_CHUNK", 50)
    late = [f"late-{i}" for i in range(200)]
    statements = []
    with SemanticIdIndex.create(url, "s", n_levels=2, codebook_size=4) as reader:
        reader.fit(keys[:500], x[:500])
        with SemanticIdIndex.open(url, "s") as writer:
            def trace(sql):
                if "item_key IN" in sql:
                    statements.append(sql)
                    if len(statements) == 2:  # between the first and the second probe
                        thread = threading.Thread(target=writer.add, args=(late, x[500:700]))
                        thread.start()
                        thread.join()

            @event.listens_for(reader._store.engine, "checkout")
            def traced(dbapi_conn, record, proxy):
                dbapi_conn.set_trace_callback(trace)

            got = reader.lookup_many(late[:40] + keys[:60] + late[40:], missing="skip")
            assert len(statements) >= 2 and writer.count() == 700  # the batch did commit
    assert got[40:100] == [g for g in got[40:100] if g is not None]  # the old items are there
    assert all(g is None for g in got[:40] + got[100:])  # and none of the batch: one snapshot


# ---------------------------------------------------------------------------- F10
def test_reads_never_create_or_convert_a_sqlite_database(tmp_path, catalog):
    typo = tmp_path / "typo.db"
    with pytest.raises(ConfigError, match="no such SQLite database file"):
        SemanticIdIndex.open(f"sqlite:///{typo}", "x")
    assert SemanticIdIndex.list_indexes(f"sqlite:///{typo}") == []
    assert not typo.exists()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(SchemaError, match="no semid_index schema"):
        SemanticIdIndex.open(f"sqlite:///{empty}", "x")
    assert empty.read_bytes() == b""
    app = tmp_path / "app.db"
    con = sqlite3.connect(app)
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO users VALUES (1, 'ann')")
    con.commit()
    con.close()
    before = app.read_bytes()
    assert SemanticIdIndex.list_indexes(f"sqlite:///{app}") == []
    with pytest.raises(SchemaError):
        SemanticIdIndex.open(f"sqlite:///{app}", "x")
    assert app.read_bytes() == before
    con = sqlite3.connect(app)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()


def test_typed_errors_cover_every_failure_of_a_bad_url(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(bytes(range(256)) * 64)
    for url, message in [("postgresql+psycopg2://u@127.0.0.1/db", "psycopg2"),
                         (f"sqlite:///{tmp_path}", "cannot open"),
                         (f"sqlite:///{junk}", "not a SQLite database")]:
        with pytest.raises(SemanticIdError, match=message):
            SemanticIdIndex.open(url, "x")
    assert junk.read_bytes() == bytes(range(256)) * 64
