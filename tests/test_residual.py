"""ResidualKMeans: toy cases, quality against exact Lloyd, streaming inputs, determinism, errors."""

import numpy as np
import pytest
import torch

from semid_index.errors import (ConfigError, DimensionMismatchError, EmptyInputError,
                                InvalidCodesError, NonFiniteError, NotFittedError,
                                SemanticIdError, TooFewItemsError)
from semid_index.quantize import ResidualKMeans

from conftest import gaussian_mixture


def lloyd_reference(x, k, seeds=5, iters=300):
    """Exact Lloyd k-means (float64) run to convergence from plain k-means++ seeds: the mean SSE
    over several restarts (the expected result of one standard run)."""
    x = x.astype(np.float64)
    sse = []
    for s in range(seeds):
        rng = np.random.default_rng(100 + s)
        c = x[[rng.integers(len(x))]]
        for _ in range(1, k):  # plain k-means++
            d = ((x[:, None, :] - c[None]) ** 2).sum(-1).min(1)
            c = np.vstack([c, x[rng.choice(len(x), p=d / d.sum())]])
        for _ in range(iters):
            d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
            lab = d.argmin(1)
            new = np.array([x[lab == j].mean(0) if (lab == j).any() else c[j] for j in range(k)])
            if np.allclose(new, c):
                break
            c = new
        sse.append(((x - c[lab]) ** 2).sum())
    return float(np.mean(sse))


# ------------------------------------------------------------------ exact toy cases
def test_two_level_toy_hand_checked_centroids():
    # level 1 separates the 4 quadrant groups at (+-10, +-10); level 2 the +-1 offsets on x
    quads = np.array([[10, 10], [10, -10], [-10, 10], [-10, -10]], dtype=np.float32)
    offs = np.array([[1, 0], [-1, 0]], dtype=np.float32)
    x = np.array([q + o for q in quads for o in offs for _ in range(25)], dtype=np.float32)
    m = ResidualKMeans(2, [4, 2], seed=0).fit(x)
    c1 = sorted(map(tuple, m.codebooks_[0].round().tolist()))
    assert c1 == sorted(map(tuple, quads.tolist()))
    c2 = sorted(map(tuple, m.codebooks_[1].tolist()))
    assert c2 == [(-1.0, 0.0), (1.0, 0.0)]
    codes = m.encode(x)
    assert torch.allclose(m.decode(codes), torch.from_numpy(x))  # exact reconstruction
    assert m.quality(x).relative_error < 1e-10
    # items in the same quadrant share their level-1 code, and only they do
    quadrant = np.repeat(np.arange(4), 50)
    assert len(set(zip(quadrant.tolist(), codes[:, 0].tolist()))) == 4


def test_one_dimensional_toy():
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]] * 10, dtype=np.float32)
    m = ResidualKMeans(1, 2, seed=3).fit(x)
    assert sorted(m.codebooks_[0][:, 0].tolist()) == [1.0, 11.0]
    assert m.quality(x).inertia[0] == pytest.approx(40.0)  # 10 * (1 + 0 + 1) * 2


# ------------------------------------------------------------------ quality vs a reference
@pytest.mark.parametrize("data_seed", [0, 1])
def test_inertia_within_2_percent_of_exact_lloyd(data_seed):
    x, _ = gaussian_mixture(1500, 8, 12, spread=2.0, noise=1.0, seed=data_seed)
    ref = lloyd_reference(x, 16)
    ours = np.mean([ResidualKMeans(1, 16, batch_size=256, seed=s).fit(x).quality(x).inertia[0]
                    for s in range(3)])
    assert ours <= 1.02 * ref, (ours, ref)


def test_residual_levels_reduce_error_and_beat_a_single_level():
    x, _ = gaussian_mixture(4000, 16, 60, seed=5)
    m = ResidualKMeans(3, 16, seed=0).fit(x)
    q = m.quality(x)
    assert q.inertia[0] > q.inertia[1] > q.inertia[2]
    total = float((x.astype(np.float64) ** 2).sum())
    assert q.relative_error == pytest.approx(q.inertia[2] / total, rel=1e-5)
    rec = m.decode(m.encode(x)).numpy()
    assert ((x - rec) ** 2).sum() / total == pytest.approx(q.relative_error, rel=1e-4)


def test_joint_training_is_close_to_layer_wise():
    x, _ = gaussian_mixture(4000, 16, 60, seed=6)
    lw = ResidualKMeans(3, 16, seed=0).fit(x).quality(x).relative_error
    jt = ResidualKMeans(3, 16, train_layer_wise=False, seed=0).fit(x).quality(x).relative_error
    assert jt < 1.15 * lw


