"""A ticket's story: every event, obligation and mail of one ticket, in local time.

The story is read from the ticket database alone (the ``tickets``,
``ticket_record`` and ``sent_mail`` tables), so it needs no Temporal server and
covers closed tickets too. Times are shown on the customer's clock, in the
zone stored on the ticket row.

Who acted is not stored with every entry, so it is read from the record:

- ``claim`` and ``reassign`` name their tech, and a ``customer_message`` is the
  customer's. A portal ticket is opened by its customer, a tech-created one by
  its tech.
- Every other event (contact attempts, notes, logged hours, release, close) is
  taken as the act of the tech holding the ticket at that moment, because
  the portal sends them on that tech's behalf. With no tech, it has no ``who``.
- An obligation ended by an event at the same moment was ended by that event's
  actor. A breach is ended by its due time, and the check-in mail and the
  unreachable closing by the service itself.

``write_csv`` writes one row per item with the columns of ``CSV_COLUMNS``:

- ``time_utc``, ``time_local``: ISO 8601, in UTC and on the customer's clock
  with its offset. An event's time, a rejected event's receipt, an
  obligation's opening, a mail's latest attempt (its due time if none).
- ``type``: ``event``, ``obligation``, ``mail`` or ``rejected``.
- ``kind``: the event name, obligation kind, mail kind or rejected signal.
- ``who``: the event's actor, the obligation's owner, the mail's recipient
  role (``customer``, ``tech`` or ``ops``); empty for a rejected event.
- ``status``: a contact attempt's outcome (empty for other events), the
  obligation's status (``open``, ``met``, ``breached``, ``cancelled``), the
  mail's status from sent_mail, or ``rejected``.
- ``detail``: the rest as text, with times in local time.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import matplotlib.dates as mdates
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from sqlalchemy import inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from activities.store import (
    Customer,
    SentMail,
    Tech,
    Ticket,
    TicketRecordEntry,
    database_engine,
)
from reports import html
from reports.output import write_outputs
from workflows.ledger import SERVICE

CSV_COLUMNS = ("time_utc", "time_local", "type", "kind", "who", "status", "detail")
# Rows of one moment keep this order: an event before what it caused.
ROW_TYPE_ORDER = {"event": 0, "obligation": 1, "mail": 2, "rejected": 3}
LOCAL_FORMAT = "%a %Y-%m-%d %H:%M %Z"
BREACH_THROUGH = "due time passed"

# Chart colours. Only breaches use red.
STATUS_COLOURS = {
    "met": "#2ca02c",
    "open": "#1f77b4",
    "cancelled": "#bdbdbd",
    "breached": "#d62728",
}
ACTION_COLOUR = "#333333"
MAIL_COLOUR = "#6a51a3"
FAILED_MAIL_COLOUR = "#ff7f0e"
# Mail colours from the least to the most important.
MAIL_COLOURS = (MAIL_COLOUR, FAILED_MAIL_COLOUR, STATUS_COLOURS["breached"])
# A chart with more rows is hard to read. The tables still list everything.
MAX_CHART_OBLIGATIONS = 40


class StoryError(Exception):
    """A story that cannot be read or written. The message names what to fix."""


class TicketNotFound(StoryError, LookupError):
    """No ticket row with the requested id."""


@dataclass(frozen=True)
class TicketHeader:
    """The ticket row, with the names of its customer and current tech."""

    ticket_id: str
    state: str
    priority: str
    source: str
    timezone: str
    opened_at: datetime
    closed_at: datetime | None
    close_reason: str | None
    customer_id: str
    customer_name: str | None
    tech_id: str | None
    tech_name: str | None


@dataclass(frozen=True)
class StoryEvent:
    """One applied event of the record. ``previous_tech`` is set on a reassign."""

    sequence: int
    at: datetime
    event: str
    who: str | None
    event_id: str | None = None
    channel: str | None = None
    outcome: str | None = None
    reason: str | None = None
    hours: float | None = None
    source: str | None = None
    previous_tech: str | None = None


@dataclass(frozen=True)
class StoryObligation:
    """One obligation as its last record entry left it.

    ``earlier_owners`` lists the owners before ``owner``, oldest first.
    ``ended_through`` is the event that ended it, ``due time passed`` for a
    breach, or None when the service ended it with no event.
    """

    number: int
    kind: str
    owner: str
    opened_at: datetime
    due_at: datetime
    status: str
    ended_at: datetime | None = None
    ended_by: str | None = None
    ended_through: str | None = None
    earlier_owners: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoryMail:
    """One mail: its sent_mail row joined with the record's notification entry.

    ``notification`` is the notification's number within the ticket, None for
    a mail the mailer sent on its own (a report to ops about a failed mail).
    ``due_at`` is when the ticket owed the mail; ``attempted_at`` is the time
    of the latest send attempt, None when sent_mail has no row for it.
    """

    notification: int | None
    kind: str
    role: str
    recipient: str | None
    status: str
    due_at: datetime | None
    attempted_at: datetime | None
    message_id: str | None
    detail: str | None

    @property
    def at(self) -> datetime:
        moment = self.attempted_at or self.due_at
        assert moment is not None, "a mail has a due time or an attempt"
        return moment


@dataclass(frozen=True)
class StoryRejection:
    """An event the ticket rejected, at the time it was received."""

    at: datetime
    signal: str
    event_id: str | None
    reason: str


@dataclass(frozen=True)
class TicketStory:
    """Everything the database keeps about one ticket."""

    ticket: TicketHeader
    zone: ZoneInfo
    events: tuple[StoryEvent, ...]
    obligations: tuple[StoryObligation, ...]
    mails: tuple[StoryMail, ...]
    rejected: tuple[StoryRejection, ...]


@dataclass(frozen=True)
class StoryRow:
    """One CSV row, with the fields of ``CSV_COLUMNS``."""

    time_utc: str
    time_local: str
    type: str
    kind: str
    who: str
    status: str
    detail: str


# Reading


def open_database(database_url: str) -> Engine:
    """Open the ticket database for reading, creating nothing.

    Raises StoryError when a SQLite file is missing or the database has no
    ticket tables.
    """
    url = make_url(database_url)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database not in (None, ""):
        if url.database != ":memory:" and not Path(url.database).is_file():
            raise StoryError(
                f"database file {url.database} not found: set DATABASE_URL to "
                "the service's database"
            )
    try:
        engine = database_engine(database_url)
        has_tickets = inspect(engine).has_table(Ticket.__tablename__)
    except (SQLAlchemyError, ValueError) as error:
        raise StoryError(
            f"opening the ticket database {shown} failed: {error}"
        ) from None
    if not has_tickets:
        engine.dispose()
        raise StoryError(
            f"the database {shown} has no tickets table: set DATABASE_URL to the "
            "service's database, or create its tables with the migrations"
        )
    return engine


def load_story(engine: Engine, ticket_id: str) -> TicketStory:
    """Read the ticket's row, record and mail.

    Raises TicketNotFound when no ticket has this id, and StoryError when the
    database cannot be read.
    """
    try:
        with Session(engine) as session:
            ticket = session.get(Ticket, ticket_id)
            if ticket is None:
                url = engine.url.render_as_string(hide_password=True)
                raise TicketNotFound(
                    f"ticket {ticket_id} not found in the database {url}: check "
                    "the id and DATABASE_URL"
                )
            customer = session.get(Customer, ticket.customer_id)
            tech = session.get(Tech, ticket.tech_id) if ticket.tech_id else None
            header = TicketHeader(
                ticket_id=ticket.id,
                state=ticket.state,
                priority=ticket.priority,
                source=ticket.source,
                timezone=ticket.timezone,
                opened_at=ticket.opened_at,
                closed_at=ticket.closed_at,
                close_reason=ticket.close_reason,
                customer_id=ticket.customer_id,
                customer_name=customer.name if customer is not None else None,
                tech_id=ticket.tech_id,
                tech_name=tech.name if tech is not None else None,
            )
            entries = session.exec(
                select(TicketRecordEntry)
                .where(TicketRecordEntry.ticket_id == ticket_id)
                .order_by(col(TicketRecordEntry.sequence))
            ).all()
            sent = session.exec(
                select(SentMail)
                .where(SentMail.ticket_id == ticket_id)
                .order_by(col(SentMail.sent_at), col(SentMail.id))
            ).all()
    except SQLAlchemyError as error:
        raise StoryError(f"reading ticket {ticket_id} failed: {error}") from None

    try:
        zone = ZoneInfo(header.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise StoryError(
            f"ticket {ticket_id} has an invalid time zone {header.timezone!r}"
        ) from None

    reader = _RecordReader(header)
    for entry in entries:
        reader.read(entry.sequence, entry.entry_type, entry.at, entry.details)
    return TicketStory(
        ticket=header,
        zone=zone,
        events=tuple(reader.events),
        obligations=tuple(reader.obligations()),
        mails=tuple(_join_mails(reader.notifications, sent)),
        rejected=tuple(reader.rejected),
    )


@dataclass(frozen=True)
class _Cause:
    """The latest event, which ended any obligation ended at its moment."""

    at: datetime
    through: str
    who: str | None


@dataclass(frozen=True)
class _Notification:
    sequence: int
    kind: str
    role: str
    due_at: datetime | None
    status: str
    message_id: str | None
    detail: str | None


class _RecordReader:
    """Reads record entries in sequence order and tracks the ticket's current tech."""

    def __init__(self, ticket: TicketHeader) -> None:
        self.ticket = ticket
        self.events: list[StoryEvent] = []
        self.rejected: list[StoryRejection] = []
        self.notifications: dict[int, _Notification] = {}
        self._obligations: dict[int, StoryObligation] = {}
        self._tech: str | None = None
        self._cause: _Cause | None = None
        # A claim obligation met by a claim: its claimer is the owner of the
        # first-contact obligation that the claim opens next.
        self._claim_awaiting_tech: int | None = None
        # Index in ``events`` of a tech-created opening, whose tech is the
        # owner of the first-contact obligation opened with it.
        self._opening_awaiting_tech: int | None = None

    def read(
        self, sequence: int, entry_type: str, at: datetime, details: dict[str, Any]
    ) -> None:
        if entry_type == "event":
            self._read_event(sequence, at, details)
        elif entry_type == "obligation":
            self._read_obligation(at, details)
        elif entry_type == "rejected":
            self.rejected.append(
                StoryRejection(
                    at=at,
                    signal=str(details.get("signal")),
                    event_id=details.get("event_id"),
                    reason=str(details.get("reason")),
                )
            )
        elif entry_type == "notification":
            self._read_notification(details)

    def obligations(self) -> list[StoryObligation]:
        return [self._obligations[number] for number in sorted(self._obligations)]

    def _read_event(self, sequence: int, at: datetime, details: dict[str, Any]) -> None:
        name = str(details.get("event"))
        previous_tech = None
        if name == "opened":
            who = self.ticket.customer_id if details.get("source") == "portal" else None
            if who is None:
                self._opening_awaiting_tech = len(self.events)
        elif name in ("claim", "reassign"):
            previous_tech = self._tech if name == "reassign" else None
            who = details.get("tech_id")
            self._tech = who
        elif name == "customer_message":
            who = self.ticket.customer_id
        elif name == "closed":
            last = self.events[-1] if self.events else None
            if last is not None and last.event == "close" and last.at == at:
                # The close event is already listed, and ``closed`` only follows it.
                return
            who = SERVICE
        else:
            who = self._tech
            if name == "release":
                self._tech = None

        self.events.append(
            StoryEvent(
                sequence=sequence,
                at=at,
                event=name,
                who=who,
                event_id=details.get("event_id"),
                channel=details.get("channel"),
                outcome=details.get("outcome"),
                reason=details.get("reason"),
                hours=details.get("hours"),
                source=details.get("source"),
                previous_tech=previous_tech,
            )
        )
        self._cause = _Cause(at=at, through=name, who=who)

    def _read_obligation(self, at: datetime, details: dict[str, Any]) -> None:
        number = int(details["sequence"])
        change = details.get("change")
        kind = str(details.get("kind"))
        owner = str(details.get("owner"))
        known = self._obligations.get(number)
        if known is None:
            known = StoryObligation(
                number=number,
                kind=kind,
                owner=owner,
                opened_at=_time(details.get("opened_at")) or at,
                due_at=_time(details.get("due_at")) or at,
                status="open",
            )
        if change == "opened" and kind == "first_contact":
            self._tech = owner
            self._resolve_claimer(owner)
        if owner != known.owner:
            earlier = (*known.earlier_owners, known.owner)
            known = dataclasses.replace(known, owner=owner, earlier_owners=earlier)

        status = str(details.get("status", known.status))
        if change in ("met", "breached", "cancelled") or status != "open":
            known = self._ended(known, status, _time(details.get("ended_at")) or at)
        self._obligations[number] = known

    def _ended(
        self, obligation: StoryObligation, status: str, at: datetime
    ) -> StoryObligation:
        by: str | None = SERVICE
        through: str | None = None
        cause = self._cause
        if cause is not None and cause.at != at:
            cause = None
        if status == "breached":
            by, through = None, BREACH_THROUGH
        elif obligation.kind == "claim" and status == "met":
            self._claim_awaiting_tech = obligation.number
            by = None
            through = cause.through if cause is not None else "claim"
        elif obligation.kind == "close_unreachable" and status == "met":
            # Whatever the closing cancels next is ended by the service too.
            self._cause = _Cause(at=at, through="closed unreachable", who=SERVICE)
        elif obligation.kind != "check_in" and cause is not None:
            by, through = cause.who, cause.through
        return dataclasses.replace(
            obligation, status=status, ended_at=at, ended_by=by, ended_through=through
        )

    def _resolve_claimer(self, tech_id: str) -> None:
        number = self._claim_awaiting_tech
        if number is not None:
            claim = self._obligations[number]
            self._obligations[number] = dataclasses.replace(claim, ended_by=tech_id)
            self._claim_awaiting_tech = None
        index = self._opening_awaiting_tech
        if index is not None:
            self.events[index] = dataclasses.replace(self.events[index], who=tech_id)
            self._opening_awaiting_tech = None
            # What the opening ends at its moment, such as the first contact
            # of a tech-created ticket, is that tech's doing.
            if self._cause is not None and self._cause.through == "opened":
                self._cause = dataclasses.replace(self._cause, who=tech_id)

    def _read_notification(self, details: dict[str, Any]) -> None:
        sequence = int(details["sequence"])
        self.notifications[sequence] = _Notification(
            sequence=sequence,
            kind=str(details.get("kind")),
            role=str(details.get("to")),
            due_at=_time(details.get("at")),
            status=str(details.get("status")),
            message_id=details.get("message_id"),
            detail=details.get("detail"),
        )


