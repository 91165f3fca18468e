"""The single-level k-means pieces: distances, seeding, the running-mean update, reassignment."""

import numpy as np
import pytest
import torch

from semid_index.quantize import (get_gemm_backend, kmeans_plusplus, mkldnn_available,
                                  set_gemm_backend)
from semid_index.quantize._kernels import Codebook, Encoder, sq_dists
from semid_index.quantize._kmeans import KMeansLevel
from semid_index.quantize._lloyd import lloyd

from conftest import gaussian_mixture


def test_sq_dists_matches_broadcast_form():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(300, 17, generator=g), torch.randn(23, 17, generator=g)
    ref = ((x[:, None, :].double() - c[None].double()) ** 2).sum(-1)
    assert torch.allclose(sq_dists(x, c).double(), ref, rtol=1e-4, atol=1e-3)


def test_nearest_matches_brute_force_in_blocks(monkeypatch):
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(5000, 8, generator=g), torch.randn(64, 8, generator=g)
    monkeypatch.setattr("semid_index.quantize._kernels.SCORE_BLOCK", 64 * 100)  # force 50 blocks
    lab, dist = Codebook(c).nearest(x, with_dist=True)
    ref = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    assert torch.equal(lab, ref.argmin(1))
    assert torch.allclose(dist, ref.min(1).values, rtol=1e-4, atol=1e-4)


def test_score_blocks_are_smaller_on_the_cpu_than_on_an_accelerator():
    from semid_index.quantize._kernels import DEVICE_SCORE_BLOCK, SCORE_BLOCK, block_rows

    assert block_rows(32) == block_rows(32, device=torch.device("cpu")) == SCORE_BLOCK // 32
    assert block_rows(32, device=torch.device("cuda")) == DEVICE_SCORE_BLOCK // 32
    assert block_rows(32, 100) == 100 and block_rows(1 << 30) == 64


@pytest.fixture
def pool_any_size(monkeypatch):
    """The row pool for calls of any size (by default only calls of POOL_MIN_SCORES scores or
    more use it, far larger than a test's)."""
    from semid_index.quantize import _kernels

    monkeypatch.setattr(_kernels, "POOL_MIN_SCORES", 0)


@pytest.mark.skipif(not mkldnn_available(), reason="this torch build has no oneDNN inner product")
def test_row_parallel_nearest_equals_the_one_thread_path(monkeypatch, pool_any_size):
    """Blocks spread over single-threaded pool threads give exactly the codes and distances of
    the plain path (prices and parent codes included), run where the build allows it, and
    leave torch's thread count and the caller's OpenMP setting alone."""
    from semid_index.quantize import _kernels

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(4)
        x, c = torch.randn(20000, 40, generator=g), torch.randn(128, 40, generator=g)
        parent = torch.randint(0, 8, (20000,), generator=g)
        book = Codebook(c, torch.rand(8, 128, generator=g))
        ran = []
        real = _kernels.row_parallel
        monkeypatch.setattr(_kernels, "row_parallel", lambda *a: ran.append(real(*a)) or ran[-1])
        lab, dist = book.nearest(x, with_dist=True, parent=parent)
        plain = book.nearest(x[:5000], parent=parent[:5000])  # too few rows for two blocks
        monkeypatch.setattr(_kernels, "row_parallel", lambda *a: False)
        ref_lab, ref_dist = book.nearest(x, with_dist=True, parent=parent)
        assert torch.equal(lab, ref_lab) and torch.equal(dist, ref_dist)
        assert torch.equal(plain, ref_lab[:5000])
        omp = _kernels._get_omp()
        assert ran[0] is _kernels.row_pool_available()  # on Linux: torch runs on OpenMP
        assert ran[0] is (omp is not None) or _kernels.get_gemm_backend() != "mkldnn"
        assert ran[1] is False
        assert torch.get_num_threads() == 2
        if omp is not None:
            assert omp.omp_get_max_threads() == 2  # this thread's OpenMP setting is intact
            pool_threads = _kernels._row_pool(2).map(lambda _: omp.omp_get_max_threads(),
                                                     range(2))
            assert set(pool_threads) == {1}
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not mkldnn_available(), reason="this torch build has no oneDNN inner product")
@pytest.mark.parametrize("dim,normalize", [(24, False), (160, False), (24, True)])
def test_encode_on_the_row_pool_equals_one_thread(monkeypatch, dim, normalize,
                                                   pool_any_size):
    """encode() spreads blocks over the row pool (residual form for D < K, cross-term form for
    D >= K, normalised residuals): the codes equal the one-thread path's."""
    from semid_index.quantize import ResidualKMeans, _inference

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(5)
        x = torch.randn(12000, dim, generator=g)
        books = [torch.randn(128, dim, generator=g) * 0.5 ** i for i in range(3)]
        m = ResidualKMeans.from_codebooks(books, normalize_residuals=normalize)
        used = []
        real = _inference.row_parallel
        monkeypatch.setattr(_inference, "row_parallel",
                            lambda *a: used.append(real(*a)) or used[-1])
        pooled = m.encode(x, batch_rows=1000)
        monkeypatch.setattr(_inference, "row_parallel", lambda *a: False)
        assert torch.equal(pooled, m.encode(x, batch_rows=1000))
        assert used and all(u is (_kernels_omp() is not None) for u in used)
    finally:
        torch.set_num_threads(before)


