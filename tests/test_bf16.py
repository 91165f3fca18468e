"""precision="bf16": a bf16 first pass with a proven bound and fp32 re-scoring gives the fp32
codes, on random, clustered, normalised, balanced and adversarial (near-tie) data; where bf16 is
not fast the option falls back to fp32."""

import logging

import numpy as np
import pytest
import torch

from semid_index import ConfigError, SemanticIdIndex
from semid_index.quantize import ResidualKMeans, bf16_fast, set_bf16_fast

from conftest import gaussian_mixture


@pytest.fixture
def bf16_on():
    """Run the bf16 path whatever this CPU is (where bf16 is not fast, torch emulates it:
    slower, the same arithmetic)."""
    set_bf16_fast(True)
    yield
    set_bf16_fast(None)


def _both(model, x):
    fp32 = model.encode(x, precision="fp32")
    enc = model._encoder_for("bf16")
    before = (enc.stats.rows, enc.stats.rescored, enc.stats.ties)
    bf16 = model.encode(x, precision="bf16")
    st = enc.stats
    return fp32, bf16, (st.rows - before[0], st.rescored - before[1], st.ties - before[2])


@pytest.mark.parametrize("case", ["random-768", "mixture-256", "mixture-24", "normalized",
                                  "balanced"])
def test_bf16_codes_are_the_fp32_codes(bf16_on, case):
    if case == "random-768":
        x = np.random.default_rng(0).standard_normal((6000, 768)).astype(np.float32)
        model = ResidualKMeans(3, 64, seed=0).fit(x)
    else:
        d = {"mixture-256": 256, "mixture-24": 24}.get(case, 64)
        x, _ = gaussian_mixture(8000, d, 60, seed=1, skew=1.0)
        model = ResidualKMeans(3, 128, seed=0, normalize_residuals=case == "normalized",
                               balance=0.1 if case == "balanced" else None).fit(x)
    fp32, bf16, (rows, rescored, ties) = _both(model, x)
    assert rows == len(x)
    differ = int((fp32 != bf16).any(1).sum())
    # identical, except rows whose two best fp32 scores are within fp32 rounding (counted)
    assert differ <= ties, (differ, ties)
    assert differ <= len(x) // 10_000 + 1
    assert rescored < 3 * len(x)  # the first pass decided some row-levels on its own


def test_near_ties_are_rescored_not_guessed(bf16_on):
    """Rows halfway between two centroids (up to 1e-3 .. 1e-6 of their distance): bf16 cannot
    tell the two apart, the fp32 re-score does."""
    g = np.random.default_rng(3)
    c = g.standard_normal((32, 128)).astype(np.float32) * 3
    model = ResidualKMeans.from_codebooks([c])
    a, b = g.integers(0, 32, (2, 4000))
    b = np.where(a == b, (b + 1) % 32, b)
    eps = 10.0 ** -g.integers(3, 7, 4000)
    x = ((c[a] + c[b]) / 2 + eps[:, None] * (c[a] - c[b])).astype(np.float32)  # nearer c[a]
    fp32, bf16, (_, rescored, ties) = _both(model, x)
    assert rescored >= 3900  # nearly every row had two candidates
    assert int((fp32 != bf16).any(1).sum()) <= ties
    # where the margin is far above fp32 rounding, both give the nearer centroid
    clear = eps >= 1e-4
    assert (bf16[clear, 0].numpy() == a[clear]).all()
    assert (fp32[clear, 0].numpy() == a[clear]).all()


def test_same_codes_every_time(bf16_on):
    x, _ = gaussian_mixture(3000, 96, 20, seed=4)
    model = ResidualKMeans(2, 64, seed=0, precision="bf16").fit(x)
    assert model.effective_precision() == "bf16"
    assert torch.equal(model.encode(x), model.encode(x))


def test_fallback_without_fast_bf16(caplog):
    x, _ = gaussian_mixture(2000, 32, 10, seed=5)
    model = ResidualKMeans(2, 16, seed=0, precision="bf16").fit(x)
    set_bf16_fast(False)  # a CPU without AMX / AVX512-BF16
    try:
        assert not bf16_fast()
        with caplog.at_level(logging.INFO, logger="semid_index.quantize"):
            assert model.effective_precision() == "fp32"
            codes = model.encode(x)
        assert model._encoder_for(None) is model._encoder  # the fp32 encoder ran
        assert torch.equal(codes, model.encode(x, precision="fp32"))
    finally:
        set_bf16_fast(None)


def test_precision_is_checked_and_stored(tmp_path):
    with pytest.raises(ConfigError, match="precision must be"):
        ResidualKMeans(2, 8, precision="fp16").fit(np.zeros((20, 4), dtype=np.float32))
    with pytest.raises(ConfigError, match="precision must be"):
        ResidualKMeans(2, 8).fit(np.random.default_rng(0).standard_normal((50, 4)).astype(
            np.float32)).encode(np.zeros((2, 4), dtype=np.float32), precision="int4")
    with pytest.raises(ConfigError):
        set_bf16_fast("yes")
    x, _ = gaussian_mixture(1000, 16, 8, seed=6)
    db = f"sqlite:///{tmp_path / 'p.db'}"
    with SemanticIdIndex.create(db, "p", n_levels=2, codebook_size=8, precision="bf16") as idx:
        idx.fit([f"k{i}" for i in range(1000)], x)
    with SemanticIdIndex.open(db, "p") as idx:
        assert idx.model.precision == "bf16"
        assert np.array_equal(idx.encode(x[:50]), ResidualKMeans.from_codebooks(
            idx.model.codebooks_).encode(x[:50]).numpy())