def _join_mails(
    notifications: dict[int, _Notification], sent: Sequence[SentMail]
) -> list[StoryMail]:
    """Join each sent_mail row with the notification entry of its Message-ID.

    sent_mail's status and attempt time win, because the record keeps what
    the workflow heard back, which a later attempt may have changed.
    """
    by_message_id = {
        notification.message_id: notification
        for notification in notifications.values()
        if notification.message_id is not None
    }
    mails = []
    for row in sent:
        notification = by_message_id.pop(row.message_id, None)
        mails.append(
            StoryMail(
                notification=notification.sequence if notification else None,
                kind=row.kind,
                role=row.role,
                recipient=row.recipient,
                status=row.status,
                due_at=notification.due_at if notification else None,
                attempted_at=row.sent_at,
                message_id=row.message_id,
                detail=row.detail,
            )
        )
    for notification in by_message_id.values():
        if notification.due_at is None:
            continue
        mails.append(
            StoryMail(
                notification=notification.sequence,
                kind=notification.kind,
                role=notification.role,
                recipient=None,
                status=notification.status,
                due_at=notification.due_at,
                attempted_at=None,
                message_id=notification.message_id,
                detail=notification.detail,
            )
        )
    # A stable sort, so mails of one moment keep the order they were stored in.
    mails.sort(key=lambda mail: mail.at)
    return mails


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value).astimezone(UTC)


