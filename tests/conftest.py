"""Shared fixtures: a local SMTP sink, a database per test and settings for both."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from activities.store import Store, open_store
from mailsink import MailSink
from settings import Settings

# The PostgreSQL server of the development machine and CI. Each test gets its
# own schema there, so tests never see each other's rows.
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
async def mail_sink() -> AsyncIterator[MailSink]:
    """A mail sink on a free loopback port, stopped after the test."""
    async with MailSink("127.0.0.1", 0) as sink:
        yield sink


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: a SQLite file, or a fresh PostgreSQL schema.

    The PostgreSQL case is skipped, with the reason, when the server rejects
    the connection or is not running. Its schema is dropped after the test.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ticket-guard.db'}"
        return

    schema = f"test_{uuid4().hex}"
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as error:
        admin.dispose()
        server = make_url(POSTGRES_URL).render_as_string(hide_password=True)
        pytest.skip(f"PostgreSQL at {server} is unreachable: {error.orig}")

    # libpq's "options" sets search_path, so the store creates and reads its
    # tables in the new schema only.
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"

    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A store on the test's database with its tables created."""
    with open_store(database_url) as opened:
        yield opened


@pytest.fixture
def settings(mail_sink: MailSink, database_url: str) -> Settings:
    """Settings for the test's mail sink and database.

    Every field that matters is given, so the developer's environment and
    ``.env`` file cannot change a test.
    """
    return Settings(
        _env_file=None,
        temporal_address="localhost:7233",
        temporal_namespace="default",
        temporal_task_queue=f"test-{uuid4().hex}",
        database_url=database_url,
        **mail_sink.smtp_settings(),
        smtp_timeout_seconds=5,
        mail_from="ticket-guard <no-reply@ticket-guard.localhost>",
        ops_email="ops@ticket-guard.localhost",
        default_timezone="America/New_York",
    )
