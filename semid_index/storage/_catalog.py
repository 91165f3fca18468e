"""The catalog: named indexes, their codebook versions and codebooks (SQLAlchemy Core).

An :class:`IndexRecord` is one row of ``semid_indexes``; :meth:`IndexRecord.space` names where
one version's items live (:class:`Space`), which is all the item reads and writes need.
Records are re-read, never trusted from memory, before anything acts on them:
:meth:`Catalog.reread` finds the same index again by id *and* creation stamp, so a handle whose
index was dropped and created anew under the same name is refused, not written into.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from ..errors import (CorruptBlobError, IndexExistsError, IndexNotFoundError,
                      IndexReplacedError, VersionNotFoundError)
from ._codec import decode_array, decode_prices, encode_array
from ._codes import CodeLayout, code_width, layout
from ._schema import codebooks, indexes, items, retired, versions

__all__ = ["Catalog", "IndexRecord", "Space", "VersionRecord"]

_COLUMNS = ("id", "name", "n_levels", "codebook_sizes", "code_width", "dim", "options",
            "active_version", "created_at")


def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class Space:
    """Where one version's items live: the index's id, the version, and the code layout."""

    index_id: int
    version: int
    layout: CodeLayout


@dataclass(frozen=True)
class IndexRecord:
    """One row of semid_indexes, decoded. ``stamp`` is ``created_at`` exactly as the driver
    returns it, so identity checks can bind it back."""

    id: int
    name: str
    n_levels: int
    codebook_sizes: tuple[int, ...]
    code_width: int
    dim: int | None
    options: dict
    active_version: int | None
    created_at: datetime
    stamp: Any = field(repr=False, compare=False)

    @property
    def layout(self) -> CodeLayout:
        return layout(self.n_levels, self.code_width)

    def space(self, version: int) -> Space:
        return Space(self.id, version, self.layout)

    def same_index(self, other: "IndexRecord") -> bool:
        """True if ``other`` is a later reading of this very index (not a namesake)."""
        return (self.id, self.stamp, self.name, self.codebook_sizes, self.code_width) == \
            (other.id, other.stamp, other.name, other.codebook_sizes, other.code_width)


@dataclass(frozen=True)
class VersionRecord:
    """One codebook version of an index."""

    version: int
    created_at: datetime
    n_items: int
    header: dict
    active: bool


def _utc(value) -> datetime:
    if isinstance(value, str):  # SQLite keeps the text SQLAlchemy wrote (UTC, no zone)
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


class Catalog:
    """Indexes, versions and codebooks of one database (``url`` for messages)."""

    def __init__(self, dialect: str, url: str):
        self.dialect = dialect
        self.url = url
        ph = "?" if dialect == "sqlite" else "%s"
        head = f"SELECT {', '.join(_COLUMNS)} FROM semid_indexes WHERE "
        lock = "" if dialect == "sqlite" else " FOR UPDATE"  # SQLite: the write lock is held
        self._by = {(col, locked): head + f"{col} = {ph}" + (lock if locked else "")
                    for col in ("id", "name") for locked in (False, True)}

    # ------------------------------------------------------------------ indexes
    def create(self, conn: Connection, name: str, codebook_sizes: list[int],
               options: dict) -> IndexRecord:
        if conn.execute(select(indexes.c.id).where(indexes.c.name == name)).first():
            raise IndexExistsError(f"an index named {name!r} already exists in {self.url}")
        conn.execute(insert(indexes).values(
            name=name, n_levels=len(codebook_sizes), codebook_sizes=json.dumps(codebook_sizes),
            code_width=code_width(codebook_sizes), dim=None, options=json.dumps(options),
            active_version=None, created_at=now()))
        return self.get(conn, name)

    def _row(self, conn: Connection, column: str, value, lock: bool) -> IndexRecord | None:
        row = conn.exec_driver_sql(self._by[(column, lock)], (value,)).first()
        if row is None:
            return None
        try:
            return IndexRecord(
                id=row[0], name=row[1], n_levels=row[2],
                codebook_sizes=tuple(int(k) for k in json.loads(row[3])), code_width=row[4],
                dim=row[5], options=json.loads(row[6]), active_version=row[7],
                created_at=_utc(row[8]), stamp=row[8])
        except (TypeError, ValueError) as e:
            raise CorruptBlobError(f"the record of index {row[1]!r} in {self.url} is damaged: "
                                   f"{e}") from None

    def get(self, conn: Connection, name: str, *, lock: bool = False) -> IndexRecord:
        """The index called ``name``; ``lock`` takes its row lock for the rest of the
        transaction (PostgreSQL ``FOR UPDATE``; SQLite's write transaction holds the file)."""
        rec = self._row(conn, "name", name, lock)
        if rec is None:
            raise IndexNotFoundError(f"no index named {name!r} in {self.url}; existing: "
                                     f"{self.names(conn) or 'none'}")
        return rec

    def reread(self, conn: Connection, rec: IndexRecord, *, lock: bool = False) -> IndexRecord:
        """``rec`` read again (active version, dim) in this transaction; raises
        :class:`IndexReplacedError` if the index was dropped and created anew, and
        :class:`IndexNotFoundError` if it was dropped."""
        now_rec = self._row(conn, "id", rec.id, lock)
        if now_rec is not None and rec.same_index(now_rec):
            return now_rec
        if rec.name in self.names(conn):
            raise IndexReplacedError(
                f"index {rec.name!r} in {self.url} was dropped and created anew since this "
                "handle opened it; open it again to use the new index")
        raise IndexNotFoundError(f"index {rec.name!r} was dropped from {self.url} since this "
                                 "handle opened it")

    def names(self, conn: Connection) -> list[str]:
        return list(conn.execute(select(indexes.c.name).order_by(indexes.c.name)).scalars())

    def drop(self, conn: Connection, rec: IndexRecord) -> None:
        for table in (items, retired, codebooks, versions):
            conn.execute(delete(table).where(table.c.index_id == rec.id))
        conn.execute(delete(indexes).where(indexes.c.id == rec.id))

    # ------------------------------------------------------------------ versions
    def add_version(self, conn: Connection, rec: IndexRecord, books: list[np.ndarray],
                    header: dict, n_items: int,
                    prices: list[np.ndarray] | None = None) -> int:
        """Store a new codebook version (not yet active), with its per-level prices (G_l, K_l)
        if it has any; its number."""
        last = conn.execute(select(func.max(versions.c.version))
                            .where(versions.c.index_id == rec.id)).scalar()
        version = (last or 0) + 1
        conn.execute(insert(versions).values(index_id=rec.id, version=version,
                                             created_at=now(), n_items=n_items,
                                             header=json.dumps(header)))
        conn.execute(insert(codebooks), [
            {"index_id": rec.id, "version": version, "level": lv,
             "data": encode_array(np.asarray(b, dtype="<f4")),
             "prices": None if prices is None else encode_array(np.asarray(prices[lv], "<f4"))}
            for lv, b in enumerate(books)])
        return version

    def activate(self, conn: Connection, rec: IndexRecord, version: int) -> None:
        dim = self.header(conn, rec, version)["dim"]
        conn.execute(update(indexes).where(indexes.c.id == rec.id)
                     .values(active_version=version, dim=dim))

    def analyze(self, conn: Connection) -> None:
        """Refresh the planner's statistics of the items table after a bulk load (PostgreSQL;
        SQLite's planner needs none for these queries)."""
        if self.dialect == "postgresql":
            conn.exec_driver_sql("ANALYZE semid_items")

    def versions(self, conn: Connection, rec: IndexRecord) -> list[VersionRecord]:
        rows = conn.execute(select(versions).where(versions.c.index_id == rec.id)
                            .order_by(versions.c.version)).mappings()
        return [VersionRecord(r["version"], r["created_at"], r["n_items"],
                              self._parse_header(rec, r["version"], r["header"]),
                              r["version"] == rec.active_version) for r in rows]

    def header(self, conn: Connection, rec: IndexRecord, version: int) -> dict:
        """A version's header (dim, sizes, normalisation); :class:`VersionNotFoundError` if the
        index has no such version."""
        text = conn.execute(select(versions.c.header).where(
            versions.c.index_id == rec.id, versions.c.version == version)).scalar()
        if text is None:
            known = [v for v in conn.execute(select(versions.c.version).where(
                versions.c.index_id == rec.id).order_by(versions.c.version)).scalars()]
            raise VersionNotFoundError(f"index {rec.name!r} has no version {version}; "
                                       f"versions: {known or 'none'}")
        return self._parse_header(rec, version, text)

    def _parse_header(self, rec: IndexRecord, version: int, text: str) -> dict:
        try:
            header = json.loads(text)
            dim = header["dim"]
            sizes = header["codebook_sizes"]
            ok = isinstance(dim, int) and dim > 0 and isinstance(header["normalize_residuals"],
                                                                   bool)
        except (TypeError, ValueError, KeyError) as e:
            raise CorruptBlobError(f"the header of version {version} of index {rec.name!r} in "
                                   f"{self.url} is damaged: {e!r}") from None
        if not ok or sizes != list(rec.codebook_sizes):
            raise CorruptBlobError(f"the header of version {version} of index {rec.name!r} in "
                                   f"{self.url} does not describe this index: {header}")
        return header

    def codebooks(self, conn: Connection, rec: IndexRecord,
                  version: int) -> tuple[list[np.ndarray], dict, list[np.ndarray] | None]:
        """(codebooks (K_l, D) float32 per level, header, prices (G_l, K_l) float32 per level or
        None) of one version, every blob checked against the index: one per level, each of the
        index's size and the version's dim; prices on every level or none, each (1 or K_(l-1),
        K_l). Versions written before schema 0003 keep their prices in the header."""
        header = self.header(conn, rec, version)
        rows = conn.execute(select(codebooks.c.level, codebooks.c.data, codebooks.c.prices).where(
            codebooks.c.index_id == rec.id, codebooks.c.version == version)
            .order_by(codebooks.c.level)).all()
        where = f"version {version} of index {rec.name!r} in {self.url}"
        if [r.level for r in rows] != list(range(rec.n_levels)):
            raise CorruptBlobError(f"{where} has codebooks for levels "
                                   f"{[r.level for r in rows]}, not 0..{rec.n_levels - 1}")
        books = []
        for r, k in zip(rows, rec.codebook_sizes):
            try:
                book = decode_array(bytes(r.data))
            except CorruptBlobError as e:
                raise CorruptBlobError(f"{where}, level {r.level + 1}: {e}") from None
            if book.dtype != np.float32 or book.shape != (k, header["dim"]):
                raise CorruptBlobError(f"{where}: the level-{r.level + 1} codebook is "
                                       f"{book.dtype} {book.shape}, not float32 "
                                       f"({k}, {header['dim']})")
            if not np.isfinite(book).all():
                raise CorruptBlobError(f"{where}: the level-{r.level + 1} codebook holds "
                                       "NaN/inf")
            books.append(book)
        return books, header, self._prices(rows, header, rec, where)

    @staticmethod
    def _prices(rows, header: dict, rec: IndexRecord, where: str) -> list[np.ndarray] | None:
        """The checked per-level prices of a version's codebook rows (or its header's)."""
        if all(r.prices is None for r in rows):
            return decode_prices(header["prices"], where) if header.get("prices") else None
        if any(r.prices is None for r in rows):
            raise CorruptBlobError(f"{where} has prices for levels "
                                   f"{[r.level + 1 for r in rows if r.prices is not None]} "
                                   "only, not for every level")
        out = []
        for r in rows:
            try:
                p = decode_array(bytes(r.prices))
            except CorruptBlobError as e:
                raise CorruptBlobError(f"{where}, level-{r.level + 1} prices: {e}") from None
            k = rec.codebook_sizes[r.level]
            groups = (1,) if r.level == 0 else (1, rec.codebook_sizes[r.level - 1])
            if p.dtype != np.float32 or p.ndim != 2 or p.shape[1] != k or \
                    p.shape[0] not in groups or not np.isfinite(p).all():
                shape = f"({' or '.join(map(str, groups))}, {k})"
                raise CorruptBlobError(f"{where}: the level-{r.level + 1} prices are {p.dtype} "
                                       f"{p.shape}, not finite float32 {shape}")
            out.append(p)
        return out
