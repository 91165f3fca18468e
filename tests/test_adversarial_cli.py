"""The command under hostile input (issue 10): one line on stderr, exit 1, no traceback, the
database and existing files exactly as before; reads that need no torch never import it; a
read-only SQLite database serves reads."""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from semid_index import SemanticIdIndex
from semid_index._cli_io import read_keys
from semid_index.errors import InputFileError

from conftest import ROOT, assert_one_line_error, dump_tables, gaussian_mixture, semid

D = 6


@pytest.fixture
def fitted(db_url, tmp_path):
    x, _ = gaussian_mixture(900, D, 12, seed=8)
    with SemanticIdIndex.create(db_url, "default", n_levels=3, codebook_size=4) as idx:
        idx.fit([f"item-{i}" for i in range(800)], x[:800])
    np.save(tmp_path / "new.npy", x[800:])
    (tmp_path / "new.txt").write_text("".join(f"new-{i}\n" for i in range(100)))
    return db_url, tmp_path


def _files(tmp: Path) -> dict:
    """Hostile input files, by name."""
    x = np.ones((3, D), dtype=np.float32)
    np.save(tmp / "good.npy", x)
    np.save(tmp / "object.npy", np.array([{"a": 1}, None, 3], dtype=object), allow_pickle=True)
    full = (tmp / "good.npy").read_bytes()
    (tmp / "truncated.npy").write_bytes(full[:len(full) - 7])
    (tmp / "garbage.npy").write_bytes(os.urandom(300))
    np.savez(tmp / "pickled.npz", embeddings=np.array([[1, 2], "x"], dtype=object))
    (tmp / "corrupt.npz").write_bytes(b"PK\x03\x04" + os.urandom(200))
    (tmp / "random.parquet").write_bytes(os.urandom(500))
    (tmp / "keys3.txt").write_text("a\nb\nc\n")
    (tmp / "undecodable.txt").write_bytes(b"a\nb\xff\xfe\nc\n")
    return {"x": x}


# ---------------------------------------------------------------------------- F6
HOSTILE_ARGS = [  # reach the database: both backends
    ([b"lookup", b"item-\xff"], "not valid Unicode"),
    (["prefix", "\u00b2"], "malformed prefix"),
    (["prefix", "1", "--cursor", "1-0-0-99999999999999999999"], "malformed cursor"),
    (["prefix", "1", "--limit", str(2**63)], "limit must be an int in"),
    (["stats", "--db", "postgresql+psycopg2://u:pw@127.0.0.1/x"], "psycopg2"),
]
HOSTILE_FILES = [  # refused while reading the file, before any database work: SQLite only
    (["add", "{tmp}/good.npy", "--keys", "{tmp}/undecodable.txt"], "line 2 is not valid UTF-8"),
    (["add", "{tmp}/object.npy", "--keys", "{tmp}/keys3.txt"], "object.npy"),
    (["add", "{tmp}/truncated.npy", "--keys", "{tmp}/keys3.txt"], "truncated.npy"),
    (["add", "{tmp}/garbage.npy", "--keys", "{tmp}/keys3.txt"], "garbage.npy"),
    (["add", "{tmp}/pickled.npz", "--keys", "{tmp}/keys3.txt"], "pickled.npz"),
    (["add", "{tmp}/corrupt.npz", "--keys", "{tmp}/keys3.txt"], "corrupt.npz"),
    (["add", "{tmp}/random.parquet", "--keys", "{tmp}/keys3.txt"], "not a readable Parquet"),
]


def test_hostile_arguments_and_files_are_one_line_errors(fitted):
    db, tmp = fitted
    _files(tmp)
    cases = HOSTILE_ARGS + (HOSTILE_FILES if db.startswith("sqlite") else [])
    before = dump_tables(db)
    for args, message in cases:
        args = [a.replace("{tmp}", str(tmp)) if isinstance(a, str) else a for a in args]
        code, _, err = semid(*args, db=db, check=False)
        assert_one_line_error(code, err, message)
        assert dump_tables(db) == before, args


def test_a_damaged_version_header_is_one_line(fitted):
    db, tmp = fitted
    engine = create_engine(db)
    with engine.begin() as conn:
        conn.execute(text("UPDATE semid_versions SET header = '{\"dim\": [oops'"))
    engine.dispose()
    before = dump_tables(db)
    for args in (["add", tmp / "new.npy", "--keys", tmp / "new.txt"], ["versions"],
                 ["stats"]):
        code, _, err = semid(*args, db=db, check=False)
        assert_one_line_error(code, err, "is damaged")
    assert dump_tables(db) == before