# Formatting


def local_time(moment: datetime | None, zone: ZoneInfo) -> str:
    """Format a time on the zone's clock: ``Wed 2026-06-10 09:30 EDT``.

    Seconds are shown only when they are not zero, and None gives ``-``.
    """
    if moment is None:
        return "-"
    local = moment.astimezone(zone)
    if local.second:
        return local.strftime("%a %Y-%m-%d %H:%M:%S %Z")
    return local.strftime(LOCAL_FORMAT)


def event_detail(event: StoryEvent) -> str:
    """Return what an event's columns leave out: reason, hours, event id."""
    parts = []
    if event.source is not None:
        parts.append(f"source {event.source}")
    if event.previous_tech is not None:
        parts.append(f"from {event.previous_tech}")
    if event.reason is not None:
        parts.append(f"reason {event.reason}")
    if event.hours is not None:
        parts.append(f"{event.hours:g} h")
    if event.event_id is not None:
        parts.append(f"event {event.event_id}")
    return "; ".join(parts)


def ended_by(obligation: StoryObligation) -> str:
    """Return who or what ended the obligation, such as ``K-4 (contact_attempt)``."""
    if obligation.ended_at is None:
        return ""
    who = obligation.ended_by or ""
    through = obligation.ended_through
    if through is None:
        return who
    return f"{who} ({through})" if who else through


