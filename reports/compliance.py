"""Compliance by tech: who keeps the communication deadlines, over a date range.

The report is read from the ticket database alone (``ticket_record``,
``tickets`` and ``techs``), so it needs no Temporal server.

The range is whole calendar days on the company's clock, the service's
``DEFAULT_TIMEZONE``: from 00:00 on the first day up to, not including, 00:00
after the last day. Each measure takes what belongs to the range:

- **tickets claimed**: tickets the tech took in the range, by a claim, a
  reassignment to them or an opening with them as tech (a tech-created
  ticket included). Each opens a first-contact obligation for the tech at
  that moment, and a ticket counts once per tech however often they took it.
- **on time**: an obligation whose due time falls in the range, counted for
  the tech who owned it when it ended. It is on time when the ledger marked
  it met, which happens at or before its due time, and late when the ledger
  marked it breached at its due time. Cancelled obligations (a reassignment,
  release or close came first) and open ones count as neither. The share is
  met / (met + breached), kept as an exact fraction; it is None when there
  were none.
- **first contact**: as above, leaving out tech-created tickets, whose first
  contact is the opening itself.
- **first-contact delay**: from the clock start to the tech's first phone or
  email attempt after the claim while they held the ticket. The clock starts
  at the claim, or at the next 08:00 on the customer's clock for a normal
  ticket claimed in the quiet window. A contact before the clock start counts
  as no delay. A breached first contact that no such attempt followed counts
  as never made, which is longer than any delay: the median is "never" when
  it falls on one.
- **breaches by kind**: breached obligations of each kind a tech can own
  (first contact, notes, reply and the two ladder steps), due in the range.
- **closed unreachable**: tickets closed as unreachable in the range, counted
  for the tech who held the ticket when it closed.

The table puts the tech who misses first contact most at the top: rows are
sorted by the share of first contacts on time, lowest first, then by the
number of first-contact breaches, most first. Techs with no first contact
due in the range come last.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from matplotlib.figure import Figure
from sqlalchemy import collate, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from activities.store import Tech, Ticket, TicketRecordEntry
from reports import html
from reports.charts import bar_chart, stacked_bar_chart
from reports.output import write_outputs
from reports.story import StoryError, open_database
from workflows.ledger import OPS, SERVICE
from workflows.policy import DEFAULT_POLICY, first_contact_clock_start

# Obligation kinds a tech can own, in the order the report shows them.
TECH_KINDS = ("first_contact", "notes", "reply", "try_other_method", "try_all_methods")
KIND_NAMES = {
    "first_contact": "first contact",
    "notes": "notes",
    "reply": "reply",
    "try_other_method": "other method",
    "try_all_methods": "all methods",
}
# Owners that are not techs.
NOT_TECHS = (OPS, SERVICE)
# The events after a claim that end the tech's hold on the ticket.
HOLD_ENDS = ("reassign", "release", "closed")
# Tickets whose events one query reads, well below every database's limit of
# bound parameters.
TICKETS_PER_QUERY = 500

CSV_COLUMNS = (
    "tech_id",
    "tech_name",
    "tickets_claimed",
    "first_contact_met",
    "first_contact_breached",
    "first_contact_on_time_share",
    "first_contact_median_delay_minutes",
    "first_contact_never_made",
    "notes_met",
    "notes_breached",
    "notes_on_time_share",
    "replies_met",
    "replies_breached",
    "replies_on_time_share",
    *(f"breaches_{kind}" for kind in TECH_KINDS),
    "closed_unreachable",
)


class ComplianceError(Exception):
    """A failure to read or write the report. Its message names what to fix."""


@dataclass(frozen=True)
class ReportRange:
    """Calendar days on a zone's clock, and the UTC instants they span."""

    first_day: date
    last_day: date
    zone: ZoneInfo

    @property
    def start(self) -> datetime:
        return _local_midnight(self.first_day, self.zone)

    @property
    def end(self) -> datetime:
        """Return the first instant after the range: midnight after the last day."""
        return _local_midnight(self.last_day + timedelta(days=1), self.zone)

    def describe(self) -> str:
        return f"{self.first_day} to {self.last_day} ({self.zone.key})"


