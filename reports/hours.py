"""Subscription hours: included, used and left per customer and local month.

Read from the ticket database alone (``hours_entries``, ``hours_warnings``,
``tickets``, ``customers``, ``ticket_record`` and ``sent_mail``), so it needs
no Temporal server.

Months are the customer's local calendar months, as the store keeps them.
Logged hours count in the month that the customer's wall clock showed when
they were logged. So work logged at 22:30 on March 31 in New York is March's,
although it is April in UTC. A month is written ``YYYY-MM``.

- **included**: the monthly hours of the customer's subscription, as the
  tickets carry it. It is read from the latest-opened ticket that logged hours
  in the month, or else from the customer's latest-opened ticket.
- **used**: the sum of every hour logged on the customer's tickets in the
  month; **left** is included minus used, negative when the month ran over.
- **warnings**: each threshold the month passed (80% and 100% by default),
  the ticket and time that passed it, and the ``hours_warning`` mails sent to
  ops and to the tech, as the ticket's record and sent_mail keep them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col

from activities.store import (
    Customer,
    HoursEntry,
    HoursWarning,
    SentMail,
    Ticket,
    TicketRecordEntry,
)
from reports.story import StoryError, open_database
from workflows.policy import month_of

MONTH_PATTERN = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
WARNING_KIND = "hours_warning"
LOCAL_FORMAT = "%a %Y-%m-%d %H:%M %Z"
# Message-IDs that one query looks up, well below every database's limit of
# bound parameters.
MAILS_PER_QUERY = 500


class HoursError(Exception):
    """A failure to read the report. Its message names what to fix."""


@dataclass(frozen=True)
class TicketHours:
    """The hours one ticket logged in the month."""

    ticket_id: str
    hours: float
    entries: int


@dataclass(frozen=True)
class WarningMail:
    """One ``hours_warning`` mail: its recipient role, status and last attempt."""

    role: str
    status: str
    sent_at: datetime | None


@dataclass(frozen=True)
class ThresholdWarning:
    """A threshold the month passed, with the event that passed it and its mails.

    ``mails`` is empty while the workflow has not yet recorded the mails'
    outcome.
    """

    threshold: float
    ticket_id: str
    event_id: str
    passed_at: datetime
    mails: tuple[WarningMail, ...]


@dataclass
class CustomerMonth:
    """One customer's hours in one local month."""

    customer_id: str
    customer_name: str | None
    month: str
    zone: ZoneInfo
    # None when no ticket of the customer carries a subscription.
    included_hours: float | None
    used_hours: float = 0.0
    tickets: list[TicketHours] = field(default_factory=list)
    warnings: list[ThresholdWarning] = field(default_factory=list)

    @property
    def left_hours(self) -> float | None:
        if self.included_hours is None:
            return None
        return self.included_hours - self.used_hours


@dataclass(frozen=True)
class _TicketRow:
    ticket_id: str
    customer_id: str
    opened_at: datetime
    included_hours: float | None
    timezone: str


def check_month(month: str) -> None:
    """Raise HoursError unless ``month`` is written ``YYYY-MM``."""
    if not MONTH_PATTERN.fullmatch(month):
        raise HoursError(
            f"invalid month {month!r}: write it as YYYY-MM, such as 2026-03"
        )


# Reading


def load_customer_month(
    engine: Engine,
    customer_id: str,
    *,
    month: str | None = None,
    default_timezone: str,
    now: datetime | None = None,
) -> CustomerMonth:
    """Read one customer's hours in ``month``, by default their current local month.

    The customer's zone is the one on their latest-opened ticket. Raises
    HoursError when the month is malformed, the customer has no ticket or the
    database cannot be read.
    """
    if month is not None:
        check_month(month)
    try:
        with engine.connect() as connection:
            tickets = _read_tickets(connection, customer_id=customer_id)
            if not tickets:
                raise HoursError(
                    f"customer {customer_id} not found: no ticket of theirs is recorded"
                )
            zone = _zone(tickets[-1].timezone, default_timezone)
            chosen = month or month_of(now or datetime.now(UTC), zone)
            months = _read_months(
                connection, tickets, chosen, default_timezone, customer_id=customer_id
            )
    except SQLAlchemyError as error:
        raise HoursError(
            f"reading the hours of {customer_id} failed: {error}"
        ) from None
    return months[customer_id]


