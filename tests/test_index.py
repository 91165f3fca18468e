"""SemanticIdIndex behaviour on a real SQLite file and a real PostgreSQL database."""

from collections import Counter

import numpy as np
import pytest

from semid_index import SemanticId, SemanticIdIndex
from semid_index.errors import (ConfigError, DimensionMismatchError, DuplicateKeyError,
                                EmptyInputError, IndexExistsError, IndexNotFoundError,
                                InvalidCodesError, ItemConflictError, NonFiniteError,
                                NotFittedError, StoreClosedError, TooFewItemsError,
                                UnknownItemError, VersionNotFoundError)

from conftest import dump_tables, gaussian_mixture

N, D = 3000, 16
SIZES = [8, 8, 4]  # 256 codes for 3000 items: plenty of collisions


@pytest.fixture(scope="module")
def data():
    x, _ = gaussian_mixture(N + 500, D, 30, seed=3)
    keys = [f"sku-{i:05d}" for i in range(N + 500)]
    return keys, x


@pytest.fixture
def index(db_url, data):
    keys, x = data
    idx = SemanticIdIndex.create(db_url, "catalog", n_levels=3, codebook_size=SIZES, seed=7)
    idx.fit(keys[:N], x[:N])
    yield idx
    idx.close()


def expected_ids(codes: np.ndarray) -> list[tuple]:
    """Reference IDs: codes plus the rank of each item among equal codes, in input order."""
    seen: dict[tuple, int] = {}
    out = []
    for row in map(tuple, codes.tolist()):
        out.append((row, seen.get(row, 0)))
        seen[row] = seen.get(row, 0) + 1
    return out


def test_fit_assigns_codes_and_collision_suffixes(index, data):
    keys, x = data
    codes = index.encode(x[:N])
    assert codes.shape == (N, 3) and codes.dtype == np.int64
    got = index.lookup_many(keys[:N])
    want = expected_ids(codes)
    assert [(s.levels, s.suffix) for s in got] == want
    assert len({str(s) for s in got}) == N  # full IDs unique
    st = index.stats()
    assert st.n_items == N and st.version == 1 and st.n_versions == 1
    assert st.n_distinct_codes == len({w[0] for w in want})
    assert st.n_suffixed == sum(1 for w in want if w[1] > 0)
    sizes = Counter(w[0] for w in want)
    assert st.n_collided == sum(n for n in sizes.values() if n > 1)
    assert st.largest_group == max(sizes.values())
    assert st.collided_share == st.n_collided / N and st.suffixed_share == st.n_suffixed / N
    assert st.max_suffix == max(w[1] for w in want)
    assert st.prefixes_per_level[0] == len({w[0][:1] for w in want})
    assert st.dim == D and index.dim == D


