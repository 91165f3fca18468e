"""SQLite's WAL is checkpointed by a background thread (storage/_wal.py)."""

import sqlite3


from semid_index import SemanticIdIndex

from conftest import gaussian_mixture


def rows_in_main_file(path) -> int:
    """Items in the database file itself, ignoring the WAL (``immutable=1`` never reads it):
    what checkpoints have copied so far."""
    con = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return con.execute("SELECT count(*) FROM semid_items").fetchone()[0]
    except sqlite3.OperationalError:  # the schema itself is still only in the WAL
        return 0
    finally:
        con.close()


def fitted(path, n=2000, soft=1000):
    x, _ = gaussian_mixture(n + 4000, 8, 20, seed=3)
    idx = SemanticIdIndex.create(f"sqlite:///{path}", "wal", n_levels=2, codebook_size=8)
    idx._store.wal.soft_changes = soft
    idx.fit([f"k{i}" for i in range(n)], x[:n], progress=False)
    idx._store.wal.wait()
    return idx, x


def test_commits_are_checkpointed_in_the_background(tmp_path):
    path = tmp_path / "wal.db"
    idx, x = fitted(path)
    for b in range(10):
        a = 2000 + 300 * b
        idx.add([f"k{i}" for i in range(a, a + 300)], x[a:a + 300])
    idx._store.wal.wait()
    wal = idx._store.wal
    assert wal.passes >= 2  # the fit, then at least one for the 3,000 rows the adds changed
    # far below SQLite's own 50,000-page trigger, yet the rows reached the database file: all
    # but those changed since the last pass began (< soft_changes)
    assert 5000 - wal.soft_changes <= rows_in_main_file(path) <= 5000
    thread = wal._thread
    idx.close()
    assert not thread.is_alive()
    again = SemanticIdIndex.open(f"sqlite:///{path}", "wal")
    assert again.count(()) == 5000
    again.close()


def test_each_connection_counts_its_own_changes(tmp_path):
    """Writers on different pooled connections (threads) all count towards the next pass."""
    import threading

    path = tmp_path / "wal.db"
    idx, x = fitted(path, soft=1500)
    wal = idx._store.wal
    passes = wal.passes

    def add(a):
        idx.add([f"t{i}" for i in range(a, a + 400)], x[a:a + 400])

    threads = [threading.Thread(target=add, args=(2000 + 400 * t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wal.wait()
    assert wal.passes == passes + 1  # 1,600 changed rows from four writers: one pass
    ids = idx.lookup_many([f"k{i}" for i in range(2000)] + [f"t{i}" for i in range(2000, 3600)])
    assert len(set(map(str, ids))) == 3600
    idx.close()


def wal_frames(path) -> int:
    """Frames in the WAL now (a passive checkpoint reports them; it copies, never rewinds)."""
    con = sqlite3.connect(str(path), timeout=0, isolation_level=None)
    try:
        return con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    finally:
        con.close()


def test_wal_rewinds_when_writes_pause(tmp_path):
    """A pass that saw no commit ends with a RESTART: the next commit writes from the WAL's
    start, so the WAL holds only that commit's pages."""
    path = tmp_path / "wal.db"
    idx, x = fitted(path, soft=1000)
    wal = idx._store.wal
    wal.rewind_frames = 10 ** 9  # only the idle rule may rewind
    rewinds = wal.rewinds
    for b in range(4):  # 1,200 rows: the fourth add starts a pass, and nothing follows it
        a = 2000 + 300 * b
        idx.add([f"k{i}" for i in range(a, a + 300)], x[a:a + 300])
    wal.wait()
    assert wal.rewinds == rewinds + 1
    before = wal_frames(path)
    idx.add(["one more"], x[5000:5001])
    assert wal_frames(path) < 20 < before  # one small commit, at the start of the WAL
    idx.close()


def test_busy_wal_rewinds_only_past_rewind_frames(tmp_path):
    """While commits keep coming, a pass ends with a RESTART only once the WAL holds
    ``rewind_frames`` frames."""
    path = tmp_path / "wal.db"
    idx, x = fitted(path, soft=10 ** 9)  # no background passes: they are run by hand below
    wal = idx._store.wal
    for b in range(3):
        a = 2000 + 300 * b
        idx.add([f"k{i}" for i in range(a, a + 300)], x[a:a + 300])
    con = sqlite3.connect(str(path), timeout=0, isolation_level=None)
    frames = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    wal.rewind_frames = frames + 1
    wal._changes = 1  # as if a commit had come during the pass
    wal._pass(con)
    assert wal.rewinds == 0
    wal.rewind_frames = frames
    wal._pass(con)
    assert wal.rewinds == 1
    con.close()
    idx.close()