def load_all_customers_month(
    engine: Engine,
    *,
    month: str | None = None,
    default_timezone: str,
    now: datetime | None = None,
) -> list[CustomerMonth]:
    """Read the hours of every subscription customer in one local month.

    ``month`` defaults to the current month on the ``default_timezone`` clock.
    Customers are sorted by hours left, fewest first, then by id. Raises
    HoursError when the month is malformed or the database cannot be read.
    """
    chosen = month or month_of(now or datetime.now(UTC), ZoneInfo(default_timezone))
    check_month(chosen)
    try:
        with engine.connect() as connection:
            tickets = _read_tickets(connection, subscriptions_only=True)
            months = _read_months(connection, tickets, chosen, default_timezone)
    except SQLAlchemyError as error:
        raise HoursError(f"reading the hours of {chosen} failed: {error}") from None
    return sorted(
        months.values(),
        key=lambda entry: (
            entry.left_hours is None,
            entry.left_hours or 0.0,
            entry.customer_id,
        ),
    )


def _read_tickets(
    connection: Connection,
    *,
    customer_id: str | None = None,
    subscriptions_only: bool = False,
) -> list[_TicketRow]:
    """Return the tickets, oldest opening first."""
    query = select(
        col(Ticket.id),
        col(Ticket.customer_id),
        col(Ticket.opened_at),
        col(Ticket.included_hours_per_month),
        col(Ticket.timezone),
    ).order_by(col(Ticket.opened_at), col(Ticket.id))
    if customer_id is not None:
        query = query.where(col(Ticket.customer_id) == customer_id)
    if subscriptions_only:
        query = query.where(col(Ticket.included_hours_per_month).is_not(None))
    return [_TicketRow(*row) for row in connection.execute(query)]


def _read_months(
    connection: Connection,
    tickets: Sequence[_TicketRow],
    month: str,
    default_timezone: str,
    *,
    customer_id: str | None = None,
) -> dict[str, CustomerMonth]:
    """Build the month of every customer of ``tickets``, or of ``customer_id`` alone."""
    by_customer: dict[str, list[_TicketRow]] = defaultdict(list)
    for ticket in tickets:
        by_customer[ticket.customer_id].append(ticket)

    names_query = select(col(Customer.id), col(Customer.name))
    if customer_id is not None:
        names_query = names_query.where(col(Customer.id) == customer_id)
    # Not dict(result): a Result has keys(), so dict() would read it as a mapping.
    names = {row[0]: row[1] for row in connection.execute(names_query)}

    logged = _read_logged_hours(connection, month, customer_id)
    warnings = _read_warnings(connection, month, customer_id)

    months = {}
    for customer, own_tickets in by_customer.items():
        ticket_hours = logged.get(customer, [])
        months[customer] = CustomerMonth(
            customer_id=customer,
            customer_name=names.get(customer),
            month=month,
            zone=_zone(own_tickets[-1].timezone, default_timezone),
            included_hours=_included_hours(own_tickets, ticket_hours),
            used_hours=sum(ticket.hours for ticket in ticket_hours),
            tickets=ticket_hours,
            warnings=warnings.get(customer, []),
        )
    return months


def _read_logged_hours(
    connection: Connection, month: str, customer_id: str | None
) -> dict[str, list[TicketHours]]:
    """Return each customer's hours in the month, by ticket in id order."""
    query = (
        select(
            col(HoursEntry.customer_id),
            col(HoursEntry.ticket_id),
            func.sum(col(HoursEntry.hours)),
            func.count(),
        )
        .where(col(HoursEntry.month) == month)
        .group_by(col(HoursEntry.customer_id), col(HoursEntry.ticket_id))
        .order_by(col(HoursEntry.customer_id), col(HoursEntry.ticket_id))
    )
    if customer_id is not None:
        query = query.where(col(HoursEntry.customer_id) == customer_id)
    logged: dict[str, list[TicketHours]] = defaultdict(list)
    for customer, ticket_id, hours, entries in connection.execute(query):
        logged[customer].append(TicketHours(ticket_id, float(hours), entries))
    return logged


def _included_hours(
    tickets: Sequence[_TicketRow], logged: Sequence[TicketHours]
) -> float | None:
    # NOTE: a subscription changed within the month shows the newer amount,
    # while each warning was judged by the amount of the ticket that logged.
    logging_ids = {ticket.ticket_id for ticket in logged}
    with_hours = [t for t in tickets if t.included_hours is not None]
    logging = [t for t in with_hours if t.ticket_id in logging_ids]
    source = logging or with_hours
    return source[-1].included_hours if source else None


