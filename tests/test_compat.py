"""The seed module's names keep working with the seed's parameters and flow."""

import numpy as np
import pytest
import torch

import semid_index
from semid_index import (KMeansPlusPlusInitInitializer, MiniBatchKMeans, ResidualQuantization,
                         SquaredEuclideanDistance)
from semid_index.errors import DimensionMismatchError, NotFittedError

from conftest import gaussian_mixture


def seed_model(dim, k=32, **kw):
    distance = SquaredEuclideanDistance()
    return ResidualQuantization(
        n_layers=3,
        quantization_layer=MiniBatchKMeans(
            n_clusters=k, n_features=dim, distance_function=distance,
            initializer=KMeansPlusPlusInitInitializer(n_clusters=k, distance_function=distance),
            init_buffer_size=512),
        **kw)


def test_squared_euclidean_distance():
    x, y = torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([[3.0, 4.0], [1.0, 1.0], [0.0, 0.0]])
    assert SquaredEuclideanDistance().compute(x, y).tolist() == [[25.0, 2.0, 0.0], [13.0, 0.0, 2.0]]


def test_initializer_returns_data_rows():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    c = KMeansPlusPlusInitInitializer(10, SquaredEuclideanDistance())(x)
    assert c.shape == (10, 4) and bool((c[:, None] == x[None]).all(-1).any(1).all())


@pytest.mark.parametrize("layer_wise", [True, False])
def test_seed_training_loop_and_predict_step(layer_wise):
    x, _ = gaussian_mixture(8000, 16, 60, seed=0)
    data = torch.from_numpy(x)
    model = seed_model(16, normalize_residuals=True, train_layer_wise=layer_wise,
                       steps_per_layer=6)  # 24 steps: 6 per level, the rest for the last
    model.train()
    with pytest.raises(NotFittedError):
        model.predict_step(data[:5])
    for epoch in range(3):
        for a in range(0, 8000, 1000):
            loss = model.training_step(data[a:a + 1000])
    assert torch.isfinite(loss)
    model.eval()
    ids = model.predict_step(data)
    assert ids.shape == (8000, 3) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < 32
    # GRID normalises the input: IDs do not depend on the scale of an embedding
    assert torch.equal(model.predict_step(data * 3.0), ids)
    codes, residuals, quantized, loss = model(data[:100])
    assert codes.shape == (100, 3) and quantized.shape == residuals.shape == (100, 16)
    # (ids, embeddings) batches, as GRID's data loaders yield them
    keys, codes2 = model.predict_step((torch.arange(100), data[:100]))
    assert torch.equal(codes2, ids[:100]) and keys.tolist() == list(range(100))
    assert model.quantization_layers[2].centroids.shape == (32, 16)


def test_layer_wise_trains_one_level_at_a_time():
    x, _ = gaussian_mixture(6000, 8, 30, seed=1)
    data = torch.from_numpy(x)
    model = seed_model(8, k=16, train_layer_wise=True, steps_per_layer=4).train()
    for a in range(0, 4000, 500):  # 8 steps: level 1 only (levels 2, 3 are not seeded yet)
        model.training_step(data[a:a + 500])
    first = model.quantization_layers[0].centroids.clone()
    assert not model.quantization_layers[2].is_initialized
    for _ in range(3):
        for a in range(0, 6000, 500):
            model.training_step(data[a:a + 500])
    assert model.quantization_layers[2].is_initialized
    assert torch.equal(model.quantization_layers[0].centroids, first)  # frozen after its steps


def test_standalone_minibatch_kmeans_running_mean():
    mbk = MiniBatchKMeans(n_clusters=2, n_features=1, init_buffer_size=4)
    mbk.train()
    mbk.training_step(torch.tensor([[0.0], [1.0], [10.0], [11.0]]))  # fills the seeding buffer
    seeds = sorted(mbk.centroids[:, 0].tolist())
    assert all(s in (0.0, 1.0, 10.0, 11.0) for s in seeds)
    mbk.training_step(torch.tensor([[2.0], [12.0], [2.0], [12.0]]))
    # counts start after seeding: each centroid moves to the mean of its first points
    assert sorted(mbk.centroids[:, 0].tolist()) == [2.0, 12.0]
    assert sorted(mbk(torch.tensor([[0.5], [20.0]])).tolist()) == [0, 1]
    with pytest.raises(DimensionMismatchError):
        mbk.training_step(torch.zeros(3, 2))


def test_save_and_load_round_trip(tmp_path):
    x, _ = gaussian_mixture(5000, 8, 30, seed=2)
    model = seed_model(8, k=16, train_layer_wise=False).train()
    for a in range(0, 5000, 500):
        model.training_step(torch.from_numpy(x[a:a + 500]))
    model.eval()
    path = tmp_path / "rq.npz"
    model.save(path)
    loaded = ResidualQuantization.load(path)
    assert not loaded.training
    assert torch.equal(loaded.predict_step(x), model.predict_step(x))
    # the file holds plain arrays: numpy reads it with pickle disabled
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == ["codebook_0", "codebook_1", "codebook_2", "header"]


def test_grid_parity_first_update_is_the_batch_mean():
    # GRID: counts start at zero after seeding, so one update sets a centroid to its batch mean
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    m = semid_index.ResidualKMeans.grid(1, 2, batch_size=4, total_steps=2, init_buffer_size=4)
    m.fit(x)
    xn = torch.nn.functional.normalize(x, dim=1)
    got = sorted(m.codebooks_[0].tolist())
    want = sorted([xn[:2].mean(0).tolist(), xn[2:].mean(0).tolist()])
    assert np.allclose(got, want, atol=1e-6)


def test_unknown_arguments_are_reported_not_silently_dropped():
    with pytest.warns(UserWarning, match=r"ignores \['optimizer'\]"):
        ResidualQuantization(n_layers=2, quantization_layer=MiniBatchKMeans(8, 4), optimizer="adam")
