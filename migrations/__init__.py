"""Alembic migrations of the ticket database, and the functions that run them.

``python -m migrations upgrade`` brings the database of DATABASE_URL to the
latest revision. The worker calls ``check_revision`` at start and rejects a
database at any other revision. The revisions are in ``migrations/versions``,
and ``migrations/env.py`` is the Alembic environment that runs them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import (
    Column,
    MetaData,
    String,
    Table,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from activities.store import database_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent
UPGRADE_COMMAND = "python -m migrations upgrade"

# The revision that creates the tables as Store.create_tables made them before
# the project had migrations.
INITIAL_REVISION = "0001"

VERSION_TABLE = "alembic_version"

# Key of the PostgreSQL advisory lock held while migrating, so two upgrades
# started at once run one after the other.
MIGRATION_LOCK_KEY = "ticket-guard migrations"


class DatabaseNotReady(Exception):
    """The database is unreachable or not at the revision the code needs.

    Its message names the database's revision and the command to run.
    """


class MigrationError(Exception):
    """A migration that cannot run. Its message gives the reason and the fix."""


@dataclass(frozen=True)
class MigrationResult:
    """What an upgrade or downgrade did to a database."""

    before: str | None
    after: str | None
    # (revision, description) of each revision run, in the order it ran.
    steps: tuple[tuple[str, str], ...]
    # The tables existed without a version table and were stamped with
    # INITIAL_REVISION before the upgrade.
    adopted: bool = False


def alembic_config(connection: Connection | None = None) -> Config:
    """Build the Alembic configuration of these migrations.

    With ``connection``, env.py migrates through it, inside its transaction.
    Without, env.py connects to DATABASE_URL from the settings.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """Return the latest revision, the one the code's models match."""
    head = script_directory().get_current_head()
    if head is None:
        raise MigrationError(f"no revision found in {MIGRATIONS_DIR / 'versions'}")
    return head


def migration_engine(database_url: str) -> Engine:
    """Create an engine whose transactions also cover schema changes on SQLite.

    The sqlite3 module of Python 3.11 opens a transaction only before INSERT,
    UPDATE, DELETE or REPLACE, so CREATE and ALTER run outside it, and a failed
    migration would leave half its tables. Here every transaction starts with
    BEGIN IMMEDIATE instead, so schema changes roll back with the rest and a
    second migrating process waits for the first.
    """
    engine = database_engine(database_url, poolclass=NullPool)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def lock_for_migration(connection: Connection) -> None:
    """Wait until no other process migrates the database, within this transaction.

    PostgreSQL takes a transaction-scoped advisory lock. SQLite needs none,
    because BEGIN IMMEDIATE (see migration_engine) already holds its write lock.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": MIGRATION_LOCK_KEY},
        )


def database_revision(connection: Connection) -> str | None:
    """Return the database's revision, or None when it has no version table."""
    # Read directly, because Alembic's MigrationContext logs two INFO lines
    # each time it is made, which would show in the worker's log.
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    version_table = Table(VERSION_TABLE, MetaData(), Column("version_num", String))
    heads = connection.execute(select(version_table.c.version_num)).scalars().all()
    if len(heads) > 1:
        raise MigrationError(
            f"the database has more than one revision in {VERSION_TABLE}: "
            f"{', '.join(heads)}"
        )
    return heads[0] if heads else None


def current_revision(database_url: str) -> str | None:
    """Return the revision of the database, or None if it has none yet."""
    if _sqlite_file_missing(database_url):
        return None
    engine = database_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return database_revision(connection)
    finally:
        engine.dispose()


def check_revision(database_url: str) -> None:
    """Raise DatabaseNotReady unless the database is at the latest revision.

    The message is one line naming both revisions and what to run.
    """
    needed = head_revision()
    try:
        current = current_revision(database_url)
    except (SQLAlchemyError, MigrationError) as error:
        raise DatabaseNotReady(
            f"could not read the revision of the database {masked_url(database_url)}:"
            f" {error_reason(error)}"
        ) from error

    if current == needed:
        return
    if current is not None and not _is_known(current):
        raise DatabaseNotReady(
            f"database at revision {current}, which this code does not know "
            f"(it needs {needed}): a newer release migrated it, so run that "
            f"release, or downgrade with that release's `python -m migrations "
            f"downgrade {needed}`"
        )
    raise DatabaseNotReady(
        f"database at revision {current or 'none'}, code needs {needed}: "
        f"run `{UPGRADE_COMMAND}`"
    )