def story_rows(story: TicketStory) -> list[StoryRow]:
    """Return one row per event, obligation, mail and rejected event, in time order."""
    zone = story.zone
    rows: list[tuple[datetime, int, int, StoryRow]] = []

    def add(at: datetime, order: int, row_type: str, *cells: str) -> None:
        row = StoryRow(
            at.astimezone(UTC).isoformat(),
            at.astimezone(zone).isoformat(),
            row_type,
            *cells,
        )
        rows.append((at, ROW_TYPE_ORDER[row_type], order, row))

    for event in story.events:
        detail = "; ".join(
            part
            for part in (
                f"channel {event.channel}" if event.channel else "",
                event_detail(event),
            )
            if part
        )
        add(
            event.at,
            event.sequence,
            "event",
            event.event,
            event.who or "",
            event.outcome or "",
            detail,
        )
    for obligation in story.obligations:
        add(
            obligation.opened_at,
            obligation.number,
            "obligation",
            obligation.kind,
            obligation.owner,
            obligation.status,
            _obligation_detail(obligation, zone),
        )
    for index, mail in enumerate(story.mails):
        add(
            mail.at,
            index,
            "mail",
            mail.kind,
            mail.role,
            mail.status,
            _mail_detail(mail, zone),
        )
    for index, rejection in enumerate(story.rejected):
        add(
            rejection.at,
            index,
            "rejected",
            rejection.signal,
            "",
            "rejected",
            f"event {rejection.event_id}: {rejection.reason}",
        )
    rows.sort(key=lambda item: item[:3])
    return [row for *_key, row in rows]