def test_the_row_pool_can_be_turned_off(pool_any_size):
    """set_row_pool(False) runs blocks one after another (nothing reaches the pool), with the
    same codes; anything but a bool is refused."""
    from semid_index.errors import ConfigError
    from semid_index.quantize import ResidualKMeans, row_pool_available, set_row_pool
    from semid_index.quantize import _kernels

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(7)
        x = torch.randn(20000, 24, generator=g)
        m = ResidualKMeans.from_codebooks([torch.randn(128, 24, generator=g) for _ in range(2)])
        pooled = m.encode(x)
        set_row_pool(False)
        assert not row_pool_available()
        assert _kernels.row_parallel(20000, 512, lambda a, b: None) is False
        assert torch.equal(m.encode(x), pooled)
        with pytest.raises(ConfigError, match="True or False"):
            set_row_pool("no")  # type: ignore[arg-type]
    finally:
        set_row_pool(True)
        torch.set_num_threads(before)


def test_only_searches_with_enough_scores_go_to_the_row_pool(monkeypatch):
    """A nearest-centroid search goes to the row pool only with 64 codes or more and at least
    POOL_MIN_SCORES scores (rows x codes); smaller ones stay off it. Encoding hands over once
    per chunk and takes the pool at any size (64 codes or more)."""
    from semid_index.quantize import ResidualKMeans, _inference, _kernels

    calls = []
    monkeypatch.setattr(_kernels, "row_parallel", lambda n, *a: calls.append(n) or False)
    monkeypatch.setattr(_inference, "row_parallel", lambda n, *a: calls.append(-n) or False)
    monkeypatch.setattr(_kernels, "POOL_MIN_SCORES", 4000 * 128)
    g = torch.Generator().manual_seed(8)
    book = Codebook(torch.randn(128, 8, generator=g))
    book.nearest(torch.randn(3999, 8, generator=g))
    assert calls == []
    book.nearest(torch.randn(4000, 8, generator=g))
    assert calls == [4000]
    Codebook(torch.randn(32, 8, generator=g)).nearest(torch.randn(50000, 8, generator=g))
    assert calls == [4000]  # under 64 codes: never
    m = ResidualKMeans.from_codebooks([torch.randn(64, 8, generator=g) for _ in range(2)])
    m.encode(torch.randn(3000, 8, generator=g))
    assert calls == [4000, -3000]


@pytest.mark.parametrize("value,kind", [(float("nan"), "non-finite"), (float("inf"), "non-finite"),
                                        (1e30, "too large")])
def test_encode_on_the_row_pool_names_the_first_bad_row(value, kind, pool_any_size):
    """Pool threads scan their own blocks for NaN/inf and overflow; a bad row anywhere gives
    the same error as the one-thread scan, naming the first bad row (and column)."""
    from semid_index.errors import NonFiniteError
    from semid_index.quantize import ResidualKMeans

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(6)
        m = ResidualKMeans.from_codebooks([torch.randn(64, 16, generator=g) for _ in range(2)])
        x = torch.randn(12000, 16, generator=g).numpy()
        x[9100, 3] = value
        x[7321, 5] = value
        with pytest.raises(NonFiniteError, match=kind) as err:
            m.encode(x, batch_rows=1000)
        assert err.value.row == 7321
        if kind == "non-finite":
            assert err.value.column == 5 and "in 2 row(s)" in str(err.value)
        x[7321, 5] = x[9100, 3] = 0.0
        assert m.encode(x, batch_rows=1000).shape == (12000, 2)
    finally:
        torch.set_num_threads(before)


