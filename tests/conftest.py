import numpy as np
import pytest


def gaussian_mixture(n, d, n_clusters, *, spread=4.0, noise=1.0, seed=0, skew=0.0):
    """(n, d) float32 mixture; cluster sizes follow a power law of exponent ``skew``."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, d)).astype(np.float32) * spread
    weights = 1.0 / np.arange(1, n_clusters + 1) ** skew
    labels = rng.choice(n_clusters, size=n, p=weights / weights.sum())
    x = centers[labels] + noise * rng.standard_normal((n, d)).astype(np.float32)
    return x.astype(np.float32), labels


@pytest.fixture(scope="session")
def mixture():
    x, _ = gaussian_mixture(6000, 24, 40, seed=1)
    return x
