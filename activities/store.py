"""The ticket database: current ticket state, each ticket's record, sent mail, hours.

``Store`` is synchronous (a SQLAlchemy engine); activities call it through
``asyncio.to_thread``. It supports SQLite and PostgreSQL, because idempotent
writes use each dialect's ``INSERT ... ON CONFLICT``.

Every time is stored in UTC and read back as an aware UTC datetime, also on
SQLite, which keeps no time zone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Dialect,
    Index,
    UniqueConstraint,
    collate,
    func,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from workflows.model import HoursInput, HoursResult, RecordInput

# Statuses of a sent_mail row. The module activities.mailer describes each one.
MAIL_STATUSES = ("delayed", "sending", "unconfirmed", "sent", "failed")

# A month's total this many hours below a warning threshold still reaches it,
# because sums and products of decimal hours round in floating point: 0.8 * 3
# is 2.4000000000000004, so 2.4 of 3 hours would otherwise miss 80%.
HOURS_TOLERANCE = 1e-6


class InvalidInput(ValueError):
    """An activity input that no retry can fix, such as a time without offset."""


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime stored in UTC and always read back as aware UTC.

    SQLite has no time zone type, so the value is stored there without offset
    and the UTC zone is attached again on read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidInput(f"datetime {value.isoformat()} has no UTC offset")

        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002 - part of the TypeDecorator interface
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# PostgreSQL gets JSONB so a later status view can query inside the details.
JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")

# Constraints are named by these patterns rather than by each database, so
# SQLite and PostgreSQL carry the same names and a migration can refer to a
# constraint by name. The convention is set before the tables below are
# declared, because SQLAlchemy names a constraint when it joins its table.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION


# Customers as the portal last described them.
class Customer(SQLModel, table=True):
    __tablename__ = "customers"

    id: str = Field(primary_key=True)
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    updated_at: datetime = Field(sa_type=UTCDateTime)


# Techs as the portal last described them.
class Tech(SQLModel, table=True):
    __tablename__ = "techs"

    id: str = Field(primary_key=True)
    name: str | None = None
    email: str | None = None
    updated_at: datetime = Field(sa_type=UTCDateTime)


# The current state of each ticket. ``last_sequence`` is the highest record
# entry applied, so a retried older batch never overwrites a newer state.
class Ticket(SQLModel, table=True):
    __tablename__ = "tickets"

    id: str = Field(primary_key=True)
    state: str
    priority: str
    source: str
    timezone: str
    opened_at: datetime = Field(sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    close_reason: str | None = None
    customer_id: str = Field(foreign_key="customers.id", index=True)
    tech_id: str | None = Field(default=None, foreign_key="techs.id", index=True)
    included_hours_per_month: float | None = None
    last_sequence: int = 0
    updated_at: datetime = Field(sa_type=UTCDateTime)


# Everything that happened to a ticket, in the order the workflow numbered it.
class TicketRecordEntry(SQLModel, table=True):
    __tablename__ = "ticket_record"
    __table_args__ = (UniqueConstraint("ticket_id", "sequence"),)

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: str = Field(foreign_key="tickets.id", index=True)
    sequence: int
    entry_type: str
    at: datetime = Field(sa_type=UTCDateTime)
    details: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON_TYPE, nullable=False)
    )


# One row per Message-ID: the guard against sending a mail twice.
class SentMail(SQLModel, table=True):
    __tablename__ = "sent_mail"

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(unique=True)
    ticket_id: str = Field(index=True)
    kind: str
    role: str
    recipient: str | None = None
    status: str
    detail: str | None = None
    sent_at: datetime = Field(sa_type=UTCDateTime)


# Hours logged on subscription tickets, once per (ticket, event).
class HoursEntry(SQLModel, table=True):
    __tablename__ = "hours_entries"
    __table_args__ = (
        UniqueConstraint("ticket_id", "event_id"),
        # Serves the sum of one customer's month.
        Index("ix_hours_entries_customer_month", "customer_id", "month"),
    )

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: str
    event_id: str
    customer_id: str
    month: str
    hours: float
    logged_at: datetime = Field(sa_type=UTCDateTime)


# The ticket and event that first passed each hours threshold of a month.
class HoursWarning(SQLModel, table=True):
    __tablename__ = "hours_warnings"
    __table_args__ = (UniqueConstraint("customer_id", "month", "threshold"),)

    id: int | None = Field(default=None, primary_key=True)
    customer_id: str
    month: str
    threshold: float
    ticket_id: str
    event_id: str
    at: datetime = Field(sa_type=UTCDateTime)


@dataclass(frozen=True)
class MailRecord:
    """One row of sent_mail, as the read helpers return it."""

    message_id: str
    ticket_id: str
    kind: str
    role: str
    recipient: str | None
    status: str
    detail: str | None
    sent_at: datetime


@dataclass(frozen=True)
class DueObligation:
    """An open obligation of a ticket, as its latest record entry describes it."""

    ticket_id: str
    # The obligation's number within its ticket.
    sequence: int
    kind: str
    owner: str
    due_at: datetime


@dataclass(frozen=True)
class RecordLine:
    """One entry of a ticket's record, as the read helpers return it."""

    sequence: int
    entry_type: str
    at: datetime
    details: dict[str, Any]


