"""The ``semid`` command through its real entry point (a subprocess), on SQLite and PostgreSQL."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from semid_index import ConfigError, SemanticIdIndex
from semid_index.cli import main as cli_main
from semid_index.export import (next_code_table, prefix_ngram_ids, write_ids, write_next_codes,
                                 write_prefix_ngrams)

from conftest import dump_tables, gaussian_mixture, semid

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def files(tmp_path):
    x, _ = gaussian_mixture(1500, 12, 30, seed=7)
    np.save(tmp_path / "x.npy", x[:1200])
    (tmp_path / "keys.txt").write_text("".join(f"item-{i}\n" for i in range(1200)))
    np.save(tmp_path / "new.npy", x[1200:])
    (tmp_path / "new.txt").write_text("".join(f"new-{i}\n" for i in range(300)))
    np.save(tmp_path / "bad_dim.npy", x[1200:1210, :5])
    return tmp_path, x


@pytest.fixture
def fitted(db_url, files):
    """An index fitted through the library (the command's own fit is tested once, below)."""
    tmp, x = files
    with SemanticIdIndex.create(db_url, "default", n_levels=3, codebook_size=8) as idx:
        idx.fit([f"item-{i}" for i in range(1200)], x[:1200], progress=False)
    return db_url, tmp, x


def test_fit_add_lookup_similar_prefix_stats_through_the_command(db_url, files):
    tmp, x = files
    db = db_url
    _, out, _ = semid("fit", tmp / "x.npy", "--keys", tmp / "keys.txt", "-L", "3", "-k", "8",
                      "--json", db=db)
    fitted = json.loads(out)
    assert fitted["n_items"] == 1200 and 0 < fitted["suffixed_share"] <= fitted["collided_share"]
    _, out, _ = semid("add", tmp / "new.npy", "--keys", tmp / "new.txt", "--json", db=db)
    added = json.loads(out)
    assert added["added"] == 300
    with SemanticIdIndex.open(db) as idx:  # what the command wrote is what the library reads
        assert idx.count() == 1500
        assert str(idx.lookup("new-7")) == added["ids"]["new-7"]
        want = idx.similar("item-3", limit=5)
        assert idx.model.encode(x[:1]).tolist()[0] == list(idx.lookup("item-0").levels)
    _, out, _ = semid("lookup", "item-3", "new-7", "--json", db=db)
    got = json.loads(out)
    assert [g["key"] for g in got] == ["item-3", "new-7"]
    assert got[1]["id"] == added["ids"]["new-7"]
    assert re.fullmatch(r"(<[a-d]_\d+>){4}", got[0]["tokens"])
    _, out, _ = semid("similar", "item-3", "-n", "5", "--json", db=db)
    assert [h["key"] for h in json.loads(out)["similar"]] == [h.key for h in want]
    head = got[0]["id"].rsplit("-", 2)[0]  # the first level
    _, out, _ = semid("prefix", head, "--count", "--json", db=db)
    counted = json.loads(out)
    assert counted["items"] == sum(counted["next_codes"].values()) > 0
    _, out, _ = semid("prefix", head, "-n", "1000", "--json", db=db)
    assert len(json.loads(out)["items"]) == counted["items"]
    _, out, _ = semid("stats", "--embeddings", tmp / "x.npy", "--json", db=db)
    st = json.loads(out)
    assert st["n_items"] == 1500 and len(st["levels"]) == 3
    assert 0 < st["relative_error"] < 1
    assert st["n_collided"] == round(st["collided_share"] * 1500)
    assert st["n_suffixed"] == round(st["suffixed_share"] * 1500) <= st["n_collided"]
    assert st["levels"][0]["used"] + st["levels"][0]["dead"] == 8
    _, out, _ = semid("stats", db=db)  # the human table
    assert "perplexity" in out and "collided" in out and "suffixed" in out
    _, out, _ = semid("versions", "--json", db=db)
    assert [v["active"] for v in json.loads(out)] == [True]


def test_export_formats_round_trip(fitted):
    pa = pytest.importorskip("pyarrow.parquet")
    db, tmp, _ = fitted
    with SemanticIdIndex.open(db) as idx:
        want = {it.key: str(it.id) for it in idx.iter_items()}
    semid("export", tmp / "ids.jsonl", db=db)
    rows = [json.loads(line) for line in (tmp / "ids.jsonl").read_text().splitlines()]
    assert {r["key"]: r["id"] for r in rows} == want
    assert all(r["tokens"].count("<") == 4 for r in rows)
    semid("export", tmp / "ids.csv", "--no-tokens", db=db)
    assert (tmp / "ids.csv").read_text().splitlines()[0] == "key,id,level_1,level_2,level_3,suffix"
    semid("export", tmp / "ids.parquet", db=db)
    t = pa.read_table(tmp / "ids.parquet").to_pydict()
    assert dict(zip(t["key"], t["id"])) == want
    semid("export", tmp / "ids.npz", db=db)
    z = np.load(tmp / "ids.npz")
    assert {k: "-".join(map(str, r)) for k, r in zip(z["keys"].tolist(), z["ids"].tolist())} \
        == want
    semid("export", tmp / "grid.npy", "--what", "grid", db=db)
    grid = np.load(tmp / "grid.npy")
    keys = (tmp / "grid.npy.keys.txt").read_text().splitlines()
    assert grid.shape == (4, 1200)
    assert {k: "-".join(map(str, grid[:, j])) for j, k in enumerate(keys)} == want


def test_exports_stream_in_pages(fitted):
    """Paged writing gives the same files as one page (memory stays flat on big indexes)."""
    from semid_index import export as ex

    db, tmp, _ = fitted
    with SemanticIdIndex.open(db) as idx:
        for fmt in ("jsonl", "csv", "parquet", "npz"):
            if fmt == "parquet":
                pq = pytest.importorskip("pyarrow.parquet")
            a, b = tmp / f"one.{fmt}", tmp / f"many.{fmt}"
            assert ex.write_ids(a, fmt, idx.id_pages(batch=10**6)) == 1200
            assert ex.write_ids(b, fmt, idx.id_pages(batch=7)) == 1200
            if fmt == "parquet":
                assert pq.read_table(a).equals(pq.read_table(b))
            elif fmt == "npz":
                za, zb = np.load(a), np.load(b)
                assert (za["ids"] == zb["ids"]).all() and (za["keys"] == zb["keys"]).all()
            else:
                assert a.read_text() == b.read_text()
        ex.write_grid(tmp / "g1.npy", idx.id_pages(batch=10**6), 1200, 3)
        ex.write_grid(tmp / "g2.npy", idx.id_pages(batch=13), 1200, 3)
        assert (np.load(tmp / "g1.npy") == np.load(tmp / "g2.npy")).all()
        with pytest.raises(ConfigError, match="changed while it was exported"):
            ex.write_grid(tmp / "g3.npy", idx.id_pages(), 1201, 3)


def test_next_code_table_is_exact(fitted):
    """Every step in the table leads to at least one item, and every item's full ID is a path
    through it: checked by walking the exported table against the stored IDs."""
    db, tmp, _ = fitted
    semid("add", tmp / "new.npy", "--keys", tmp / "new.txt", db=db)
    semid("remove", "item-0", "item-1", db=db)  # holes too
    semid("export", tmp / "next.jsonl", "--what", "next-codes", db=db)
    table = {}
    for line in (tmp / "next.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["depth"] == len(r["prefix"]) and r["next"] == sorted(set(r["next"]))
        table[tuple(r["prefix"])] = set(r["next"])
    with SemanticIdIndex.open(db) as idx:
        full = {(*it.id.levels, it.id.suffix) for it in idx.iter_items()}
    assert len(full) == 1498
    for sid in full:  # every item is reachable
        for d in range(4):
            assert sid[d] in table[sid[:d]]
    for pre, nxt in table.items():  # every step leads somewhere
        for code in nxt:
            assert any(s[:len(pre) + 1] == (*pre, code) for s in full)
    npz = tmp / "next.npz"
    semid("export", npz, "--what", "next-codes", db=db)
    z = np.load(npz)
    for d in range(4):
        pres, off, nxt = z[f"prefixes_{d}"], z[f"offsets_{d}"], z[f"next_{d}"]
        got = {tuple(p): set(nxt[off[m]:off[m + 1]].tolist()) for m, p in enumerate(pres.tolist())}
        assert got == {p: n for p, n in table.items() if len(p) == d}


def test_next_code_table_against_brute_force():
    rng = np.random.default_rng(0)
    ids = np.unique(rng.integers(0, 3, (200, 4)), axis=0)  # sorted rows, L=3 + suffix
    got = {p: n.tolist() for p, n in next_code_table(ids)}
    want = {}
    for row in ids.tolist():
        for d in range(4):
            want.setdefault(tuple(row[:d]), set()).add(row[d])
    assert got == {p: sorted(n) for p, n in want.items()}


@pytest.mark.parametrize("args, message", [
    (["fit", "{tmp}/missing.npy", "--keys", "{tmp}/keys.txt"], "no such file"),
    (["add", "{tmp}/bad_dim.npy", "--row-numbers"], "dim=5 but the index was trained with dim=12"),
    (["add", "{tmp}/new.npy"], "no item keys"),
    (["add", "{tmp}/new.npy", "--keys", "{tmp}/keys.txt"], "1200 item keys but 300 embedding rows"),
    (["lookup", "no-such-item"], "not in index 'default'"),
    (["similar", "no-such-item"], "not in index 'default'"),
    (["prefix", "12-x"], "malformed"),
    (["prefix", "99"], "99"),
    (["remove", "item-5", "ghost"], "ghost"),
    (["--index", "nope", "stats"], "nope"),
    (["export", "{tmp}/out.txt"], "cannot tell the format"),
])
def test_bad_input_is_one_line_and_changes_nothing(fitted, args, message):
    db, tmp, _ = fitted
    before = dump_tables(db)
    args = [a.format(tmp=tmp) for a in args]
    if args[0] == "--index":
        args = args[2:] + args[:2]
    code, out, err = semid(*args, db=db, check=False)
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("semid: error: "), err
    assert message in lines[0]
    assert "Traceback" not in err
    assert dump_tables(db) == before


@pytest.mark.parametrize("url, message", [
    ("mysql://u@h/db", "unsupported database"),
    ("not a url", "not a database URL"),
    ("sqlite:////no/such/dir/x.db", "cannot open"),
])
def test_bad_urls_are_one_line(tmp_path, url, message):
    code, _, err = semid("lookup", "k", db=url, check=False)
    assert code == 1 and err.count("\n") == 1 and message in err, err


def test_drop_needs_confirmation_and_removes_only_that_index(fitted):
    db, tmp, _ = fitted
    with SemanticIdIndex.create(db, "other", n_levels=1, codebook_size=4):
        pass
    code, _, err = semid("drop", db=db, check=False)  # no terminal to ask on: refused
    assert code == 1 and "--yes" in err
    assert SemanticIdIndex.list_indexes(db) == ["default", "other"]
    semid("drop", "--yes", db=db)
    assert SemanticIdIndex.list_indexes(db) == ["other"]
    code, _, err = semid("lookup", "item-1", db=db, check=False)
    assert code == 1 and "default" in err


def test_usage_errors_exit_2(tmp_path):
    code, _, err = semid("lookup", db=f"sqlite:///{tmp_path}/x.db", check=False)
    assert code == 2 and "Missing argument" in err


def test_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'semid = "semid_index.cli:main"' in text


def test_every_command_has_help_an_example_and_a_readme_entry():
    readme = (ROOT / "README.md").read_text()
    assert cli_main.commands
    for name, cmd in cli_main.commands.items():
        assert cmd.help and len(cmd.help.strip()) > 20, name
        assert f"semid {name}" in cmd.help, f"{name}: its help shows no example"
        assert re.search(rf"`semid {name}\b", readme), f"README does not show `semid {name}`"
    code, out, _ = semid("--help")
    assert all(name in out for name in cli_main.commands)
    code, out, _ = semid("export", "--help")
    assert "--what" in out and "constrained decoding" in out


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "npz"])
def test_streamed_next_code_table_equals_the_whole_array_one(fmt, tmp_path):
    """The export reads the index page by page and spills each depth to disk: for any page
    boundaries (prefixes cut in the middle) it writes what next_code_table gives on all IDs."""
    import json

    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    for trial in range(60):
        sizes = rng.integers(1, 5, int(rng.integers(1, 4)))
        n = int(rng.integers(1, 60))
        codes = np.stack([rng.integers(0, k, n) for k in sizes], 1)
        codes = codes[np.lexsort(codes.T[::-1])]
        new = np.r_[True, (codes[1:] != codes[:-1]).any(1)]
        ids = np.c_[codes, np.arange(n) - np.flatnonzero(new)[np.cumsum(new) - 1]]
        ref = [(list(p), x.tolist()) for p, x in next_code_table(ids)]
        pages = [(None, part) for part in np.split(ids, np.sort(rng.integers(0, n + 1, 4)))]
        out = tmp_path / f"t{trial}.{fmt}"
        assert write_next_codes(out, fmt, pages) == len(ref)
        if fmt == "jsonl":
            got = [(r["prefix"], r["next"]) for r in map(json.loads, out.open())]
        elif fmt == "parquet":
            got = [(r["prefix"], r["next"]) for r in pq.read_table(out).to_pylist()]
        else:
            z = np.load(out)
            got = [(z[f"prefixes_{d}"][i].tolist(),
                    z[f"next_{d}"][z[f"offsets_{d}"][i]:z[f"offsets_{d}"][i + 1]].tolist())
                   for d in range(len(sizes) + 1) for i in range(len(z[f"prefixes_{d}"]))]
        assert got == ref, trial
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"t{t}.{fmt}" for t in range(60))  # no spill files left behind