def test_per_level_codebook_sizes():
    x, _ = gaussian_mixture(3000, 8, 30, seed=7)
    m = ResidualKMeans(3, [32, 8, 4], seed=0).fit(x)
    assert [c.shape for c in m.codebooks_] == [(32, 8), (8, 8), (4, 8)]
    codes = m.encode(x)
    assert [int(codes[:, i].max()) < k for i, k in enumerate([32, 8, 4])] == [True] * 3


# ------------------------------------------------------------------ dead codes
def test_reassignment_fires_on_a_skewed_set_and_leaves_no_empty_code():
    # power-law cluster sizes plus a few far outliers
    x, _ = gaussian_mixture(6000, 8, 40, spread=3.0, noise=0.5, skew=1.5, seed=8)
    rng = np.random.default_rng(0)
    x[:12] = rng.standard_normal((12, 8)).astype(np.float32) * 60
    m = ResidualKMeans(2, 64, batch_size=512, seed=0, exact_work=0).fit(x)  # mini-batch path
    assert m.history_[0].reassigned > 0
    q = m.quality(x)
    assert [s.dead for s in q.levels] == [0, 0]
    assert [h.empty_codes for h in m.history_] == [0, 0]
    # moving dead centroids costs no quality against the same training without it
    bare = ResidualKMeans(2, 64, batch_size=512, seed=0, reassign_empty=False, n_polish=0).fit(x)
    assert q.relative_error <= 1.05 * bare.quality(x).relative_error


def test_polishing_fills_every_code_when_the_stream_is_sorted():
    # a catalogue stored sorted by category and read in that order: seeds are drawn from the whole
    # stream, and codes that end up empty are re-seeded by the final passes
    x, lab = gaussian_mixture(6000, 8, 40, spread=3.0, noise=0.5, skew=1.5, seed=8)
    xs = x[np.argsort(lab, kind="stable")]
    batches = [xs[i:i + 512] for i in range(0, len(xs), 512)]
    m = ResidualKMeans(2, 64, batch_size=512, seed=0).fit(batches)
    assert [s.dead for s in m.quality(x).levels] == [0, 0]
    ref = ResidualKMeans(2, 64, batch_size=512, seed=0).fit(x).quality(x).relative_error
    assert m.quality(x).relative_error < 1.1 * ref


# ------------------------------------------------------------------ determinism
def test_same_seed_same_codes(mixture):
    a = ResidualKMeans(3, 16, seed=11).fit(mixture).encode(mixture)
    b = ResidualKMeans(3, 16, seed=11).fit(mixture).encode(mixture)
    c = ResidualKMeans(3, 16, seed=12).fit(mixture).encode(mixture)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("kw", [dict(train_layer_wise=False), dict(normalize_residuals=True)])
def test_same_seed_same_codes_other_modes(mixture, kw):
    a = ResidualKMeans(2, 16, seed=1, **kw).fit(mixture).encode(mixture)
    b = ResidualKMeans(2, 16, seed=1, **kw).fit(mixture).encode(mixture)
    assert torch.equal(a, b)


# ------------------------------------------------------------------ input kinds
def test_numpy_torch_float64_inputs_agree(mixture):
    a = ResidualKMeans(2, 16, seed=0).fit(mixture).encode(mixture)
    b = ResidualKMeans(2, 16, seed=0).fit(torch.from_numpy(mixture)).encode(mixture)
    c = ResidualKMeans(2, 16, seed=0).fit(mixture.astype(np.float64)).encode(mixture)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_inputs_are_never_modified(mixture):
    t = torch.from_numpy(mixture.copy())
    before = t.clone()
    m = ResidualKMeans(2, 16, normalize_residuals=True, seed=0).fit(t)
    m.encode(t), m.quality(t), m.fit([t[:3000], t[3000:]]).encode([t[:10]])
    assert torch.equal(t, before)


def test_memmap_and_iterable_fit_match_in_memory_quality(tmp_path):
    x, _ = gaussian_mixture(20000, 32, 400, spread=1.0, seed=9)
    path = tmp_path / "emb.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    batches = [x[i:i + 1000] for i in range(0, len(x), 1000)]
    inputs = {"memory": x, "memmap": mm, "path": str(path), "batches": batches,
              "callable": lambda: iter(batches)}
    seeds = range(2)
    rel = {k: np.mean([ResidualKMeans(3, 32, seed=s).fit(v).quality(x).relative_error
                       for s in seeds]) for k, v in inputs.items()}
    for kind, value in rel.items():
        assert value <= 1.02 * rel["memory"], (kind, rel)
    # the memmap is read with file reads; its codes equal those of the in-memory encode
    m = ResidualKMeans(3, 32, seed=0).fit(mm)
    assert torch.equal(m.encode(mm), m.encode(x))
    assert torch.equal(m.encode(str(path)), m.encode(batches))