def parse_time(value: str, *, field_name: str) -> datetime:
    """Parse an ISO 8601 time that carries a UTC offset.

    Raises InvalidInput naming ``field_name`` when the value is malformed or
    has no offset.
    """
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"{field_name} {value!r} is not an ISO 8601 time") from error
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise InvalidInput(f"{field_name} {value!r} has no UTC offset")
    return parsed.astimezone(UTC)


def database_engine(database_url: str, **options: Any) -> Engine:
    """Create an engine for a SQLite or PostgreSQL URL, passing on ``options``.

    Creates the folder of a SQLite file if it is missing. Raises ValueError
    for any other database.
    """
    url = make_url(database_url)
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(
            f"unsupported database {url.get_backend_name()!r}: "
            "use a sqlite:// or postgresql+psycopg:// URL"
        )
    if url.get_backend_name() == "sqlite" and url.database not in (
        None,
        "",
        ":memory:",
    ):
        # The default URL points into var/, which a fresh checkout lacks.
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(url, **options)


# Columns that a record write sets on an existing row, besides ``id``. The
# ticket's ``last_sequence`` is set only by a batch with entries.
CUSTOMER_COLUMNS = ("name", "email", "phone", "updated_at")
TECH_COLUMNS = ("name", "email", "updated_at")
TICKET_STATE_COLUMNS = (
    "state",
    "priority",
    "source",
    "timezone",
    "opened_at",
    "closed_at",
    "close_reason",
    "customer_id",
    "tech_id",
    "included_hours_per_month",
    "updated_at",
)