def _obligation_detail(obligation: StoryObligation, zone: ZoneInfo) -> str:
    parts = [f"#{obligation.number}", f"due {local_time(obligation.due_at, zone)}"]
    if obligation.ended_at is not None:
        ended = f"{obligation.status} {local_time(obligation.ended_at, zone)}"
        by = ended_by(obligation)
        parts.append(f"{ended} by {by}" if by else ended)
    if obligation.earlier_owners:
        parts.append("earlier owners " + ", ".join(obligation.earlier_owners))
    return "; ".join(parts)


def _mail_detail(mail: StoryMail, zone: ZoneInfo) -> str:
    parts = []
    if mail.recipient:
        parts.append(f"to {mail.recipient}")
    if mail.due_at is not None:
        parts.append(f"due {local_time(mail.due_at, zone)}")
    if mail.attempted_at is None:
        parts.append("no send attempt recorded")
    if mail.detail:
        parts.append(mail.detail)
    return "; ".join(parts)


def summary_lines(story: TicketStory) -> list[str]:
    """Return the ticket's state, people and opening and closing times."""
    ticket, zone = story.ticket, story.zone
    state = ticket.state
    if ticket.close_reason:
        state += f" ({ticket.close_reason})"
    people = f"Customer {_person(ticket.customer_id, ticket.customer_name)}"
    if ticket.tech_id is not None:
        people += f", tech {_person(ticket.tech_id, ticket.tech_name)}"
    times = f"Opened {local_time(ticket.opened_at, zone)}"
    if ticket.closed_at is not None:
        times += f", closed {local_time(ticket.closed_at, zone)}"
    return [
        f"Ticket {ticket.ticket_id}: {state}, priority {ticket.priority}, "
        f"source {ticket.source}",
        people,
        times,
        f"Times are the customer's local time ({zone.key}).",
    ]


def _person(person_id: str, name: str | None) -> str:
    return f"{person_id} ({name})" if name else person_id


def event_table(story: TicketStory) -> tuple[list[str], list[list[str]]]:
    headers = ["time", "event", "who", "channel", "outcome", "detail"]
    rows = [
        [
            local_time(event.at, story.zone),
            event.event,
            event.who or "-",
            event.channel or "",
            event.outcome or "",
            event_detail(event),
        ]
        for event in story.events
    ]
    return headers, rows