def _read_warnings(
    connection: Connection, month: str, customer_id: str | None
) -> dict[str, list[ThresholdWarning]]:
    """Return each customer's thresholds passed in the month, lowest first."""
    query = (
        select(
            col(HoursWarning.customer_id),
            col(HoursWarning.threshold),
            col(HoursWarning.ticket_id),
            col(HoursWarning.event_id),
            col(HoursWarning.at),
        )
        .where(col(HoursWarning.month) == month)
        .order_by(col(HoursWarning.customer_id), col(HoursWarning.threshold))
    )
    if customer_id is not None:
        query = query.where(col(HoursWarning.customer_id) == customer_id)
    rows = list(connection.execute(query))
    mails = _read_warning_mails(connection, rows)

    warnings: dict[str, list[ThresholdWarning]] = defaultdict(list)
    for customer, threshold, ticket_id, event_id, at in rows:
        warnings[customer].append(
            ThresholdWarning(
                threshold=threshold,
                ticket_id=ticket_id,
                event_id=event_id,
                passed_at=at,
                mails=mails.get((ticket_id, at, threshold), ()),
            )
        )
    return warnings


def _read_warning_mails(
    connection: Connection, warnings: Sequence[tuple[str, float, str, str, datetime]]
) -> dict[tuple[str, datetime, float], tuple[WarningMail, ...]]:
    """Match each warning with its mails, keyed by (ticket, time passed, threshold).

    A ticket's record keeps each mail's outcome as a ``notification`` entry
    whose ``at`` is when the hours were logged. For each threshold passed, in
    rising order, the workflow notifies ops and then the ticket's tech, if
    any. So the n-th mail to ops of a (ticket, time) and the tech's mail
    after it belong to the n-th threshold.
    """
    ticket_ids = sorted({ticket_id for _c, _t, ticket_id, _e, _a in warnings})
    if not ticket_ids:
        return {}
    kind = col(TicketRecordEntry.details)["kind"].as_string()
    query = (
        select(col(TicketRecordEntry.ticket_id), col(TicketRecordEntry.details))
        .where(
            col(TicketRecordEntry.ticket_id).in_(ticket_ids),
            col(TicketRecordEntry.entry_type) == "notification",
            kind == WARNING_KIND,
        )
        .order_by(col(TicketRecordEntry.ticket_id), col(TicketRecordEntry.sequence))
    )
    notified: dict[tuple[str, datetime], list[dict[str, Any]]] = defaultdict(list)
    for ticket_id, details in connection.execute(query):
        due_at = datetime.fromisoformat(details["at"]).astimezone(UTC)
        notified[ticket_id, due_at].append(details)
    # Sorted by notification number, so a mail whose outcome was stored
    # later still keeps its place.
    for entries in notified.values():
        entries.sort(key=lambda details: details["sequence"])

    sent = _read_sent_mail(
        connection,
        [d["message_id"] for entries in notified.values() for d in entries],
    )

    thresholds: dict[tuple[str, datetime], list[float]] = defaultdict(list)
    for _customer, threshold, ticket_id, _event, at in warnings:
        thresholds[ticket_id, at].append(threshold)

    matched: dict[tuple[str, datetime, float], tuple[WarningMail, ...]] = {}
    for (ticket_id, at), passed in thresholds.items():
        groups: list[list[WarningMail]] = []
        for details in notified.get((ticket_id, at), []):
            if details["to"] == "ops" or not groups:
                groups.append([])
            status, sent_at = sent.get(details["message_id"], (details["status"], None))
            groups[-1].append(WarningMail(details["to"], status, sent_at))
        for threshold, group in zip(sorted(passed), groups, strict=False):
            matched[ticket_id, at, threshold] = tuple(group)
    return matched


def _read_sent_mail(
    connection: Connection, message_ids: Sequence[str]
) -> dict[str, tuple[str, datetime]]:
    found: dict[str, tuple[str, datetime]] = {}
    for first in range(0, len(message_ids), MAILS_PER_QUERY):
        chunk = message_ids[first : first + MAILS_PER_QUERY]
        query = select(
            col(SentMail.message_id), col(SentMail.status), col(SentMail.sent_at)
        ).where(col(SentMail.message_id).in_(chunk))
        for message_id, status, sent_at in connection.execute(query):
            found[message_id] = (status, sent_at)
    return found