def test_prefix_queries_match_a_brute_force_filter(index, data):
    keys, x = data
    ids = dict(zip(keys[:N], index.lookup_many(keys[:N])))
    rng = np.random.default_rng(0)
    for depth in (1, 2, 3):
        for key in rng.choice(keys[:N], 5, replace=False):
            pre = ids[key].prefix(depth)
            want = sorted((sid.levels, sid.suffix, k) for k, sid in ids.items()
                          if sid.levels[:depth] == pre)
            got, cursor, pages = [], None, 0
            while True:  # walk every page
                page = index.items_with_prefix(pre, limit=7, cursor=cursor)
                got += [(it.id.levels, it.id.suffix, it.key) for it in page]
                pages += 1
                cursor = page.cursor
                if cursor is None:
                    break
            assert got == want
            assert pages == max(1, -(-len(want) // 7))
            assert index.count(pre) == len(want)
            # the other spellings of a prefix
            assert index.items_with_prefix("-".join(map(str, pre)), limit=3).keys == \
                [w[2] for w in want[:3]]
    assert index.count() == N
    counts = index.child_counts(())
    assert sum(counts.values()) == N
    assert counts == {c: sum(1 for s in ids.values() if s.levels[0] == c)
                      for c in {s.levels[0] for s in ids.values()}}


def test_similar_orders_by_shared_prefix_depth(index, data):
    keys, _ = data
    ids = dict(zip(keys[:N], index.lookup_many(keys[:N])))
    key = keys[11]
    me = ids[key]
    full = {k for k, s in ids.items() if s.levels == me.levels and k != key}
    limit = len(full) + 30
    res = index.similar(key, limit=limit)
    assert key not in [r.key for r in res]
    assert len(res) == limit
    depths = [r.shared_levels for r in res]
    assert depths == sorted(depths, reverse=True)
    for r in res:  # shared_levels is the true longest common prefix
        common = 0
        while common < 3 and r.id.levels[common] == me.levels[common]:
            common += 1
        assert common == r.shared_levels
    # everything sharing all 3 levels comes before anything else, and all of it is there
    assert {r.key for r in res[:len(full)]} == full


def test_add_keeps_issued_ids_and_continues_suffixes(index, data):
    keys, x = data
    before = index.lookup_many(keys[:N])
    new = index.add(keys[N:], x[N:])
    assert index.lookup_many(keys[:N]) == before
    codes = index.encode(x[N:])
    assert [s.levels for s in new] == [tuple(c) for c in codes.tolist()]
    # suffixes continue after the ones already issued for the same codes
    used = {}
    for s in before:
        used[s.levels] = max(used.get(s.levels, -1), s.suffix)
    for s in new:
        assert s.suffix == used.get(s.levels, -1) + 1
        used[s.levels] = s.suffix
    assert index.lookup_many(keys[N:]) == new
    assert index.count() == N + 500


def test_readd_same_embedding_returns_id_changed_embedding_conflicts(index, data):
    keys, x = data
    sid = index.lookup(keys[5])
    assert index.add([keys[5]], x[5:6]) == [sid]
    state = dump_tables(index_url(index))
    far = x[5:6] + 50.0
    with pytest.raises(ItemConflictError, match=keys[5]):
        index.add([keys[5]], far)
    assert dump_tables(index_url(index)) == state
    assert index.add([keys[5]], far, on_conflict="keep") == [sid]
    new = index.add([keys[5]], far, on_conflict="reassign")[0]
    assert new != sid and index.lookup(keys[5]) == new
    # the old ID is retired: an item with the old codes gets a fresh suffix
    again = index.add(["another"], x[5:6])[0]
    assert again.levels == sid.levels and again != sid
    # reassigning to the same codes keeps the ID
    nudged = x[6:7] * (1 + 1e-6)
    assert index.encode(nudged).tolist() == index.encode(x[6:7]).tolist()
    assert index.add([keys[6]], nudged, on_conflict="reassign") == [index.lookup(keys[6])]


def test_batch_mixing_new_and_existing_keys(index, data):
    """One add holding keys already indexed (same embedding, changed with 'keep' / 'reassign')
    between new keys of the same codes: existing IDs come back unchanged, the new items get the
    next suffixes of their codes in input order, and no suffix is skipped."""
    keys, x = data
    old = index.lookup_many(keys[:3])
    twins = [f"twin-{i}" for i in range(4)]  # new items with the codes of keys[0] and keys[1]
    batch = [twins[0], keys[0], twins[1], keys[1], twins[2], keys[2], twins[3]]
    emb = np.stack([x[0], x[0], x[1], x[1] + 50.0, x[0], x[2], x[1]])
    with pytest.raises(ItemConflictError, match=keys[1]):
        index.add(batch, emb)
    kept = index.add(batch, emb, on_conflict="keep")
    assert [kept[1], kept[3], kept[5]] == old
    for t, src in zip((0, 2, 4, 6), (0, 1, 0, 1)):
        assert kept[t].levels == old[src].levels
    for levels in {old[0].levels, old[1].levels}:
        page = index.items_with_prefix(levels, limit=N)
        group = [item.id.suffix for item in page]
        assert group == list(range(len(group)))  # dense: nothing skipped for the existing keys
    assert kept[4].suffix == kept[0].suffix + 1 and kept[6].suffix == kept[2].suffix + 1
    # the changed embedding again, now reassigned: keys[1] leaves its ID, the rest stay
    again = index.add(batch, emb, on_conflict="reassign")
    assert again[1] == old[0] and again[5] == old[2]
    assert [again[i] for i in (0, 2, 4, 6)] == [kept[i] for i in (0, 2, 4, 6)]
    assert again[3] != old[1] and index.lookup(keys[1]) == again[3]


def test_a_large_add_runs_suffixes_on_across_statements_and_takes_back_a_late_conflict(db_url):
    """An add larger than one INSERT statement (5,000 rows on PostgreSQL) onto 4 full codes:
    every code's new suffixes follow its issued ones densely, in input order, across the
    statements. A later add whose key 10,500 is already indexed writes nothing twice: the rows
    inserted before that key is met are taken back, and the add then gives every row its ID
    (or, for a changed embedding, raises and leaves the database as it was)."""
    x, _ = gaussian_mixture(23_100, 8, 4, seed=5)
    with SemanticIdIndex.create(db_url, "big-add", n_levels=2, codebook_size=2, seed=0) as idx:
        idx.fit([f"f{i}" for i in range(100)], x[:100])
        issued = Counter(s.levels for s in idx.lookup_many([f"f{i}" for i in range(100)]))
        new = idx.add([f"a{i}" for i in range(12_000)], x[100:12_100])
        codes = [tuple(c) for c in idx.encode(x[100:12_100]).tolist()]
        assert [s.levels for s in new] == codes
        assert [s.suffix for s in new] == [v - 1 for v in _running_counts(codes, issued)]
        assert len(set(new)) == 12_000 and idx.count() == 12_100

        keys = [f"b{i}" for i in range(11_000)]
        emb = x[12_100:23_100].copy()
        keys[10_500], emb[10_500] = "a7", x[107]  # already indexed, same embedding
        state = dump_tables(index_url(idx))
        moved = emb.copy()
        moved[10_500] += 10.0
        with pytest.raises(ItemConflictError, match="a7"):
            idx.add(keys, moved)
        assert dump_tables(index_url(idx)) == state
        got = idx.add(keys, emb)
        assert got[10_500] == new[7] and idx.count() == 12_100 + 10_999
        codes = [tuple(c) for c in idx.encode(emb).tolist()]
        fresh = [i for i in range(11_000) if i != 10_500]
        issued.update(s.levels for s in new)
        want = _running_counts([codes[i] for i in fresh], issued)
        assert [got[i].suffix for i in fresh] == [v - 1 for v in want]


def _running_counts(codes: list[tuple], start: Counter) -> list[int]:
    """For each row, how many items of its code there are up to and including it."""
    seen = Counter(start)
    out = []
    for c in codes:
        seen[c] += 1
        out.append(seen[c])
    return out


def index_url(index):
    return index._store.engine.url.render_as_string(hide_password=False)


def test_remove_retires_ids(index, data):
    keys, x = data
    sid = index.lookup(keys[0])
    assert index.remove([keys[0], keys[1]]) == 2
    with pytest.raises(UnknownItemError, match=keys[0]):
        index.lookup(keys[0])
    assert index.lookup_many([keys[0], keys[2]], missing="skip")[0] is None
    state = dump_tables(index_url(index))
    with pytest.raises(UnknownItemError, match="nope"):
        index.remove([keys[3], "nope"])
    assert dump_tables(index_url(index)) == state  # nothing removed
    assert index.remove(["nope"], missing="skip") == 0
    back = index.add([keys[0]], x[:1])[0]  # same embedding, same codes: a new suffix
    assert back.levels == sid.levels and back.suffix != sid.suffix
    assert index.stats().n_retired == 2
    assert index.count() == N - 1


def test_refit_writes_a_new_version_and_maps_ids(index, data):
    keys, x = data
    v1 = {k: s for k, s in zip(keys[:N], index.lookup_many(keys[:N]))}
    index.fit(keys[100:N + 200], x[100:N + 200] * 2.0)
    vs = index.versions()
    assert [v.version for v in vs] == [1, 2] and [v.active for v in vs] == [False, True]
    assert index.active_version == 2 and index.count() == N + 100
    assert index.lookup(keys[0], version=1) == v1[keys[0]]  # old mapping readable
    assert index.count(version=1) == N
    changes = {c.key: c for c in index.id_map(1, 2)}
    assert len(changes) == N + 200
    assert changes[keys[0]].new is None and changes[keys[0]].old == v1[keys[0]]
    assert changes[keys[N + 1]].old is None
    assert changes[keys[500]].old == v1[keys[500]]
    assert changes[keys[500]].new == index.lookup(keys[500])
    index.activate(1)
    assert index.lookup(keys[0]) == v1[keys[0]] and index.count() == N
    with pytest.raises(VersionNotFoundError, match="no version 9"):
        index.activate(9)


def test_open_reads_the_same_index(index, data, db_url):
    keys, _ = data
    sid = index.lookup(keys[42])
    with SemanticIdIndex.open(db_url, "catalog") as again:
        assert again.lookup(keys[42]) == sid
        assert again.codebook_sizes == tuple(SIZES)
    assert SemanticIdIndex.list_indexes(db_url) == ["catalog"]
    with pytest.raises(IndexNotFoundError, match="no index named 'other'"):
        SemanticIdIndex.open(db_url, "other")
    with pytest.raises(IndexExistsError, match="catalog"):
        SemanticIdIndex.create(db_url, "catalog")
    with SemanticIdIndex.create(db_url, "catalog", codebook_size=SIZES, exist_ok=True) as same:
        assert same.lookup(keys[42]) == sid
    SemanticIdIndex.drop(db_url, "catalog")
    assert SemanticIdIndex.list_indexes(db_url) == []


def test_same_seed_same_ids(db_url, data):
    keys, x = data
    runs = []
    for name in ("a", "b"):
        with SemanticIdIndex.create(db_url, name, codebook_size=SIZES, seed=3) as idx:
            idx.fit(keys[:N], x[:N])
            runs.append([str(s) for s in idx.lookup_many(keys[:N])])
    assert runs[0] == runs[1]


def test_bad_input_names_the_problem_and_changes_nothing(index, data, db_url):
    keys, x = data
    state = dump_tables(db_url)
    with pytest.raises(DimensionMismatchError, match="dim=15 but the index was trained with dim=16"):
        index.add(["a"], x[:1, :15])
    bad = x[N:N + 10].copy()
    bad[7, 3] = np.nan
    with pytest.raises(NonFiniteError, match=keys[N + 7]):
        index.add(keys[N:N + 10], bad)
    with pytest.raises(DuplicateKeyError, match="'x'"):
        index.add(["x", "y", "x"], x[:3])
    with pytest.raises(EmptyInputError):
        index.add([], x[:0])
    with pytest.raises(DimensionMismatchError, match="2 item keys but 3 embedding rows"):
        index.add(["p", "q"], x[:3])
    with pytest.raises(ConfigError, match="key #1"):
        index.add(["p", None], x[:2])
    with pytest.raises(ConfigError, match="on_conflict"):
        index.add(["p"], x[:1], on_conflict="maybe")
    with pytest.raises(UnknownItemError, match="'ghost'"):
        index.lookup("ghost")
    with pytest.raises(InvalidCodesError, match="level-2 code 9 is outside 0..7"):
        index.items_with_prefix((1, 9))
    with pytest.raises(InvalidCodesError, match="depth must be in 1..3"):
        index.items_with_prefix((1, 2, 3, 0))
    with pytest.raises(TooFewItemsError):
        with SemanticIdIndex.create(db_url, "tiny", codebook_size=SIZES) as tiny:
            tiny.fit(keys[:5], x[:5])
    with pytest.raises(NotFittedError, match="call fit"):
        with SemanticIdIndex.open(db_url, "tiny") as tiny:
            tiny.lookup("a")
    SemanticIdIndex.drop(db_url, "tiny")
    assert dump_tables(db_url) == state
    index.close()
    with pytest.raises(StoreClosedError, match="closed"):
        index.lookup(keys[0])


def test_fit_with_nan_names_the_item_and_writes_nothing(index, data, db_url):
    keys, x = data
    state = dump_tables(db_url)
    bad = x[:N].copy()
    bad[N - 3, 0] = np.inf
    with pytest.raises(NonFiniteError, match=keys[N - 3]):
        index.fit(keys[:N], bad)
    assert dump_tables(db_url) == state


def test_unknown_options_and_hierarchy_are_rejected(db_url):
    with pytest.raises(ConfigError, match="unknown option"):
        SemanticIdIndex.create(db_url, "x", learning_rate=1)
    with pytest.raises(ConfigError, match="3 entries for 2 levels"):
        SemanticIdIndex.create(db_url, "x", n_levels=2, codebook_size=[4, 4, 4])


def test_semantic_id_tokens_round_trip(index, data):
    keys, _ = data
    sid = index.lookup(keys[9])
    assert SemanticId.parse(str(sid), 3) == sid
    assert sid.tokens().count("<") == 4
