"""Validation of the JSON the portal sends: the ticket opening and each event.

Callers send plain JSON by name, so every handler takes the raw value and these
functions turn it into typed events or raise ``InvalidEvent`` with a reason a
portal developer can act on. Fields the contract does not name are ignored, so
a newer portal can send more without breaking older workers.
"""

from __future__ import annotations

import math
import re
import reprlib
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from workflows.model import Person

PRIORITIES = ("normal", "high", "emergency")
SOURCES = ("portal", "tech_created")
CHANNELS = ("phone", "email", "sms", "onsite", "remote")
OUTCOMES = ("reached", "no_answer", "message_left")
CLOSE_REASONS = ("resolved", "unreachable", "cancelled", "duplicate")
SIGNALS = (
    "claim",
    "reassign",
    "release",
    "contact_attempt",
    "notes_updated",
    "customer_message",
    "time_logged",
    "close",
)

MAX_ID_LENGTH = 200
MAX_TEXT_LENGTH = 2000
TICKET_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
# One "@" between two non-empty parts, with no whitespace and none of the
# characters that separate or quote addresses in a header. The mailer marks
# mail to any other address failed, so the portal hears of a bad address when
# it sends it, not from a failed mail.
MAIL_ADDRESS_PATTERN = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+")
# Times outside this range are rejected. The range is generous for tickets and
# leaves room for the deadline arithmetic, which overflows near year 9999.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(3000, 1, 1, tzinfo=UTC)

# The repr of a rejected value in a message, cut short, because a payload may
# carry a 100 kB string or deeply nested lists.
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = 60
_SHORT_REPR.maxother = 60


class InvalidEvent(ValueError):
    """An opening or event the service rejects; the message is the reason."""


class TicketClosed(InvalidEvent):
    """An event for a ticket that is already closed."""


@dataclass(frozen=True)
class Opening:
    """A validated ticket opening: the workflow's start input."""

    ticket_id: str
    opened_at: datetime
    priority: str
    source: str
    customer: Person
    timezone: str | None
    included_hours_per_month: float | None
    tech: Person | None
    claimed_at: datetime | None


@dataclass(frozen=True)
class Event:
    """A validated portal event.

    ``occurred_at`` is None when the portal left it out; the workflow then
    uses the time it received the event. Only the fields of its signal are set.
    """

    signal: str
    event_id: str
    occurred_at: datetime | None
    tech: Person | None = None
    reason: str | None = None
    channel: str | None = None
    outcome: str | None = None
    hours: float | None = None


def parse_opening(raw: Any) -> Opening:
    """Validate the start input of a ticket workflow.

    Raises:
        InvalidEvent: the input is not a valid opening; the message names the field.
    """
    fields = _require_object(raw, "ticket input")
    ticket_id = _require_text(fields, "ticket_id", MAX_ID_LENGTH)
    if not TICKET_ID_PATTERN.fullmatch(ticket_id):
        raise InvalidEvent(
            f"invalid ticket_id {ticket_id!r}: use up to 100 letters, digits, "
            "'.', '_', ':' or '-', starting with a letter or digit"
        )
    opened_at = _parse_time(fields.get("opened_at"), "opened_at")
    if opened_at is None:
        raise InvalidEvent("missing field 'opened_at'")

    priority = _choice(fields.get("priority", "normal"), "priority", PRIORITIES)
    source = _choice(fields.get("source", "portal"), "source", SOURCES)
    customer_fields = _require_object(fields.get("customer"), "customer")
    customer = _parse_person(customer_fields, "customer", email_required=False)
    timezone = _optional_text(customer_fields, "timezone", 64, "customer.timezone")
    if timezone is not None:
        _require_zone(timezone, "customer.timezone")
    included_hours = _optional_hours(
        customer_fields.get("included_hours_per_month"),
        "customer.included_hours_per_month",
        maximum=744.0,
    )

    tech = None
    if fields.get("tech") is not None:
        tech = _parse_person(
            _require_object(fields["tech"], "tech"), "tech", email_required=True
        )
    claimed_at = _parse_time(fields.get("claimed_at"), "claimed_at")
    if claimed_at is not None and tech is None:
        raise InvalidEvent("claimed_at is set but tech is missing")
    if claimed_at is not None and claimed_at < opened_at:
        raise InvalidEvent("claimed_at is before opened_at")
    if source == "tech_created" and tech is None:
        raise InvalidEvent("a tech_created ticket needs the tech who created it")

    return Opening(
        ticket_id=ticket_id,
        opened_at=opened_at,
        priority=priority,
        source=source,
        customer=customer,
        timezone=timezone,
        included_hours_per_month=included_hours,
        tech=tech,
        claimed_at=claimed_at if tech is not None else None,
    )