def test_a_sqlite_file_with_junk_in_the_middle_is_one_line(tmp_path):
    x, _ = gaussian_mixture(3000, D, 12, seed=9)
    db = tmp_path / "junk.db"
    with SemanticIdIndex.create(f"sqlite:///{db}", "default", n_levels=3, codebook_size=8) as idx:
        idx.fit([f"item-{i}" for i in range(3000)], x)
    data = bytearray(db.read_bytes())
    page, pages = 4096, len(data) // 4096
    for p in range(pages // 3, 2 * pages // 3, 2):  # every other page of the middle third:
        data[p * page:(p + 1) * page] = os.urandom(page)  # both B-trees of the items are hit
    db.write_bytes(bytes(data))
    for args in (["stats"], ["export", tmp_path / "ids.jsonl"]):
        code, _, err = semid(*args, db=f"sqlite:///{db}", check=False)
        assert_one_line_error(code, err)
        assert "damaged" in err or "malformed" in err, err
    assert not (tmp_path / "ids.jsonl").exists()
    # a prefix scan fails the same way when its range crosses a damaged page (which prefixes
    # do depends on where the IDs landed): every failure is one line, and some prefix fails
    failed = 0
    for code1 in range(8):
        code, _, err = semid("prefix", str(code1), "-n", "5000", db=f"sqlite:///{db}",
                             check=False)
        if code != 0:
            assert_one_line_error(code, err)
            assert "damaged" in err or "malformed" in err, err
            failed += 1
    assert failed > 0


# ---------------------------------------------------------------------------- F3
def test_a_failed_export_leaves_the_existing_file_as_it_was(fitted):
    db, tmp = fitted
    for out, extra in ((tmp / "ids.jsonl", []), (tmp / "grid.npy", ["--what", "grid"])):
        semid("export", out, *extra, db=db)
        before = {p: p.read_bytes() for p in tmp.iterdir() if p.name.startswith(out.name)}
        code, _, err = semid("export", out, *extra, "--version", "99", db=db, check=False)
        assert_one_line_error(code, err, "no version 99")
        assert {p: p.read_bytes() for p in tmp.iterdir() if p.name.startswith(out.name)} == before
        assert not [p for p in tmp.iterdir() if p.name.startswith(".")]  # no temporary left


# ---------------------------------------------------------------------------- F5
def test_key_files_split_on_newlines_only(tmp_path, db_url):
    keys = ["plain", "nel\u0085inside", "ls\u2028inside", "ff\x0cinside", "gs\x1dinside",
            "cr\rinside", "trailing space "]
    raw = "\ufeff" + keys[0] + "\r\n" + "\n".join(keys[1:]) + "\n"
    (tmp_path / "keys.txt").write_text(raw, encoding="utf-8")
    assert read_keys(tmp_path / "keys.txt") == keys
    x, _ = gaussian_mixture(len(keys), D, 2, seed=1)
    np.save(tmp_path / "x.npy", x)
    semid("fit", tmp_path / "x.npy", "--keys", tmp_path / "keys.txt", "-L", "2", "-k", "2",
          db=db_url)
    with SemanticIdIndex.open(db_url) as idx:
        assert [it.key for it in idx.iter_items()] == sorted(
            keys, key=lambda k: str(idx.lookup(k)))  # every key stored whole, none shifted
        assert idx.count() == len(keys)
    (tmp_path / "blank.txt").write_text("a\n\nb\n")
    with pytest.raises(InputFileError, match="line 2 is empty"):
        read_keys(tmp_path / "blank.txt")


def test_byte_keys_in_an_npz_are_text_not_reprs(tmp_path, db_url):
    x, _ = gaussian_mixture(4, D, 2, seed=1)
    np.savez(tmp_path / "b.npz", embeddings=x, keys=np.array([b"sku-1", b"sku-2", b"sku-3",
                                                             "caf\u00e9".encode()]))
    semid("fit", tmp_path / "b.npz", "-L", "1", "-k", "2", db=db_url)
    with SemanticIdIndex.open(db_url) as idx:
        assert sorted(it.key for it in idx.iter_items()) == ["caf\u00e9", "sku-1", "sku-2",
                                                             "sku-3"]


def test_a_null_parquet_key_is_refused(tmp_path, db_url):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x, _ = gaussian_mixture(5, D, 2, seed=1)
    pq.write_table(pa.table({"key": ["a", None, "c", "d", "e"],
                             "embedding": [list(map(float, r)) for r in x]}),
                   tmp_path / "t.parquet")
    code, _, err = semid("fit", tmp_path / "t.parquet", "-L", "1", "-k", "2", db=db_url,
                         check=False)
    assert_one_line_error(code, err, "null in row 1")


# ---------------------------------------------------------------------------- point 5
NO_TORCH = ("import sys; sys.modules['torch'] = None; "  # any import of torch now fails
            "from semid_index.cli import main; main(prog_name='semid')")


def test_read_commands_never_import_torch(fitted):
    """Every reading command on SQLite; on PostgreSQL (the same modules, another driver) the
    first few."""
    pytest.importorskip("pyarrow")
    db, tmp = fitted
    env = dict(os.environ, PYTHONPATH=str(ROOT), SEMID_DB=db)
    with SemanticIdIndex.open(db) as idx:
        first = idx.lookup("item-0")
    head = "-".join(map(str, first.levels[:1]))
    runs = [["stats"], ["stats", "--json"], ["lookup", "item-0", "item-1"],
            ["prefix", head], ["prefix", head, "--count"], ["prefix", head, "-n", "2"],
            ["similar", "item-0"], ["versions"], ["list"],
            ["export", tmp / "i.jsonl"], ["export", tmp / "i.csv"], ["export", tmp / "i.npz"],
            ["export", tmp / "i.parquet"], ["export", tmp / "n.jsonl", "--what", "next-codes"],
            ["export", tmp / "g.npy", "--what", "grid"]]
    for args in runs if db.startswith("sqlite") else runs[:5]:
        p = subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, (args, p.stderr)
    page = subprocess.run([sys.executable, "-c", NO_TORCH, "prefix", head, "-n", "2", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    cursor = json.loads(page.stdout)["cursor"]
    p = subprocess.run([sys.executable, "-c", NO_TORCH, "prefix", head, "--cursor", cursor],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    # and the guard works: a command that needs torch fails under it
    p = subprocess.run([sys.executable, "-c", NO_TORCH, "add", str(tmp / "new.npy"), "--keys",
                        str(tmp / "new.txt")], env=env, capture_output=True, text=True)
    assert p.returncode != 0


# ---------------------------------------------------------------------------- F10
READS = textwrap.dedent("""
    import json, sys
    from semid_index import SemanticIdIndex
    from semid_index.errors import ReadOnlyDatabaseError
    with SemanticIdIndex.open(sys.argv[1]) as idx:
        sid = idx.lookup("item-3")
        out = {"id": str(sid), "count": idx.count(), "n": idx.stats().n_items,
               "page": idx.items_with_prefix(sid.prefix(1), limit=3).keys,
               "similar": [s.key for s in idx.similar("item-3", limit=3)],
               "ids": len(idx.id_arrays()[0])}
        try:
            idx.remove(["item-3"])
        except ReadOnlyDatabaseError as e:
            out["write"] = str(e)
    print(json.dumps(out))
""")


def _without_write_permission(argv: list[str]) -> list[str]:
    """Run argv unable to write files it may only read: as root, with the capabilities that
    override file permissions dropped (setpriv, util-linux); otherwise as is."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *argv]


@pytest.mark.parametrize("dir_writable", [False, True])
def test_a_read_only_sqlite_database_serves_reads(dir_writable, tmp_path):
    x, _ = gaussian_mixture(900, D, 12, seed=10)
    home = Path(tempfile.mkdtemp(dir=tmp_path))
    db = home / "ro.db"
    with SemanticIdIndex.create(f"sqlite:///{db}", "default", n_levels=3, codebook_size=4) as idx:
        idx.fit([f"item-{i}" for i in range(900)], x)
        want = {"id": str(idx.lookup("item-3")), "count": 900}
    (tmp_path / "r.py").write_text(READS)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    db.chmod(0o444)
    if not dir_writable:
        home.chmod(0o555)
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        p = subprocess.run(_without_write_permission(
            [sys.executable, str(tmp_path / "r.py"), f"sqlite:///{db}"]),
            env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        got = json.loads(p.stdout)
        assert got["id"] == want["id"] and got["count"] == got["n"] == got["ids"] == 900
        assert "read-only" in got["write"]
        p = subprocess.run(_without_write_permission(
            [sys.executable, "-m", "semid_index", "lookup", "item-3", "--json",
             "--db", f"sqlite:///{db}"]), env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and json.loads(p.stdout)[0]["id"] == want["id"], p.stderr
    finally:
        home.chmod(stat.S_IRWXU)
        db.chmod(0o644)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    shutil.rmtree(home)


def test_read_commands_on_a_mistyped_path_create_nothing(tmp_path):
    typo = tmp_path / "typo.db"
    for args in (["lookup", "k"], ["stats"], ["prefix", "1"], ["versions"]):
        code, _, err = semid(*args, db=f"sqlite:///{typo}", check=False)
        assert_one_line_error(code, err, "no such SQLite database file")
    code, out, _ = semid("list", db=f"sqlite:///{typo}")
    assert "(no indexes)" in out
    assert not typo.exists()