class Store:
    """Reads and writes the ticket database.

    Every write is idempotent, so an activity retried after a lost completion
    writes nothing twice.
    """

    def __init__(self, database_url: str) -> None:
        self.engine: Engine = database_engine(database_url, pool_pre_ping=True)
        self._dialect = self.engine.dialect.name
        # The statements of ``record``, built once and run with new parameters,
        # because building an upsert's ``excluded`` columns took more CPU than
        # running it on SQLite.
        self._upsert_customer = self._upsert(Customer, CUSTOMER_COLUMNS)
        self._upsert_tech = self._upsert(Tech, TECH_COLUMNS)
        self._upsert_ticket_state = self._upsert(Ticket, TICKET_STATE_COLUMNS)
        self._upsert_newer_ticket = self._upsert(
            Ticket, (*TICKET_STATE_COLUMNS, "last_sequence"), newer_only=True
        )
        self._insert_entries = self._insert(TicketRecordEntry).on_conflict_do_nothing(
            index_elements=["ticket_id", "sequence"]
        )

    def create_tables(self) -> None:
        """Create the tables that are missing, from the models.

        Existing tables stay as they are. Meant for tests and throwaway
        databases, because a deployed database gets its tables from the
        migrations (``python -m migrations upgrade``), which make the same
        schema.
        """
        SQLModel.metadata.create_all(self.engine)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    # Writes

    def record(self, changes: RecordInput) -> None:
        """Store a batch of record entries and the ticket's current state.

        Upserts the customer, the tech and the ticket, then inserts the entries.
        An entry whose (ticket_id, sequence) is already stored is skipped, so the
        same batch twice keeps one copy. The ticket row is updated only when the
        batch is not older than what is stored (compared by entry sequence).
        Raises InvalidInput on a time that is malformed or has no offset.
        """
        now = datetime.now(UTC)
        opened_at = parse_time(changes.opened_at, field_name="opened_at")
        closed_at = (
            parse_time(changes.closed_at, field_name="closed_at")
            if changes.closed_at is not None
            else None
        )
        entries = [
            {
                "ticket_id": changes.ticket_id,
                "sequence": entry.sequence,
                "entry_type": entry.entry_type,
                "at": parse_time(entry.at, field_name=f"entry {entry.sequence} at"),
                "details": entry.details,
            }
            for entry in changes.entries
        ]
        batch_sequence = max(
            (entry.sequence for entry in changes.entries), default=None
        )

        customer = changes.customer
        with self.engine.begin() as connection:
            connection.execute(
                self._upsert_customer,
                {
                    "id": customer.id,
                    "name": customer.name,
                    "email": customer.email,
                    "phone": customer.phone,
                    "updated_at": now,
                },
            )
            if changes.tech is not None:
                tech = changes.tech
                connection.execute(
                    self._upsert_tech,
                    {
                        "id": tech.id,
                        "name": tech.name,
                        "email": tech.email,
                        "updated_at": now,
                    },
                )
            self._upsert_ticket(
                connection, changes, opened_at, closed_at, batch_sequence, now
            )
            if entries:
                connection.execute(self._insert_entries, entries)

    def log_hours(self, logged: HoursInput) -> HoursResult:
        """Add logged hours to the customer's month and claim the thresholds passed.

        Idempotent per (ticket_id, event_id). The month's total sums every ticket
        of the customer. Each threshold is claimed by one insert under a unique
        constraint, so it is returned to one (ticket, event) only, and again to
        that same event if its activity is retried.
        Raises InvalidInput on a malformed time or a non-positive included amount.
        """
        if logged.hours <= 0:
            raise InvalidInput(f"hours must be positive, got {logged.hours}")
        if logged.included_hours <= 0:
            raise InvalidInput(
                f"included_hours must be positive, got {logged.included_hours}"
            )
        logged_at = parse_time(logged.logged_at, field_name="logged_at")

        with self.engine.begin() as connection:
            self._lock_customer_month(connection, logged.customer_id, logged.month)

            entry = self._insert(HoursEntry).values(
                ticket_id=logged.ticket_id,
                event_id=logged.event_id,
                customer_id=logged.customer_id,
                month=logged.month,
                hours=logged.hours,
                logged_at=logged_at,
            )
            connection.execute(
                entry.on_conflict_do_nothing(index_elements=["ticket_id", "event_id"])
            )

            used_hours = connection.execute(
                select(func.coalesce(func.sum(HoursEntry.hours), 0.0)).where(
                    HoursEntry.customer_id == logged.customer_id,
                    HoursEntry.month == logged.month,
                )
            ).scalar_one()

            for threshold in sorted(logged.warning_thresholds):
                limit = threshold * logged.included_hours
                if used_hours >= limit - HOURS_TOLERANCE:
                    claim = self._insert(HoursWarning).values(
                        customer_id=logged.customer_id,
                        month=logged.month,
                        threshold=threshold,
                        ticket_id=logged.ticket_id,
                        event_id=logged.event_id,
                        at=logged_at,
                    )
                    connection.execute(
                        claim.on_conflict_do_nothing(
                            index_elements=["customer_id", "month", "threshold"]
                        )
                    )

            # The thresholds this event owns, whether claimed now or by an
            # earlier attempt of the same activity whose result was lost.
            crossed = connection.execute(
                select(HoursWarning.threshold)
                .where(
                    HoursWarning.customer_id == logged.customer_id,
                    HoursWarning.month == logged.month,
                    HoursWarning.ticket_id == logged.ticket_id,
                    HoursWarning.event_id == logged.event_id,
                )
                .order_by(col(HoursWarning.threshold))
            ).scalars()
            return HoursResult(
                used_hours=float(used_hours), crossed_thresholds=list(crossed)
            )

    def record_mail(
        self,
        *,
        message_id: str,
        ticket_id: str,
        kind: str,
        role: str,
        recipient: str | None,
        status: str,
        detail: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Insert or update the sent_mail row of ``message_id``.

        ``status`` is one of MAIL_STATUSES. ``sent_at`` becomes ``at``, or now,
        on every change, so it is the time of the latest attempt.
        """
        if status not in MAIL_STATUSES:
            raise ValueError(
                f"unknown mail status {status!r}, expected one of {MAIL_STATUSES}"
            )

        values = {
            "message_id": message_id,
            "ticket_id": ticket_id,
            "kind": kind,
            "role": role,
            "recipient": recipient,
            "status": status,
            "detail": detail,
            "sent_at": at or datetime.now(UTC),
        }
        statement = self._insert(SentMail).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=["message_id"],
            set_={
                "status": statement.excluded.status,
                "detail": statement.excluded.detail,
                "sent_at": statement.excluded.sent_at,
            },
        )
        with self.engine.begin() as connection:
            connection.execute(statement)

    # Reads

    def mail(self, message_id: str) -> MailRecord | None:
        """Return the sent_mail row of ``message_id``, or None if it was never tried."""
        with Session(self.engine) as session:
            mail = session.exec(
                select(SentMail).where(SentMail.message_id == message_id)
            ).first()
            return _mail_record(mail) if mail is not None else None

    def mail_status(self, message_id: str) -> str | None:
        """Return the status of ``message_id``, or None if it was never tried."""
        mail = self.mail(message_id)
        return mail.status if mail is not None else None

    def ticket_record(self, ticket_id: str) -> list[RecordLine]:
        """Return the ticket's record entries in sequence order."""
        query = (
            select(TicketRecordEntry)
            .where(TicketRecordEntry.ticket_id == ticket_id)
            .order_by(col(TicketRecordEntry.sequence))
        )
        with Session(self.engine) as session:
            return [
                RecordLine(
                    sequence=entry.sequence,
                    entry_type=entry.entry_type,
                    at=entry.at,
                    details=entry.details,
                )
                for entry in session.exec(query)
            ]

    def sent_mail(self, ticket_id: str) -> list[MailRecord]:
        """Return every mail tried for the ticket, oldest first."""
        query = (
            select(SentMail)
            .where(SentMail.ticket_id == ticket_id)
            .order_by(col(SentMail.sent_at), col(SentMail.id))
        )
        with Session(self.engine) as session:
            return [_mail_record(mail) for mail in session.exec(query)]

    def open_obligations_due_before(self, moment: datetime) -> list[DueObligation]:
        """Return the obligations still open whose due time is before ``moment``.

        An obligation's state is the latest ``obligation`` entry about it in its
        ticket's record, so one met or breached since is not returned. They come
        ordered by due time, ticket id and obligation number.
        Raises InvalidInput when ``moment`` has no UTC offset.
        """
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise InvalidInput(f"moment {moment.isoformat()} has no UTC offset")

        record = SQLModel.metadata.tables[TicketRecordEntry.__tablename__]
        entry = record.alias("entry")
        later = record.alias("later")
        number = entry.c.details["sequence"].as_integer()
        superseded = (
            select(later.c.id)
            .where(
                later.c.ticket_id == entry.c.ticket_id,
                later.c.entry_type == "obligation",
                later.c.details["sequence"].as_integer() == number,
                later.c.sequence > entry.c.sequence,
            )
            .exists()
        )
        # The ledger writes due_at in UTC with a "+00:00" offset, and ISO 8601
        # texts in one offset sort like the times they name when compared byte
        # by byte. PostgreSQL compares text by the database's collation, which
        # may ignore punctuation (ICU's en-US does), so "C" is set here.
        due_at: Any = entry.c.details["due_at"].as_string()
        if self._dialect == "postgresql":
            due_at = collate(due_at, "C")
        query = (
            select(entry.c.ticket_id, entry.c.details)
            .where(
                entry.c.entry_type == "obligation",
                entry.c.details["status"].as_string() == "open",
                due_at < moment.astimezone(UTC).isoformat(),
                ~superseded,
            )
            .order_by(due_at, entry.c.ticket_id, number)
        )
        with self.engine.connect() as connection:
            return [
                DueObligation(
                    ticket_id=row.ticket_id,
                    sequence=row.details["sequence"],
                    kind=row.details["kind"],
                    owner=row.details["owner"],
                    due_at=parse_time(row.details["due_at"], field_name="due_at"),
                )
                for row in connection.execute(query)
            ]

    def ticket(self, ticket_id: str) -> Ticket | None:
        """Return the ticket's current row, or None if it was never recorded."""
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(Ticket, ticket_id)

    # Helpers

    def _insert(self, table: type[SQLModel]) -> Any:
        # Both dialects' insert() offer on_conflict_do_nothing/do_update.
        dialect = postgresql if self._dialect == "postgresql" else sqlite
        return dialect.insert(table)

    def _upsert(
        self,
        table: type[SQLModel],
        columns: tuple[str, ...],
        *,
        newer_only: bool = False,
    ) -> Any:
        """Return an insert that updates ``columns`` of the row if ``id`` exists.

        With ``newer_only``, the row is updated only if the inserted
        ``last_sequence`` is not older than the stored one.
        """
        insert = self._insert(table)
        set_ = {column: insert.excluded[column] for column in columns}
        if not newer_only:
            return insert.on_conflict_do_update(index_elements=["id"], set_=set_)
        return insert.on_conflict_do_update(
            index_elements=["id"],
            set_=set_,
            where=col(Ticket.last_sequence) <= insert.excluded.last_sequence,
        )

    def _upsert_ticket(
        self,
        connection: Connection,
        changes: RecordInput,
        opened_at: datetime,
        closed_at: datetime | None,
        batch_sequence: int | None,
        now: datetime,
    ) -> None:
        # The keys are TICKET_STATE_COLUMNS.
        state = {
            "state": changes.state,
            "priority": changes.priority,
            "source": changes.source,
            "timezone": changes.timezone,
            "opened_at": opened_at,
            "closed_at": closed_at,
            "close_reason": changes.close_reason,
            "customer_id": changes.customer.id,
            "tech_id": changes.tech.id if changes.tech is not None else None,
            "included_hours_per_month": changes.included_hours_per_month,
            "updated_at": now,
        }
        # A batch without entries carries no order, so it is taken as current
        # and keeps the stored sequence.
        statement = (
            self._upsert_ticket_state
            if batch_sequence is None
            else self._upsert_newer_ticket
        )
        connection.execute(
            statement,
            {"id": changes.ticket_id, "last_sequence": batch_sequence or 0, **state},
        )

    def _lock_customer_month(
        self, connection: Connection, customer_id: str, month: str
    ) -> None:
        # Two tickets of one customer may log hours at the same moment. Without
        # a lock, each transaction could sum without the other's entry and both
        # miss a threshold that their hours pass together. SQLite needs no lock
        # because it allows one writing transaction at a time.
        if self._dialect == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                {"key": f"ticket-guard hours {customer_id} {month}"},
            )


def _mail_record(mail: SentMail) -> MailRecord:
    return MailRecord(
        message_id=mail.message_id,
        ticket_id=mail.ticket_id,
        kind=mail.kind,
        role=mail.role,
        recipient=mail.recipient,
        status=mail.status,
        detail=mail.detail,
        sent_at=mail.sent_at,
    )


@contextmanager
def open_store(database_url: str) -> Iterator[Store]:
    """Open a store with its tables created, and close its connections on exit."""
    store = Store(database_url)
    store.create_tables()
    try:
        yield store
    finally:
        store.dispose()