def upgrade(database_url: str, revision: str = "head") -> MigrationResult:
    """Migrate the database up to ``revision``, in one transaction.

    A database whose tables were made by Store.create_tables before the
    project had migrations is adopted: it has no version table, and its
    tables and columns are exactly those INITIAL_REVISION creates. It is
    stamped with INITIAL_REVISION and upgraded from there.

    Raises MigrationError for other tables without a version table, because
    creating the schema over them would fail halfway or mix two schemas.
    """
    with _migrating(database_url) as connection:
        before = start = database_revision(connection)
        adopted = False
        if before is None and _user_tables(connection):
            _require_initial_schema(connection)
            # NOTE: an adopted database keeps the constraint names it was
            # created with (none on SQLite, PostgreSQL's own on PostgreSQL), so
            # a later revision that drops one of its constraints by the
            # convention's name fails there.
            command.stamp(alembic_config(connection), INITIAL_REVISION)
            start = INITIAL_REVISION
            adopted = True
        command.upgrade(alembic_config(connection), revision)
        after = database_revision(connection)
        steps = _revisions_between(start, after)
        return MigrationResult(before, after, tuple(steps), adopted)


def downgrade(database_url: str, revision: str) -> MigrationResult:
    """Migrate the database down to ``revision`` ("base" drops every table)."""
    with _migrating(database_url) as connection:
        before = database_revision(connection)
        command.downgrade(alembic_config(connection), revision)
        after = database_revision(connection)
        steps = reversed(_revisions_between(after, before))
        return MigrationResult(before, after, tuple(steps))


def masked_url(database_url: str) -> str:
    """Return the URL with its password masked, for messages and logs."""
    return make_url(database_url).render_as_string(hide_password=True)


def error_reason(error: Exception) -> str:
    """Return the first line of the driver's message, without SQLAlchemy's notes."""
    reason = getattr(error, "orig", None) or error
    lines = str(reason).strip().splitlines()
    return lines[0] if lines else type(reason).__name__


@contextmanager
def _migrating(database_url: str) -> Iterator[Connection]:
    engine = migration_engine(database_url)
    try:
        with engine.begin() as connection:
            lock_for_migration(connection)
            yield connection
    except CommandError as error:
        raise MigrationError(str(error)) from error
    finally:
        engine.dispose()


def _revisions_between(older: str | None, newer: str | None) -> list[tuple[str, str]]:
    # (revision, description) of each revision after ``older`` up to
    # ``newer``, oldest first.
    if newer is None or older == newer:
        return []
    scripts = script_directory().iterate_revisions(newer, older or "base")
    return [(script.revision, script.doc) for script in reversed(list(scripts))]


def _is_known(revision: str) -> bool:
    try:
        return script_directory().get_revision(revision) is not None
    except CommandError:
        return False


def _sqlite_file_missing(database_url: str) -> bool:
    # Reading the revision of a SQLite file that does not exist would create it.
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return False
    return not Path(url.database).exists()


def _user_tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {VERSION_TABLE}


def _table_columns(connection: Connection) -> dict[str, set[str]]:
    inspector = inspect(connection)
    return {
        table: {column["name"] for column in inspector.get_columns(table)}
        for table in _user_tables(connection)
    }


def _initial_schema_columns() -> dict[str, set[str]]:
    # Runs INITIAL_REVISION on an in-memory SQLite, so the expected tables and
    # columns come from the revision itself.
    engine = migration_engine("sqlite://")
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), INITIAL_REVISION)
            return _table_columns(connection)
    finally:
        engine.dispose()


def _require_initial_schema(connection: Connection) -> None:
    found = _table_columns(connection)
    expected = _initial_schema_columns()
    if found == expected:
        return

    differences = []
    for table in sorted(expected.keys() | found.keys()):
        if table not in found:
            differences.append(f"table {table} is missing")
        elif table not in expected:
            differences.append(f"table {table} is not part of it")
        elif found[table] != expected[table]:
            differences.append(
                f"table {table} has columns {sorted(found[table])}, "
                f"expected {sorted(expected[table])}"
            )
    raise MigrationError(
        f"the database has tables but no {VERSION_TABLE} table, and they are not "
        f"the schema of revision {INITIAL_REVISION}: {'; '.join(differences)}. "
        "Point DATABASE_URL at an empty database or at one made by this service"
    )
