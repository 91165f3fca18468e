"""Model side of :class:`~semid_index.SemanticIdIndex`: a version's frozen quantizer, encoding
and the quality report. Torch is imported here only when a method needs it (``code_report``
without embeddings needs none)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.engine import Connection

from . import _inputs
from ._index_reads import IndexReads
from .errors import (ConfigError, DimensionMismatchError, EmptyInputError, InvalidCodesError,
                     NotFittedError)
from .storage import IndexRecord

if TYPE_CHECKING:
    from .quantize import ResidualKMeans

ENCODE_BLOCK = 65_536  # rows encoded (and fingerprinted) per block


class IndexModel(IndexReads):
    """Mixin: loads versions' quantizers (cached, one at a time), encodes, reports quality."""

    _model_cache: "tuple[int, ResidualKMeans] | None"

    @property
    def model(self) -> "ResidualKMeans":
        """The active version's frozen quantizer (imports torch)."""
        with self._store.read(self._op("load the model"), snapshot=True) as conn:
            rec = self._reread(conn)
            return self._model_in(conn, rec, self._version(conn, rec, None))

    def _model_in(self, conn: Connection, rec: IndexRecord, version: int) -> "ResidualKMeans":
        """The frozen quantizer of ``version``, its codebooks read (and checked) in ``conn``."""
        if self._model_cache is None or self._model_cache[0] != version:
            from .quantize import ResidualKMeans

            books, header = self._store.catalog.codebooks(conn, rec, version)
            model = ResidualKMeans.from_codebooks(
                books, normalize_residuals=header["normalize_residuals"],
                residual_scales=header.get("residual_scales"),
                device=rec.options.get("device", "cpu"))
            self._model_cache = (version, model)
        return self._model_cache[1]

    # ================================================================== encoding and quality
    def encode(self, embeddings, *, version: int | None = None) -> np.ndarray:
        """Codes (N, L) int64 of embeddings (N, D) under a version's codebooks; stores nothing."""
        version = _inputs.version_number(version)
        with self._store.read(self._op("load the model"), snapshot=True) as conn:
            rec = self._reread(conn)
            model = self._model_in(conn, rec, self._version(conn, rec, version))
        x = _inputs.embeddings(embeddings, None, model.n_features_in_)
        return self._encode(model, x, False, fps=False)[0]

    def code_report(self, embeddings=None, *, version: int | None = None) -> dict:
        """The quality report of a version's stored IDs (default: the active version):
        :func:`~semid_index.quantize.code_statistics` of its codes (per-level usage, dead codes,
        entropy, perplexity, unique share per depth, ``n_collided``, ``collided_share``, largest
        group) plus ``relative_error``, the reconstruction error of ``embeddings`` (N, D) under
        that version's codebooks (None without embeddings; only then is torch imported).
        Reads every ID: 8 (L + 1) bytes each."""
        from ._code_stats import code_statistics

        _, ids = self.id_arrays(version=version)
        at = self._record.active_version if version is None else version
        assert at is not None  # id_arrays() raised NotFittedError for an index with no version
        if len(ids) == 0:
            raise EmptyInputError(f"version {at} of index {self.name!r} has no items")
        report = code_statistics(ids[:, :-1], self._record.codebook_sizes)
        report["relative_error"] = None
        if embeddings is not None:
            from .quantize._data import validated

            with self._store.read(self._op("load the model"), snapshot=True) as conn:
                model = self._model_in(conn, self._reread(conn), at)
            x = _inputs.embeddings(embeddings, None, model.n_features_in_)
            report["relative_error"] = model.quality(validated(x)).relative_error
        return report

    def _check_model(self, model, dim: int) -> None:
        if getattr(model, "codebooks_", None) is None:
            raise NotFittedError("the model passed to fit() is not fitted")
        sizes = tuple(int(c.shape[0]) for c in model.codebooks_)
        if sizes != self._record.codebook_sizes:
            raise ConfigError(f"the model has codebook sizes {list(sizes)} but index "
                              f"{self.name!r} uses {list(self._record.codebook_sizes)}")
        if model.n_features_in_ != dim:
            raise DimensionMismatchError(
                f"embeddings have dim={dim} but the model was trained with "
                f"dim={model.n_features_in_}")

    def _encode(self, model, x: np.ndarray, progress: bool | None,
                fps: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(codes (N, L) int64, fingerprints (N,) int64) of validated embeddings x (N, D)."""
        from ._fingerprint import fingerprints
        from .quantize._data import validated

        n = x.shape[0]
        codes = np.empty((n, model.n_levels), dtype=np.int64)
        prints = np.zeros(n, dtype=np.int64)
        with _bar(n, "encoding", progress) as bar:
            for a in range(0, n, ENCODE_BLOCK):
                blk = np.ascontiguousarray(x[a:a + ENCODE_BLOCK], dtype=np.float32)
                codes[a:a + len(blk)] = model.encode(validated(blk)).numpy()
                if fps:
                    prints[a:a + len(blk)] = fingerprints(blk)
                bar.update(len(blk))
        sizes = np.asarray(self._record.codebook_sizes)
        if n and (codes.max(axis=0) >= sizes).any():  # a model that is not this index's
            raise InvalidCodesError(f"the model produced codes up to {codes.max(axis=0)} for "
                                    f"codebook sizes {list(sizes)}")
        return codes, prints


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _bar(total: int, desc: str, progress: bool | None):
    """A tqdm bar: shown when ``progress`` is True, or None and stderr is a terminal."""
    if progress is False or (progress is None and total < 50_000):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="items", disable=None if progress is None else False,
                leave=False)