def test_one_shot_iterator_is_refused_with_advice(mixture):
    with pytest.raises(ConfigError, match="one-shot iterator"):
        ResidualKMeans(2, 8).fit(iter([mixture]))


def test_partial_fit_streaming_reaches_batch_quality(mixture):
    ref = ResidualKMeans(2, 16, seed=0).fit(mixture).quality(mixture).relative_error
    m = ResidualKMeans(2, 16, init_size=1024, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(8):
        for a in range(0, len(mixture), 500):
            m.partial_fit(mixture[rng.permutation(len(mixture))][a:a + 500])
    assert m.quality(mixture).relative_error < 1.25 * ref


def test_partial_fit_layer_wise_levels():
    x, _ = gaussian_mixture(4000, 8, 20, seed=2)
    m = ResidualKMeans(2, 8, init_size=500, seed=0)
    with pytest.raises(NotFittedError, match="level 0 is not seeded"):
        m.partial_fit(x[:100], level=1)
    for a in range(0, 4000, 500):
        m.partial_fit(x[a:a + 500], level=0)
    for a in range(0, 4000, 500):
        m.partial_fit(x[a:a + 500], level=1)
    assert m.encode(x).shape == (4000, 2)


# ------------------------------------------------------------------ normalised residuals
def test_normalized_mode_codes_ignore_input_scale(mixture):
    m = ResidualKMeans(2, 16, normalize_residuals=True, seed=0).fit(mixture)
    assert torch.equal(m.encode(mixture), m.encode(mixture * 7.5))
    assert m.quality(mixture).relative_error < 1.0
    assert float(m.residual_scales_[1]) > 0


def test_from_codebooks_round_trip(mixture):
    m = ResidualKMeans(3, 16, seed=0).fit(mixture)
    frozen = ResidualKMeans.from_codebooks(m.get_codebooks())
    assert torch.equal(frozen.encode(mixture), m.encode(mixture))


# ------------------------------------------------------------------ errors
def test_errors_are_typed_and_name_the_values(mixture):
    m = ResidualKMeans(2, 16, seed=0)
    with pytest.raises(NotFittedError, match="not fitted"):
        m.encode(mixture)
    with pytest.raises(NotFittedError):
        m.decode([[0, 0]])
    with pytest.raises(TooFewItemsError, match="at least 16 items .* got 10"):
        m.fit(mixture[:10])
    with pytest.raises(EmptyInputError):
        m.fit(np.zeros((0, 24), dtype=np.float32))
    with pytest.raises(EmptyInputError):
        m.fit([])
    bad = mixture.copy()
    bad[1234, 5] = np.nan
    with pytest.raises(NonFiniteError, match="row 1234, column 5"):
        m.fit(bad)
    bad[1234, 5] = np.inf
    with pytest.raises(NonFiniteError):
        m.fit(bad)
    m.fit(mixture)
    with pytest.raises(DimensionMismatchError, match="dim=12 but the model was trained with dim=24"):
        m.encode(mixture[:, :12])
    with pytest.raises(DimensionMismatchError, match="2-D"):
        m.encode(mixture[0])
    with pytest.raises(NonFiniteError):
        m.encode(bad)
    with pytest.raises(InvalidCodesError, match="0..15"):
        m.decode([[0, 16]])
    with pytest.raises(InvalidCodesError, match=r"shape \(N, 2\)"):
        m.decode([[0, 1, 2]])
    with pytest.raises(ConfigError, match="codebook_size has 3 entries"):
        ResidualKMeans(2, [4, 4, 4]).fit(mixture)
    with pytest.raises(ConfigError, match="n_levels"):
        ResidualKMeans(0).fit(mixture)
    # every one of them is also the builtin a caller would expect
    assert issubclass(TooFewItemsError, ValueError) and issubclass(NotFittedError, RuntimeError)
    assert issubclass(DimensionMismatchError, SemanticIdError)


def test_failed_fit_keeps_previous_model(mixture):
    m = ResidualKMeans(2, 16, seed=0).fit(mixture)
    before = m.encode(mixture)
    bad = mixture.copy()
    bad[-1, 0] = np.nan
    with pytest.raises(NonFiniteError):
        m.fit(bad)
    assert torch.equal(m.encode(mixture), before)