def parse_event(signal: str, raw: Any) -> Event:
    """Validate the payload of one signal.

    Raises:
        InvalidEvent: the payload is not valid for ``signal``.
    """
    if signal not in SIGNALS:
        raise InvalidEvent(f"unknown event {_shown(signal)}; expected one of {SIGNALS}")
    fields = _require_object(raw, f"{signal} payload")
    event_id = _require_text(fields, "event_id", MAX_ID_LENGTH)
    occurred_at = _parse_time(fields.get("occurred_at"), "occurred_at")

    if signal in ("claim", "reassign"):
        tech = _parse_person(
            _require_object(fields.get("tech"), "tech"), "tech", email_required=True
        )
        reason = _optional_text(fields, "reason", MAX_TEXT_LENGTH)
        return Event(signal, event_id, occurred_at, tech=tech, reason=reason)
    if signal == "release":
        reason = _optional_text(fields, "reason", MAX_TEXT_LENGTH)
        return Event(signal, event_id, occurred_at, reason=reason)
    if signal == "contact_attempt":
        channel = _choice(fields.get("channel"), "channel", CHANNELS)
        outcome = _choice(fields.get("outcome"), "outcome", OUTCOMES)
        return Event(signal, event_id, occurred_at, channel=channel, outcome=outcome)
    if signal == "customer_message":
        channel = _choice(fields.get("channel"), "channel", CHANNELS)
        return Event(signal, event_id, occurred_at, channel=channel)
    if signal == "time_logged":
        hours = _optional_hours(fields.get("hours"), "hours", maximum=24.0)
        if hours is None:
            raise InvalidEvent("missing field 'hours'")
        return Event(signal, event_id, occurred_at, hours=hours)
    if signal == "close":
        reason = _choice(fields.get("reason"), "reason", CLOSE_REASONS)
        return Event(signal, event_id, occurred_at, reason=reason)
    return Event(signal, event_id, occurred_at)


@dataclass(frozen=True)
class RejectionReport:
    """An Update event that its validator rejected, as the caller reports it."""

    signal: str
    event_id: str | None
    reason: str


def parse_rejection_report(raw: Any) -> RejectionReport:
    """Validate a ``record_rejection`` payload: ``event``, ``reason``, ``event_id``.

    Raises:
        InvalidEvent: the payload is not a valid report.
    """
    fields = _require_object(raw, "record_rejection payload")
    signal = _choice(fields.get("event"), "event", SIGNALS)
    reason = _require_text(fields, "reason", MAX_TEXT_LENGTH)
    event_id = _optional_text(fields, "event_id", MAX_ID_LENGTH)
    return RejectionReport(signal, event_id, reason)


def event_id_of(raw: Any) -> str | None:
    """Return the payload's event_id when ``parse_event`` would accept it, else None.

    The id goes into the record of a rejected payload, so it must pass the same
    checks as a valid one: a NUL character, for one, cannot be stored in
    PostgreSQL.
    """
    if not isinstance(raw, dict):
        return None
    try:
        return _require_text(raw, "event_id", MAX_ID_LENGTH)
    except InvalidEvent:
        return None


def signal_label(name: str) -> str:
    """Return a signal name fit for the record: as sent, or a short repr.

    A name that would pass as an event_id is kept. Any other name is shortened
    and escaped, for example one of 100 kB or one with a NUL, which PostgreSQL
    cannot store.
    """
    try:
        return _require_text({"signal": name}, "signal", MAX_ID_LENGTH)
    except InvalidEvent:
        return _shown(name)


def check_event_time(
    occurred_at: datetime,
    opened_at: datetime,
    received_at: datetime,
    max_future_skew: timedelta,
) -> None:
    """Reject an event time before the opening or too far past the receipt."""
    if occurred_at < opened_at:
        raise InvalidEvent(
            f"occurred_at {occurred_at.isoformat()} is before the ticket opened "
            f"at {opened_at.isoformat()}"
        )
    if occurred_at > received_at + max_future_skew:
        raise InvalidEvent(
            f"occurred_at {occurred_at.isoformat()} is more than "
            f"{int(max_future_skew.total_seconds() // 60)} minutes in the future"
        )


