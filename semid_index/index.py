"""``SemanticIdIndex``: the one place where the quantizer and the store meet.

Life cycle and writes live here; the torch-free queries (``lookup``, ``items_with_prefix``,
``count``, ``similar``, ``stats``...) in :mod:`semid_index._index_reads`. ``fit``, ``add`` and
``encode`` import :mod:`semid_index.quantize` on first use.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import _inputs
from ._index_reads import IndexReads, _raise_unknown
from .errors import (ConfigError, DimensionMismatchError, EmptyInputError, IndexNotFoundError,
                     ItemConflictError, NonFiniteError, NotFittedError)
from .ids import SemanticId
from .storage import _migrate
from .storage._codes import code_width, group_suffixes, pack_codes
from .storage._store import IndexRecord, Store

if TYPE_CHECKING:
    from .quantize import ResidualKMeans

log = logging.getLogger("semid_index")

__all__ = ["SemanticIdIndex"]

ENCODE_BLOCK = 65_536  # rows encoded (and fingerprinted) per block
ADD_CHUNK = 10_000  # keys checked / inserted per statement group inside one add transaction
ON_CONFLICT = ("error", "keep", "reassign")
MODEL_OPTIONS = ("normalize_residuals", "train_layer_wise", "batch_size", "max_epochs",
                 "max_steps", "tol", "max_no_improvement", "init_size", "n_init_trials",
                 "reassign_empty", "n_polish", "polish_tol", "train_size", "check_input", "seed",
                 "device", "mode")


class SemanticIdIndex(IndexReads):
    """Hierarchical semantic IDs for a catalog, kept in SQLite or PostgreSQL.

    Create one with :meth:`create` (or reopen it with :meth:`open`) on a database URL
    (``sqlite:///catalog.db``, ``postgresql+psycopg://user:pw@host/db``) or a SQLAlchemy Engine.
    One database holds any number of named indexes.

    - :meth:`fit` trains residual k-means on the catalog's embeddings, gives every item an ID and
      stores codebooks and IDs as a new *version*, made active in the same transaction.
    - :meth:`add` assigns new items with the active version's frozen codebooks. IDs already
      issued never change, and a removed item's ID is never issued again.
    - :meth:`lookup`, :meth:`items_with_prefix`, :meth:`count`, :meth:`child_counts`,
      :meth:`similar` answer from indexed range scans (no torch needed).

    An ID is ``L`` level codes plus a suffix that tells apart items with equal codes:
    ``12-201-7-0`` (see :class:`SemanticId`).

    Example
    -------
    >>> import numpy as np, tempfile, os
    >>> from semid_index import SemanticIdIndex
    >>> x = np.random.default_rng(0).normal(size=(500, 16)).astype("float32")
    >>> keys = [f"item-{i}" for i in range(500)]
    >>> path = os.path.join(tempfile.mkdtemp(), "catalog.db")
    >>> with SemanticIdIndex.create(f"sqlite:///{path}", "demo", n_levels=2,
    ...                             codebook_size=8) as index:
    ...     _ = index.fit(keys, x)
    ...     sid = index.lookup("item-0")
    ...     page = index.items_with_prefix(sid.prefix(1), limit=5)
    ...     print(sid.depth, len(page), index.count(sid.prefix(1)) >= len(page))
    2 5 True
    """

    def __init__(self, store: Store, record: IndexRecord):
        # use create() / open()
        self._store = store
        self._record = record
        self._model_cache: tuple[int, ResidualKMeans] | None = None

    # ================================================================== life cycle
    @classmethod
    def create(cls, db, name: str = "default", *, n_levels: int = 3,
               codebook_size: int | Sequence[int] = 256, exist_ok: bool = False,
               busy_timeout: float | None = None, **options) -> "SemanticIdIndex":
        """Create an empty index (and the schema, if the database has none yet).

        db : URL string, ``sqlalchemy.URL`` or ``Engine``. name : index name (unique per database).
        n_levels, codebook_size : the hierarchy (codebook_size: one int or one per level).
        options : :class:`~semid_index.quantize.ResidualKMeans` options used by :meth:`fit`
            (``seed``, ``normalize_residuals``, ``batch_size``, ``train_size``, ``device``...).
        exist_ok : return the existing index of that name instead of raising
            :class:`IndexExistsError` (its levels and sizes must match).
        """
        sizes = _check_hierarchy(n_levels, codebook_size)
        bad = sorted(set(options) - set(MODEL_OPTIONS))
        if bad:
            raise ConfigError(f"unknown index option(s) {bad}; known: {', '.join(MODEL_OPTIONS)}")
        _check_name(name)
        store = Store(db, busy_timeout=busy_timeout)
        with _closed_on_error(store), store.write() as conn:
            _migrate.upgrade(conn, store.url)
            if exist_ok and name in store.index_names(conn):
                record = store.get_index(conn, name)
                if record.codebook_sizes != tuple(sizes):
                    raise ConfigError(
                        f"index {name!r} exists with codebook sizes "
                        f"{list(record.codebook_sizes)}, not {sizes}")
            else:
                store.create_index(conn, name, n_levels=len(sizes), codebook_sizes=sizes,
                                   code_width=code_width(sizes), options=options)
                record = store.get_index(conn, name)
        return cls(store, record)

    @classmethod
    def open(cls, db, name: str = "default", *, upgrade: bool = True,
             busy_timeout: float | None = None) -> "SemanticIdIndex":
        """Open an existing index. ``upgrade`` applies pending schema revisions (one
        transaction); with ``upgrade=False`` an older schema raises :class:`SchemaError`."""
        store = Store(db, busy_timeout=busy_timeout)
        with _closed_on_error(store):
            with store.read() as conn:
                rev = _migrate.current_revision(conn)
                if rev != _migrate.head_revision() and not (upgrade and rev is not None):
                    store.check_schema(conn)
            if rev != _migrate.head_revision():
                store.upgrade_schema()
            with store.read() as conn:
                record = store.get_index(conn, name)
        return cls(store, record)

    @staticmethod
    def migrate(db) -> tuple[str | None, str]:
        """Bring a database's schema to this library's revision; (before, after)."""
        store = Store(db)
        try:
            return store.upgrade_schema()
        finally:
            store.close()

    @staticmethod
    def list_indexes(db) -> list[str]:
        """Names of the indexes in a database (empty when it has no schema yet)."""
        store = Store(db)
        try:
            with store.read() as conn:
                if _migrate.current_revision(conn) is None:
                    return []
                store.check_schema(conn)
                return store.index_names(conn)
        finally:
            store.close()

    @staticmethod
    def drop(db, name: str) -> None:
        """Delete an index with all its versions and items (one transaction)."""
        store = Store(db)
        try:
            with store.write() as conn:
                store.check_schema(conn)
                store.drop_index(conn, store.get_index(conn, name, lock=True).id)
        finally:
            store.close()

    def close(self) -> None:
        """Release the database connections (only those of an engine this index created)."""
        self._store.close()

    def __enter__(self) -> "SemanticIdIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        r = self._record
        return (f"SemanticIdIndex({r.name!r}, url={self._store.url!r}, levels={r.n_levels}, "
                f"codebook_sizes={list(r.codebook_sizes)}, active_version={r.active_version})")

    # ================================================================== properties
    @property
    def name(self) -> str:
        return self._record.name

    @property
    def url(self) -> str:
        """Database URL (password hidden)."""
        return self._store.url

    @property
    def n_levels(self) -> int:
        return self._record.n_levels

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return self._record.codebook_sizes

    @property
    def dim(self) -> int | None:
        """Embedding width of the active version (None before the first fit)."""
        return self._refresh().dim

    @property
    def active_version(self) -> int | None:
        return self._refresh().active_version

    @property
    def model(self) -> "ResidualKMeans":
        """The active version's frozen quantizer (imports torch)."""
        return self._model_for(self._require_version(None))

    def _refresh(self) -> IndexRecord:
        with self._store.read() as conn:
            self._record = self._store.get_index(conn, self._record.name)
        return self._record

    def _require_version(self, version: int | None) -> int:
        rec = self._refresh()
        if version is None:
            if rec.active_version is None:
                raise _not_fitted(rec)
            return rec.active_version
        with self._store.read() as conn:
            known = [v.version for v in self._store.list_versions(conn, rec)]
        if version not in known:
            raise IndexNotFoundError(
                f"index {rec.name!r} has no version {version}; versions: {known or 'none'}")
        return version

    def _model_for(self, version: int) -> "ResidualKMeans":
        if self._model_cache is None or self._model_cache[0] != version:
            from .quantize import ResidualKMeans

            with self._store.read() as conn:
                books, header = self._store.load_codebooks(conn, self._record.id, version)
            model = ResidualKMeans.from_codebooks(
                books, normalize_residuals=header["normalize_residuals"],
                residual_scales=header.get("residual_scales"),
                device=self._record.options.get("device", "cpu"))
            self._model_cache = (version, model)
        return self._model_cache[1]

    # ================================================================== writes
    def fit(self, keys, embeddings, *, model: "ResidualKMeans | None" = None,
            progress: bool | None = None) -> "SemanticIdIndex":
        """Train on the catalog, give every item an ID, store it all as a new active version.

        keys : N distinct item keys (str or int). embeddings : (N, D) floats (numpy array or
        memmap, torch tensor, ``.npy`` path). model : an already fitted ``ResidualKMeans`` with
        this index's levels and sizes, used instead of training. progress : tqdm bars
        (default: when stderr is a terminal).

        One transaction: on any error the database is exactly as before. Items colliding on all
        L codes get suffixes 0, 1, ... in input order. Earlier versions stay readable.
        """
        keys = _inputs.item_keys(keys)
        x = _inputs.embedding_matrix(embeddings, len(keys))
        rec = self._refresh()
        if model is None:
            from .quantize import ResidualKMeans

            model = ResidualKMeans(rec.n_levels, list(rec.codebook_sizes), **rec.options,
                                   verbose=bool(progress))
            try:
                model.fit(x)
            except NonFiniteError as e:
                if e.row is None:
                    raise
                raise NonFiniteError(
                    f"embedding of item {keys[e.row]!r} (row {e.row}) has a non-finite value "
                    f"(NaN/inf) in column {e.column}", row=e.row, column=e.column) from None
        else:
            self._check_model(model, x.shape[1])
        codes, fps = self._encode_rows(model, x, keys, progress)
        packed = pack_codes(codes, rec.code_width)
        suffixes = group_suffixes(packed)
        version = self._write_version(model, keys, packed, suffixes, fps, progress)
        log.info("index %r: version %d active with %d items (%d share all codes with another)",
                 rec.name, version, len(keys), int((suffixes > 0).sum()))
        return self

    def _write_version(self, model, keys: Sequence[str], packed: Sequence[bytes],
                       suffixes: np.ndarray, fps: np.ndarray, progress: bool | None) -> int:
        """One transaction: ``model``'s codebooks as a new version holding these items, made
        active. Returns the version number."""
        header = {"dim": int(model.n_features_in_), "codebook_sizes": list(self.codebook_sizes),
                  "normalize_residuals": bool(model.normalize_residuals),
                  "residual_scales": [float(s) for s in model.residual_scales_]}
        books = model.get_codebooks()
        with self._store.write() as conn, _bar(len(keys), "storing", progress) as bar:
            rec = self._store.get_index(conn, self.name, lock=True)
            version = self._store.add_version(conn, rec.id, books, header, len(keys))
            self._store.insert_items(conn, rec.id, version, keys, packed, suffixes, fps,
                                     progress=bar.update)
            self._store.activate(conn, rec.id, version, header["dim"])
            self._store.analyze(conn)
        self._model_cache = (version, model)
        self._refresh()
        return version

    def add(self, keys, embeddings, *, on_conflict: str = "error",
            progress: bool | None = None) -> list[SemanticId]:
        """Give new items IDs with the active version's frozen codebooks; their IDs, in order.

        keys : N distinct item keys. embeddings : (N, D), D the index's dim.
        on_conflict : what to do with a key the index already holds. Its ID is returned
            unchanged when the embedding is bit-for-bit the same. Otherwise ``"error"`` (default)
            raises :class:`ItemConflictError`; ``"keep"`` returns the existing ID;
            ``"reassign"`` encodes the new embedding: same codes keep the ID, other codes give a
            new ID and retire the old one (never issued again).

        One transaction: IDs already issued never change; if anything fails (bad row, conflict)
        nothing is written. Safe with concurrent writers: suffixes are allocated under the
        index's write lock, and the unique constraint on IDs backs it up.
        """
        if on_conflict not in ON_CONFLICT:
            raise ConfigError(f"on_conflict must be one of {ON_CONFLICT}, got {on_conflict!r}")
        keys = _inputs.item_keys(keys)
        rec = self._record  # the write transaction re-reads it under the lock
        if rec.active_version is None:
            self._require_version(None)  # refreshes; raises if never fitted
            rec = self._record
        x = _inputs.embedding_matrix(embeddings, len(keys))
        if x.shape[1] != rec.dim:
            rec = self._refresh()  # another process may have activated a refit
            _inputs.check_dim(x, rec.dim)
        version = rec.active_version
        model = self._model_for(version)
        codes, fps = self._encode_rows(model, x, keys, progress)
        packed = pack_codes(codes, rec.code_width)
        out_codes: list[bytes] = list(packed)
        out_suffix = np.zeros(len(keys), dtype=np.int64)
        with self._store.write() as conn, _bar(len(keys), "storing", progress) as bar:
            rec = self._store.get_index(conn, rec.name, lock=True)
            if rec.active_version != version:  # a refit was activated meanwhile: use it
                version = rec.active_version
                model = self._model_for(version)
                codes, _ = self._encode_rows(model, x, keys, False)
                packed = pack_codes(codes, rec.code_width)
                out_codes = list(packed)
            for a in range(0, len(keys), ADD_CHUNK):
                b = min(a + ADD_CHUNK, len(keys))
                self._add_chunk(conn, rec, version, keys, packed, fps, a, b, on_conflict,
                                out_codes, out_suffix)
                bar.update(b - a)
        decode = self._store.decoder(rec.n_levels, rec.code_width)
        return [SemanticId._trusted(decode(c), int(s)) for c, s in zip(out_codes, out_suffix)]

    def _add_chunk(self, conn, rec: IndexRecord, version: int, keys, packed, fps, a: int, b: int,
                   on_conflict: str, out_codes: list, out_suffix: np.ndarray) -> None:
        store = self._store
        suffixes, there = store.add_items(conn, rec.id, version, keys[a:b], packed[a:b],
                                          fps[a:b])
        out_suffix[a:b] = suffixes
        new, retire, refresh = [], {}, []
        where = {k: i for i, k in enumerate(keys[a:b], a) if k in there} if there else {}
        for k, i in where.items():  # keys the version already held, in input order
            hit = there[k]
            fp = int(fps[i])
            code, suffix, stored_fp = hit
            if stored_fp == fp or on_conflict == "keep" or (
                    on_conflict == "reassign" and code == packed[i]):
                out_codes[i], out_suffix[i] = code, suffix  # the same again, or kept
                if stored_fp != fp and on_conflict == "reassign":
                    refresh.append((k, fp))
            elif on_conflict == "error":
                decode = store.decoder(rec.n_levels, rec.code_width)
                raise ItemConflictError(
                    f"item {k!r} is already indexed as "
                    f"{SemanticId._trusted(decode(code), suffix)} with a different embedding; "
                    "pass on_conflict='reassign' to give it a new ID (or 'keep'), or remove "
                    "it first")
            else:  # reassign to other codes: retire the old ID
                retire[k] = hit
                new.append(i)
        store.update_fingerprints(conn, rec.id, version, refresh)
        if new:
            store.retire_items(conn, rec.id, version, retire)  # their IDs stay taken
            idx = np.asarray(new)
            out_suffix[idx] = store.assign_items(conn, rec.id, version, [keys[i] for i in new],
                                                 [packed[i] for i in new], fps[idx])

    def remove(self, keys, *, missing: str = "raise") -> int:
        """Remove items from the active version; their IDs are retired, never issued again.

        missing : ``"raise"`` (default: :class:`UnknownItemError` naming the unknown keys, and
        nothing is removed) or ``"ignore"``. Returns the number of items removed.
        """
        if missing not in ("raise", "ignore"):
            raise ConfigError(f"missing must be 'raise' or 'ignore', got {missing!r}")
        keys = _inputs.item_keys(keys, allow_duplicates=True)
        keys = list(dict.fromkeys(keys))
        with self._store.write() as conn:
            rec = self._store.get_index(conn, self._record.name, lock=True)
            if rec.active_version is None:
                raise _not_fitted(rec)
            found = self._store.existing_items(conn, rec.id, rec.active_version, keys)
            if missing == "raise" and len(found) != len(keys):
                _raise_unknown([k for k in keys if k not in found], rec.name)
            self._store.retire_items(conn, rec.id, rec.active_version, found)
        return len(found)

    def activate(self, version: int) -> None:
        """Make an earlier (or later) codebook version the active one (atomically)."""
        version = self._require_version(version)
        with self._store.write() as conn:
            rec = self._store.get_index(conn, self._record.name, lock=True)
            header = {v.version: v.header for v in self._store.list_versions(conn, rec)}
            self._store.activate(conn, rec.id, version, header[version]["dim"])
        self._refresh()

    # ================================================================== encoding
    def code_report(self, embeddings=None, *, version: int | None = None) -> dict:
        """The quality report of a version's stored IDs (default: the active version):
        :func:`~semid_index.quantize.code_statistics` of its codes (per-level usage, dead codes,
        entropy, perplexity, unique share per depth, collisions, largest group) plus
        ``relative_error``, the reconstruction error of ``embeddings`` (N, D) under that
        version's codebooks (None without embeddings). Reads every ID: 8 (L + 1) bytes each."""
        from .quantize import code_statistics

        version = self._require_version(version)
        _, ids = self.id_arrays(version=version)
        if len(ids) == 0:
            raise EmptyInputError(f"version {version} of index {self.name!r} has no items")
        report = code_statistics(ids[:, :-1], self._record.codebook_sizes)
        report["relative_error"] = None if embeddings is None else \
            self._model_for(version).quality(embeddings).relative_error
        return report

    def encode(self, embeddings, *, version: int | None = None) -> np.ndarray:
        """Codes (N, L) int64 of embeddings (N, D) under a version's codebooks; stores nothing."""
        version = self._require_version(version)
        model = self._model_for(version)
        x = _inputs.embedding_matrix(embeddings, None, model.n_features_in_)
        return self._encode_rows(model, x, None, False)[0]

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

    def _encode_rows(self, model, x: np.ndarray, keys: Sequence[str] | None,
                     progress: bool | None) -> tuple[np.ndarray, np.ndarray]:
        """(codes (N, L) int64, fingerprints (N,) int64); NaN/inf raise naming the item."""
        from ._fingerprint import fingerprints
        from .quantize._data import tensor_view

        n = x.shape[0]
        codes = np.empty((n, model.n_levels), dtype=np.int64)
        fps = np.empty(n, dtype=np.int64)
        with _bar(n, "encoding", progress) as bar:
            for a in range(0, n, ENCODE_BLOCK):
                blk = np.ascontiguousarray(x[a:a + ENCODE_BLOCK], dtype=np.float32)
                _inputs.check_finite(blk, a, keys)
                codes[a:a + len(blk)] = model.encode(tensor_view(blk)).numpy()
                fps[a:a + len(blk)] = fingerprints(blk)
                bar.update(len(blk))
        return codes, fps


# ====================================================================== helpers
def _check_hierarchy(n_levels, codebook_size) -> list[int]:
    if isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 1:
        raise ConfigError(f"n_levels must be a positive int, got {n_levels!r}")
    sizes = [codebook_size] * n_levels if isinstance(codebook_size, int) else list(codebook_size)
    if len(sizes) != n_levels:
        raise ConfigError(f"codebook_size has {len(sizes)} entries for {n_levels} levels")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 1 << 32:
            raise ConfigError(f"codebook sizes must be ints in 1..2**32, got {sizes}")
    return sizes


def _not_fitted(rec: IndexRecord) -> NotFittedError:
    return NotFittedError(f"index {rec.name!r} has no codebooks yet: call fit() first")


def _check_name(name) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ConfigError(f"index name must be a non-empty str of at most 200 characters, "
                          f"got {name!r}")


@contextlib.contextmanager
def _closed_on_error(store: Store):
    """Close ``store`` if the block raises (the index that would have owned it never exists)."""
    try:
        yield store
    except BaseException:
        store.close()
        raise


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