def test_npz_exports_stream_pages_into_the_archive(tmp_path):
    """ids and prefix-ngrams .npz are written from pages through spill files: the arrays are
    those of the whole catalog, with keys of any characters, and nothing is left behind."""
    rng = np.random.default_rng(1)
    ids = np.c_[rng.integers(0, 5, (300, 3)), rng.integers(0, 3, 300)]
    keys = [f"k{i}" + ("\n\u00e9\u4e2d" if i % 7 == 0 else "") + "x" * (i % 13)
            for i in range(300)]
    pages = [(keys[a:b], ids[a:b]) for a, b in ((0, 0), (0, 111), (111, 250), (250, 300))]
    assert write_ids(tmp_path / "i.npz", "npz", pages) == 300
    z = np.load(tmp_path / "i.npz")
    assert z["keys"].tolist() == keys and (z["ids"] == ids).all()
    assert z["keys"].dtype == np.asarray(keys, dtype=str).dtype
    assert write_prefix_ngrams(tmp_path / "g.npz", pages, [5, 5, 5]) == 300
    z = np.load(tmp_path / "g.npz")
    grams, vocab = prefix_ngram_ids(ids, [5, 5, 5])
    assert z["keys"].tolist() == keys and (z["ngrams"] == grams).all()
    assert int(z["vocab_size"]) == vocab == 5 + 25 + 125
    assert write_ids(tmp_path / "e.npz", "npz", []) == 0
    assert np.load(tmp_path / "e.npz")["ids"].shape == (0, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npz", "g.npz", "i.npz"]
