"""Shared pieces of the ``semid`` command: the group, the common options, output helpers.

The commands live in :mod:`semid_index.cli` (writing, versions, schema) and
:mod:`semid_index._cli_read` (lookups, prefixes, stats, exports).
"""

from __future__ import annotations

import sys

import click

from . import _cli_io as io
from .errors import SemanticIdError

DEFAULT_DB = "sqlite:///semid.db"
_CTX = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """Turns the library's errors (database and file errors included: the library wraps them)
    into one line and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SemanticIdError as e:
            _fail(str(e.args[0]) if e.args else type(e).__name__)


def _fail(message: str, status: int = 1):
    click.echo(f"semid: error: {message}", err=True)
    sys.exit(status)


def _common(f):
    """--db, --index and --json on every command (they may follow the command name)."""
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)
    f = click.option("--index", "-i", "index_name", envvar="SEMID_INDEX", default="default",
                     show_default=True, help="Index name [env: SEMID_INDEX].")(f)
    f = click.option("--db", envvar="SEMID_DB", default=DEFAULT_DB, show_default=True,
                     help="Database URL: sqlite:///file.db or postgresql+psycopg://... "
                          "[env: SEMID_DB].")(f)
    return f


def _inputs(f):
    """Options that say where item keys and embeddings come from."""
    f = click.option("--row-numbers", is_flag=True,
                     help="Use row numbers 0..N-1 as item keys.")(f)
    f = click.option("--column", help="Embeddings: the .npz array or Parquet list column "
                                      "(default: embeddings / embedding).")(f)
    f = click.option("--key-column", help="Parquet column holding the item keys (default: key).")(f)
    f = click.option("--keys", "keys_file", type=click.Path(dir_okay=False),
                     help="Text file of item keys, one per line, in row order.")(f)
    return f


def _open(db: str, name: str):
    from .index import SemanticIdIndex

    return SemanticIdIndex.open(db, name)


def _progress() -> bool:
    return sys.stderr.isatty()


def _emit(as_json: bool, data, text: str) -> None:
    """``data`` as JSON with ``--json``, else ``text`` for a person."""
    if as_json:
        io.emit_json(data)
    else:
        click.echo(text)


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


@click.group(cls=_Group, context_settings=_CTX)
@click.version_option(package_name="semid-index", prog_name="semid")
def main():
    """Hierarchical semantic IDs for item embeddings, kept in SQLite or PostgreSQL.

    \b
    semid fit movies.parquet --key-column title     # train, assign IDs, store them
    semid similar "Toy Story (1995)"                # items sharing the longest prefix
    semid export ids.jsonl                          # IDs and token strings for training
    """
