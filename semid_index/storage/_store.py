"""The store: one database's transactions, catalog and item tables, behind one object.

Numpy and SQLAlchemy only (a serving process that looks IDs up never imports torch).

- ``read()`` / ``write()`` (from :class:`~._engine.Transactions`) give connections; a logical
  write composes its parts in one ``write()`` transaction;
- ``catalog`` (:mod:`._catalog`): indexes, versions, codebooks;
- ``reads`` (:mod:`._item_reads`): key probes, prefix pages, counts, whole-version pages;
- ``writes`` (:mod:`._item_writes`): bulk loads, new items with fresh suffixes, retirement.
"""

from __future__ import annotations

from ._catalog import Catalog
from ._engine import DEFAULT_BUSY_TIMEOUT, Transactions, make_engine, translate_error
from ._item_reads import ItemReads
from ._item_writes import ItemWrites
from ._migrate import upgrade
from ._sql import Readers

__all__ = ["Store"]


class Store(Transactions):
    """Persistence for semantic-ID indexes on one database (URL or Engine).

    ``creating``: this store may create the database file (SQLite); otherwise it must exist.
    ``busy_timeout``: seconds a write waits for another writer's lock before
    :class:`~semid_index.errors.LockTimeoutError`.
    """

    def __init__(self, target, *, busy_timeout: float | None = None, creating: bool = False):
        timeout = DEFAULT_BUSY_TIMEOUT if busy_timeout is None else float(busy_timeout)
        engine, owned = make_engine(target, busy_timeout=timeout, creating=creating)
        super().__init__(engine, owned, timeout)
        self._readers = Readers(engine)
        self.catalog = Catalog(self.dialect, self.url)
        self.reads = ItemReads(self.dialect, self._readers, self._translate_error)
        self.writes = ItemWrites(self.dialect, self.url)

    def close(self) -> None:
        self._readers.close()
        super().close()

    def _translate_error(self, e: BaseException, operation: str) -> Exception | None:
        return translate_error(e, operation, self.url, self.busy_timeout)

    def upgrade_schema(self) -> tuple[str | None, str]:
        """Apply pending revisions (one transaction); (revision before, revision after)."""
        with self.write("upgrade the schema") as conn:
            return upgrade(conn, self.url)