def _kernels_omp():
    from semid_index.quantize import _kernels

    return _kernels._get_omp()


@pytest.mark.skipif(not mkldnn_available(), reason="this torch build has no oneDNN inner product")
def test_gemm_backends_give_the_same_codes():
    x, _ = gaussian_mixture(4000, 48, 30, seed=3)
    x = torch.from_numpy(x)
    c = x[torch.randperm(4000, generator=torch.Generator().manual_seed(0))[:256]]
    before = get_gemm_backend()
    try:
        set_gemm_backend("mkldnn")
        a = Codebook(c).nearest(x)
        set_gemm_backend("linear")
        b = Codebook(c).nearest(x)
    finally:
        set_gemm_backend(before)
    assert (a == b).float().mean() > 0.999  # only exact ties may differ by rounding


def test_kmeans_plusplus_picks_one_point_per_separated_cluster():
    # 8 far-apart tight blobs: greedy k-means++ must seed exactly one centre in each
    rng = np.random.default_rng(0)
    centers = np.array([[100.0 * i, 100.0 * (i % 3)] for i in range(8)])
    x = np.concatenate([c + 0.1 * rng.standard_normal((50, 2)) for c in centers]).astype(np.float32)
    seeds = kmeans_plusplus(torch.from_numpy(x), 8, torch.Generator().manual_seed(0))
    nearest_blob = ((seeds[:, None, :].numpy() - centers[None]) ** 2).sum(-1).argmin(1)
    assert sorted(nearest_blob.tolist()) == list(range(8))


def test_seeds_are_rows_of_the_sample():
    x = torch.randn(500, 5, generator=torch.Generator().manual_seed(2))
    seeds = kmeans_plusplus(x, 20, torch.Generator().manual_seed(0), n_trials=1)
    is_row = (seeds[:, None, :] == x[None]).all(-1).any(1)
    assert bool(is_row.all()) and len({tuple(r) for r in seeds.tolist()}) == 20


def test_running_mean_update_equals_mean_of_all_points_assigned_since_init():
    x, _ = gaussian_mixture(3000, 6, 10, seed=4)
    x = torch.from_numpy(x)
    g = torch.Generator().manual_seed(0)
    level = KMeansLevel(kmeans_plusplus(x[:500], 10, g))
    assigned = {k: [] for k in range(10)}
    for a in range(500, 3000, 250):
        batch = x[a:a + 250]
        lab, dist = level.book.nearest(batch, with_dist=True)
        for row, k in zip(batch, lab.tolist()):
            assigned[k].append(row)
        level.step(batch, lab, dist, g, reassign=False)
    for k, rows in assigned.items():
        assert level.counts[k] == len(rows)
        if rows:
            expected = torch.stack(rows).double().mean(0)
            assert torch.allclose(level.centroids[k].double(), expected, atol=1e-4), k


def test_first_update_moves_centroid_to_batch_mean():
    # counts start at zero after seeding (GRID / Sculley): the first batch sets the mean outright
    c = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    level = KMeansLevel(c.clone())
    batch = torch.tensor([[1.0, 1.0], [1.0, 3.0], [9.0, 0.0], [13.0, 0.0]])
    lab, dist = level.book.nearest(batch, with_dist=True)
    assert lab.tolist() == [0, 0, 1, 1]
    level.step(batch, lab, dist, torch.Generator(), False)
    assert torch.allclose(level.centroids, torch.tensor([[1.0, 2.0], [11.0, 0.0]]))
    # second batch: running mean over all four points of centroid 0
    b2 = torch.tensor([[3.0, 2.0], [3.0, 2.0]])
    lab, dist = level.book.nearest(b2, with_dist=True)
    level.step(b2, lab, dist, torch.Generator(), False)
    assert torch.allclose(level.centroids[0], torch.tensor([2.0, 2.0]))
    assert level.counts.tolist() == [4.0, 2.0]


