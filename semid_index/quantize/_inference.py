"""Inference and persistence of a fitted residual k-means: encode, decode, quality, save/load.

:class:`CodesMixin` is the half of ``ResidualKMeans`` that needs only the codebooks
(``codebooks_``, ``codebook_sizes_``, ``n_features_in_``, ``residual_scales_``, ``_encoder``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import DimensionMismatchError, EmptyInputError, InvalidCodesError, ModelFileError
from ._bf16 import bf16_fast, check_precision
from ._data import (DEFAULT_CHUNK_BYTES, Source, as_float_tensor, check_batch, make_source,
                    rows_ok)
from ._kernels import (Codebook, Encoder, cache_rows, normalize_rows_, row_parallel,
                       sq_dists)
from ._metrics import QualityReport, code_statistics

if TYPE_CHECKING:
    from ._residual import ResidualKMeans

SAVE_FORMAT = "semid_index.residual_kmeans/1"
#: Rows per encode block. 8192 rather than 2048: the GEMM runs nearer its peak on taller blocks
#: (2026-12-02, 2-core AMD EPYC: 1M x 768 at 298 against 271 GFLOP/s median, GloVe 400k x 50
#: 1.53M against 1.33M items/s), and the block's scores (8192 x sum K floats) stay small. Wide
#: rows get fewer, so the block and its work copy stay within ENCODE_FLOATS floats each.
ENCODE_ROWS = 8192
ENCODE_FLOATS = 16 << 20


log = logging.getLogger("semid_index.quantize")
_warned: dict[str, bool] = {}  # devices whose bf16 fallback was logged


class CodesMixin:
    """encode / decode / quality / save / load for ``ResidualKMeans``."""

    # What ResidualKMeans provides. Annotations only: no class attribute is made, so an unfitted
    # model still has no ``codebooks_`` (``_check_fitted`` and callers test that with hasattr).
    normalize_residuals: bool
    n_features_in_: int
    codebook_sizes_: list[int]
    codebooks_: list[torch.Tensor]
    residual_scales_: torch.Tensor
    _books: list[Codebook]
    _encoder: Encoder
    precision: str

    if TYPE_CHECKING:
        @property
        def _device(self) -> torch.device: ...

        def _check_fitted(self) -> None: ...

        @classmethod
        def from_codebooks(cls, codebooks: Sequence, *, normalize_residuals: bool = False,
                           residual_scales: Sequence[float] | None = None,
                           prices: Sequence | None = None,
                           device: str | torch.device = "cpu") -> ResidualKMeans: ...

    # ------------------------------------------------------------------ inference
    def encode(self, X, *, batch_rows: int | None = None,
               precision: str | None = None) -> torch.Tensor:
        """Codes of every row: (N, L) int64 tensor on the CPU.

        X: anything ``fit`` accepts. Rows are processed in blocks of ``batch_rows`` (default 8192, fewer for D > 2048),
        all levels fused per block; float32 C-contiguous input is read in place, never copied.
        precision: ``"fp32"`` or ``"bf16"`` for this call (default: the model's ``precision``);
        both give the fp32 codes (see ``precision`` in :class:`ResidualKMeans`).
        """
        self._check_fitted()
        src = make_source(X)
        enc = self._encoder_for(precision)
        out = [codes for codes, _, _ in self._encode_blocks(src, batch_rows, encoder=enc)]
        if not out:
            raise EmptyInputError("embeddings are empty: the batches yielded no rows")
        return torch.cat(out)

    def effective_precision(self, precision: str | None = None) -> str:
        """The precision :meth:`encode` runs in: ``precision`` (default the model's), or
        ``"fp32"`` where this device has no fast bf16."""
        want = check_precision(getattr(self, "precision", "fp32") if precision is None
                               else precision)
        if want == "bf16" and not bf16_fast(self._device):
            if not _warned.get(str(self._device)):
                _warned[str(self._device)] = True
                log.info("precision='bf16': %s has no fast bf16 (AMX, AVX512-BF16 or CUDA); "
                         "encoding in fp32", self._device)
            return "fp32"
        return want

    def _encoder_for(self, precision: str | None) -> Encoder:
        """The fp32 encoder, or the bf16 one (built once) when that is the effective
        precision."""
        if self.effective_precision(precision) == "fp32":
            return self._encoder
        enc = getattr(self, "_bf16_encoder", None)
        if enc is None or enc.books is not self._books:
            enc = Encoder(self._books, self.normalize_residuals, bf16=True)
            self._bf16_encoder = enc
        return enc

    def _encode_blocks(self, src: Source, batch_rows: int | None = None, with_residual=False,
                       encoder: Encoder | None = None):
        """Yield (codes (b, L) int64 CPU, residual norms list or None, input block) per block."""
        dev = self._device
        dim = self.n_features_in_
        enc = encoder or self._encoder
        rows = batch_rows or max(1024, min(ENCODE_ROWS, ENCODE_FLOATS // max(dim, 1)))
        chunk_rows = max(rows, (DEFAULT_CHUNK_BYTES // (4 * dim)) // rows * rows)
        if src.dim is not None:  # an iterable's width is known only once read
            check_batch(torch.empty(0, src.dim), dim)
        work = torch.empty(rows, dim, device=dev)
        # codes only, fp32 on the CPU: blocks spread over the row pool, each in a core's cache
        # (at 64 codes or more: below, torch's threaded argmin of one large block is faster).
        # Unlike a fit's many short assignments (use_row_pool), an encode hands over once per
        # chunk: the pool ran 1000-row adds no slower, and a 768-d encode 1.17x faster
        pooled = not with_residual and enc.bf16 is None and dev.type == "cpu" and \
            max(enc.sizes) >= 64
        # pooled: in-memory rows come unscanned, and each pool thread scans its own block
        # while it is in cache (a separate pass costs 10-20% of the encode at D = 768)
        scan = pooled and not src.checked
        start = 0
        for chunk in src.chunks(chunk_rows, copy=False, check=not scan):
            if chunk.shape[1] != dim:
                check_batch(chunk[:0], dim)
            chunk = chunk.to(dev)
            start += chunk.shape[0]
            if pooled:
                codes = _pooled_codes(enc, chunk, batch_rows, scan)
                if scan and (codes is None or codes is False):
                    # not on the pool after all, or a bad row: the full scan names it
                    check_batch(chunk, None, row_offset=start - chunk.shape[0], name=src.name)
                if isinstance(codes, torch.Tensor):
                    yield codes, None, chunk
                    continue
            for a in range(0, chunk.shape[0], rows):
                blk = chunk[a:a + rows]
                codes = torch.empty(blk.shape[0], len(self._books), dtype=torch.int64, device=dev)
                norms: list[torch.Tensor] | None = [] if with_residual else None
                enc.encode(blk, codes, work, norms)
                yield codes.cpu(), norms, blk

    def predict(self, X) -> torch.Tensor:
        """Alias of :meth:`encode` (scikit-learn naming)."""
        return self.encode(X)

    def decode(self, codes) -> torch.Tensor:
        """Reconstruction from codes (N, L) -> (N, D) float32.

        Plain residuals: the sum of the selected centroids. With ``normalize_residuals`` the
        residual norms are not stored, so the reconstruction of the *unit-normalised* input uses the
        mean residual norm of each level seen in training: ``c_1 + s_2 (c_2 + s_3 (c_3 ...))``.
        """
        self._check_fitted()
        c = torch.as_tensor(codes)
        if c.ndim != 2 or c.shape[1] != len(self.codebooks_):
            raise InvalidCodesError(
                f"codes must have shape (N, {len(self.codebooks_)}), got {tuple(c.shape)}")
        if c.dtype.is_floating_point:
            raise InvalidCodesError(f"codes must be integers, got dtype {c.dtype}")
        c = c.to(torch.int64)
        for lv, k in enumerate(self.codebook_sizes_):
            col = c[:, lv]
            if col.numel() and (int(col.min()) < 0 or int(col.max()) >= k):
                raise InvalidCodesError(
                    f"codes at level {lv + 1} must lie in 0..{k - 1}, got values in "
                    f"{int(col.min())}..{int(col.max())}")
        c = c.to(self._device)
        out = torch.zeros(c.shape[0], self.n_features_in_, device=self._device)
        for lv in reversed(range(len(self.codebooks_))):
            if self.normalize_residuals and lv + 1 < len(self.codebooks_):
                out.mul_(float(self.residual_scales_[lv + 1]))
            out.add_(self.codebooks_[lv].index_select(0, c[:, lv]))
        return out.cpu()

    def level_distances(self, X, codes, level: int = -1) -> torch.Tensor:
        """Squared distances (N, K_level) float32 from each row's input to ``level`` (default the
        last; 0-based) to every centroid of that level, the earlier levels following ``codes``
        (N, L) (with ``normalize_residuals``, the normalised input, as encoding sees it). Prices
        are not included: these are true distances (used to relocate colliding items)."""
        self._check_fitted()
        L = len(self._books)
        lv = level % L
        x = as_float_tensor(X).to(self._device)
        c = torch.as_tensor(np.asarray(codes), dtype=torch.int64).to(self._device)
        check_batch(x, self.n_features_in_, expected_from="the model was trained with")
        if c.ndim != 2 or c.shape != (x.shape[0], L):
            raise DimensionMismatchError(f"codes must have shape ({x.shape[0]}, {L}), "
                                         f"got {tuple(c.shape)}")
        out = torch.empty(x.shape[0], self.codebook_sizes_[lv], device=self._device)
        for a in range(0, x.shape[0], 8192):
            r = x[a:a + 8192].clone()
            for m in range(lv + 1):
                if self.normalize_residuals:
                    normalize_rows_(r)
                if m == lv:
                    out[a:a + 8192] = sq_dists(r, self._books[m].centroids)
                else:
                    r.sub_(self._books[m].centroids.index_select(0, c[a:a + 8192, m]))
        return out

    def quality(self, X) -> QualityReport:
        """Quality report over a whole data set (streamed): see :class:`QualityReport`."""
        self._check_fitted()
        src = make_source(X)
        L = len(self._books)
        level_sq = torch.zeros(L + 1, dtype=torch.float64)
        total_sq = 0.0
        n = 0
        codes_all = []
        for codes, norms, orig in self._encode_blocks(src, with_residual=True):
            for lv in range(L + 1):
                level_sq[lv] += float(norms[lv].double().sum())
            if self.normalize_residuals:
                total_sq += float(orig.shape[0])  # the target is the unit-normalised input
            else:
                total_sq += float((orig.double() ** 2).sum())
            n += codes.shape[0]
            codes_all.append(codes.numpy())
        if n == 0:
            raise EmptyInputError("embeddings are empty: the batches yielded no rows")
        codes_np = np.concatenate(codes_all)
        rel = self._relative_error(src) if self.normalize_residuals else \
            float(level_sq[L]) / max(total_sq, 1e-30)
        stats = code_statistics(codes_np, self.codebook_sizes_)
        inertia = [float(level_sq[lv + 1]) for lv in range(L)]
        return QualityReport(n_items=n, inertia=inertia, relative_error=rel, **stats)

    def _relative_error(self, src: Source) -> float:
        """||x' - decode(encode(x))||^2 / ||x'||^2 with x' the unit-normalised input."""
        err = 0.0
        n = 0
        for chunk in src.chunks(8192):
            x = chunk.to(self._device)
            normalize_rows_(x)
            codes = self.encode(x)
            err += float(((x.cpu() - self.decode(codes)) ** 2).double().sum())
            n += x.shape[0]
        return err / max(n, 1)

    # ------------------------------------------------------------------ state
    def save(self, path) -> None:
        """Write the fitted codebooks to an ``.npz`` file: raw float32 arrays plus a JSON header
        (format, shapes, options). Nothing in it needs pickle to read; zip CRCs check the bytes."""
        self._check_fitted()
        header = {"format": SAVE_FORMAT, "n_features": self.n_features_in_,
                  "codebook_sizes": self.codebook_sizes_,
                  "normalize_residuals": bool(self.normalize_residuals),
                  "residual_scales": [float(v) for v in self.residual_scales_]}
        arrays = {f"codebook_{i}": c for i, c in enumerate(self.get_codebooks())}
        prices = self.get_prices()
        if prices is not None:
            header["prices"] = True
            arrays.update({f"prices_{i}": p for i, p in enumerate(prices)})
        # the keys are codebook_<i>, never savez's allow_pickle; mypy matches
        # **dict[str, ndarray] against that bool keyword too
        np.savez(path, header=np.array(json.dumps(header)), **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path, *, device: str | torch.device = "cpu") -> "ResidualKMeans":
        """Read a model written by :meth:`save` (never unpickles); checks the header and every
        codebook's shape. :class:`ModelFileError` names what is wrong with the file."""
        try:
            with np.load(path, allow_pickle=False) as f:
                if not hasattr(f, "files"):
                    raise ModelFileError(f"{path} is a single .npy array, not a saved model "
                                         "(.npz)")
                header = json.loads(str(f["header"]))
                if not isinstance(header, dict) or header.get("format") != SAVE_FORMAT:
                    raise ModelFileError(f"{path} has format {header.get('format')!r}, "
                                         f"expected {SAVE_FORMAT!r}"
                                         if isinstance(header, dict) else
                                         f"{path} has no model header")
                sizes, dim = header["codebook_sizes"], header["n_features"]
                books = [f[f"codebook_{i}"] for i in range(len(sizes))]
                normalize, scales = header["normalize_residuals"], header["residual_scales"]
                prices = [f[f"prices_{i}"] for i in range(len(sizes))] \
                    if header.get("prices") else None
        except ModelFileError:
            raise
        except FileNotFoundError:
            raise ModelFileError(f"no such model file: {path}") from None
        except Exception as exc:  # noqa: BLE001 - zip, npy, JSON and key errors of a bad file
            raise ModelFileError(f"{path} is not a semid_index model file: "
                                 f"{type(exc).__name__}: {exc}") from None
        for i, (b, k) in enumerate(zip(books, sizes)):
            if b.dtype != np.float32 or b.shape != (k, dim):
                raise ModelFileError(
                    f"{path}: codebook {i + 1} has shape {b.shape} and dtype {b.dtype}, header "
                    f"says ({k}, {dim}) float32")
        for i, (p, k) in enumerate(zip(prices or [], sizes)):
            if p.dtype != np.float32 or p.ndim != 2 or p.shape[1] != k or \
                    not np.isfinite(p).all():
                raise ModelFileError(f"{path}: prices {i + 1} have shape {p.shape} and dtype "
                                     f"{p.dtype}, expected (G, {k}) finite float32")
        return cls.from_codebooks(books, normalize_residuals=bool(normalize),
                                  residual_scales=scales, prices=prices, device=device)

    def get_codebooks(self) -> list[np.ndarray]:
        """Codebooks as float32 numpy arrays, one (K_l, D) array per level."""
        self._check_fitted()
        return [c.detach().cpu().numpy().astype(np.float32, copy=True) for c in self.codebooks_]

    def get_prices(self) -> list[np.ndarray] | None:
        """Per-code prices of a balanced or capacity-capped fit as float32 arrays, one (G_l, K_l)
        per level (G_l = 1: one price per code, as ``balance`` sets; G_l = K_(l-1): a row per
        parent code, as the ``max_per_code`` caps set); None when every price is zero (plain
        nearest-centroid encoding)."""
        self._check_fitted()
        prices = getattr(self, "prices_", None)
        if not prices or not any(bool(p.any()) for p in prices):
            return None
        return [p.detach().cpu().numpy().astype(np.float32, copy=True) for p in prices]


def _pooled_codes(enc: Encoder, chunk: torch.Tensor, rows: int | None,
                  scan: bool) -> torch.Tensor | bool | None:
    """Codes (n, L) int64 of a CPU chunk (n, D) from :func:`._kernels.row_parallel` (blocks of
    ``rows``, default sized to a core's cache); None where the pool is not used (nothing was
    run). With ``scan`` every block is first tested with :func:`._data.rows_ok`, and False
    comes back when one fails."""
    n, dim = chunk.shape
    width = sum(enc.sizes) if enc.cross else max(enc.sizes)
    block = rows or cache_rows(width, dim)
    codes = torch.empty(n, len(enc.sizes), dtype=torch.int64)
    local = threading.local()  # one work buffer per pool thread
    bad: list[int] = []

    def encode(a: int, b: int) -> None:
        x = chunk[a:b]
        if scan and not rows_ok(x):
            bad.append(a)
            return
        work = getattr(local, "work", None)
        if work is None:
            work = local.work = torch.empty(block, dim)
        enc.encode(x, codes[a:b], work)

    if not row_parallel(n, block, encode):
        return None
    return False if bad else codes
