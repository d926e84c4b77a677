"""The Alembic migrations on SQLite and PostgreSQL, and the worker's revision check."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    Column,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    UniqueConstraint,
    create_engine,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

from activities.store import Store
from migrations import (
    INITIAL_REVISION,
    UPGRADE_COMMAND,
    VERSION_TABLE,
    DatabaseNotReady,
    MigrationError,
    check_revision,
    current_revision,
    downgrade,
    head_revision,
    migration_engine,
    upgrade,
)
from workflows.model import Person, RecordEntry, RecordInput

PROJECT = Path(__file__).resolve().parent.parent

TABLES = {
    "customers",
    "techs",
    "tickets",
    "ticket_record",
    "sent_mail",
    "hours_entries",
    "hours_warnings",
}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the test's database that pools no connection."""
    opened = create_engine(database_url, poolclass=NullPool)
    yield opened
    opened.dispose()


def schema_differences(engine: Engine, metadata: MetaData) -> list[Any]:
    """Return what Alembic's autogenerate would change to make the database match."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def table_names(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(inspect(connection).get_table_names()) - {VERSION_TABLE}


def legacy_metadata() -> MetaData:
    """The tables as Store.create_tables made them before there were migrations.

    The same models, but with unnamed primary key, unique and foreign key
    constraints, because no naming convention was set then.
    """
    metadata = MetaData()
    for table in SQLModel.metadata.sorted_tables:
        table.to_metadata(metadata)
    for table in metadata.tables.values():
        for constraint in table.constraints:
            if isinstance(
                constraint,
                PrimaryKeyConstraint | UniqueConstraint | ForeignKeyConstraint,
            ):
                constraint.name = None
    return metadata


def ticket_changes(opened_at: str, *, ticket_id: str = "T-1") -> RecordInput:
    return RecordInput(
        ticket_id=ticket_id,
        state="closed",
        priority="normal",
        source="portal",
        opened_at=opened_at,
        timezone="America/New_York",
        customer=Person(id="C-1", name="Dana Reyes", email="dana@customer.test"),
        tech=None,
        included_hours_per_month=None,
        closed_at=opened_at,
        close_reason="resolved",
        entries=[RecordEntry(1, "event", opened_at, {"event": "opened"})],
    )


def worker_environment(database_url: str) -> dict[str, str]:
    # Only what the worker needs, so no DATABASE_URL or TEMPORAL_* setting of
    # the developer's shell reaches it.
    return {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": database_url}


def test_upgrade_creates_schema_of_models(database_url: str, engine: Engine) -> None:
    result = upgrade(database_url)

    assert result.before is None
    assert result.after == head_revision()
    assert result.adopted is False
    assert [revision for revision, _ in result.steps][0] == INITIAL_REVISION
    assert table_names(engine) == TABLES
    # A model changed without a revision that makes the same change fails here.
    assert schema_differences(engine, SQLModel.metadata) == []


def test_comparison_finds_model_without_migration(
    database_url: str, engine: Engine
) -> None:
    upgrade(database_url)
    changed = MetaData(naming_convention=SQLModel.metadata.naming_convention)
    for table in SQLModel.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["tickets"].append_column(Column("escalations", Integer()))

    differences = schema_differences(engine, changed)

    assert [(change[0], change[2]) for change in differences] == [
        ("add_column", "tickets")
    ]


def test_create_tables_matches_migrations(database_url: str, engine: Engine) -> None:
    # Tests build their databases with create_tables, so it must make the
    # schema that the migrations make, constraint names included.
    store = Store(database_url)
    store.create_tables()
    store.dispose()

    assert schema_differences(engine, SQLModel.metadata) == []


def test_downgrade_and_upgrade_round_trip(database_url: str, engine: Engine) -> None:
    upgrade(database_url)

    down = downgrade(database_url, "base")

    assert down.before == head_revision()
    assert down.after is None
    assert [revision for revision, _ in down.steps][-1] == INITIAL_REVISION
    assert table_names(engine) == set()
    assert current_revision(database_url) is None

    up = upgrade(database_url)

    assert up.before is None
    assert up.after == head_revision()
    assert table_names(engine) == TABLES
    assert schema_differences(engine, SQLModel.metadata) == []


def test_upgrade_at_head_runs_nothing(database_url: str) -> None:
    upgrade(database_url)

    again = upgrade(database_url)

    assert again.before == head_revision()
    assert again.after == head_revision()
    assert again.steps == ()


def test_concurrent_upgrades_both_succeed(database_url: str, engine: Engine) -> None:
    # The second waits for the first one's lock, then finds nothing to do.
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: upgrade(database_url), range(2)))

    assert [result.after for result in results] == [head_revision()] * 2
    assert sorted(len(result.steps) > 0 for result in results) == [False, True]
    assert table_names(engine) == TABLES


def test_upgrade_adopts_tables_made_before_migrations(
    database_url: str, engine: Engine
) -> None:
    legacy_metadata().create_all(engine)
    store = Store(database_url)
    store.record(ticket_changes("2026-06-10T10:00:00-04:00"))
    store.dispose()

    result = upgrade(database_url)

    assert result.before is None
    assert result.after == head_revision()
    assert result.adopted is True
    assert INITIAL_REVISION not in [revision for revision, _ in result.steps]
    check_revision(database_url)
    store = Store(database_url)
    try:
        ticket = store.ticket("T-1")
        assert ticket is not None
        assert ticket.opened_at == datetime(2026, 6, 10, 14, 0, tzinfo=UTC)
        assert len(store.ticket_record("T-1")) == 1
    finally:
        store.dispose()


def test_upgrade_rejects_unknown_tables(database_url: str, engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE invoices (id INTEGER PRIMARY KEY)"))

    with pytest.raises(MigrationError) as raised:
        upgrade(database_url)

    message = str(raised.value)
    assert "table invoices is not part of it" in message
    assert "table tickets is missing" in message
    assert current_revision(database_url) is None
    assert table_names(engine) == {"invoices"}


def test_upgrade_rejects_tables_with_other_columns(
    database_url: str, engine: Engine
) -> None:
    metadata = legacy_metadata()
    metadata.tables["techs"].append_column(Column("team", Integer()))
    metadata.create_all(engine)

    with pytest.raises(MigrationError, match="table techs has columns"):
        upgrade(database_url)

    assert current_revision(database_url) is None


def test_sqlite_schema_change_rolls_back(tmp_path: Path) -> None:
    # Without the migration engine's own BEGIN, sqlite3 would run the CREATE
    # outside the transaction and keep the table.
    url = f"sqlite:///{tmp_path / 'tickets.db'}"
    engine = migration_engine(url)
    with pytest.raises(RuntimeError), engine.begin() as connection:
        connection.execute(text("CREATE TABLE half_done (id INTEGER)"))
        raise RuntimeError("migration failed")
    engine.dispose()

    reader = create_engine(url, poolclass=NullPool)
    assert table_names(reader) == set()
    reader.dispose()


def test_check_revision_names_upgrade_command(database_url: str) -> None:
    with pytest.raises(DatabaseNotReady) as raised:
        check_revision(database_url)

    assert str(raised.value) == (
        f"database at revision none, code needs {head_revision()}: "
        f"run `{UPGRADE_COMMAND}`"
    )


def test_check_revision_on_tables_without_version(
    database_url: str, engine: Engine
) -> None:
    # Tables made by create_tables alone are not at any revision.
    legacy_metadata().create_all(engine)

    with pytest.raises(DatabaseNotReady, match="database at revision none, code"):
        check_revision(database_url)


def test_check_revision_passes_at_head(database_url: str) -> None:
    upgrade(database_url)

    check_revision(database_url)

    assert current_revision(database_url) == head_revision()


def test_check_revision_rejects_unknown_revision(
    database_url: str, engine: Engine
) -> None:
    upgrade(database_url)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))

    with pytest.raises(DatabaseNotReady) as raised:
        check_revision(database_url)

    message = str(raised.value)
    assert message.startswith("database at revision 9999, which this code does not")
    assert f"downgrade {head_revision()}" in message


def test_check_revision_reports_unreachable_database() -> None:
    # Port 9 (discard) on the loopback has no PostgreSQL.
    url = "postgresql+psycopg://ticket_guard:s3cret@127.0.0.1:9/tickets"

    with pytest.raises(DatabaseNotReady) as raised:
        check_revision(url)

    message = str(raised.value)
    assert message.startswith("could not read the revision of the database")
    assert "s3cret" not in message
    assert "127.0.0.1" in message


def test_check_revision_creates_no_sqlite_file(tmp_path: Path) -> None:
    database = tmp_path / "missing.db"

    with pytest.raises(DatabaseNotReady, match="database at revision none"):
        check_revision(f"sqlite:///{database}")

    assert not database.exists()


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2026-03-08T06:59:59+00:00", datetime(2026, 3, 8, 6, 59, 59, tzinfo=UTC)),
        ("2026-03-08T03:00:00-04:00", datetime(2026, 3, 8, 7, 0, 0, tzinfo=UTC)),
        ("2026-11-01T01:30:00-05:00", datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),
        ("2026-12-31T23:59:59+14:00", datetime(2026, 12, 31, 9, 59, 59, tzinfo=UTC)),
    ],
)
def test_migrated_store_keeps_aware_times(
    database_url: str, written: str, expected: datetime
) -> None:
    upgrade(database_url)
    store = Store(database_url)
    try:
        store.record(ticket_changes(written))
        store.record_mail(
            message_id="<T-1.1.closed.customer@x>",
            ticket_id="T-1",
            kind="closed_unreachable",
            role="customer",
            recipient=None,
            status="sent",
            at=expected,
        )

        ticket = store.ticket("T-1")
        mail = store.mail("<T-1.1.closed.customer@x>")
        assert ticket is not None
        assert mail is not None
        for value in (
            ticket.opened_at,
            ticket.closed_at,
            store.ticket_record("T-1")[0].at,
            mail.sent_at,
        ):
            assert value == expected
            assert value is not None
            assert value.tzinfo == UTC
    finally:
        store.dispose()


def test_command_line_upgrade_then_check(database_url: str) -> None:
    environment = worker_environment(database_url)

    upgraded = subprocess.run(
        [sys.executable, "-m", "migrations", "upgrade"],
        cwd=PROJECT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    checked = subprocess.run(
        [sys.executable, "-m", "migrations", "check"],
        cwd=PROJECT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert upgraded.returncode == 0, upgraded.stderr
    assert f"migrated from revision none to {head_revision()}" in upgraded.stdout
    assert f"  {INITIAL_REVISION}  Create the tables" in upgraded.stdout
    assert checked.returncode == 0, checked.stderr
    assert current_revision(database_url) == head_revision()


def test_worker_refuses_empty_database(tmp_path: Path) -> None:
    database = tmp_path / "empty.db"
    sqlite3.connect(database).close()

    # Run from the temporary folder, so no .env file of the project applies.
    finished = subprocess.run(
        [sys.executable, str(PROJECT / "worker.py")],
        cwd=tmp_path,
        env=worker_environment(f"sqlite:///{database}"),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert finished.returncode == 1
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1, finished.stderr
    assert lines[0].endswith(
        f"Worker not started: database at revision none, code needs "
        f"{head_revision()}: run `{UPGRADE_COMMAND}`"
    )
    assert "Traceback" not in finished.stderr
    with sqlite3.connect(database) as connection:
        tables = connection.execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == []
