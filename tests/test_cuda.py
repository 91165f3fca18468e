"""The quantizer on a CUDA device, checked against the CPU path (skipped without a GPU).

CI has no GPU; these run where one is (``pytest tests/test_cuda.py`` on a CUDA machine).
"""

import numpy as np
import pytest
import torch

from semid_index.quantize import ResidualKMeans

from conftest import gaussian_mixture

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def data():
    x, _ = gaussian_mixture(40_000, 64, 300, seed=5)
    return x


def sq_dist_to(x, model, codes):
    return ((torch.from_numpy(x) - model.decode(codes)) ** 2).sum(1).double()


def test_cuda_fit_matches_cpu_quality_and_returns_cpu_codes(data):
    gpu = ResidualKMeans(3, 64, seed=2, device="cuda").fit(data)
    cpu = ResidualKMeans(3, 64, seed=2).fit(data)
    assert all(c.device.type == "cuda" for c in gpu.codebooks_)
    codes = gpu.encode(data)
    assert codes.device.type == "cpu" and codes.dtype == torch.int64
    q_gpu, q_cpu = gpu.quality(data), cpu.quality(data)
    assert q_gpu.relative_error <= q_cpu.relative_error * 1.02
    assert all(len(torch.unique(codes[:, l])) == 64 for l in range(3))  # no dead code


def test_cuda_encoding_equals_cpu_encoding_of_the_same_codebooks(data):
    cpu = ResidualKMeans(3, 64, seed=4).fit(data)
    gpu = ResidualKMeans.from_codebooks(cpu.get_codebooks(), device="cuda")
    a, b = cpu.encode(data), gpu.encode(data)
    same = (a == b).all(1)
    assert same.float().mean() >= 0.999  # float32 sums in another order may flip exact near-ties
    if not same.all():  # ...and where they do, both choices are (near-)equally good
        da, db = sq_dist_to(data[~same.numpy()], cpu, a[~same]), \
            sq_dist_to(data[~same.numpy()], cpu, b[~same])
        assert torch.allclose(da, db, rtol=1e-3)


def test_cuda_same_seed_same_codes(data):
    a = ResidualKMeans(2, 32, seed=9, device="cuda").fit(data).encode(data)
    b = ResidualKMeans(2, 32, seed=9, device="cuda").fit(data).encode(data)
    assert torch.equal(a, b)


def test_cuda_streaming_partial_fit(data):
    m = ResidualKMeans(2, 32, seed=1, device="cuda")
    for a in range(0, len(data), 5000):
        m.partial_fit(data[a:a + 5000])
    batch = ResidualKMeans(2, 32, seed=1).fit(data)
    assert m.quality(data).relative_error <= batch.quality(data).relative_error * 1.05
    assert np.isfinite(m.get_codebooks()[0]).all()


def test_cuda_decoding_masks_equal_the_cpu_masks():
    """The decoding table on the GPU (torch ops, padded, no host sync) against the CPU's."""
    from semid_index.decoding import DecodingTable, SemanticIdLogitsProcessor, TokenLayout
    from semid_index.storage._codes import group_suffixes

    r = np.random.default_rng(0)
    sizes = [37, 29, 256]
    codes = np.stack([r.integers(0, k, 200_000) for k in sizes], 1)
    ids = np.c_[codes, group_suffixes(codes)]
    cpu = DecodingTable.from_ids(ids, sizes=sizes)
    gpu = DecodingTable.from_ids(ids, sizes=sizes, device="cuda")
    banned = ids[r.integers(0, len(ids), 500)]
    ex_c = cpu.exclusion(items=banned, prefixes=[tuple(ids[0, :2])])
    ex_g = gpu.exclusion(items=banned, prefixes=[tuple(ids[0, :2])])
    for d in range(4):
        p = np.r_[ids[r.integers(0, len(ids), 256), :d], r.integers(-1, 300, (32, d))]
        a, b = cpu.allowed(p), gpu.allowed(p)
        assert b.device.type == "cuda" and torch.equal(a, b.cpu())
        assert torch.equal(cpu.allowed(p, ex_c).cpu(), gpu.allowed(p, ex_g).cpu())
    layout = TokenLayout.contiguous(cpu, start=2, eos_id=1)
    inp = torch.cat([torch.zeros(64, 3, dtype=torch.int64), layout.to_tokens(ids[:64, :2])], 1)
    scores = torch.randn(64, 2 + sum(layout.widths))
    a = SemanticIdLogitsProcessor(cpu, layout, prompt_length=3)(inp, scores)
    b = SemanticIdLogitsProcessor(gpu, layout, prompt_length=3)(inp.cuda(), scores.cuda())
    assert torch.equal(torch.isfinite(a), torch.isfinite(b).cpu())
    assert cpu.rows_of(ids[:100]).tolist() == gpu.rows_of(ids[:100]).cpu().tolist()
