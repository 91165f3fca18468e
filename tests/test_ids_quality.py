"""ID quality features checked against hand-computed or independent references:

* collision relocation (``max_per_code``), as a pure function and through the index (fit, add);
* balanced training (``balance``) and its prices surviving save/load and ``from_codebooks``;
* churn between versions, and warm-started refits;
* the exact (Lloyd-to-convergence) regime against a plain numpy k-means reference.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semid_index._relocate import full_keys, relocate


# ============================================================================ relocate()
@st.composite
def relocation_cases(draw, argmin_last: bool = True):
    n_levels = draw(st.sampled_from([2, 3]))
    sizes = [draw(st.integers(1, 5)) for _ in range(n_levels)]
    n = draw(st.integers(0, 60))
    cap = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, k, n) for k in sizes], axis=1).astype(np.int64) \
        if n else np.zeros((0, n_levels), np.int64)
    # distances from a small grid so that ties happen
    dist = rng.integers(0, 8, (n, sizes[-1])).astype(np.float64) / 2.0
    if argmin_last and n:
        codes[:, -1] = dist.argmin(axis=1)
    n_full = int(np.prod(sizes))
    occupied = {}
    for key in rng.choice(n_full, size=draw(st.integers(0, n_full)), replace=False).tolist():
        occupied[int(key)] = int(rng.integers(0, cap + 2))  # may already be over capacity
    return codes, dist, sizes, cap, occupied


def _mixed_key(code, sizes):
    key = 0
    for c, k in zip(code, sizes):
        key = key * k + int(c)
    return key


def _check_relocation(codes, dist, sizes, cap, occupied, r):
    n, k_last = codes.shape[0], sizes[-1]
    out = r.codes
    assert out.shape == codes.shape
    # (b) only the last level can change
    assert np.array_equal(out[:, :-1], codes[:, :-1])
    assert np.all((out[:, -1] >= 0) & (out[:, -1] < k_last))
    # moved flags exactly the changed items; (c) their extra error is dist[new] - dist[old]
    changed = out[:, -1] != codes[:, -1]
    assert np.array_equal(r.moved, changed)
    for i in range(n):
        if changed[i]:
            assert r.extra_error[i] == pytest.approx(dist[i, out[i, -1]] - dist[i, codes[i, -1]])
        else:
            assert r.extra_error[i] == 0.0
    assert r.n_relocated == int(changed.sum())
    assert r.relocation_error == pytest.approx(float(r.extra_error.sum()))
    # (d) an item alone on a code nobody held before keeps it
    orig_keys = [_mixed_key(c, sizes) for c in codes]
    new_count = Counter(orig_keys)
    for i, key in enumerate(orig_keys):
        if new_count[key] == 1 and occupied.get(key, 0) == 0:
            assert not changed[i], (i, key)
    # (a) capacity: totals per full code, issued + new
    total = Counter({k: v for k, v in occupied.items()})
    final_keys = [_mixed_key(c, sizes) for c in out]
    total.update(final_keys)
    for key in set(final_keys):
        if total[key] > cap:
            prefix = key // k_last
            assert all(total[prefix * k_last + c] >= cap for c in range(k_last)), \
                (key, dict(total))
    # n_over_capacity: per prefix, the new items that found no free slot
    free = defaultdict(int)
    n_new = Counter(k // k_last for k in orig_keys)
    for p in n_new:
        free[p] = sum(max(0, cap - occupied.get(p * k_last + c, 0)) for c in range(k_last))
    expected_over = sum(max(0, n_new[p] - free[p]) for p in n_new)
    assert r.n_over_capacity == expected_over
    # the number of new items per prefix is conserved (nothing leaves its prefix)
    assert Counter(k // k_last for k in final_keys) == n_new


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(relocation_cases(argmin_last=True))
def test_relocate_properties_greedy_codes(case):
    codes, dist, sizes, cap, occupied = case
    r = relocate(codes, dist, sizes, cap, occupied)
    _check_relocation(codes, dist, sizes, cap, occupied, r)
    # greedy codes are each item's nearest: moving never lowers the error
    assert np.all(r.extra_error >= 0)
    # the callable forms (lazy distances, occupied per prefix) give the same result
    def occ_fn(prefixes):
        ps = set(int(p) for p in prefixes)
        return {k: v for k, v in occupied.items() if k // sizes[-1] in ps}

    r2 = relocate(codes, lambda idx: dist[idx], sizes, cap, occ_fn)
    assert np.array_equal(r2.codes, r.codes)
    assert np.array_equal(r2.moved, r.moved)
    assert r2.n_over_capacity == r.n_over_capacity


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(relocation_cases(argmin_last=False))
def test_relocate_properties_arbitrary_codes(case):
    codes, dist, sizes, cap, occupied = case
    _check_relocation(codes, dist, sizes, cap, occupied, relocate(codes, dist, sizes, cap, occupied))


def test_relocate_no_occupied_fills_every_code_before_doubling():
    # 7 items on one prefix with 3 codes and capacity 2: 6 fit, one stays over capacity
    codes = np.array([[0, 0]] * 7)
    dist = np.array([[0.0, 1.0, 2.0]] * 7) + np.arange(7)[:, None] * 0.01
    r = relocate(codes, dist, (1, 3), 2)
    assert Counter(r.codes[:, 1].tolist()) == {0: 3, 1: 2, 2: 2}
    assert r.n_over_capacity == 1
    # the two nearest items (0, 1) keep code 0; item 6 (over) keeps it too
    assert r.codes[:2, 1].tolist() == [0, 0]
    assert full_keys(np.array([[1, 2], [0, 1]]), (2, 3)).tolist() == [5, 1]


# ============================================================================ the index
def _ids(index, keys, version=None):
    return index.lookup_many(keys, version=version)


def _per_prefix(ids):
    """level-1 prefix -> list of full codes (levels tuples)."""
    out = defaultdict(list)
    for sid in ids:
        out[sid.levels[0]].append(tuple(sid.levels))
    return out


def test_index_max_per_code_fit_and_add(db_url):
    from semid_index import SemanticIdIndex
    from semid_index.datasets import gaussian_mixture

    x = gaussian_mixture(400, 8, 6, seed=3)
    x_fit, x_add = x[:300], x[300:]
    keys = [f"a{i}" for i in range(300)]
    new_keys = [f"b{i}" for i in range(100)]
    index = SemanticIdIndex.create(db_url, "cap", n_levels=2, codebook_size=16, max_per_code=1,
                                   seed=0)
    try:
        index.fit(keys, x_fit)
        before = _ids(index, keys)
        groups = _per_prefix(before)
        # the occupancy read that relocation in add uses, against a count of the issued IDs,
        # over several statements (two prefix ranges each)
        import semid_index.storage._item_reads as item_reads

        firsts = sorted({sid.levels[:1] for sid in before})
        asked = firsts[::2]
        chunk, item_reads.RANGE_CHUNK = item_reads.RANGE_CHUNK, 2
        try:
            with index._store.read("test") as conn:
                got = index._store.reads.code_counts(conn, index._space(conn, None), asked)
        finally:
            item_reads.RANGE_CHUNK = chunk
        assert got == Counter(sid.levels for sid in before if sid.levels[:1] in set(asked))
        # the data really collides: without the cap, many items share a full code
        plain = index.model.encode(x_fit).numpy()
        assert len({tuple(c) for c in plain.tolist()}) < 300 - 20
        for p, codes in groups.items():
            # every code under a prefix is used before any is shared
            assert len(set(codes)) == min(len(codes), 16), (p, codes)
            if len(codes) <= 16:
                assert len(set(codes)) == len(codes)
        # issued suffixes are 0..m-1 per full code
        by_code = defaultdict(list)
        for sid in before:
            by_code[sid.levels].append(sid.suffix)
        for sufs in by_code.values():
            assert sorted(sufs) == list(range(len(sufs)))

        added = index.add(new_keys, x_add)
        # (i) every issued ID is unchanged
        assert _ids(index, keys) == before
        assert _ids(index, new_keys) == added
        # (ii) new items fill free codes of their prefix before doubling up
        after = _per_prefix(before + added)
        for p, codes in after.items():
            assert len(set(codes)) == min(len(codes), 16), (p, Counter(codes))
        # all live IDs are distinct
        assert len(set(before + added)) == 400
    finally:
        index.close()


# ============================================================================ balanced training
def _power_law_mixture(n=1000, d=8, n_clusters=30, skew=1.5, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, d)) * 4.0
    w = 1.0 / np.arange(1, n_clusters + 1) ** skew
    labels = rng.choice(n_clusters, size=n, p=w / w.sum())
    return (centers[labels] + rng.standard_normal((n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def skewed():
    # 1000 rows: a balanced fit costs ~5 s on 2 cores (the price auction is per Lloyd step)
    return _power_law_mixture()


def test_balanced_codes_are_near_uniform(skewed, tmp_path):
    from semid_index.quantize import ResidualKMeans

    x = skewed
    n, k = x.shape[0], 16
    plain = ResidualKMeans(2, k, seed=0).fit(x)
    sizes_plain = np.bincount(plain.encode(x)[:, 0].numpy(), minlength=k)
    assert sizes_plain.max() > 1.5 * n / k, sizes_plain  # the set really is skewed

    model = ResidualKMeans(2, k, balance=0.1, seed=0).fit(x)
    codes = model.encode(x).numpy()
    sizes1 = np.bincount(codes[:, 0], minlength=k)
    # the documented bound: every code within (1 +- (balance + 0.1)) of the even share n / k
    assert sizes1.min() >= 0.8 * n / k, sizes1
    assert sizes1.max() <= 1.2 * n / k, sizes1
    assert sizes1.max() < sizes_plain.max()

    prices = model.get_prices()
    assert prices is not None
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = ResidualKMeans.load(path)
    assert np.array_equal(loaded.encode(x).numpy(), codes)
    rebuilt = ResidualKMeans.from_codebooks(model.get_codebooks(), prices=prices)
    assert np.array_equal(rebuilt.encode(x).numpy(), codes)
    # without the prices, encoding is plain nearest-centroid and differs on this skewed set
    unpriced = ResidualKMeans.from_codebooks(model.get_codebooks())
    assert not np.array_equal(unpriced.encode(x).numpy(), codes)


def test_the_price_auction_never_starves_a_code():
    """A code far from every row, beside one that every row prefers: raising the prices of the
    over-full codes first would leave it empty round after round (it once did, for all 40
    rounds); it gets its share within a few rounds."""
    import torch

    from semid_index.quantize._balance import balanced_prices

    g = torch.Generator().manual_seed(0)
    s = torch.rand(4000, 8, generator=g)
    s[:, 0] -= 0.5      # every row's best code
    s[:, 7] += 1000.0   # no row's: it must be priced in
    for rounds in (8, 40):
        _, lab = balanced_prices(s, None, 1, slack=0.1, max_rounds=rounds)
        sizes = np.bincount(lab.numpy(), minlength=8)
        assert sizes.min() >= 0.9 * 500 - 10 and sizes.max() <= 1.1 * 500 + 11, (rounds, sizes)


def test_balanced_training_with_outliers_exact_and_on_sampled_prices(skewed, monkeypatch):
    """A skewed set with a few far outliers: balanced training keeps every code of both levels
    within (1 +- 0.5) of its share, whether the prices are solved on every row or on a sample
    (64 rows per code here; the default sample is 2^27 / K rows), and the sampled fit's
    error is close to the exact one's. (Codes once starved beside the outliers: 1-4 items,
    and the exact fit's error was 9x the sampled one's.)"""
    from semid_index.quantize import ResidualKMeans, _lloyd

    x = np.concatenate([skewed, skewed[:50] * 6.0])
    k = 16
    errors = []
    for price_floats in (_lloyd.PRICE_FLOATS, 64 * k * k):
        monkeypatch.setattr(_lloyd, "PRICE_FLOATS", price_floats)
        model = ResidualKMeans(2, k, balance=0.1, seed=0).fit(x)
        codes = model.encode(x)
        for lv in range(2):
            sizes = np.bincount(codes[:, lv].numpy(), minlength=k)
            assert sizes.min() > 0.5 * len(x) / k and sizes.max() < 1.5 * len(x) / k, \
                (price_floats, lv, sizes)
        errors.append(float(((x - model.decode(codes).numpy()) ** 2).sum()))
    assert errors[1] < 1.25 * errors[0] and errors[0] < 1.25 * errors[1], errors


def test_max_per_code_training_leaves_room_for_every_item(tmp_path):
    """With max_per_code, training caps every level-1 code at c K2 K3 items and every 2-level
    prefix at c K3, so relocation finds a free full code for every item when the catalog fits
    the code space; without it, dense prefixes overflow and their items collide."""
    from semid_index import SemanticIdIndex
    from semid_index.quantize import ResidualKMeans

    x = _power_law_mixture(n=400, d=8, n_clusters=12, skew=2.0, seed=1)
    k = 8  # 512 full codes for 400 items; 8 per 2-level prefix, 64 per level-1 code

    def relocated(model):
        codes = model.encode(x).numpy()
        return codes, relocate(codes, lambda idx: model.level_distances(
            x[idx], codes[idx]).numpy(), [k] * 3, max_per_code=1).codes

    _, plain = relocated(ResidualKMeans(3, k, seed=0).fit(x))
    assert len(full_keys(plain, [k] * 3).tolist()) - len(set(full_keys(plain, [k] * 3).tolist())) > 0

    greedy, codes = relocated(ResidualKMeans(3, k, seed=0, max_per_code=1).fit(x))
    assert np.bincount(greedy[:, 0], minlength=k).max() <= k * k
    assert np.bincount(greedy[:, 0] * k + greedy[:, 1], minlength=k * k).max() <= k
    assert len(set(full_keys(codes, [k] * 3).tolist())) == len(x)  # no two items share a code

    # where no prefix would overflow, the cap changes nothing: the default fit, bit for bit
    from semid_index.datasets import gaussian_mixture

    y = gaussian_mixture(4000, 8, 6, seed=2)  # 32,768 full codes, at most ~30 per prefix
    sizes = [8, 64, 64]
    for a, b in zip(ResidualKMeans(3, sizes, seed=0).fit(y).get_codebooks(),
                    ResidualKMeans(3, sizes, seed=0, max_per_code=1).fit(y).get_codebooks()):
        assert np.array_equal(a, b)

    # the index passes max_per_code to training: no collided item either
    url = f"sqlite:///{tmp_path}/cap.db"
    keys = [f"i{i}" for i in range(len(x))]
    with SemanticIdIndex.create(url, "cap", n_levels=3, codebook_size=k, max_per_code=1) as index:
        index.fit(keys, x)
        assert index.stats().n_collided == 0
        assert index.model.max_per_code == 1


def test_an_index_keeps_its_prices_beside_the_codebooks(db_url, skewed):
    """A balanced version's prices are stored as checked blobs beside each level's codebook (not
    in the JSON header) and come back with the model; a version written the old way (prices in
    the header) still loads; a damaged price blob is refused."""
    import base64
    import json

    from sqlalchemy import update

    from semid_index import SemanticIdIndex
    from semid_index.errors import CorruptBlobError
    from semid_index.quantize import ResidualKMeans
    from semid_index.storage import encode_array
    from semid_index.storage._schema import codebooks, versions

    x = skewed
    keys = [f"i{i}" for i in range(len(x))]
    reference = ResidualKMeans(2, 16, balance=[None, 0.5], seed=0).fit(x)
    want = reference.get_prices()
    with SemanticIdIndex.create(db_url, "priced", n_levels=2, codebook_size=16, seed=0,
                                balance=[None, 0.5]) as index:
        index.fit(keys, x)
        rec = index._record
        with index._store.read() as conn:
            header = index._store.catalog.header(conn, rec, 1)
        assert "prices" not in header
    with SemanticIdIndex.open(db_url, "priced") as index:
        got = index.model.get_prices()
        assert got is not None and len(got) == 2
        for a, b in zip(got, want):
            assert np.array_equal(a, b)
        assert np.array_equal(index.encode(x), reference.encode(x).numpy())
        ids = index.lookup_many(keys)

        store = index._store
        with store.write() as conn:  # the layout of versions written before schema 0003
            conn.execute(update(versions).where(versions.c.index_id == rec.id).values(
                header=json.dumps({**header, "prices": [
                    base64.b64encode(encode_array(p)).decode("ascii") for p in want]})))
            conn.execute(update(codebooks).where(codebooks.c.index_id == rec.id)
                         .values(prices=None))
        index._model_cache = None
        for a, b in zip(index.model.get_prices(), want):
            assert np.array_equal(a, b)

        with store.write() as conn:  # one level's blob altered, the other gone
            conn.execute(update(codebooks).where(codebooks.c.index_id == rec.id,
                                                 codebooks.c.level == 1)
                         .values(prices=b"not a blob"))
        index._model_cache = None
        with pytest.raises(CorruptBlobError, match="prices"):
            index.model
        with pytest.raises(CorruptBlobError, match="prices"):
            index.activate(1)
        assert index.lookup_many(keys) == ids  # reads that need no model still work


# ============================================================================ churn / warm start
def _hand_churn(a, b, n_levels):
    changed = np.zeros(n_levels)
    for ia, ib in zip(a, b):
        for lv in range(n_levels):
            if ia.levels[lv] != ib.levels[lv]:
                changed[lv:] += 1
                break
    return (changed / len(a)).tolist()


def test_churn_and_warm_start(db_url):
    from semid_index import SemanticIdIndex
    from semid_index.datasets import gaussian_mixture
    from semid_index.quantize import ResidualKMeans

    x = gaussian_mixture(1500, 12, 40, seed=5)
    keys = [f"k{i}" for i in range(len(x))]
    index = SemanticIdIndex.create(db_url, "churn", n_levels=2, codebook_size=16, seed=0)
    try:
        index.fit(keys, x)
        v1 = index.active_version
        same = index.churn(v1, v1)
        assert same["churn"] == [0.0, 0.0]
        assert same["n_common"] == len(keys) and same["n_only_old"] == same["n_only_new"] == 0

        index.fit(keys, x, warm_start=True)
        v2 = index.active_version
        warm = index.churn(v1, v2)
        assert warm["churn"] == pytest.approx(
            _hand_churn(_ids(index, keys, v1), _ids(index, keys, v2), 2))
        assert warm["churn"][0] < 0.05, warm

        cold_model = ResidualKMeans(2, 16, seed=7).fit(x)
        index.fit(keys, x, model=cold_model)
        v3 = index.active_version
        cold = index.churn(v1, v3)
        assert cold["churn"] == pytest.approx(
            _hand_churn(_ids(index, keys, v1), _ids(index, keys, v3), 2))
        assert cold["churn"][0] > warm["churn"][0]
        assert all(a <= b for a, b in zip(cold["churn"], cold["churn"][1:]))

        # items only in one version are counted apart
        index.fit(keys[:1000] + [f"z{i}" for i in range(50)],
                  np.concatenate([x[:1000], x[:50] + 0.01]))
        v4 = index.active_version
        part = index.churn(v1, v4)
        assert (part["n_common"], part["n_only_old"], part["n_only_new"]) == (1000, 500, 50)
        assert part["churn"] == pytest.approx(
            _hand_churn(_ids(index, keys[:1000], v1), _ids(index, keys[:1000], v4), 2))
    finally:
        index.close()


# ============================================================================ exact regime
def _numpy_kmeans(x, k, rng, iters=300):
    n = x.shape[0]
    c = np.empty((k, x.shape[1]))
    c[0] = x[rng.integers(n)]
    d2 = ((x - c[0]) ** 2).sum(1)
    for j in range(1, k):
        c[j] = x[rng.choice(n, p=d2 / d2.sum())]
        d2 = np.minimum(d2, ((x - c[j]) ** 2).sum(1))
    xx = (x ** 2).sum(1)[:, None]
    for _ in range(iters):
        dist = xx - 2 * x @ c.T + (c ** 2).sum(1)[None]
        lab = dist.argmin(1)
        new = c.copy()
        for j in range(k):
            m = lab == j
            if m.any():
                new[j] = x[m].mean(0)
        if np.allclose(new, c):
            break
        c = new
    dist = xx - 2 * x @ c.T + (c ** 2).sum(1)[None]
    return float(np.maximum(dist.min(1), 0).sum())


def test_exact_regime_matches_numpy_lloyd():
    from semid_index.datasets import gaussian_mixture
    from semid_index.quantize import ResidualKMeans

    x = gaussian_mixture(2000, 16, 24, seed=11)
    x64 = x.astype(np.float64)
    rng = np.random.default_rng(0)
    ref = [_numpy_kmeans(x64, 16, rng) for _ in range(5)]
    ours = []
    for seed in range(5):
        model = ResidualKMeans(1, 16, seed=seed).fit(x)
        assert model.history_[0].steps == 0  # exact regime: no mini-batch phase
        labels = model.encode(x).numpy()[:, 0]
        centroids = model.get_codebooks()[0].astype(np.float64)
        # a Lloyd fixed point: every centroid is the mean of the rows it holds, none is empty
        assert np.bincount(labels, minlength=16).min() > 0
        means = np.stack([x64[labels == j].mean(0) for j in range(16)])
        assert np.abs(means - centroids).max() < 1e-3
        recon = model.decode(model.encode(x)).numpy().astype(np.float64)
        ours.append(float(((x64 - recon) ** 2).sum()))
    # one seed is one k-means++ start: it lands on a local optimum like one numpy run does
    # (seed 0 is ~4% above the best of 5 numpy runs here), so compare like with like: best of 5
    # seeds against best of 5 reference runs, and a single seed against the reference median
    assert min(ours) <= min(ref) * 1.005, (ours, ref)
    assert ours[0] <= float(np.median(ref)) * 1.005, (ours, ref)


def test_an_existing_index_keeps_its_id_policy(tmp_path):
    """create(exist_ok=True) refuses to pretend another capacity or balance applies."""
    from semid_index import SemanticIdIndex
    from semid_index.errors import ConfigError

    url = f"sqlite:///{tmp_path}/p.db"
    SemanticIdIndex.create(url, "p", n_levels=2, codebook_size=4, max_per_code=1).close()
    SemanticIdIndex.create(url, "p", n_levels=2, codebook_size=4, exist_ok=True,
                           max_per_code=1).close()
    SemanticIdIndex.create(url, "p", n_levels=2, codebook_size=4, exist_ok=True).close()
    for opts in ({"max_per_code": 2}, {"balance": 0.1}):
        with pytest.raises(ConfigError, match=next(iter(opts))):
            SemanticIdIndex.create(url, "p", n_levels=2, codebook_size=4, exist_ok=True, **opts)