@dataclass(frozen=True)
class Tally:
    """Obligations of one kind that ended met or breached."""

    met: int = 0
    breached: int = 0

    @property
    def settled(self) -> int:
        return self.met + self.breached

    @property
    def on_time_share(self) -> Fraction | None:
        return Fraction(self.met, self.settled) if self.settled else None


@dataclass
class TechCompliance:
    """One tech's figures over the range."""

    tech_id: str
    tech_name: str | None = None
    tickets_claimed: int = 0
    # Met and breached obligations by kind, one of TECH_KINDS.
    tallies: dict[str, Tally] = field(default_factory=dict)
    # One delay per settled first contact, None for one never made.
    first_contact_delays: list[timedelta | None] = field(default_factory=list)
    closed_unreachable: int = 0

    def tally(self, kind: str) -> Tally:
        return self.tallies.get(kind, Tally())

    @property
    def first_contact_never_made(self) -> int:
        return sum(1 for delay in self.first_contact_delays if delay is None)

    @property
    def median_first_contact_delay(self) -> timedelta | None:
        """Return the median delay, or None when there is none or it is "never"."""
        return median_delay(self.first_contact_delays)

    def breaches(self, kind: str) -> int:
        return self.tally(kind).breached

    def sort_key(self) -> tuple[bool, Fraction, int, str]:
        share = self.tally("first_contact").on_time_share
        return (
            share is None,
            share if share is not None else Fraction(0),
            -self.breaches("first_contact"),
            self.tech_id,
        )


@dataclass(frozen=True)
class ComplianceReport:
    """Every tech's figures, sorted as the module docstring describes."""

    range: ReportRange
    techs: list[TechCompliance]


def median_delay(delays: Sequence[timedelta | None]) -> timedelta | None:
    """Return the median of the delays, with None (never made) above every delay.

    Returns None when there are no delays or the median falls on a never-made
    contact, so the caller tells the two apart by the number of delays.
    """
    if not delays:
        return None
    made_delays = sorted(delay for delay in delays if delay is not None)
    # The never-made contacts sort last, so the middle falls on them when
    # the made ones are not more than half.
    never_made: list[timedelta | None] = [None] * (len(delays) - len(made_delays))
    ordered = [*made_delays, *never_made]
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    lower, upper = ordered[middle - 1], ordered[middle]
    if lower is None or upper is None:
        return None
    return (lower + upper) / 2


# Reading


def load_compliance(
    engine: Engine, report_range: ReportRange, tech_id: str | None = None
) -> ComplianceReport:
    """Compute every tech's figures over the range, or ``tech_id``'s alone.

    Raises ComplianceError when the database cannot be read or ``tech_id`` is
    neither a known tech nor an owner of any obligation.
    """
    try:
        with engine.connect() as connection:
            reader = _Reader(connection, report_range, tech_id)
            techs = reader.read()
    except SQLAlchemyError as error:
        raise ComplianceError(
            f"reading the compliance report failed: {error}"
        ) from None

    if tech_id is not None and tech_id not in techs:
        raise ComplianceError(
            f"tech {tech_id} not found: no tech with this id is recorded; "
            "leave the tech out to list every tech with figures in the range"
        )
    rows = sorted(techs.values(), key=TechCompliance.sort_key)
    return ComplianceReport(report_range, rows)


