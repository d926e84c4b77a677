"""Validation of the portal's JSON: the ticket opening and each signal payload.

Every rejection must name the field at fault, so the assertions match the
field's name in the message, not the whole sentence.
"""

from __future__ import annotations

import copy
import math
from datetime import datetime, timedelta
from typing import Any

import pytest

from workflows.events import (
    InvalidEvent,
    check_event_time,
    event_id_of,
    parse_event,
    parse_opening,
)
from workflows.model import Person

TECH = {"id": "K-4", "name": "Kim Four", "email": "k4@techs.example"}
OPENING: dict[str, Any] = {
    "ticket_id": "T-1001",
    "opened_at": "2026-06-10T14:00:00+00:00",
    "priority": "normal",
    "source": "portal",
    "customer": {
        "id": "C-17",
        "name": "Casey Customer",
        "email": "casey@customer.example",
        "phone": "+1 212 555 0100",
        "timezone": "America/New_York",
        "included_hours_per_month": None,
    },
    "tech": None,
    "claimed_at": None,
}


def utc(text: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SS`` as a UTC time."""
    return datetime.fromisoformat(text + "+00:00")


def opening_with(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(OPENING)
    raw.update(changes)
    return raw


def customer_with(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(OPENING)
    raw["customer"].update(changes)
    return raw


# Opening


def test_parse_opening_full_input() -> None:
    opening = parse_opening(
        opening_with(
            tech=TECH,
            claimed_at="2026-06-10T10:30:00-04:00",
            priority="emergency",
        )
    )

    assert opening.ticket_id == "T-1001"
    assert opening.opened_at == utc("2026-06-10T14:00:00")
    assert opening.priority == "emergency"
    assert opening.source == "portal"
    assert opening.customer == Person(
        id="C-17",
        name="Casey Customer",
        email="casey@customer.example",
        phone="+1 212 555 0100",
    )
    assert opening.timezone == "America/New_York"
    assert opening.included_hours_per_month is None
    assert opening.tech == Person(id="K-4", name="Kim Four", email="k4@techs.example")
    # The offset is applied: 10:30 at UTC-4 is 14:30 UTC.
    assert opening.claimed_at == utc("2026-06-10T14:30:00")
    assert opening.claimed_at.utcoffset() == timedelta(0)


def test_parse_opening_defaults() -> None:
    raw = {
        "ticket_id": "T-1",
        "opened_at": "2026-06-10T14:00:00Z",
        "customer": {"id": "C-1"},
    }

    opening = parse_opening(raw)

    assert opening.priority == "normal"
    assert opening.source == "portal"
    assert opening.timezone is None
    assert opening.included_hours_per_month is None
    assert opening.tech is None
    assert opening.claimed_at is None
    assert opening.customer == Person(id="C-1")


def test_parse_opening_subscription_hours() -> None:
    opening = parse_opening(customer_with(included_hours_per_month=10))

    assert opening.included_hours_per_month == 10.0


def test_parse_opening_tech_created() -> None:
    opening = parse_opening(opening_with(source="tech_created", tech=TECH))

    assert opening.source == "tech_created"
    assert opening.tech is not None
    assert opening.tech.id == "K-4"


def test_parse_opening_ignores_unknown_fields() -> None:
    opening = parse_opening(opening_with(portal_version="2.3", extra={"a": 1}))

    assert opening.ticket_id == "T-1001"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (None, "ticket input"),
        ([], "ticket input"),
        ("T-1001", "ticket input"),
        (opening_with(ticket_id=None), "ticket_id"),
        (opening_with(ticket_id=""), "ticket_id"),
        (opening_with(ticket_id=1001), "ticket_id"),
        (opening_with(ticket_id="T 1001"), "ticket_id"),
        (opening_with(ticket_id="-T1"), "ticket_id"),
        (opening_with(ticket_id="T" * 101), "ticket_id"),
        (opening_with(opened_at=None), "opened_at"),
        (opening_with(opened_at="2026-06-10T14:00:00"), "opened_at"),
        (opening_with(opened_at="2026-06-10"), "opened_at"),
        (opening_with(opened_at="yesterday"), "opened_at"),
        (opening_with(opened_at=1781100000), "opened_at"),
        (opening_with(priority="urgent"), "priority"),
        (opening_with(priority="High"), "priority"),
        (opening_with(priority=None), "priority"),
        (opening_with(source="phone"), "source"),
        (opening_with(customer=None), "customer"),
        (opening_with(customer="C-17"), "customer"),
        (customer_with(timezone="Mars/Olympus"), "customer.timezone"),
        (customer_with(timezone="EST5EDT6"), "customer.timezone"),
        (customer_with(timezone=-5), "customer.timezone"),
        (customer_with(included_hours_per_month=-1), "included_hours_per_month"),
        (customer_with(included_hours_per_month=0), "included_hours_per_month"),
        (customer_with(included_hours_per_month=745), "included_hours_per_month"),
        (customer_with(included_hours_per_month=True), "included_hours_per_month"),
        (customer_with(included_hours_per_month="10"), "included_hours_per_month"),
        (customer_with(included_hours_per_month=math.nan), "included_hours_per_month"),
        (customer_with(email="not-an-address"), "customer.email"),
        (opening_with(tech="K-4"), "tech"),
        (opening_with(tech={**TECH, "email": "k4 at techs"}), "tech.email"),
        (opening_with(claimed_at="2026-06-10T15:00:00+00:00"), "tech"),
        (
            opening_with(tech=TECH, claimed_at="2026-06-10T13:59:59+00:00"),
            "claimed_at",
        ),
        (opening_with(tech=TECH, claimed_at="2026-06-10T15:00:00"), "claimed_at"),
        (opening_with(source="tech_created"), "tech"),
    ],
)
def test_parse_opening_rejects_naming_field(raw: Any, field: str) -> None:
    with pytest.raises(InvalidEvent, match=field):
        parse_opening(raw)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (customer_with(id=None), "customer.id"),
        (opening_with(tech={"name": "Kim", "email": "k4@techs.example"}), "tech.id"),
        (opening_with(tech={"id": "K-4"}), "tech.email"),
    ],
)
def test_parse_opening_names_person_field(raw: Any, field: str) -> None:
    with pytest.raises(InvalidEvent, match=field.replace(".", r"\.")):
        parse_opening(raw)


# Events


def test_parse_event_claim() -> None:
    event = parse_event(
        "claim",
        {"event_id": "e-1", "occurred_at": "2026-06-10T10:30:00-04:00", "tech": TECH},
    )

    assert event.signal == "claim"
    assert event.event_id == "e-1"
    assert event.occurred_at == utc("2026-06-10T14:30:00")
    assert event.tech == Person(id="K-4", name="Kim Four", email="k4@techs.example")


def test_parse_event_without_occurred_at() -> None:
    event = parse_event("notes_updated", {"event_id": "e-2"})

    assert event.occurred_at is None


def test_parse_event_reassign_with_reason() -> None:
    event = parse_event(
        "reassign", {"event_id": "e-3", "tech": TECH, "reason": "going on leave"}
    )

    assert event.tech is not None
    assert event.tech.id == "K-4"
    assert event.reason == "going on leave"


def test_parse_event_release_reason_optional() -> None:
    assert parse_event("release", {"event_id": "e-4"}).reason is None
    assert (
        parse_event("release", {"event_id": "e-5", "reason": "sick"}).reason == "sick"
    )


@pytest.mark.parametrize("channel", ["phone", "email", "sms", "onsite", "remote"])
@pytest.mark.parametrize("outcome", ["reached", "no_answer", "message_left"])
def test_parse_event_contact_attempt(channel: str, outcome: str) -> None:
    event = parse_event(
        "contact_attempt", {"event_id": "e-6", "channel": channel, "outcome": outcome}
    )

    assert event.channel == channel
    assert event.outcome == outcome


def test_parse_event_customer_message() -> None:
    event = parse_event("customer_message", {"event_id": "e-7", "channel": "email"})

    assert event.channel == "email"


@pytest.mark.parametrize(
    ("hours", "parsed"), [(24, 24.0), (24.0, 24.0), (0.25, 0.25), (1, 1.0)]
)
def test_parse_event_time_logged(hours: Any, parsed: float) -> None:
    event = parse_event("time_logged", {"event_id": "e-8", "hours": hours})

    assert event.hours == parsed


@pytest.mark.parametrize(
    "reason", ["resolved", "unreachable", "cancelled", "duplicate"]
)
def test_parse_event_close(reason: str) -> None:
    assert parse_event("close", {"event_id": "e-9", "reason": reason}).reason == reason


def test_parse_event_ignores_unknown_fields() -> None:
    event = parse_event("notes_updated", {"event_id": "e-10", "author": "K-4"})

    assert event.event_id == "e-10"


@pytest.mark.parametrize(
    ("signal", "raw", "field"),
    [
        # Payloads that are not JSON objects.
        ("claim", None, "claim payload"),
        ("claim", [], "claim payload"),
        ("claim", "e-1", "claim payload"),
        ("notes_updated", 17, "notes_updated payload"),
        ("close", True, "close payload"),
        # event_id
        ("notes_updated", {}, "event_id"),
        ("notes_updated", {"event_id": ""}, "event_id"),
        ("notes_updated", {"event_id": "   "}, "event_id"),
        ("notes_updated", {"event_id": 17}, "event_id"),
        ("notes_updated", {"event_id": "e" * 201}, "event_id"),
        # occurred_at
        (
            "notes_updated",
            {"event_id": "e", "occurred_at": "2026-06-10T14:00:00"},
            "occurred_at",
        ),
        (
            "notes_updated",
            {"event_id": "e", "occurred_at": "2026-06-10"},
            "occurred_at",
        ),
        ("notes_updated", {"event_id": "e", "occurred_at": "now"}, "occurred_at"),
        ("notes_updated", {"event_id": "e", "occurred_at": ""}, "occurred_at"),
        ("notes_updated", {"event_id": "e", "occurred_at": 1781100000}, "occurred_at"),
        # claim and reassign
        ("claim", {"event_id": "e"}, "tech"),
        ("claim", {"event_id": "e", "tech": "K-4"}, "tech"),
        ("claim", {"event_id": "e", "tech": {**TECH, "email": "k4"}}, "tech.email"),
        ("reassign", {"event_id": "e"}, "tech"),
        ("reassign", {"event_id": "e", "tech": TECH, "reason": 5}, "reason"),
        ("release", {"event_id": "e", "reason": ["sick"]}, "reason"),
        # contact_attempt
        ("contact_attempt", {"event_id": "e", "outcome": "reached"}, "channel"),
        ("contact_attempt", {"event_id": "e", "channel": "phone"}, "outcome"),
        (
            "contact_attempt",
            {"event_id": "e", "channel": "fax", "outcome": "reached"},
            "channel",
        ),
        (
            "contact_attempt",
            {"event_id": "e", "channel": "Phone", "outcome": "reached"},
            "channel",
        ),
        (
            "contact_attempt",
            {"event_id": "e", "channel": "phone", "outcome": "busy"},
            "outcome",
        ),
        (
            "contact_attempt",
            {"event_id": "e", "channel": ["phone"], "outcome": "reached"},
            "channel",
        ),
        # customer_message
        ("customer_message", {"event_id": "e"}, "channel"),
        ("customer_message", {"event_id": "e", "channel": "pigeon"}, "channel"),
        # time_logged
        ("time_logged", {"event_id": "e"}, "hours"),
        ("time_logged", {"event_id": "e", "hours": -1}, "hours"),
        ("time_logged", {"event_id": "e", "hours": 0}, "hours"),
        ("time_logged", {"event_id": "e", "hours": 0.0}, "hours"),
        ("time_logged", {"event_id": "e", "hours": 24.01}, "hours"),
        ("time_logged", {"event_id": "e", "hours": 1000}, "hours"),
        ("time_logged", {"event_id": "e", "hours": math.nan}, "hours"),
        ("time_logged", {"event_id": "e", "hours": math.inf}, "hours"),
        ("time_logged", {"event_id": "e", "hours": True}, "hours"),
        ("time_logged", {"event_id": "e", "hours": False}, "hours"),
        ("time_logged", {"event_id": "e", "hours": "2"}, "hours"),
        # close
        ("close", {"event_id": "e"}, "reason"),
        ("close", {"event_id": "e", "reason": "fixed"}, "reason"),
    ],
)
def test_parse_event_rejects_naming_field(signal: str, raw: Any, field: str) -> None:
    with pytest.raises(InvalidEvent, match=field):
        parse_event(signal, raw)


def test_parse_event_unknown_signal() -> None:
    with pytest.raises(InvalidEvent, match="unknown event 'claimed'"):
        parse_event("claimed", {"event_id": "e-1"})


def test_parse_event_names_tech_id() -> None:
    with pytest.raises(InvalidEvent, match=r"tech\.id"):
        parse_event("claim", {"event_id": "e", "tech": {"email": "k4@techs.example"}})


def test_invalid_event_is_value_error() -> None:
    assert issubclass(InvalidEvent, ValueError)


# Event time against the opening and the receipt


def test_check_event_time_accepts_window() -> None:
    opened = utc("2026-06-10T14:00:00")
    received = utc("2026-06-10T16:00:00")
    skew = timedelta(minutes=5)

    # At the opening, at the receipt, and exactly 5 minutes ahead: all accepted.
    check_event_time(opened, opened, received, skew)
    check_event_time(received, opened, received, skew)
    check_event_time(utc("2026-06-10T16:05:00"), opened, received, skew)


def test_check_event_time_rejects_future() -> None:
    with pytest.raises(
        InvalidEvent, match="occurred_at .* more than 5 minutes in the future"
    ):
        check_event_time(
            utc("2026-06-10T16:05:01"),
            utc("2026-06-10T14:00:00"),
            utc("2026-06-10T16:00:00"),
            timedelta(minutes=5),
        )


def test_check_event_time_rejects_before_opening() -> None:
    with pytest.raises(InvalidEvent, match="occurred_at .* before the ticket opened"):
        check_event_time(
            utc("2026-06-10T13:59:59"),
            utc("2026-06-10T14:00:00"),
            utc("2026-06-10T16:00:00"),
            timedelta(minutes=5),
        )


@pytest.mark.parametrize(
    ("raw", "event_id"),
    [
        ({"event_id": "e-1"}, "e-1"),
        ({"event_id": ""}, None),
        ({"event_id": 5}, None),
        ({"event_id": "e" * 201}, None),
        ({}, None),
        (["e-1"], None),
        (None, None),
    ],
)
def test_event_id_of(raw: Any, event_id: str | None) -> None:
    assert event_id_of(raw) == event_id


@pytest.mark.parametrize("character", ["\x00", "\n", "\u202e", "\x1b"])
def test_person_fields_reject_control_characters(character: str) -> None:
    payload = {
        "event_id": "e-1",
        "tech": {"id": "K-4", "name": f"Kim{character}Park", "email": "kim@techs.test"},
    }
    with pytest.raises(
        InvalidEvent,
        match=f"'tech.name' contains the control character U\\+{ord(character):04X}",
    ):
        parse_event("claim", payload)


def test_reason_keeps_line_breaks() -> None:
    event = parse_event("release", {"event_id": "e-1", "reason": "Ill.\nBack Monday."})
    assert event.reason == "Ill.\nBack Monday."


def test_reason_rejects_nul() -> None:
    with pytest.raises(
        InvalidEvent, match="'reason' contains the control character U\\+0000"
    ):
        parse_event("release", {"event_id": "e-1", "reason": "Ill\x00"})