def _zone(name: str | None, default_timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or default_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(default_timezone)


# Output


def format_hours(hours: float | None) -> str:
    """Format hours rounded to two places, such as ``7.25 h``, or ``-`` for None."""
    if hours is None:
        return "-"
    rounded = round(hours, 2)
    # round() leaves -0.0 for a tiny negative remainder.
    return f"{rounded + 0.0:g} h"


def format_left(entry: CustomerMonth) -> str:
    left = entry.left_hours
    if left is None:
        return "-"
    if round(left, 2) < 0:
        return f"{format_hours(left)} ({format_hours(-left)} over)"
    return format_hours(left)


def format_threshold(threshold: float) -> str:
    return f"{threshold:.0%}"


def format_mail(mails: Sequence[WarningMail], role: str, zone: ZoneInfo) -> str:
    """Describe the warning mail to ``role``: ``sent Tue 2026-03-31 22:30 EDT``."""
    for mail in mails:
        if mail.role == role:
            if mail.sent_at is None:
                return mail.status
            return f"{mail.status} {mail.sent_at.astimezone(zone):{LOCAL_FORMAT}}"
    return "none recorded"


def format_warnings_brief(entry: CustomerMonth) -> str:
    """List the thresholds passed and whether ops got each mail: ``80% sent``."""
    parts = []
    for warning in entry.warnings:
        ops = [mail.status for mail in warning.mails if mail.role == "ops"]
        state = ops[0] if ops else "no mail recorded"
        parts.append(f"{format_threshold(warning.threshold)} {state}")
    return ", ".join(parts) or "none"


def render_customer(entry: CustomerMonth) -> str:
    """Render one customer's month as text for the terminal."""
    name = f" ({entry.customer_name})" if entry.customer_name else ""
    lines = [
        f"Hours of customer {entry.customer_id}{name} in {entry.month}, "
        f"on the {entry.zone.key} clock",
        "",
    ]
    if entry.included_hours is None:
        lines.append("  no subscription: the customer's tickets include no hours")
    lines += _text_table(
        ("included", "used", "left"),
        [
            [
                format_hours(entry.included_hours),
                format_hours(entry.used_hours),
                format_left(entry),
            ]
        ],
    )

    lines += ["", "Tickets"]
    lines += _text_table(
        ("ticket", "hours", "entries"),
        [
            [ticket.ticket_id, format_hours(ticket.hours), str(ticket.entries)]
            for ticket in entry.tickets
        ],
    )

    lines += ["", "Warnings"]
    lines += _text_table(
        ("threshold", "passed at", "ticket", "mail to ops", "mail to tech"),
        [
            [
                format_threshold(warning.threshold),
                f"{warning.passed_at.astimezone(entry.zone):{LOCAL_FORMAT}}",
                warning.ticket_id,
                format_mail(warning.mails, "ops", entry.zone),
                format_mail(warning.mails, "tech", entry.zone),
            ]
            for warning in entry.warnings
        ],
    )
    return "\n".join(lines)


def render_all_customers(entries: Sequence[CustomerMonth], month: str) -> str:
    """Render every customer's month as one table, fewest hours left first."""
    lines = [
        f"Subscription hours in {month}, each customer on their own local "
        "calendar month. Sorted by hours left, fewest first.",
        "",
    ]
    if not entries:
        return "\n".join([*lines, "  no customer has a subscription"])
    lines += _text_table(
        (
            "customer",
            "name",
            "zone",
            "included",
            "used",
            "left",
            "tickets",
            "warnings",
        ),
        [
            [
                entry.customer_id,
                entry.customer_name or "",
                entry.zone.key,
                format_hours(entry.included_hours),
                format_hours(entry.used_hours),
                format_left(entry),
                str(len(entry.tickets)),
                format_warnings_brief(entry),
            ]
            for entry in entries
        ],
    )
    return "\n".join(lines)


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


# The command


def write_hours(
    database_url: str,
    out: TextIO,
    *,
    customer_id: str | None,
    month: str | None,
    default_timezone: str,
    now: datetime | None = None,
) -> CustomerMonth | list[CustomerMonth]:
    """Print one customer's month, or every subscription customer's, to ``out``.

    Raises HoursError when the month is malformed, the database cannot be
    read or the customer is unknown.
    """
    try:
        engine = open_database(database_url)
    except StoryError as error:
        raise HoursError(str(error)) from None
    try:
        if customer_id is not None:
            entry = load_customer_month(
                engine,
                customer_id,
                month=month,
                default_timezone=default_timezone,
                now=now,
            )
            out.write(render_customer(entry) + "\n")
            return entry
        chosen = month or month_of(now or datetime.now(UTC), ZoneInfo(default_timezone))
        entries = load_all_customers_month(
            engine, month=chosen, default_timezone=default_timezone
        )
        out.write(render_all_customers(entries, chosen) + "\n")
        return entries
    finally:
        engine.dispose()