def _require_object(raw: Any, label: str) -> dict[str, Any]:
    if raw is None:
        raise InvalidEvent(f"missing {label}")
    if not isinstance(raw, dict):
        raise InvalidEvent(f"{label} must be a JSON object, got {type(raw).__name__}")
    return raw


def _require_text(
    fields: dict[str, Any], name: str, max_length: int, label: str | None = None
) -> str:
    label = label or name
    value = fields.get(name)
    if value is None:
        raise InvalidEvent(f"missing field '{label}'")
    if not isinstance(value, str) or not value.strip():
        raise InvalidEvent(f"field '{label}' must be a non-empty string")
    if len(value) > max_length:
        raise InvalidEvent(f"field '{label}' is longer than {max_length} characters")
    _check_characters(value, label, allow_line_breaks=False)
    return value


def _check_characters(value: str, label: str, allow_line_breaks: bool) -> None:
    """Reject control and format characters.

    They cannot be stored in PostgreSQL (NUL), break mail headers (line
    breaks) or make a name display reversed (U+202E). Free text may keep line
    breaks and tabs.
    """
    allowed = "\n\r\t" if allow_line_breaks else ""
    for character in value:
        if character in allowed:
            continue
        if unicodedata.category(character) in ("Cc", "Cf", "Cs"):
            raise InvalidEvent(
                f"field '{label}' contains the control character "
                f"U+{ord(character):04X}; remove it"
            )


def _optional_text(
    fields: dict[str, Any], name: str, max_length: int, label: str | None = None
) -> str | None:
    label = label or name
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"field '{label}' must be a string")
    if len(value) > max_length:
        raise InvalidEvent(f"field '{label}' is longer than {max_length} characters")
    _check_characters(value, label, allow_line_breaks=max_length == MAX_TEXT_LENGTH)
    return value


def _choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    if value is None:
        raise InvalidEvent(f"missing field '{name}'")
    if value not in allowed:
        raise InvalidEvent(
            f"invalid {name} {_shown(value)}; expected one of {list(allowed)}"
        )
    return str(value)


def _shown(value: Any) -> str:
    """Return a short repr of a rejected value for an error message."""
    try:
        return _SHORT_REPR.repr(value)
    except ValueError:
        # Python 3.11 raises ValueError on turning an int of more than 4300
        # digits into text.
        return f"<{type(value).__name__} too long to show>"


def _optional_hours(value: Any, name: str, maximum: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(f"field '{name}' must be a number")
    # A JSON integer has no size limit, and math.isfinite raises OverflowError
    # on one too large for a float.
    finite = isinstance(value, int) or math.isfinite(value)
    if not finite or value <= 0 or value > maximum:
        raise InvalidEvent(
            f"invalid {name} {_shown(value)}: must be more than 0 and at most "
            f"{maximum:g}"
        )
    return float(value)


def _parse_time(value: Any, name: str) -> datetime | None:
    """Parse an ISO 8601 time with an offset and return it in UTC."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidEvent(f"field '{name}' must be an ISO 8601 string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(f"invalid {name} {value!r}: not an ISO 8601 time") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidEvent(
            f"invalid {name} {value!r}: the time needs an offset such as +00:00"
        )
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        # 9999-12-31T23:00:00-05:00, for one, is past datetime.max in UTC.
        moment = LATEST_TIME
    if not EARLIEST_TIME <= moment < LATEST_TIME:
        raise InvalidEvent(
            f"invalid {name} {value!r}: must be between "
            f"{EARLIEST_TIME.date().isoformat()} and "
            f"{LATEST_TIME.date().isoformat()} UTC"
        )
    return moment


def _parse_person(fields: dict[str, Any], label: str, email_required: bool) -> Person:
    person_id = _require_text(fields, "id", MAX_ID_LENGTH, f"{label}.id")
    name = _optional_text(fields, "name", MAX_ID_LENGTH, f"{label}.name")
    phone = _optional_text(fields, "phone", 64, f"{label}.phone")
    if email_required:
        email: str | None = _require_text(fields, "email", 254, f"{label}.email")
    else:
        email = _optional_text(fields, "email", 254, f"{label}.email")
    if email is not None and not MAIL_ADDRESS_PATTERN.fullmatch(email):
        raise InvalidEvent(f"invalid {label}.email: not a mail address")
    return Person(id=person_id, name=name or None, email=email, phone=phone or None)


def _require_zone(name: str, label: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    # ZoneInfo raises OSError for a folder of the zone database, such as America.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidEvent(
            f"invalid {label} {name!r}: not an IANA time zone such as America/New_York"
        ) from None