class _Reader:
    """The queries of one report. Each query adds its figures to ``techs``."""

    def __init__(
        self, connection: Connection, report_range: ReportRange, tech_id: str | None
    ) -> None:
        self.connection = connection
        self.range = report_range
        self.tech_id = tech_id
        self.dialect = connection.dialect.name
        self.techs: dict[str, TechCompliance] = {}

    def tech(self, tech_id: str) -> TechCompliance:
        if tech_id not in self.techs:
            self.techs[tech_id] = TechCompliance(tech_id)
        return self.techs[tech_id]

    def read(self) -> dict[str, TechCompliance]:
        self.read_claims()
        self.read_tallies()
        self.read_first_contacts()
        self.read_unreachable_closings()
        self.read_names()
        return self.techs

    def read_names(self) -> None:
        """Add the techs' names; a tech asked for by id gets a row even if idle."""
        query = select(col(Tech.id), col(Tech.name))
        if self.tech_id is not None:
            query = query.where(col(Tech.id) == self.tech_id)
        for tech_id, name in self.connection.execute(query):
            if tech_id in self.techs or tech_id == self.tech_id:
                self.tech(tech_id).tech_name = name

    def read_claims(self) -> None:
        owner = _detail("owner").label("owner")
        claims = (
            select(col(TicketRecordEntry.ticket_id), owner)
            .where(
                col(TicketRecordEntry.entry_type) == "obligation",
                _detail("kind") == "first_contact",
                _detail("change") == "opened",
                col(TicketRecordEntry.at) >= self.range.start,
                col(TicketRecordEntry.at) < self.range.end,
                *self._owner_filter(),
            )
            .subquery()
        )
        query = select(
            claims.c.owner, func.count(func.distinct(claims.c.ticket_id))
        ).group_by(claims.c.owner)
        for tech_id, count in self.connection.execute(query):
            self.tech(tech_id).tickets_claimed = count

    def read_tallies(self) -> None:
        """Count met and breached obligations of every kind but first contact."""
        settled = (
            select(
                _detail("owner").label("owner"),
                _detail("kind").label("kind"),
                _detail("change").label("change"),
            )
            .where(
                col(TicketRecordEntry.entry_type) == "obligation",
                _detail("change").in_(("met", "breached")),
                _detail("kind").in_(TECH_KINDS[1:]),
                *self._due_in_range(),
                *self._owner_filter(),
            )
            .subquery()
        )
        query = select(
            settled.c.owner, settled.c.kind, settled.c.change, func.count()
        ).group_by(settled.c.owner, settled.c.kind, settled.c.change)
        counts: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for owner, kind, change, count in self.connection.execute(query):
            counts[owner, kind][change] = count
        for (owner, kind), changes in counts.items():
            self.tech(owner).tallies[kind] = Tally(
                met=changes.get("met", 0), breached=changes.get("breached", 0)
            )

    def read_first_contacts(self) -> None:
        """Count first contacts and work out each one's delay."""
        query = (
            select(
                col(TicketRecordEntry.ticket_id),
                col(TicketRecordEntry.at),
                _detail("owner"),
                _detail("change"),
                _detail("opened_at"),
                col(Ticket.priority),
                col(Ticket.timezone),
            )
            .join(Ticket, col(Ticket.id) == col(TicketRecordEntry.ticket_id))
            .where(
                col(TicketRecordEntry.entry_type) == "obligation",
                _detail("kind") == "first_contact",
                _detail("change").in_(("met", "breached")),
                col(Ticket.source) != "tech_created",
                *self._due_in_range(),
                *self._owner_filter(),
            )
        )
        tallies: dict[str, Tally] = defaultdict(Tally)
        # Breached first contacts, whose delay the ticket's events give.
        breached: list[tuple[str, datetime, datetime, TechCompliance]] = []
        for (
            ticket_id,
            ended_at,
            owner,
            change,
            opened_at,
            priority,
            zone_name,
        ) in self.connection.execute(query):
            tech = self.tech(owner)
            claimed_at = datetime.fromisoformat(opened_at)
            clock_start = first_contact_clock_start(
                claimed_at, priority, ZoneInfo(zone_name)
            )
            tally = tallies[owner]
            if change == "met":
                tallies[owner] = Tally(tally.met + 1, tally.breached)
                tech.first_contact_delays.append(_delay(clock_start, ended_at))
            else:
                tallies[owner] = Tally(tally.met, tally.breached + 1)
                breached.append((ticket_id, claimed_at, clock_start, tech))
        for owner, tally in tallies.items():
            self.tech(owner).tallies["first_contact"] = tally

        events = self._hold_events({ticket_id for ticket_id, *_rest in breached})
        for ticket_id, claimed_at, clock_start, tech in breached:
            contacted_at = first_contact_after(events[ticket_id], claimed_at)
            tech.first_contact_delays.append(
                None if contacted_at is None else _delay(clock_start, contacted_at)
            )

    def _hold_events(
        self, ticket_ids: Iterable[str]
    ) -> dict[str, list[tuple[datetime, str, str | None]]]:
        """Return each ticket's contact attempts and hold ends, in time order."""
        event = _detail("event")
        events: dict[str, list[tuple[datetime, str, str | None]]] = defaultdict(list)
        ordered = sorted(ticket_ids)
        for first in range(0, len(ordered), TICKETS_PER_QUERY):
            chunk = ordered[first : first + TICKETS_PER_QUERY]
            query = (
                select(
                    col(TicketRecordEntry.ticket_id),
                    col(TicketRecordEntry.at),
                    event,
                    _detail("channel"),
                )
                .where(
                    col(TicketRecordEntry.ticket_id).in_(chunk),
                    col(TicketRecordEntry.entry_type) == "event",
                    event.in_(("contact_attempt", *HOLD_ENDS)),
                )
                .order_by(
                    col(TicketRecordEntry.ticket_id),
                    col(TicketRecordEntry.at),
                    col(TicketRecordEntry.sequence),
                )
            )
            for ticket_id, at, name, channel in self.connection.execute(query):
                events[ticket_id].append((at, name, channel))
        return events

    def read_unreachable_closings(self) -> None:
        query = (
            select(col(Ticket.tech_id), func.count())
            .where(
                col(Ticket.close_reason) == "unreachable",
                col(Ticket.closed_at) >= self.range.start,
                col(Ticket.closed_at) < self.range.end,
                col(Ticket.tech_id).is_not(None),
            )
            .group_by(col(Ticket.tech_id))
        )
        if self.tech_id is not None:
            query = query.where(col(Ticket.tech_id) == self.tech_id)
        for tech_id, count in self.connection.execute(query):
            if tech_id is not None:
                self.tech(tech_id).closed_unreachable = count

    def _due_in_range(self) -> list[ColumnElement[bool]]:
        # The ledger writes due_at in UTC with a "+00:00" offset, and such
        # texts sort like the times they name when compared byte by byte.
        # PostgreSQL compares text by the database's collation, which may
        # ignore punctuation, so the comparison uses the collation "C".
        due_at: Any = _detail("due_at")
        if self.dialect == "postgresql":
            due_at = collate(due_at, "C")
        return [
            due_at >= self.range.start.isoformat(),
            due_at < self.range.end.isoformat(),
        ]

    def _owner_filter(self) -> list[ColumnElement[bool]]:
        owner = _detail("owner")
        if self.tech_id is not None:
            return [owner == self.tech_id]
        return [owner.not_in(NOT_TECHS)]


