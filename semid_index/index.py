"""``SemanticIdIndex``: the one place where the quantizer and the store meet.

Life cycle and writes live here; the torch-free queries (``lookup``, ``items_with_prefix``,
``count``, ``similar``, ``stats``...) in :mod:`semid_index._index_reads`. ``fit``, ``add`` and
``encode`` import :mod:`semid_index.quantize` on first use.

Every write is one transaction that first reads the index's record again under the index's
write lock (a handle never acts on what it remembers), then runs probe -> decide -> write:
the store probes, a pure function (:mod:`semid_index._assign`) decides, the store writes.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import _inputs
from ._assign import ON_CONFLICT, plan_add
from ._index_model import IndexModel, _bar, reconstruction
from ._index_reads import _raise_unknown
from .errors import ConfigError, DimensionMismatchError, NotFittedError
from .ids import SemanticId
from .storage import IndexRecord, Store, missing_sqlite_file
from .storage import _migrate

if TYPE_CHECKING:
    from .quantize import ResidualKMeans

log = logging.getLogger("semid_index")

__all__ = ["SemanticIdIndex"]


class SemanticIdIndex(IndexModel):
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
    ``12-201-7-0`` (see :class:`SemanticId`). Reads and writes always act on the index as the
    database has it: a refit by another process is followed, and an index dropped (or created
    anew under the same name) is refused with :class:`~semid_index.errors.IndexReplacedError`.

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
        # add() inserts before probing keys while its last probe found none (see add)
        self._adds_new = True

    # ================================================================== life cycle
    @classmethod
    def create(cls, db, name: str = "default", *, n_levels: int = 3,
               codebook_size: int | Sequence[int] = 256, exist_ok: bool = False,
               busy_timeout: float | None = None, **options) -> "SemanticIdIndex":
        """Create an empty index (and the database and schema, if there are none yet).

        db : URL string, ``sqlalchemy.URL`` or ``Engine``. name : index name (unique per
        database; 1..200 printable characters). n_levels, codebook_size : the hierarchy
        (codebook_size: one int or one per level). options : :class:`~semid_index.quantize.
        ResidualKMeans` options used by :meth:`fit` (``seed``, ``normalize_residuals``,
        ``balance``, ``batch_size``, ``train_size``, ``device``...), checked here, and
        ``max_per_code``: at most this many items per full code; training keeps the first
        levels' prefixes within what the codes below them can hold (see ``ResidualKMeans``),
        and :meth:`fit` and :meth:`add` move an item whose code is full to the nearest code with
        room under the same L-1 level prefix (an issued ID never moves; with no room left there,
        the item takes a suffix as without a cap). exist_ok : return the
        existing index of that name instead of raising :class:`IndexExistsError` (its codebook
        sizes must match). busy_timeout : seconds a write waits for another writer's lock
        (default 60) before :class:`~semid_index.errors.LockTimeoutError`.
        """
        sizes = _inputs.hierarchy(n_levels, codebook_size)
        _inputs.index_options(options)
        _inputs.index_name(name)
        store = Store(db, busy_timeout=_timeout(busy_timeout), creating=True)
        with _closed_on_error(store), store.write(f"create index {name!r}") as conn:
            _migrate.upgrade(conn, store.url)
            if exist_ok and name in store.catalog.names(conn):
                record = store.catalog.get(conn, name)
                if record.codebook_sizes != tuple(sizes):
                    raise ConfigError(
                        f"index {name!r} exists with codebook sizes "
                        f"{list(record.codebook_sizes)}, not {sizes}")
                for opt in ("max_per_code", "balance"):  # ID policies: never changed silently
                    if opt in options and record.options.get(opt) != options[opt]:
                        raise ConfigError(
                            f"index {name!r} exists with {opt}={record.options.get(opt)!r}, "
                            f"not {options[opt]!r}; create a new index for another policy")
            else:
                record = store.catalog.create(conn, name, sizes, options)
        return cls(store, record)

    @classmethod
    def open(cls, db, name: str = "default", *, upgrade: bool = True,
             busy_timeout: float | None = None) -> "SemanticIdIndex":
        """Open an existing index. ``upgrade`` applies pending schema revisions (one
        transaction); with ``upgrade=False`` an older schema raises :class:`SchemaError`.
        Opening never creates or converts a database, and a read-only database serves reads."""
        _inputs.index_name(name)
        store = Store(db, busy_timeout=_timeout(busy_timeout))
        with _closed_on_error(store):
            with store.read(f"open index {name!r}") as conn:
                rev = _migrate.current_revision(conn)
                if rev != _migrate.head_revision() and not (upgrade and rev is not None
                                                            and not store.read_only):
                    _migrate.check_schema(conn, store.url)
            if rev != _migrate.head_revision():
                store.upgrade_schema()
            with store.read(f"open index {name!r}") as conn:
                record = store.catalog.get(conn, name)
        return cls(store, record)

    @staticmethod
    def migrate(db) -> tuple[str | None, str]:
        """Bring a database's schema to this library's revision; (before, after)."""
        store = Store(db, creating=True)
        try:
            return store.upgrade_schema()
        finally:
            store.close()

    @staticmethod
    def list_indexes(db) -> list[str]:
        """Names of the indexes in a database (empty when it has no schema yet, or is a SQLite
        file that does not exist: none is created)."""
        if missing_sqlite_file(db):
            return []
        store = Store(db)
        try:
            with store.read("list indexes") as conn:
                if _migrate.current_revision(conn) is None:
                    return []
                _migrate.check_schema(conn, store.url)
                return store.catalog.names(conn)
        finally:
            store.close()

    @staticmethod
    def drop(db, name: str) -> None:
        """Delete an index with all its versions and items (one transaction)."""
        _inputs.index_name(name)
        store = Store(db)
        try:
            with store.write(f"drop index {name!r}") as conn:
                _migrate.check_schema(conn, store.url)
                store.catalog.drop(conn, store.catalog.get(conn, name, lock=True))
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

    # ================================================================== writes
    def fit(self, keys, embeddings, *, model: "ResidualKMeans | None" = None,
            warm_start: bool = False, progress: bool | None = None,
            distributed=False) -> "SemanticIdIndex":
        """Train on the catalog, give every item an ID, store it all as a new active version.

        keys : N distinct item keys (str or int). embeddings : (N, D) floats (numpy array or
        memmap, torch tensor, ``.npy`` path). model : an already fitted ``ResidualKMeans`` with
        this index's levels and sizes, used instead of training. warm_start : start every
        level from the active version's codebooks instead of k-means++ (a refit of a grown
        catalog then keeps most items' prefixes: see :meth:`churn`). progress : tqdm bars
        (default: when stderr is a terminal).

        With the index option ``max_per_code``, items beyond the capacity of their full code
        move to the nearest code with room under the same prefix (see :meth:`create`); the
        version records how many moved and the extra squared error (:meth:`code_report`).

        One transaction: on any error the database is exactly as before. Items colliding on all
        L codes get suffixes 0, 1, ... in input order. Earlier versions stay readable.

        distributed : False, True (the default torch.distributed group) or a process group.
        The bulk first fit of a catalog too large for one process: every rank of the job calls
        ``fit`` on the same index with *its own shard* of the keys and embeddings (the shards in
        rank order make up the catalog). Training is data-parallel (see
        :meth:`ResidualKMeans.fit`), every rank encodes its items, and rank 0 stores them all
        in one transaction (one COPY on PostgreSQL). Every rank returns with the same active
        version, or raises (:class:`~semid_index.DistributedError` on the ranks where another
        one failed) with nothing written. Every rank opens the index, so with SQLite the ranks
        share one file; across machines use PostgreSQL. Not with ``max_per_code``.
        """
        from .quantize import ResidualKMeans
        from .quantize._data import validated
        from .quantize._dist import group as _group

        group = _group(distributed)
        if group is not None:
            from ._fit_dist import fit_distributed

            fit_distributed(self, keys, embeddings, model, warm_start, progress, group)
            return self

        keys = _inputs.item_keys(keys)
        x = _inputs.embeddings(embeddings, len(keys), keys=keys)
        rec = self._refresh()
        if model is None:
            opts = _inputs.quantizer_options(rec.options)
            if warm_start:
                if rec.active_version is None:
                    raise NotFittedError(f"warm_start needs a fitted version; index {self.name!r} "
                                         "has none yet")
                start = self.model
                _check_dim(x, start.n_features_in_)
                opts["init"] = start  # its codebooks, and prices if balanced
            model = ResidualKMeans(rec.n_levels, list(rec.codebook_sizes), **opts,
                                   verbose=bool(progress))
            model.fit(validated(x))
        else:
            self._check_model(model, x.shape[1])
        codes, fps = self._encode(model, x, progress)
        fit_stats: dict = {"warm_start": bool(warm_start)}
        cap = rec.options.get("max_per_code")
        if cap is not None:
            from ._relocate import relocate

            moved = relocate(codes, lambda idx: model.level_distances(
                x[idx], codes[idx]).cpu().numpy(), rec.codebook_sizes, cap)
            codes = moved.codes
            fit_stats.update(n_relocated=moved.n_relocated,
                             relocation_error=moved.relocation_error,
                             n_over_capacity=moved.n_over_capacity)
        fit_stats.update(reconstruction(model, x, codes))
        version = self._store_version(model, keys, codes, fps, progress, fit_stats)
        log.info("index %r: version %d active with %d items", self.name, version, len(keys))
        return self

    def _store_version(self, model: "ResidualKMeans", keys: Sequence[str], codes: np.ndarray,
                       fps: np.ndarray, progress: bool | None, fit_stats: dict) -> int:
        """One transaction: ``model``'s codebooks as a new version holding these items (codes
        (N, L), fingerprints (N,)), made active. Returns the version number."""
        header = {"dim": int(model.n_features_in_), "codebook_sizes": list(self.codebook_sizes),
                  "normalize_residuals": bool(model.normalize_residuals),
                  "residual_scales": [float(s) for s in model.residual_scales_],
                  "fit": fit_stats}
        with self._store.write(self._op("fit")) as conn, _bar(len(keys), "storing",
                                                              progress) as bar:
            rec = self._reread(conn, lock=True)
            version = self._store.catalog.add_version(conn, rec, model.get_codebooks(), header,
                                                      len(keys), model.get_prices())
            self._store.writes.load(conn, rec.space(version), keys, codes, fps, bar.update)
            self._store.catalog.activate(conn, rec, version)
            self._store.catalog.analyze(conn)
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
        index's write lock, and the unique constraint on IDs backs it up. If another process
        activated a refit meanwhile, the items are encoded with it.
        """
        if on_conflict not in ON_CONFLICT:
            raise ConfigError(f"on_conflict must be one of {ON_CONFLICT}, got {on_conflict!r}")
        keys = _inputs.item_keys(keys)
        x = _inputs.embeddings(embeddings, len(keys), keys=keys)
        rec = self._record  # encoded with the version last seen; checked again under the lock
        cache = self._model_cache
        if cache is None or cache[0] != rec.active_version or x.shape[1] != rec.dim:
            with self._store.read(self._op("load the model"), snapshot=True) as conn:
                rec = self._reread(conn)
                version = self._version(conn, rec, None)
                _check_dim(x, rec.dim)
                cache = version, self._model_in(conn, rec, version)
        version, model = cache
        codes, fps = self._encode(model, x, progress)
        with self._store.write(self._op("add items")) as conn, _bar(len(keys), "storing",
                                                                    progress) as bar:
            rec = self._reread(conn, lock=True)
            if rec.active_version != version:  # a refit was activated meanwhile: use it
                version = self._version(conn, rec, None)
                _check_dim(x, rec.dim)
                codes, _ = self._encode(self._model_in(conn, rec, version), x, False, fps=False)
            space = rec.space(version)
            cap = rec.options.get("max_per_code")
            suffixes = None
            if cap is None and self._adds_new:  # insert first: its key check is the probe
                suffixes = self._store.writes.insert_if_new(conn, space, keys, codes, fps,
                                                            bar.update)
            if suffixes is not None:  # every key was new
                plan = plan_add(keys, codes, fps, {}, on_conflict)
            else:
                bar.reset()
                found = self._store.reads.find(conn, space, keys)
                # the insert-first guess is made again once an add finds no key it holds
                self._adds_new = not found
                plan = plan_add(keys, codes, fps, found, on_conflict)
                if cap is not None and len(plan.new):
                    codes = self._relocated(conn, space, rec, version, x, codes, plan.new, cap)
                bar.update(len(plan.kept))
                self._store.writes.retire(conn, space, plan.retire)
                self._store.writes.set_fingerprints(conn, space, plan.refresh)
                suffixes = self._store.writes.insert_new(
                    conn, space, [keys[i] for i in plan.new.tolist()], codes[plan.new],
                    fps[plan.new], bar.update)
        return [SemanticId._trusted(levels, suffix) for levels, suffix in plan.ids(codes, suffixes)]

    def _relocated(self, conn, space, rec: IndexRecord, version: int, x: np.ndarray,
                   codes: np.ndarray, new: np.ndarray, cap: int) -> np.ndarray:
        """codes with the new items' (rows ``new``) moved off full codes (see :meth:`create`);
        issued IDs count against the capacity and never move."""
        from ._relocate import relocate

        sizes = rec.codebook_sizes
        model = self._model_in(conn, rec, version)
        sub = codes[new]

        def occupied(prefix_keys: np.ndarray) -> dict[int, int]:
            prefixes = [()] if len(sizes) == 1 else [tuple(p) for p in np.stack(
                np.unravel_index(prefix_keys, sizes[:-1]), axis=1).tolist()]
            counts = self._store.reads.code_counts(conn, space, prefixes)
            return {int(np.ravel_multi_index(c, sizes)): n for c, n in counts.items()}

        moved = relocate(sub, lambda idx: model.level_distances(
            x[new[idx]], sub[idx]).cpu().numpy(), sizes, cap, occupied)
        if moved.n_relocated:
            log.info("index %r: %d new items relocated (extra squared error %.6g), %d over "
                     "capacity", self.name, moved.n_relocated, moved.relocation_error,
                     moved.n_over_capacity)
        out = codes.copy()
        out[new] = moved.codes
        return out

    def remove(self, keys, *, missing: str = "raise") -> int:
        """Remove items from the active version; their IDs are retired, never issued again.

        missing : ``"raise"`` (default: :class:`UnknownItemError` naming the unknown keys, and
        nothing is removed) or ``"skip"``. Returns the number of items removed.
        """
        missing = _inputs.missing_policy(missing)
        keys = list(dict.fromkeys(_inputs.item_keys(keys, allow_duplicates=True)))
        with self._store.write(self._op("remove items")) as conn:
            rec = self._reread(conn, lock=True)
            space = rec.space(self._version(conn, rec, None))
            found = self._store.reads.find(conn, space, keys)
            if missing == "raise" and len(found) != len(keys):
                _raise_unknown([k for k in keys if k not in found], rec.name)
            self._store.writes.retire(conn, space, {k: (f.levels, f.suffix)
                                                    for k, f in found.items()})
        return len(found)

    def activate(self, version: int) -> None:
        """Make an earlier (or later) codebook version the active one (atomically); its
        codebooks are checked first."""
        version = _inputs.positive_int("version", version)
        with self._store.write(self._op("activate a version")) as conn:
            rec = self._reread(conn, lock=True)
            self._store.catalog.codebooks(conn, rec, version)  # exists, and is intact
            self._store.catalog.activate(conn, rec, version)
        self._refresh()

# ====================================================================== helpers
def _check_dim(x: np.ndarray, dim: int | None) -> None:
    if dim is not None and x.shape[1] != dim:
        raise DimensionMismatchError(
            f"embeddings have dim={x.shape[1]} but the index was trained with dim={dim}")


def _timeout(seconds) -> float | None:
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or \
            not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"busy_timeout must be a positive number of seconds, got {seconds!r}")
    return float(seconds)


@contextlib.contextmanager
def _closed_on_error(store: Store):
    """Close ``store`` if the block raises (the index that would have owned it never exists)."""
    try:
        yield store
    except BaseException:
        store.close()
        raise
