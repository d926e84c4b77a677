"""The Alembic environment of the ticket database.

The functions of the ``migrations`` package hand over an open connection, and
the revisions run inside its transaction. Run by the ``alembic`` command from
the project root, this connects to DATABASE_URL from the settings instead, so
``alembic revision --autogenerate`` compares that database with the models.

Tables, constraints and the version table go to the database's default
schema. On PostgreSQL that is current_schema(), the first existing schema of
the connection's search_path.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

# Importing the store declares the tables on SQLModel.metadata, which
# autogenerate compares with the database.
from activities.store import UTCDateTime
from migrations import VERSION_TABLE, lock_for_migration, migration_engine
from settings import load_settings

config = context.config
target_metadata = SQLModel.metadata


def render_item(
    type_: str,
    obj: Any,
    autogen_context: AutogenContext,  # noqa: ARG001 - part of Alembic's hook
) -> str | Literal[False]:
    """Write the models' own column types as the SQLAlchemy types they store.

    A revision then imports neither sqlmodel nor the store, so it keeps
    working after the models change.
    """
    if type_ == "type" and isinstance(obj, AutoString):
        return "sa.String()"
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot alter most constraints in place, so autogenerate writes
        # batch operations there, which copy the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return

    engine = migration_engine(load_settings().database_url)
    try:
        with engine.begin() as connection:
            lock_for_migration(connection)
            run_migrations(connection)
    finally:
        engine.dispose()


def run_offline() -> None:
    # ``alembic upgrade head --sql`` prints the SQL for a reviewer instead of
    # running it.
    context.configure(
        url=load_settings().database_url,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


# The alembic command line configures no logging, so its progress lines
# ("Running upgrade 0001 -> 0002") would not show.
if config.cmd_opts is not None and not logging.getLogger().handlers:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

if context.is_offline_mode():
    run_offline()
else:
    run_online()