def test_reassignment_revives_a_dead_centroid():
    x = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0))
    centers = torch.cat([x[:15], torch.full((1, 4), 1e3)])  # centroid 15 is far from every point
    level = KMeansLevel(centers.clone())
    level.reassign_window = 600  # dead after 600 rows without a point
    g = torch.Generator().manual_seed(0)
    for a in range(0, 2000, 200):
        if a == 400:
            assert level.n_reassigned == 0  # not yet: only 400 rows went by
        batch = x[a:a + 200]
        lab, dist = level.book.nearest(batch, with_dist=True)
        level.step(batch, lab, dist, g, reassign=True)
    assert level.n_reassigned >= 1
    assert level.centroids[15].abs().max() < 100  # moved onto the data
    assert level.counts[15] > 0


def test_lloyd_step_is_exact_and_fills_empty_codes():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [13.0]])
    level = KMeansLevel(torch.tensor([[0.5], [11.0], [500.0]]))  # code 2 starts empty
    res = lloyd(level, x, n_iter=1, tol=0.0)
    labels, counts, inertia = res.labels, res.counts, res.inertia
    # Lloyd step: labels 0,0,0,1,1,1 -> means 1 and 34/3; code 2 is empty and re-seeded on the
    # row farthest from its new centroid, 13 (16/9 beats 1 for rows 0 and 2)
    assert level.centroids[:, 0].tolist() == pytest.approx([1.0, 34 / 3, 13.0])
    # labels are those of the final centroids: no code is empty, the SSE is exact
    assert labels.tolist() == [0, 0, 0, 1, 1, 2]
    assert counts.tolist() == [3.0, 2.0, 1.0]
    assert inertia == pytest.approx(1 + 1 + (4 / 3) ** 2 + (1 / 3) ** 2, rel=1e-5)


def test_lloyd_equals_a_float64_reference():
    x, _ = gaussian_mixture(5000, 12, 40, spread=1.5, seed=11)
    x = torch.from_numpy(x)
    seeds = kmeans_plusplus(x, 32, torch.Generator().manual_seed(0))
    for n_iter in (1, 3, 8):
        level = KMeansLevel(seeds.clone())
        res = lloyd(level, x, n_iter, tol=0.0, rows=700)
        labels, counts, inertia = res.labels, res.counts, res.inertia
        c = seeds.clone().double()
        xd = x.double()
        for _ in range(n_iter):
            lab = ((xd[:, None] - c[None]) ** 2).sum(-1).argmin(1)
            c = torch.stack([xd[lab == j].mean(0) if (lab == j).any() else c[j] for j in range(32)])
        lab = ((xd[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        assert torch.allclose(level.centroids.double(), c, atol=1e-4)
        assert (labels == lab).float().mean() > 0.999  # only exact near-ties may differ
        ref = float(((xd - c[lab]) ** 2).sum())
        assert inertia == pytest.approx(ref, rel=1e-5)


def brute_force_codes(x, books):
    """Greedy residual codes in float64 by explicit broadcasting: the reference."""
    r = x.double()
    out = []
    for c in books:
        lab = ((r[:, None, :] - c.double()[None]) ** 2).sum(-1).argmin(1)
        out.append(lab)
        r = r - c.double()[lab]
    return torch.stack(out, 1)


@pytest.mark.parametrize("dim,sizes", [(64, [16, 16, 16]), (8, [16, 32, 8])])
def test_fused_encoder_matches_greedy_reference(dim, sizes):
    # dim >= K takes the cross-term path (one GEMM for all levels), dim < K the residual path
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3000, dim, generator=g)
    books = [Codebook(torch.randn(k, dim, generator=g) * s) for k, s in zip(sizes, (1.0, .5, .25))]
    enc = Encoder(books, normalize=False)
    assert enc.cross == (dim >= max(sizes))
    got = torch.empty(3000, 3, dtype=torch.int64)
    enc.encode(x, got, work=torch.empty(3000, dim))
    ref = brute_force_codes(x, [b.centroids for b in books])
    assert torch.equal(got[:, 0], ref[:, 0])  # the prefix property: level 1 is the plain argmin
    assert (got == ref).all(1).float().mean() > 0.999  # deeper levels: only fp32 near-ties differ
