"""The seed module's public names, as thin layers over :mod:`semid_index.quantize`.

Code written for the "Semantic ID Standalone Module" (GRID's residual k-means without Lightning)
keeps working::

    from semid_index.compat import (ResidualQuantization, MiniBatchKMeans,
                                    SquaredEuclideanDistance, KMeansPlusPlusInitInitializer)

    model = ResidualQuantization(
        n_layers=3,
        quantization_layer=MiniBatchKMeans(
            n_clusters=256, n_features=768,
            distance_function=SquaredEuclideanDistance(),
            initializer=KMeansPlusPlusInitInitializer(
                n_clusters=256, distance_function=SquaredEuclideanDistance())),
        normalize_residuals=True,
        train_layer_wise=True)
    model.train()
    for batch in batches:                 # (B, 768) tensors
        model.training_step(batch)
    model.eval()
    ids = model.predict_step(embeddings)  # (N, 3) int64 semantic IDs

Training follows GRID: every level seeds itself with plain k-means++ on the first
``init_buffer_size`` rows it sees, then moves each centroid to the running mean of the points assigned
to it. With ``train_layer_wise=True`` level l trains for ``steps_per_layer`` steps, then level l+1.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, cast

import torch
from torch import nn

from .errors import ConfigError, NotFittedError
from .quantize import ResidualKMeans, kmeans_plusplus
from .quantize._data import as_float_tensor, check_batch
from .quantize._kernels import encode_block, sq_dists

__all__ = [
    "ResidualQuantization",
    "MiniBatchKMeans",
    "SquaredEuclideanDistance",
    "KMeansPlusPlusInitInitializer",
]


class SquaredEuclideanDistance:
    """Squared Euclidean distance in GEMM form (fp32, clamped at 0).

    >>> SquaredEuclideanDistance().compute(torch.zeros(2, 3), torch.ones(4, 3)).shape
    torch.Size([2, 4])
    """

    def compute(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, D), y (K, D) -> (B, K) squared distances."""
        return sq_dists(x.float(), y.float())

    __call__ = compute


class KMeansPlusPlusInitInitializer:
    """k-means++ seeding (GRID's: one candidate per step, no restarts).

    ``initialize_on_cpu`` moves the buffer to the CPU before seeding. ``n_trials`` > 1 gives greedy
    k-means++ (better seeds); the default 1 reproduces GRID.
    """

    def __init__(self, n_clusters: int, distance_function: Any = None,
                 initialize_on_cpu: bool = False, n_trials: int = 1, seed: int = 0):
        self.n_clusters = n_clusters
        self.distance_function = distance_function or SquaredEuclideanDistance()
        self.initialize_on_cpu = initialize_on_cpu
        self.n_trials = n_trials
        self.seed = seed

    def __call__(self, buffer: torch.Tensor, generator: torch.Generator | None = None):
        """Seed ``n_clusters`` centres from buffer (n, D); returns (n_clusters, D)."""
        x = as_float_tensor(buffer, name="initialisation buffer")
        if self.initialize_on_cpu:
            x = x.cpu()
        if x.shape[0] < self.n_clusters:
            raise ConfigError(f"k-means++ needs at least {self.n_clusters} rows, got {x.shape[0]}")
        gen = generator or torch.Generator().manual_seed(self.seed)
        return kmeans_plusplus(x, self.n_clusters, gen, self.n_trials)

    initialize = __call__


