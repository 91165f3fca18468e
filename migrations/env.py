"""Alembic environment: runs semid_index's revisions on one connection.

The library passes an open connection in ``config.attributes["connection"]``; the alembic command
line passes a URL with ``-x url=...`` (or ``sqlalchemy.url`` in an ini file).
"""

from alembic import context
from sqlalchemy import create_engine

from semid_index.storage._schema import VERSION_TABLE, metadata

config = context.config


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite cannot ALTER most things: copy-and-move in batch mode
        compare_type=True,
        include_name=lambda name, type_, parent: type_ != "table" or name.startswith("semid_"),
    )


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url")
    if not url:
        raise SystemExit("give the database with -x url=... (or sqlalchemy.url in the ini file)")
    return url


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url())
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata,
                      version_table=VERSION_TABLE, render_as_batch=True, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
