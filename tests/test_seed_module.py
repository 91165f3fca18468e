"""``semantic_id_module``, the seed module's import name, is an alias of ``semid_index.compat``.

The seed README's Quick Start runs as written (its ``...`` filled in with real arguments) and
produces meaningful semantic IDs.
"""

import numpy as np
import torch

import semantic_id_module
import semid_index
import semid_index.compat

from conftest import gaussian_mixture

NAMES = ["ResidualQuantization", "MiniBatchKMeans", "SquaredEuclideanDistance",
         "KMeansPlusPlusInitInitializer"]


def test_alias_gives_the_same_objects_as_compat():
    assert semantic_id_module.__all__ == NAMES == semid_index.compat.__all__
    public = sorted(n for n in vars(semantic_id_module) if not n.startswith("_"))
    assert public == sorted(NAMES)  # nothing else leaks (no torch, no helpers)
    for name in NAMES:
        obj = getattr(semantic_id_module, name)
        assert obj is getattr(semid_index.compat, name) is getattr(semid_index, name), name
    assert "semid_index" in (semantic_id_module.__doc__ or "")


def test_seed_readme_quick_start_runs_as_written():
    n_clusters, n_features = 8, 8
    x, labels = gaussian_mixture(4096, n_features, 12, seed=3)
    embeddings = torch.from_numpy(x)
    gen = torch.Generator().manual_seed(0)

    # ---- the seed README's snippet, with its "..." filled in
    from semantic_id_module import ResidualQuantization, MiniBatchKMeans, SquaredEuclideanDistance, KMeansPlusPlusInitInitializer

    # Create model
    model = ResidualQuantization(
        n_layers=3,
        quantization_layer=MiniBatchKMeans(
            n_clusters=n_clusters,
            n_features=n_features,
            distance_function=SquaredEuclideanDistance(),
            initializer=KMeansPlusPlusInitInitializer(
                n_clusters=n_clusters, distance_function=SquaredEuclideanDistance()),
        ),
        normalize_residuals=True,
        train_layer_wise=True,
    )

    # Train
    model.train()
    losses = []
    for epoch in range(8):
        order = torch.randperm(len(embeddings), generator=gen)
        for start in range(0, len(embeddings), 1024):
            batch = embeddings[order[start:start + 1024]]
            losses.append(float(model.training_step(batch)))

    # Inference
    model.eval()
    predictions = model.predict_step(embeddings)
    # ---- end of the snippet

    assert predictions.shape == (4096, 3) and predictions.dtype == torch.int64
    assert int(predictions.min()) >= 0 and int(predictions.max()) <= n_clusters - 1
    assert all(layer.is_initialized for layer in model.quantization_layers)
    assert np.isnan(losses[0]) and np.isfinite(losses[-1])  # NaN until level 1 is seeded

    # Meaningful codes 1: items of one mixture component mostly share their first code (12
    # well-separated components, 8 codes: a random assignment would give about 1/8 + noise).
    first = predictions[:, 0].numpy()
    purity = [np.bincount(first[labels == c]).max() / (labels == c).sum()
              for c in np.unique(labels)]
    assert np.mean(purity) > 0.9, purity
    assert len(np.unique(first)) >= n_clusters - 2  # the codebook is used, not one dead code

    # Meaningful codes 2: the trained codes reconstruct the (normalised) input far better than
    # random codes decoded by the same codebooks.
    target = torch.nn.functional.normalize(embeddings, dim=1)
    trained_err = ((target - model.model.decode(predictions)) ** 2).sum(1).mean()
    random_codes = torch.randint(0, n_clusters, predictions.shape, generator=gen)
    random_err = ((target - model.model.decode(random_codes)) ** 2).sum(1).mean()
    assert trained_err < 0.25 * random_err, (float(trained_err), float(random_err))