class MiniBatchKMeans(nn.Module):
    """One level of mini-batch k-means (the seed's quantization layer).

    Parameters follow GRID: ``n_clusters``, ``n_features``, ``distance_function``, ``initializer``,
    ``loss_function`` and ``optimizer`` (accepted for compatibility; the update is the exact
    running mean, which is what GRID's SGD step with lr 0.5 on count-weighted targets computes),
    ``init_buffer_size`` and ``update_manually``.

    Standalone use: ``training_step(batch)`` to train, ``forward(x)`` -> (B,) cluster ids,
    ``centroids`` -> (K, D).
    """

    def __init__(self, n_clusters: int = 256, n_features: int | None = None,
                 distance_function: Any = None, initializer: Any = None,
                 loss_function: Any = None, optimizer: Any = None, init_buffer_size: int = 3072,
                 update_manually: bool = False, seed: int = 0):
        super().__init__()
        self.n_clusters = n_clusters
        self.n_features = n_features
        self.distance_function = distance_function or SquaredEuclideanDistance()
        self.initializer = initializer or KMeansPlusPlusInitInitializer(
            n_clusters, self.distance_function)
        self.loss_function = loss_function
        self.optimizer = optimizer
        self.init_buffer_size = max(init_buffer_size, n_clusters)
        self.update_manually = update_manually
        self.seed = seed
        self._model = self._make_model(1, [n_clusters], normalize=False)
        self._bound: tuple[ResidualKMeans, int] | None = None  # a level of a ResidualQuantization

    def _make_model(self, n_levels: int, sizes: list[int], normalize: bool) -> ResidualKMeans:
        trials = getattr(self.initializer, "n_trials", 1)
        return ResidualKMeans(n_levels, sizes, normalize_residuals=normalize,
                              init_size=self.init_buffer_size, n_init_trials=trials,
                              reassign_empty=False, n_polish=0, seed=self.seed, mode="grid")

    def _state(self):
        if self._bound is not None:
            model, level = self._bound
            levels = getattr(model, "_levels", [])
            return levels[level] if level < len(levels) else None
        levels = getattr(self._model, "_levels", [None])
        return levels[0]

    @property
    def is_initialized(self) -> bool:
        return self._state() is not None

    @property
    def centroids(self) -> torch.Tensor:
        """(n_clusters, n_features) float32 centroids."""
        state = self._state()
        if state is None:
            raise NotFittedError("MiniBatchKMeans has no centroids yet: it needs "
                                 f"{self.init_buffer_size} rows of training data first")
        return state.centroids

    @property
    def cluster_counts(self) -> torch.Tensor:
        """(n_clusters,) points assigned to each centroid since seeding."""
        state = self._state()
        if state is None:
            raise NotFittedError("MiniBatchKMeans is not seeded yet")
        return state.counts

    def training_step(self, batch, batch_idx: int | None = None) -> torch.Tensor:
        """One update with batch (B, D); returns the batch's mean squared distance (0-d)."""
        x = _embeddings(batch)
        self._check_dim(x)
        if self._bound is not None:
            raise ConfigError("this layer belongs to a ResidualQuantization: train that instead")
        self._model.partial_fit(x)
        if not self.is_initialized:
            return torch.tensor(float("nan"))
        return self.distance_function.compute(x, self.centroids).min(1).values.mean()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest-centroid ids of x (B, D): (B,) int64."""
        x = _embeddings(x)
        self._check_dim(x)
        state = self._state()
        if state is None:
            raise NotFittedError("MiniBatchKMeans is not trained yet: call training_step first")
        return state.book.nearest(x.to(state.centroids.device)).cpu()

    def _check_dim(self, x):
        check_batch(x, self.n_features, expected_from="MiniBatchKMeans was built with n_features=")


class ResidualQuantization(nn.Module):
    """The seed's residual quantizer: ``n_layers`` copies of ``quantization_layer``.

    Parameters: ``n_layers``, ``quantization_layer`` (a :class:`MiniBatchKMeans`; its
    ``n_clusters`` is the codebook width of every level), ``init_buffer_size`` (default: the layer's),
    ``normalize_residuals`` (default True, as GRID), ``train_layer_wise`` (default False, as GRID),
    ``steps_per_layer`` (training steps per level when layer-wise; GRID's default is 10), ``seed``.

    ``training_step(batch)`` trains, ``forward(x)`` returns (codes (B, L), residuals (B, D),
    quantized (B, D), loss), ``predict_step(x)`` returns the (B, L) int64 semantic IDs.
    :attr:`model` is the underlying :class:`semid_index.quantize.ResidualKMeans`.
    """

    def __init__(self, n_layers: int = 3, quantization_layer: MiniBatchKMeans | None = None,
                 init_buffer_size: int | None = None, normalize_residuals: bool = True,
                 train_layer_wise: bool = False, steps_per_layer: int = 10, seed: int = 0,
                 **ignored: Any):
        super().__init__()
        if ignored:  # GRID's module takes Lightning-era arguments that have no meaning here
            warnings.warn(f"ResidualQuantization ignores {sorted(ignored)}", stacklevel=2)
        if n_layers < 1:
            raise ConfigError(f"n_layers must be >= 1, got {n_layers}")
        layer = quantization_layer or MiniBatchKMeans()
        if not isinstance(layer, MiniBatchKMeans):
            raise ConfigError("quantization_layer must be a semid_index.compat.MiniBatchKMeans, "
                              f"got {type(layer).__name__}")
        self.n_layers = n_layers
        self.codebook_width = layer.n_clusters
        self.embedding_dim = layer.n_features
        self.normalize_residuals = normalize_residuals
        self.train_layer_wise = train_layer_wise
        self.steps_per_layer = steps_per_layer
        self.init_buffer_size = init_buffer_size or layer.init_buffer_size
        self.quantization_layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(n_layers))
        proto = copy.deepcopy(layer)
        proto.init_buffer_size = max(self.init_buffer_size, layer.n_clusters)
        proto.seed = seed
        self.model = proto._make_model(n_layers, [layer.n_clusters] * n_layers,
                                       normalize=normalize_residuals)
        for i, mbk in enumerate(self.quantization_layers):  # ModuleList yields plain Modules
            cast(MiniBatchKMeans, mbk)._bound = (self.model, i)
        self._steps = 0

    @property
    def is_initialized(self) -> bool:
        return hasattr(self.model, "codebooks_")

    @classmethod
    def from_model(cls, model: ResidualKMeans) -> "ResidualQuantization":
        """A trained module (in eval mode) around a fitted :class:`ResidualKMeans`, e.g. one read
        with ``ResidualKMeans.load(path)``."""
        sizes = set(model.codebook_sizes_)
        rq = cls(n_layers=len(model.codebook_sizes_),
                 quantization_layer=MiniBatchKMeans(n_clusters=max(sizes),
                                                    n_features=model.n_features_in_),
                 normalize_residuals=model.normalize_residuals)
        rq.model = model
        for i, mbk in enumerate(rq.quantization_layers):
            cast(MiniBatchKMeans, mbk)._bound = (model, i)
        rq.codebook_width = max(sizes)
        return rq.eval()

    def save(self, path) -> None:
        """Write the codebooks to ``path`` (.npz, no pickle); see ``ResidualKMeans.save``."""
        self.model.save(path)

    @classmethod
    def load(cls, path) -> "ResidualQuantization":
        """Read a module written by :meth:`save`, ready for ``predict_step``."""
        return cls.from_model(ResidualKMeans.load(path))

    def training_step(self, batch, batch_idx: int | None = None) -> torch.Tensor:
        """Update the codebooks with batch (B, D) (or an (ids, embeddings) pair); returns the
        mean squared residual after the last seeded level (NaN until level 1 is seeded)."""
        if not self.training:
            raise ConfigError("the model is in eval mode: call model.train() before "
                              "training_step()")
        x = _embeddings(batch)
        check_batch(x, self.embedding_dim, expected_from="the model was built with")
        level = None
        if self.train_layer_wise:
            level = min(self._steps // max(self.steps_per_layer, 1), self.n_layers - 1)
            seeded = self.model._levels if hasattr(self.model, "_levels") else []
            while level > 0 and (len(seeded) < level or seeded[level - 1] is None):
                level -= 1  # an earlier level is still filling its seeding buffer
        self.model.partial_fit(x, level=level)
        self._steps += 1
        return self._loss(x)

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        levels = [lv for lv in getattr(self.model, "_levels", []) if lv is not None]
        if not levels:
            return torch.tensor(float("nan"))
        r = x.to(levels[0].centroids.device, copy=True)
        codes = torch.empty(r.shape[0], len(levels), dtype=torch.int64, device=r.device)
        r = encode_block(r, [lv.book for lv in levels], self.normalize_residuals, codes)
        return (r * r).sum(1).mean()

    def forward(self, x: torch.Tensor):
        """x (B, D) -> (codes (B, L) int64, residuals (B, D), quantized (B, D), loss 0-d)."""
        if not self.is_initialized:
            raise NotFittedError("ResidualQuantization is not trained yet: every level needs "
                                 f"{self.init_buffer_size} rows before it has centroids")
        x = _embeddings(x)
        codes = self.model.encode(x)
        quantized = self.model.decode(codes)
        target = torch.nn.functional.normalize(x, dim=1) if self.normalize_residuals else x
        residuals = target - quantized
        return codes, residuals, quantized, (residuals * residuals).sum(1).mean()

    def predict_step(self, batch, batch_idx: int | None = None):
        """Semantic IDs of batch: (B, L) int64. An (ids, embeddings) pair returns (ids, codes)."""
        if isinstance(batch, (tuple, list)) and len(batch) == 2 and \
                not isinstance(batch[0], (float, int)):
            ids, emb = batch
            return ids, self.forward(emb)[0]
        return self.forward(batch)[0]


def _embeddings(batch) -> torch.Tensor:
    """Accept a (B, D) tensor/array or an (ids, embeddings) pair as GRID's dataloaders yield."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and hasattr(batch[1], "shape") \
            and len(getattr(batch[1], "shape", ())) == 2:
        batch = batch[1]
    return as_float_tensor(batch)