def obligation_table(story: TicketStory) -> tuple[list[str], list[list[str]]]:
    headers = ["#", "kind", "owner", "opened", "due", "status", "ended", "ended by"]
    rows = []
    for obligation in story.obligations:
        owner = obligation.owner
        if obligation.earlier_owners:
            owner += " (was " + ", ".join(obligation.earlier_owners) + ")"
        rows.append(
            [
                str(obligation.number),
                obligation.kind,
                owner,
                local_time(obligation.opened_at, story.zone),
                local_time(obligation.due_at, story.zone),
                obligation.status,
                local_time(obligation.ended_at, story.zone)
                if obligation.ended_at
                else "",
                ended_by(obligation),
            ]
        )
    return headers, rows


def mail_table(story: TicketStory) -> tuple[list[str], list[list[str]]]:
    headers = ["kind", "to", "recipient", "status", "due", "sent or tried", "detail"]
    rows = [
        [
            mail.kind,
            mail.role,
            mail.recipient or "-",
            mail.status,
            local_time(mail.due_at, story.zone),
            local_time(mail.attempted_at, story.zone),
            mail.detail or "",
        ]
        for mail in story.mails
    ]
    return headers, rows


def rejected_table(story: TicketStory) -> tuple[list[str], list[list[str]]]:
    headers = ["received", "event", "event id", "reason"]
    rows = [
        [
            local_time(rejection.at, story.zone),
            rejection.signal,
            rejection.event_id or "-",
            rejection.reason,
        ]
        for rejection in story.rejected
    ]
    return headers, rows


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return ["  none"]
    widths = [
        max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)
    ]
    lines = []
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def render_text(story: TicketStory) -> str:
    """Render the story as plain-text tables for the terminal."""
    lines = summary_lines(story)
    sections = [
        ("Events", event_table(story)),
        ("Obligations", obligation_table(story)),
        ("Mail", mail_table(story)),
        ("Rejected events", rejected_table(story)),
    ]
    for title, (headers, rows) in sections:
        lines += ["", title, *_text_table(headers, rows)]
    return "\n".join(lines)


def write_csv(story: TicketStory, out: TextIO) -> int:
    """Write the story's rows as CSV after a header line and return the row count.

    Open ``out`` with ``newline=""``, as the csv module requires.
    """
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    rows = story_rows(story)
    for row in rows:
        writer.writerow(dataclasses.astuple(row))
    return len(rows)


# The timeline chart and the HTML page


def timeline_figure(story: TicketStory) -> Figure:
    """Draw the ticket's timeline on the customer's clock.

    Each obligation is a bar from its opening to its due time, coloured by
    status, with a tick where it ended. Events and mails are marks on their
    own rows at the top.
    """
    zone = story.zone
    obligations = story.obligations[:MAX_CHART_OBLIGATIONS]
    labels = ["events", "mail"] + [
        f"#{o.number} {o.kind} ({o.owner})" for o in obligations
    ]
    chart = Figure(figsize=(10, 1.6 + 0.32 * len(labels)), layout="constrained")
    axes = chart.add_subplot()

    for row, obligation in enumerate(obligations, start=2):
        start = _chart_x(obligation.opened_at)
        width = _chart_x(obligation.due_at) - start
        colour = STATUS_COLOURS.get(obligation.status, STATUS_COLOURS["open"])
        axes.broken_barh([(start, width)], (row - 0.35, 0.7), facecolors=colour)
        if obligation.ended_at is not None:
            axes.plot(
                [_chart_x(obligation.ended_at)],
                [row],
                marker="|",
                markersize=14,
                color="black",
            )
        if obligation.status == "breached":
            axes.plot(
                [_chart_x(obligation.due_at)],
                [row],
                marker="X",
                markersize=10,
                color=STATUS_COLOURS["breached"],
            )

    if story.events:
        axes.scatter(
            [_chart_x(event.at) for event in story.events],
            [0] * len(story.events),
            marker="o",
            color=ACTION_COLOUR,
            zorder=3,
        )
    if story.mails:
        # Breach and failed mails are drawn last, so that an ordinary mail of
        # the same moment does not hide them.
        mails = sorted(
            story.mails, key=lambda mail: MAIL_COLOURS.index(_mail_colour(mail))
        )
        axes.scatter(
            [_chart_x(mail.at) for mail in mails],
            [1] * len(mails),
            marker="v",
            color=[_mail_colour(mail) for mail in mails],
            zorder=3,
        )

    axes.set_yticks(range(len(labels)), labels)
    axes.set_ylim(len(labels) - 0.5, -0.5)
    # matplotlib.dates has no type annotations (matplotlib 3.11).
    locator = mdates.AutoDateLocator(tz=zone)  # type: ignore[no-untyped-call]
    labels_format = mdates.DateFormatter("%a %d %b\n%H:%M", tz=zone)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(labels_format)
    axes.set_xlabel(f"Local time ({zone.key})")
    axes.grid(axis="x", color="#e0e0e0")
    axes.set_title(f"Ticket {story.ticket.ticket_id}")
    chart.legend(
        handles=_legend_handles(), loc="outside lower center", ncols=5, frameon=False
    )
    return chart