def _detail(name: str) -> ColumnElement[str]:
    """Return a text field of the record entry's details, as an SQL expression."""
    expression: ColumnElement[str] = col(TicketRecordEntry.details)[name].as_string()
    return expression


def first_contact_after(
    events: Sequence[tuple[datetime, str, str | None]], claimed_at: datetime
) -> datetime | None:
    """Return the first phone or email attempt after the claim, before the hold ends.

    ``events`` are the ticket's (time, event name, channel) in time order.
    """
    for at, name, channel in events:
        if at < claimed_at:
            continue
        if name in HOLD_ENDS:
            return None
        if (
            name == "contact_attempt"
            and channel in DEFAULT_POLICY.first_contact_channels
        ):
            return at
    return None


def _delay(clock_start: datetime, contacted_at: datetime) -> timedelta:
    return max(contacted_at - clock_start, timedelta(0))


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


# Output


def format_share(tally: Tally) -> str:
    """Format an on-time share as ``7/9 (78%)``, or ``-`` when none settled."""
    share = tally.on_time_share
    if share is None:
        return "-"
    return f"{tally.met}/{tally.settled} ({float(share):.0%})"


def format_delay(tech: TechCompliance) -> str:
    """Format the median first-contact delay, such as ``1h 05m`` or ``27m 30s``.

    ``never`` when the median falls on a contact never made, ``-`` when no
    first contact was due.
    """
    if not tech.first_contact_delays:
        return "-"
    median = tech.median_first_contact_delay
    if median is None:
        return "never"
    hours, seconds = divmod(round(median.total_seconds()), 3600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"
    return f"{text} {seconds:02d}s" if seconds else text


def format_breaches(tech: TechCompliance) -> str:
    """List the breaches by kind, such as ``first contact 3, notes 1``."""
    parts = [
        f"{KIND_NAMES[kind]} {tech.breaches(kind)}"
        for kind in TECH_KINDS
        if tech.breaches(kind)
    ]
    return ", ".join(parts) or "none"


TABLE_HEADERS = (
    "tech",
    "name",
    "claimed",
    "first contact on time",
    "median delay",
    "notes on time",
    "replies on time",
    "breaches by kind",
    "closed unreachable",
)


def table_rows(report: ComplianceReport) -> list[list[str]]:
    return [
        [
            tech.tech_id,
            tech.tech_name or "",
            str(tech.tickets_claimed),
            format_share(tech.tally("first_contact")),
            format_delay(tech),
            format_share(tech.tally("notes")),
            format_share(tech.tally("reply")),
            format_breaches(tech),
            str(tech.closed_unreachable),
        ]
        for tech in report.techs
    ]


def describe(report: ComplianceReport) -> str:
    return (
        f"Compliance by tech, obligations due {report.range.describe()}. "
        "Sorted by first contact on time, lowest share first."
    )


def render_text(report: ComplianceReport) -> str:
    """Render the report as a plain-text table for the terminal."""
    lines = [describe(report), ""]
    rows = table_rows(report)
    if not rows:
        return "\n".join([*lines, "  no tech claimed or owed anything in the range"])
    widths = [
        max(len(cell) for cell in column)
        for column in zip(TABLE_HEADERS, *rows, strict=True)
    ]
    for row in [list(TABLE_HEADERS), *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


def write_csv(report: ComplianceReport, out: TextIO) -> int:
    """Write one row per tech with the columns of CSV_COLUMNS; return the row count.

    Shares are decimals with four places, the median delay is in minutes with
    two, and a missing figure is an empty cell. Open ``out`` with
    ``newline=""``, as the csv module requires.
    """
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for tech in report.techs:
        first_contact = tech.tally("first_contact")
        notes = tech.tally("notes")
        replies = tech.tally("reply")
        median = tech.median_first_contact_delay
        row: dict[str, object] = {
            "tech_id": tech.tech_id,
            "tech_name": tech.tech_name or "",
            "tickets_claimed": tech.tickets_claimed,
            "first_contact_met": first_contact.met,
            "first_contact_breached": first_contact.breached,
            "first_contact_on_time_share": _csv_share(first_contact),
            "first_contact_median_delay_minutes": ""
            if median is None
            else f"{median.total_seconds() / 60:.2f}",
            "first_contact_never_made": tech.first_contact_never_made,
            "notes_met": notes.met,
            "notes_breached": notes.breached,
            "notes_on_time_share": _csv_share(notes),
            "replies_met": replies.met,
            "replies_breached": replies.breached,
            "replies_on_time_share": _csv_share(replies),
            "closed_unreachable": tech.closed_unreachable,
        }
        for kind in TECH_KINDS:
            row[f"breaches_{kind}"] = tech.breaches(kind)
        writer.writerow(row)
    return len(report.techs)


def _csv_share(tally: Tally) -> str:
    share = tally.on_time_share
    return "" if share is None else f"{float(share):.4f}"


def _percent(tally: Tally) -> float | None:
    share = tally.on_time_share
    return None if share is None else float(share * 100)


def render_html(report: ComplianceReport) -> str:
    """Render the report as a self-contained page: the table and a chart per measure."""
    labels = [tech.tech_id for tech in report.techs]
    techs = report.techs
    parts = [
        html.paragraph(
            "On time: met by the due time. Late: breached at the due time. "
            "Cancelled and open obligations count as neither. Each obligation "
            "counts for the tech who owned it when it ended."
        ),
        html.table(
            TABLE_HEADERS,
            table_rows(report),
            numeric_columns=[2, 8],
        ),
    ]

    charts = [
        (
            bar_chart(
                "tickets claimed",
                labels,
                [tech.tickets_claimed for tech in techs],
                axis_label="tickets",
            ),
            "Tickets each tech claimed, was reassigned or created in the range.",
        ),
        _share_chart("first contact on time", "first_contact", techs),
        (
            bar_chart(
                "median first-contact delay",
                labels,
                [_delay_minutes(tech) for tech in techs],
                axis_label="minutes from the clock start",
                value_texts=[format_delay(tech) for tech in techs],
            ),
            "Median time from the first-contact clock start to the first phone "
            "or email attempt; never when most were never made.",
        ),
        _share_chart("notes on time", "notes", techs),
        _share_chart("replies on time", "reply", techs),
        (
            stacked_bar_chart(
                "breaches by kind",
                labels,
                {
                    KIND_NAMES[kind]: [tech.breaches(kind) for tech in techs]
                    for kind in TECH_KINDS
                },
                axis_label="breached obligations",
            ),
            "Obligations breached at their due time, by kind.",
        ),
        (
            bar_chart(
                "tickets closed unreachable",
                labels,
                [tech.closed_unreachable for tech in techs],
                axis_label="tickets",
            ),
            "Tickets closed as unreachable while the tech held them.",
        ),
    ]
    for chart, caption in charts:
        parts.append(html.figure(chart, caption=caption))
    return html.render_page("Compliance by tech", parts, lead=describe(report))


def _share_chart(
    title: str, kind: str, techs: Sequence[TechCompliance]
) -> tuple[Figure, str]:
    tallies = [tech.tally(kind) for tech in techs]
    chart = bar_chart(
        title,
        [tech.tech_id for tech in techs],
        [_percent(tally) for tally in tallies],
        axis_label="% on time",
        value_texts=[format_share(tally) for tally in tallies],
        axis_limit=100,
    )
    return chart, f"Share of the {KIND_NAMES[kind]} obligations met on time."


def _delay_minutes(tech: TechCompliance) -> float | None:
    median = tech.median_first_contact_delay
    return None if median is None else median.total_seconds() / 60


# The command


def write_compliance(
    database_url: str,
    report_range: ReportRange,
    out: TextIO,
    *,
    tech_id: str | None = None,
    csv_path: Path | None = None,
    html_path: Path | None = None,
) -> ComplianceReport:
    """Print the report to ``out`` and write the CSV and HTML files asked for.

    Raises ComplianceError when the range is empty, the database cannot be
    read, the tech is unknown or a file cannot be written.
    """
    if report_range.last_day < report_range.first_day:
        raise ComplianceError(
            f"invalid range: the last day {report_range.last_day} is before the "
            f"first day {report_range.first_day}"
        )
    try:
        engine = open_database(database_url)
    except StoryError as error:
        raise ComplianceError(str(error)) from None
    try:
        report = load_compliance(engine, report_range, tech_id)
    finally:
        engine.dispose()

    write_outputs(
        out,
        render_text(report),
        csv_path=csv_path,
        write_csv=lambda file: write_csv(report, file),
        html_path=html_path,
        render_html=lambda: render_html(report),
        error_type=ComplianceError,
    )
    return report
