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

            books, header, prices = self._store.catalog.codebooks(conn, rec, version)
            model = ResidualKMeans.from_codebooks(
                books, normalize_residuals=header["normalize_residuals"],
                residual_scales=header.get("residual_scales"), prices=prices,
                device=rec.options.get("device", "cpu"))
            model.precision = rec.options.get("precision", "fp32")
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

    def code_report(self, embeddings=None, *, keys=None, version: int | None = None,
                    n_neighbours: int = 10, sample: int = 2000) -> dict:
        """The quality report of a version's stored IDs (default: the active version):
        :func:`~semid_index.quantize.code_statistics` of its codes (per-level usage, dead codes,
        entropy, perplexity, unique share per depth, ``n_collided``, ``collided_share``, largest
        group) plus ``relative_error``, the reconstruction error of ``embeddings`` (N, D) under
        that version's codebooks (None without embeddings; only then is torch imported).
        Streams the IDs page by page: memory does not grow with the catalog.

        ``fit``: what the fit that wrote the version recorded (``relative_error``,
        ``n_relocated`` and ``relocation_error`` (extra squared error) under ``max_per_code``,
        ``warm_start``). With ``keys`` (the items whose ``embeddings`` rows these are, e.g. the
        ones added since the fit), the report is about *their stored IDs*:
        ``relative_error`` is their reconstruction error under the IDs they hold (compare it
        with ``fit["relative_error"]`` to see drift), ``neighbour_preservation[k-1]`` the share of
        each sampled item's ``n_neighbours`` exact cosine neighbours (among these items) that
        share its first k codes, and ``code_size_shift[l]`` the total variation distance between
        their level-l code distribution and the whole version's."""
        from ._code_stats import SortedCodeStatistics

        acc = SortedCodeStatistics(self._record.codebook_sizes)
        for _, page in self.id_pages(version=version):  # sorted by ID, so by code
            acc.add(page[:, :-1])
        at = self._record.active_version if version is None else version
        assert at is not None  # id_pages() raised NotFittedError for an index with no version
        if acc.n == 0:
            raise EmptyInputError(f"version {at} of index {self.name!r} has no items")
        report = acc.result()
        report["relative_error"] = None
        with self._store.read(self._op("read the version header"), snapshot=True) as conn:
            header = self._store.catalog.header(conn, self._reread(conn), at)
        report["fit"] = header.get("fit", {})
        if keys is not None and embeddings is None:
            raise ConfigError("keys= needs embeddings= (one row per key)")
        if embeddings is not None:
            from .quantize._data import validated

            with self._store.read(self._op("load the model"), snapshot=True) as conn:
                model = self._model_in(conn, self._reread(conn), at)
            if keys is None:
                x = _inputs.embeddings(embeddings, None, model.n_features_in_)
                report["relative_error"] = model.quality(validated(x)).relative_error
            else:
                from ._quality import code_size_shift_from, neighbour_preservation

                keys = _inputs.item_keys(keys)
                x = _inputs.embeddings(embeddings, len(keys), model.n_features_in_, keys=keys)
                held = self.lookup_many(keys, version=at)
                codes = np.array([sid.levels for sid in held if sid is not None],
                                 dtype=np.int64)
                report["relative_error"] = reconstruction(model, x, codes)["relative_error"]
                report["neighbour_preservation"] = neighbour_preservation(
                    x, codes, n_neighbours=n_neighbours, sample=sample) if len(keys) > 1 else None
                report["code_size_shift"] = code_size_shift_from(
                    acc.level_counts(), codes, self._record.codebook_sizes)
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


def reconstruction(model, x: np.ndarray, codes: np.ndarray) -> dict:
    """Squared reconstruction error and squared norm of x (N, D) under codes (N, L), summed
    (the fit's figures, and those :meth:`IndexModel.code_report` compares with them)."""
    import torch

    err = norm = 0.0
    for a in range(0, len(x), 65_536):
        blk = torch.from_numpy(np.array(x[a:a + 65_536], dtype=np.float32))  # writable copy
        if model.normalize_residuals:
            blk = torch.nn.functional.normalize(blk, dim=1)
        xhat = model.decode(torch.from_numpy(codes[a:a + 65_536])).cpu()
        err += float(((blk - xhat) ** 2).double().sum())
        norm += float((blk.double() ** 2).sum())
    return {"sq_error": err, "sq_norm": norm, "relative_error": err / max(norm, 1e-30)}


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def reset(self) -> None:
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