def _chart_x(moment: datetime) -> float:
    """Return matplotlib's date number (days since its epoch) of an aware time."""
    number: float = mdates.date2num(moment)  # type: ignore[no-untyped-call]
    return number


def _mail_colour(mail: StoryMail) -> str:
    if mail.kind.endswith("_breach"):
        return STATUS_COLOURS["breached"]
    if mail.status in ("failed", "unconfirmed"):
        return FAILED_MAIL_COLOUR
    return MAIL_COLOUR


def _legend_handles() -> list[Patch | Line2D]:
    handles: list[Patch | Line2D] = [
        Patch(color=colour, label=status) for status, colour in STATUS_COLOURS.items()
    ]
    marks = [
        ("o", ACTION_COLOUR, "event"),
        ("v", MAIL_COLOUR, "mail"),
        ("v", STATUS_COLOURS["breached"], "breach mail"),
        ("v", FAILED_MAIL_COLOUR, "failed mail"),
        ("|", "black", "ended"),
        ("X", STATUS_COLOURS["breached"], "breached at due time"),
    ]
    handles += [
        Line2D([], [], marker=marker, color=colour, linestyle="", label=label)
        for marker, colour, label in marks
    ]
    return handles


def render_html(story: TicketStory) -> str:
    """Render the story as a self-contained HTML page with its timeline chart."""
    summary, people, times, zone_line = summary_lines(story)
    caption = "Obligations as bars from opening to due time; events and mails as marks."
    hidden = len(story.obligations) - MAX_CHART_OBLIGATIONS
    if hidden > 0:
        caption += (
            f" The chart shows the first {MAX_CHART_OBLIGATIONS} obligations; "
            f"the table lists all {len(story.obligations)}."
        )
    chart = timeline_figure(story)
    parts = [
        html.paragraph(people),
        html.paragraph(times),
        html.figure(chart, caption=caption),
    ]

    events = event_table(story)
    obligations = obligation_table(story)
    mails = mail_table(story)
    rejected = rejected_table(story)
    parts += [
        html.heading("Events"),
        html.table(*events),
        html.heading("Obligations"),
        html.table(
            *obligations,
            row_classes=[_status_class(o.status) for o in story.obligations],
            numeric_columns=[0],
        ),
        html.heading("Mail"),
        html.table(
            *mails,
            row_classes=[
                "failed" if m.status in ("failed", "unconfirmed") else None
                for m in story.mails
            ],
        ),
        html.heading("Rejected events"),
        html.table(*rejected) if rejected[1] else html.paragraph("None."),
    ]
    return html.render_page(summary, parts, lead=zone_line)


def _status_class(status: str) -> str | None:
    return status if status in ("breached", "cancelled") else None


# The command


def write_story(
    database_url: str,
    ticket_id: str,
    out: TextIO,
    *,
    csv_path: Path | None = None,
    html_path: Path | None = None,
) -> TicketStory:
    """Print the ticket's story to ``out`` and write the CSV and HTML files asked for.

    Raises TicketNotFound for an unknown ticket and StoryError when the
    database cannot be read or a file cannot be written.
    """
    engine = open_database(database_url)
    try:
        story = load_story(engine, ticket_id)
    finally:
        engine.dispose()

    write_outputs(
        out,
        render_text(story),
        csv_path=csv_path,
        write_csv=lambda file: write_csv(story, file),
        html_path=html_path,
        render_html=lambda: render_html(story),
        error_type=StoryError,
    )
    return story
