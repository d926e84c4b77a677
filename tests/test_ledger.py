"""The ticket ledger, rule by rule, with exact UTC times.

The customer is in New York unless a test passes another zone. On 2026-06-10
New York is on EDT (UTC-4), so 13:00 UTC is 09:00 local. Comments give local
times. Expected values are worked out by hand from the written policy.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import datetime, time, timedelta
from typing import Any

import pytest

from workflows.display import current_details, ticket_summary
from workflows.events import (
    Event,
    InvalidEvent,
    TicketClosed,
    parse_event,
    parse_opening,
)
from workflows.ledger import TicketLedger
from workflows.model import HoursInput, NotificationResult
from workflows.policy import DEFAULT_POLICY, Policy
from workflows.search import search_attribute_updates, ticket_search_values

NEW_YORK = "America/New_York"
BERLIN = "Europe/Berlin"
CUSTOMER: dict[str, Any] = {
    "id": "C-17",
    "name": "Casey Customer",
    "email": "casey@customer.example",
    "phone": "+1 212 555 0100",
    "timezone": NEW_YORK,
}
K4 = {"id": "K-4", "name": "Kim Four", "email": "k4@techs.example"}
K7 = {"id": "K-7", "name": "Kai Seven", "email": "k7@techs.example"}
OPENED = "2026-06-10T13:00:00"  # 09:00 local

LADDER_MAILS = (
    "try_other_method",
    "try_all_methods",
    "ladder_incomplete",
    "closed_unreachable",
)

_event_ids = itertools.count(1)


def utc(text: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SS`` as a UTC time."""
    return datetime.fromisoformat(text + "+00:00")


def new_ledger(
    opened_at: str = OPENED,
    *,
    priority: str = "normal",
    source: str = "portal",
    tech: dict[str, str] | None = None,
    claimed_at: str | None = None,
    customer: dict[str, Any] | None = None,
    zone: str = NEW_YORK,
    policy: Policy = DEFAULT_POLICY,
) -> TicketLedger:
    raw = {
        "ticket_id": "T-1001",
        "opened_at": utc(opened_at).isoformat(),
        "priority": priority,
        "source": source,
        "customer": customer or CUSTOMER,
        "tech": tech,
        "claimed_at": utc(claimed_at).isoformat() if claimed_at else None,
    }
    return TicketLedger(parse_opening(raw), zone, policy)


def send(
    ledger: TicketLedger,
    signal: str,
    at: str,
    *,
    received: str | None = None,
    event_id: str | None = None,
    **fields: Any,
) -> str:
    """Feed one event that occurred at ``at`` and arrived at ``received``."""
    event_id = event_id or f"e-{next(_event_ids)}"
    payload = {"event_id": event_id, "occurred_at": utc(at).isoformat(), **fields}
    ledger.receive(parse_event(signal, payload), utc(received or at))
    return event_id


def claimed_ledger(
    claimed_at: str = "2026-06-10T14:00:00", **options: Any
) -> TicketLedger:
    """A ticket opened at 09:00 local and claimed by K-4, by default at 10:00."""
    ledger = new_ledger(options.pop("opened_at", OPENED), **options)
    send(ledger, "claim", claimed_at, tech=K4)
    return ledger


def attempt(ledger: TicketLedger, at: str, channel: str, outcome: str) -> None:
    send(ledger, "contact_attempt", at, channel=channel, outcome=outcome)


def rows(ledger: TicketLedger, kind: str) -> list[tuple[str, str, str]]:
    """Obligations of one kind as (owner, due_at, status), in opening order."""
    return [
        (row["owner"], row["due_at"], row["status"])
        for row in ledger.status()["obligations"]
        if row["kind"] == kind
    ]


def mails(ledger: TicketLedger, *kinds: str) -> list[tuple[str, str, str | None, str]]:
    """Queued mail as (kind, role, recipient id, due_at), in time order."""
    found = [
        (n.kind, n.role, n.recipient.id if n.recipient else None, n.due_at)
        for n in ledger.pending_notifications()
        if not kinds or n.kind in kinds
    ]
    return sorted(found, key=lambda mail: (mail[3], mail[0], mail[1], mail[2] or ""))


def obligations_snapshot(ledger: TicketLedger) -> list[dict[str, Any]]:
    return [dict(row) for row in ledger.status()["obligations"]]


# Rule 1: claim within 8 hours


def test_claim_due_eight_hours_after_opening() -> None:
    ledger = new_ledger()

    assert rows(ledger, "claim") == [("ops", "2026-06-10T21:00:00+00:00", "open")]
    assert ledger.status()["state"] == "unclaimed"
    assert ledger.status()["tech_id"] is None


def test_unclaimed_breach_at_eight_hours() -> None:
    ledger = new_ledger()

    ledger.advance(utc("2026-06-10T20:59:59"))
    assert mails(ledger) == []

    ledger.advance(utc("2026-06-10T21:00:00"))
    assert mails(ledger) == [
        ("unclaimed_breach", "ops", None, "2026-06-10T21:00:00+00:00")
    ]
    assert rows(ledger, "claim") == [("ops", "2026-06-10T21:00:00+00:00", "breached")]

    ledger.advance(utc("2026-06-12T00:00:00"))
    assert len(mails(ledger, "unclaimed_breach")) == 1


def test_claim_before_eight_hours_meets() -> None:
    ledger = new_ledger()

    send(ledger, "claim", "2026-06-10T20:59:59", tech=K4)
    ledger.advance(utc("2026-06-10T21:00:00"))

    assert rows(ledger, "claim") == [("ops", "2026-06-10T21:00:00+00:00", "met")]
    assert mails(ledger, "unclaimed_breach") == []
    assert ledger.status()["state"] == "claimed"
    assert ledger.status()["tech_id"] == "K-4"


def test_claim_window_ignores_quiet_window() -> None:
    # Opened 22:00 local: the claim is due 06:00 local, inside the quiet window.
    ledger = new_ledger("2026-06-11T02:00:00")

    ledger.advance(utc("2026-06-11T10:00:00"))

    assert mails(ledger) == [
        ("unclaimed_breach", "ops", None, "2026-06-11T10:00:00+00:00")
    ]


def test_claim_after_breach_starts_rule_two() -> None:
    ledger = new_ledger()
    ledger.advance(utc("2026-06-10T21:00:00"))

    # Claimed 18:00 local: first contact 19:00 local, check-in 21:00 local is
    # held to 08:00 the next morning.
    send(ledger, "claim", "2026-06-10T22:00:00", tech=K4)

    assert rows(ledger, "claim") == [("ops", "2026-06-10T21:00:00+00:00", "breached")]
    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T23:00:00+00:00", "open")
    ]
    assert rows(ledger, "check_in") == [
        ("service", "2026-06-11T12:00:00+00:00", "open")
    ]


# Rule 2: first contact within 1 hour of the claim


def test_first_contact_reminder_and_breach() -> None:
    ledger = claimed_ledger()
    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T15:00:00+00:00", "open")
    ]

    ledger.advance(utc("2026-06-10T14:44:59"))
    assert mails(ledger) == []

    ledger.advance(utc("2026-06-10T14:45:00"))
    assert mails(ledger) == [
        ("first_contact_reminder", "tech", "K-4", "2026-06-10T14:45:00+00:00")
    ]

    ledger.advance(utc("2026-06-10T15:00:00"))
    assert mails(ledger) == [
        ("first_contact_reminder", "tech", "K-4", "2026-06-10T14:45:00+00:00"),
        ("first_contact_breach", "ops", None, "2026-06-10T15:00:00+00:00"),
        ("first_contact_breach", "tech", "K-4", "2026-06-10T15:00:00+00:00"),
    ]
    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T15:00:00+00:00", "breached")
    ]


@pytest.mark.parametrize("channel", ["phone", "email"])
@pytest.mark.parametrize("outcome", ["reached", "no_answer", "message_left"])
def test_first_contact_met_phone_email(channel: str, outcome: str) -> None:
    ledger = claimed_ledger()

    attempt(ledger, "2026-06-10T14:30:00", channel, outcome)
    ledger.advance(utc("2026-06-10T16:00:00"))

    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T15:00:00+00:00", "met")
    ]
    assert mails(ledger, "first_contact_reminder", "first_contact_breach") == []


@pytest.mark.parametrize("channel", ["sms", "onsite", "remote"])
def test_first_contact_other_channels(channel: str) -> None:
    ledger = claimed_ledger()

    attempt(ledger, "2026-06-10T14:30:00", channel, "reached")
    ledger.advance(utc("2026-06-10T15:00:00"))

    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T15:00:00+00:00", "breached")
    ]
    assert mails(ledger, "first_contact_reminder", "first_contact_breach") == [
        ("first_contact_reminder", "tech", "K-4", "2026-06-10T14:45:00+00:00"),
        ("first_contact_breach", "ops", None, "2026-06-10T15:00:00+00:00"),
        ("first_contact_breach", "tech", "K-4", "2026-06-10T15:00:00+00:00"),
    ]


@pytest.mark.parametrize(
    "claimed_at",
    [
        "2026-06-11T03:45:00",  # 23:45 local: due 09:00 the next day
        "2026-06-11T05:30:00",  # 01:30 local: due 09:00 the same morning
        "2026-06-11T00:00:00",  # 20:00:00 local
        "2026-06-11T11:59:59",  # 07:59:59 local
    ],
)
def test_first_contact_quiet_claim_due_nine(claimed_at: str) -> None:
    # Claimed as soon as it opened, so the claim itself is never late.
    ledger = claimed_ledger(claimed_at, opened_at=claimed_at)

    ledger.advance(utc("2026-06-11T16:00:00"))

    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-11T13:00:00+00:00", "breached")
    ]
    assert mails(ledger) == [
        ("first_contact_reminder", "tech", "K-4", "2026-06-11T12:45:00+00:00"),
        ("first_contact_breach", "ops", None, "2026-06-11T13:00:00+00:00"),
        ("first_contact_breach", "tech", "K-4", "2026-06-11T13:00:00+00:00"),
        # Three hours after the 08:00 clock start: 11:00 local.
        ("check_in", "customer", "C-17", "2026-06-11T15:00:00+00:00"),
    ]


def test_first_contact_claim_at_eight() -> None:
    ledger = claimed_ledger("2026-06-11T12:00:00", opened_at="2026-06-10T23:30:00")

    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-11T13:00:00+00:00", "open")
    ]
    assert rows(ledger, "check_in") == [
        ("service", "2026-06-11T15:00:00+00:00", "open")
    ]


def test_first_contact_claim_just_before_quiet() -> None:
    # 19:59:59 local is not quiet: due 20:59:59 local. The check-in would be
    # 22:59:59 local, so it waits for 08:00.
    ledger = claimed_ledger("2026-06-10T23:59:59", opened_at="2026-06-10T20:00:00")

    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-11T00:59:59+00:00", "open")
    ]
    assert rows(ledger, "check_in") == [
        ("service", "2026-06-11T12:00:00+00:00", "open")
    ]


@pytest.mark.parametrize("priority", ["high", "emergency"])
def test_first_contact_urgent_night_claim(priority: str) -> None:
    # Claimed 23:45 local: first contact due 00:45 local, check-in 02:45 local.
    ledger = claimed_ledger(
        "2026-06-11T03:45:00", opened_at="2026-06-10T23:30:00", priority=priority
    )

    ledger.advance(utc("2026-06-11T07:00:00"))

    assert mails(ledger) == [
        ("first_contact_reminder", "tech", "K-4", "2026-06-11T04:30:00+00:00"),
        ("first_contact_breach", "ops", None, "2026-06-11T04:45:00+00:00"),
        ("first_contact_breach", "tech", "K-4", "2026-06-11T04:45:00+00:00"),
        ("check_in", "customer", "C-17", "2026-06-11T06:45:00+00:00"),
    ]


def test_first_contact_met_before_clock_start() -> None:
    # Claimed 23:45 local, called at 23:50 local: reaching out early counts.
    ledger = claimed_ledger("2026-06-11T03:45:00", opened_at="2026-06-10T23:30:00")

    attempt(ledger, "2026-06-11T03:50:00", "phone", "no_answer")
    ledger.advance(utc("2026-06-11T13:00:00"))

    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-11T13:00:00+00:00", "met")
    ]
    assert mails(ledger, "first_contact_reminder", "first_contact_breach") == []


def test_first_contact_at_due_time_meets() -> None:
    ledger = claimed_ledger()

    attempt(ledger, "2026-06-10T15:00:00", "phone", "reached")

    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T15:00:00+00:00", "met")
    ]
    assert mails(ledger, "first_contact_breach") == []


# Rule 3: check-in mail to the customer


def test_check_in_sent_despite_contact() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:10:00", "phone", "reached")

    ledger.advance(utc("2026-06-10T16:59:59"))
    assert mails(ledger, "check_in") == []

    ledger.advance(utc("2026-06-12T00:00:00"))
    assert mails(ledger, "check_in") == [
        ("check_in", "customer", "C-17", "2026-06-10T17:00:00+00:00")
    ]
    assert rows(ledger, "check_in") == [("service", "2026-06-10T17:00:00+00:00", "met")]


def test_check_in_claim_1830_waits() -> None:
    # Claimed 18:30 local: 21:30 local is quiet, so the mail goes at 08:00.
    ledger = claimed_ledger("2026-06-10T22:30:00")

    ledger.advance(utc("2026-06-11T11:59:59"))
    assert mails(ledger, "check_in") == []

    ledger.advance(utc("2026-06-11T12:00:00"))
    assert mails(ledger, "check_in") == [
        ("check_in", "customer", "C-17", "2026-06-11T12:00:00+00:00")
    ]


def test_check_in_urgent_1830_not_held() -> None:
    ledger = claimed_ledger("2026-06-10T22:30:00", priority="high")

    ledger.advance(utc("2026-06-11T12:00:00"))

    assert mails(ledger, "check_in") == [
        ("check_in", "customer", "C-17", "2026-06-11T01:30:00+00:00")
    ]


def test_check_in_not_sent_after_close() -> None:
    ledger = claimed_ledger()

    send(ledger, "close", "2026-06-10T16:00:00", reason="resolved")
    ledger.advance(utc("2026-06-12T00:00:00"))

    assert rows(ledger, "check_in") == [
        ("service", "2026-06-10T17:00:00+00:00", "cancelled")
    ]
    assert mails(ledger, "check_in") == []


def test_check_in_not_sent_after_release() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:10:00", "phone", "reached")

    send(ledger, "release", "2026-06-10T16:00:00")
    ledger.advance(utc("2026-06-10T23:00:00"))

    assert rows(ledger, "check_in") == [
        ("service", "2026-06-10T17:00:00+00:00", "cancelled")
    ]
    assert mails(ledger, "check_in", "released") == [
        ("released", "ops", None, "2026-06-10T16:00:00+00:00")
    ]


def test_check_in_once_despite_reassign() -> None:
    ledger = claimed_ledger()

    send(ledger, "reassign", "2026-06-10T14:30:00", tech=K7)
    ledger.advance(utc("2026-06-12T00:00:00"))

    assert rows(ledger, "check_in") == [("service", "2026-06-10T17:00:00+00:00", "met")]
    assert mails(ledger, "check_in") == [
        ("check_in", "customer", "C-17", "2026-06-10T17:00:00+00:00")
    ]


def test_check_in_follows_new_claim() -> None:
    # Released before the check-in was due, then claimed again at 11:30
    # local: the new claim's clock gives a check-in at 14:30 local.
    ledger = claimed_ledger()
    send(ledger, "release", "2026-06-10T15:00:00")
    send(ledger, "claim", "2026-06-10T15:30:00", tech=K7)

    ledger.advance(utc("2026-06-12T00:00:00"))

    assert rows(ledger, "check_in") == [
        ("service", "2026-06-10T17:00:00+00:00", "cancelled"),
        ("service", "2026-06-10T18:30:00+00:00", "met"),
    ]
    assert mails(ledger, "check_in") == [
        ("check_in", "customer", "C-17", "2026-06-10T18:30:00+00:00")
    ]


def test_check_in_not_repeated_after_reclaim() -> None:
    ledger = claimed_ledger()
    ledger.advance(utc("2026-06-10T17:00:00"))

    send(ledger, "release", "2026-06-10T18:00:00")
    send(ledger, "claim", "2026-06-10T18:30:00", tech=K7)
    ledger.advance(utc("2026-06-12T00:00:00"))

    assert rows(ledger, "check_in") == [("service", "2026-06-10T17:00:00+00:00", "met")]
    assert len(mails(ledger, "check_in")) == 1


# Rule 4: notes within 12 hours of every contact attempt


def test_notes_reminder_and_breach() -> None:
    ledger = claimed_ledger()

    attempt(ledger, "2026-06-10T14:30:00", "phone", "reached")
    assert rows(ledger, "notes") == [("K-4", "2026-06-11T02:30:00+00:00", "open")]

    ledger.advance(utc("2026-06-11T00:29:59"))
    assert mails(ledger, "notes_reminder", "notes_breach") == []

    ledger.advance(utc("2026-06-11T02:30:00"))
    assert mails(ledger, "notes_reminder", "notes_breach") == [
        ("notes_reminder", "tech", "K-4", "2026-06-11T00:30:00+00:00"),
        ("notes_breach", "ops", None, "2026-06-11T02:30:00+00:00"),
        ("notes_breach", "tech", "K-4", "2026-06-11T02:30:00+00:00"),
    ]
    assert rows(ledger, "notes") == [("K-4", "2026-06-11T02:30:00+00:00", "breached")]


def test_late_reminder_skipped_when_asked() -> None:
    ledger = claimed_ledger()
    ledger.skip_late_reminders = True
    attempt(ledger, "2026-06-10T14:30:00", "phone", "reached")

    # A worker back only after the due time: the breach goes, the stale
    # reminder does not.
    ledger.advance(utc("2026-06-11T03:00:00"))
    assert mails(ledger, "notes_reminder", "notes_breach") == [
        ("notes_breach", "ops", None, "2026-06-11T02:30:00+00:00"),
        ("notes_breach", "tech", "K-4", "2026-06-11T02:30:00+00:00"),
    ]


def test_timely_reminder_sent_when_skipping() -> None:
    ledger = claimed_ledger()
    ledger.skip_late_reminders = True
    attempt(ledger, "2026-06-10T14:30:00", "phone", "reached")

    ledger.advance(utc("2026-06-11T00:30:00"))
    assert mails(ledger, "notes_reminder", "notes_breach") == [
        ("notes_reminder", "tech", "K-4", "2026-06-11T00:30:00+00:00"),
    ]


@pytest.mark.parametrize("outcome", ["no_answer", "message_left"])
@pytest.mark.parametrize("channel", ["sms", "onsite", "remote", "email"])
def test_notes_owed_for_unreached_attempts(channel: str, outcome: str) -> None:
    ledger = claimed_ledger()

    attempt(ledger, "2026-06-10T14:30:00", channel, outcome)

    assert rows(ledger, "notes") == [("K-4", "2026-06-11T02:30:00+00:00", "open")]


def test_notes_updated_meets_earlier_notes() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "reached")
    attempt(ledger, "2026-06-10T16:00:00", "email", "reached")

    send(ledger, "notes_updated", "2026-06-10T15:00:00")
    assert rows(ledger, "notes") == [
        ("K-4", "2026-06-11T02:30:00+00:00", "met"),
        ("K-4", "2026-06-11T04:00:00+00:00", "open"),
    ]

    send(ledger, "notes_updated", "2026-06-10T17:00:00")
    assert rows(ledger, "notes") == [
        ("K-4", "2026-06-11T02:30:00+00:00", "met"),
        ("K-4", "2026-06-11T04:00:00+00:00", "met"),
    ]

    ledger.advance(utc("2026-06-12T00:00:00"))
    assert mails(ledger, "notes_reminder", "notes_breach") == []


def test_notes_updated_at_attempt_time_meets() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "reached")

    send(ledger, "notes_updated", "2026-06-10T14:30:00")

    assert rows(ledger, "notes") == [("K-4", "2026-06-11T02:30:00+00:00", "met")]


def test_notes_updated_before_attempt_meets_nothing() -> None:
    ledger = claimed_ledger()
    send(ledger, "notes_updated", "2026-06-10T14:10:00")

    attempt(ledger, "2026-06-10T14:30:00", "phone", "reached")

    assert rows(ledger, "notes") == [("K-4", "2026-06-11T02:30:00+00:00", "open")]


def test_notes_updated_after_breach_keeps_breach() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "reached")
    ledger.advance(utc("2026-06-11T02:30:00"))

    send(ledger, "notes_updated", "2026-06-11T03:00:00")

    assert rows(ledger, "notes") == [("K-4", "2026-06-11T02:30:00+00:00", "breached")]


# Rule 5: reply to the customer within 24 hours


def test_reply_reminder_and_breach() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:10:00", "phone", "reached")

    send(ledger, "customer_message", "2026-06-10T15:00:00", channel="email")
    assert rows(ledger, "reply") == [("K-4", "2026-06-11T15:00:00+00:00", "open")]

    ledger.advance(utc("2026-06-11T10:59:59"))
    assert mails(ledger, "reply_reminder", "reply_breach") == []

    ledger.advance(utc("2026-06-11T15:00:00"))
    assert mails(ledger, "reply_reminder", "reply_breach") == [
        ("reply_reminder", "tech", "K-4", "2026-06-11T11:00:00+00:00"),
        ("reply_breach", "ops", None, "2026-06-11T15:00:00+00:00"),
        ("reply_breach", "tech", "K-4", "2026-06-11T15:00:00+00:00"),
    ]
    assert rows(ledger, "reply") == [("K-4", "2026-06-11T15:00:00+00:00", "breached")]


def test_second_message_keeps_reply_deadline() -> None:
    ledger = claimed_ledger()
    send(ledger, "customer_message", "2026-06-10T15:00:00", channel="email")

    send(ledger, "customer_message", "2026-06-10T20:00:00", channel="phone")

    assert rows(ledger, "reply") == [("K-4", "2026-06-11T15:00:00+00:00", "open")]


@pytest.mark.parametrize("channel", ["phone", "email", "sms", "onsite", "remote"])
def test_reply_met_by_later_attempt(channel: str) -> None:
    ledger = claimed_ledger()
    send(ledger, "customer_message", "2026-06-10T15:00:00", channel="email")

    attempt(ledger, "2026-06-11T10:00:00", channel, "no_answer")
    ledger.advance(utc("2026-06-12T00:00:00"))

    assert rows(ledger, "reply") == [("K-4", "2026-06-11T15:00:00+00:00", "met")]
    assert mails(ledger, "reply_reminder", "reply_breach") == []


def test_reply_not_met_by_earlier_attempt() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:10:00", "phone", "reached")

    send(ledger, "customer_message", "2026-06-10T15:00:00", channel="email")

    assert rows(ledger, "reply") == [("K-4", "2026-06-11T15:00:00+00:00", "open")]


def test_message_after_answered_reply_opens_new() -> None:
    ledger = claimed_ledger()
    send(ledger, "customer_message", "2026-06-10T15:00:00", channel="email")
    attempt(ledger, "2026-06-10T16:00:00", "email", "reached")

    send(ledger, "customer_message", "2026-06-10T18:00:00", channel="email")

    assert rows(ledger, "reply") == [
        ("K-4", "2026-06-11T15:00:00+00:00", "met"),
        ("K-4", "2026-06-11T18:00:00+00:00", "open"),
    ]


def test_reply_unclaimed_moves_to_claimer() -> None:
    ledger = new_ledger()
    send(ledger, "customer_message", "2026-06-10T13:30:00", channel="email")
    assert rows(ledger, "reply") == [("ops", "2026-06-11T13:30:00+00:00", "open")]

    send(ledger, "claim", "2026-06-10T14:00:00", tech=K4)
    ledger.advance(utc("2026-06-11T09:30:00"))

    assert rows(ledger, "reply") == [("K-4", "2026-06-11T13:30:00+00:00", "open")]
    assert mails(ledger, "reply_reminder") == [
        ("reply_reminder", "tech", "K-4", "2026-06-11T09:30:00+00:00")
    ]


# Rule 6: the unreachable ladder


def test_ladder_full_run_closes_unreachable() -> None:
    ledger = claimed_ledger()

    # A0: 10:30 local on June 10.
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    assert rows(ledger, "try_other_method") == [
        ("K-4", "2026-06-12T14:30:00+00:00", "open")
    ]

    ledger.advance(utc("2026-06-11T14:29:59"))
    assert mails(ledger, *LADDER_MAILS) == []
    ledger.advance(utc("2026-06-11T14:30:00"))
    assert mails(ledger, *LADDER_MAILS) == [
        ("try_other_method", "tech", "K-4", "2026-06-11T14:30:00+00:00")
    ]

    # A1 on a new channel: the next prompt is at max(A0+48h, A1+24h).
    attempt(ledger, "2026-06-11T16:00:00", "email", "no_answer")
    assert rows(ledger, "try_other_method") == [
        ("K-4", "2026-06-12T14:30:00+00:00", "met")
    ]
    assert rows(ledger, "try_all_methods") == [
        ("K-4", "2026-06-13T16:00:00+00:00", "open")
    ]

    ledger.advance(utc("2026-06-12T16:00:00"))
    assert mails(ledger, *LADDER_MAILS)[-1] == (
        "try_all_methods",
        "tech",
        "K-4",
        "2026-06-12T16:00:00+00:00",
    )

    # Every method on file after the prompt: A2 is the last of them.
    attempt(ledger, "2026-06-12T17:00:00", "phone", "no_answer")
    assert rows(ledger, "close_unreachable") == []
    attempt(ledger, "2026-06-12T18:00:00", "email", "message_left")
    assert rows(ledger, "try_all_methods") == [
        ("K-4", "2026-06-13T16:00:00+00:00", "met")
    ]
    assert rows(ledger, "close_unreachable") == [
        ("service", "2026-06-13T18:00:00+00:00", "open")
    ]

    ledger.advance(utc("2026-06-13T17:59:59"))
    assert ledger.status()["state"] == "claimed"

    ledger.advance(utc("2026-06-13T18:00:00"))
    assert mails(ledger, *LADDER_MAILS) == [
        ("try_other_method", "tech", "K-4", "2026-06-11T14:30:00+00:00"),
        ("try_all_methods", "tech", "K-4", "2026-06-12T16:00:00+00:00"),
        ("closed_unreachable", "customer", "C-17", "2026-06-13T18:00:00+00:00"),
        ("closed_unreachable", "ops", None, "2026-06-13T18:00:00+00:00"),
        ("closed_unreachable", "tech", "K-4", "2026-06-13T18:00:00+00:00"),
    ]
    status = ledger.status()
    assert status["state"] == "closed"
    assert status["close_reason"] == "unreachable"
    assert status["closed_at"] == "2026-06-13T18:00:00+00:00"
    assert rows(ledger, "close_unreachable") == [
        ("service", "2026-06-13T18:00:00+00:00", "met")
    ]
    assert [row for row in status["obligations"] if row["status"] == "open"] == []


def test_ladder_early_new_channel() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")

    # A1 one hour after A0: the prompt for all methods is A0+48h.
    attempt(ledger, "2026-06-10T15:30:00", "email", "no_answer")
    ledger.advance(utc("2026-06-12T14:30:00"))

    assert rows(ledger, "try_all_methods") == [
        ("K-4", "2026-06-13T14:30:00+00:00", "open")
    ]
    assert mails(ledger, *LADDER_MAILS) == [
        ("try_all_methods", "tech", "K-4", "2026-06-12T14:30:00+00:00")
    ]


def test_ladder_same_channel_not_counted() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")

    attempt(ledger, "2026-06-11T10:00:00", "phone", "message_left")
    ledger.advance(utc("2026-06-11T14:30:00"))

    assert rows(ledger, "try_other_method") == [
        ("K-4", "2026-06-12T14:30:00+00:00", "open")
    ]
    assert rows(ledger, "try_all_methods") == []
    assert mails(ledger, *LADDER_MAILS) == [
        ("try_other_method", "tech", "K-4", "2026-06-11T14:30:00+00:00")
    ]


def test_ladder_first_step_incomplete() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")

    ledger.advance(utc("2026-06-12T19:00:00"))
    assert mails(ledger, *LADDER_MAILS) == [
        ("try_other_method", "tech", "K-4", "2026-06-11T14:30:00+00:00"),
        ("ladder_incomplete", "ops", None, "2026-06-12T14:30:00+00:00"),
    ]
    assert rows(ledger, "try_other_method") == [
        ("K-4", "2026-06-12T14:30:00+00:00", "breached")
    ]
    assert ledger.status()["state"] == "claimed"

    # The late step is done at 16:00 local on June 12, and the schedule resumes.
    attempt(ledger, "2026-06-12T20:00:00", "email", "no_answer")
    assert rows(ledger, "try_all_methods") == [
        ("K-4", "2026-06-14T20:00:00+00:00", "open")
    ]

    ledger.advance(utc("2026-06-13T20:00:00"))
    attempt(ledger, "2026-06-13T21:00:00", "phone", "no_answer")
    attempt(ledger, "2026-06-13T21:30:00", "email", "no_answer")
    assert rows(ledger, "close_unreachable") == [
        ("service", "2026-06-14T21:30:00+00:00", "open")
    ]

    ledger.advance(utc("2026-06-14T21:30:00"))
    assert mails(ledger, *LADDER_MAILS) == [
        ("try_other_method", "tech", "K-4", "2026-06-11T14:30:00+00:00"),
        ("ladder_incomplete", "ops", None, "2026-06-12T14:30:00+00:00"),
        ("try_all_methods", "tech", "K-4", "2026-06-13T20:00:00+00:00"),
        ("closed_unreachable", "customer", "C-17", "2026-06-14T21:30:00+00:00"),
        ("closed_unreachable", "ops", None, "2026-06-14T21:30:00+00:00"),
        ("closed_unreachable", "tech", "K-4", "2026-06-14T21:30:00+00:00"),
    ]
    assert ledger.status()["state"] == "closed"


def test_ladder_first_step_incomplete_stays_open() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")

    ledger.advance(utc("2026-06-20T00:00:00"))

    assert ledger.status()["state"] == "claimed"
    assert mails(ledger, *LADDER_MAILS) == [
        ("try_other_method", "tech", "K-4", "2026-06-11T14:30:00+00:00"),
        ("ladder_incomplete", "ops", None, "2026-06-12T14:30:00+00:00"),
    ]


def test_ladder_second_step_incomplete() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    attempt(ledger, "2026-06-11T16:00:00", "email", "no_answer")
    ledger.advance(utc("2026-06-12T16:00:00"))
    attempt(ledger, "2026-06-12T17:00:00", "phone", "no_answer")

    ledger.advance(utc("2026-06-13T18:00:00"))
    assert mails(ledger, *LADDER_MAILS) == [
        ("try_other_method", "tech", "K-4", "2026-06-11T14:30:00+00:00"),
        ("try_all_methods", "tech", "K-4", "2026-06-12T16:00:00+00:00"),
        ("ladder_incomplete", "ops", None, "2026-06-13T16:00:00+00:00"),
    ]
    assert rows(ledger, "try_all_methods") == [
        ("K-4", "2026-06-13T16:00:00+00:00", "breached")
    ]
    assert ledger.status()["state"] == "claimed"

    # The missing method at 15:00 local on June 13: closes 24h later.
    attempt(ledger, "2026-06-13T19:00:00", "email", "no_answer")
    assert rows(ledger, "close_unreachable") == [
        ("service", "2026-06-14T19:00:00+00:00", "open")
    ]
    ledger.advance(utc("2026-06-14T19:00:00"))
    assert ledger.status()["state"] == "closed"
    assert ledger.status()["closed_at"] == "2026-06-14T19:00:00+00:00"


def test_ladder_attempts_before_prompt() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    attempt(ledger, "2026-06-11T16:00:00", "email", "no_answer")
    # Both methods tried before the 2026-06-12T16:00 prompt.
    attempt(ledger, "2026-06-12T10:00:00", "phone", "no_answer")
    attempt(ledger, "2026-06-12T11:00:00", "email", "no_answer")
    assert rows(ledger, "close_unreachable") == []

    attempt(ledger, "2026-06-12T17:00:00", "phone", "no_answer")
    assert rows(ledger, "close_unreachable") == []

    attempt(ledger, "2026-06-12T17:30:00", "email", "no_answer")
    assert rows(ledger, "close_unreachable") == [
        ("service", "2026-06-13T17:30:00+00:00", "open")
    ]


def test_ladder_attempt_at_prompt_time_counts() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    attempt(ledger, "2026-06-11T16:00:00", "email", "no_answer")

    attempt(ledger, "2026-06-12T16:00:00", "phone", "no_answer")
    attempt(ledger, "2026-06-12T16:00:00", "email", "no_answer")

    assert rows(ledger, "close_unreachable") == [
        ("service", "2026-06-13T16:00:00+00:00", "open")
    ]


def test_ladder_sms_covers_phone_method() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    attempt(ledger, "2026-06-11T16:00:00", "email", "no_answer")
    ledger.advance(utc("2026-06-12T16:00:00"))

    attempt(ledger, "2026-06-12T17:00:00", "sms", "no_answer")
    attempt(ledger, "2026-06-12T17:30:00", "email", "no_answer")

    assert rows(ledger, "close_unreachable") == [
        ("service", "2026-06-13T17:30:00+00:00", "open")
    ]


def test_ladder_onsite_covers_no_method() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    attempt(ledger, "2026-06-11T16:00:00", "email", "no_answer")
    ledger.advance(utc("2026-06-12T16:00:00"))

    attempt(ledger, "2026-06-12T17:00:00", "onsite", "no_answer")
    attempt(ledger, "2026-06-12T17:30:00", "remote", "no_answer")

    assert rows(ledger, "close_unreachable") == []


def test_ladder_email_only_customer() -> None:
    customer = {**CUSTOMER, "phone": None}
    ledger = claimed_ledger(customer=customer)
    attempt(ledger, "2026-06-10T14:30:00", "email", "no_answer")
    attempt(ledger, "2026-06-11T16:00:00", "onsite", "no_answer")
    ledger.advance(utc("2026-06-12T16:00:00"))

    attempt(ledger, "2026-06-12T17:00:00", "email", "no_answer")

    assert rows(ledger, "try_all_methods") == [
        ("K-4", "2026-06-13T16:00:00+00:00", "met")
    ]
    assert rows(ledger, "close_unreachable") == [
        ("service", "2026-06-13T17:00:00+00:00", "open")
    ]


def test_ladder_no_method_on_file() -> None:
    customer = {"id": "C-18", "name": "Walk-in", "timezone": NEW_YORK}
    ledger = claimed_ledger(customer=customer)
    attempt(ledger, "2026-06-10T14:30:00", "onsite", "no_answer")
    attempt(ledger, "2026-06-11T16:00:00", "remote", "no_answer")

    ledger.advance(utc("2026-06-12T16:00:00"))

    # Nothing is on file to try, so the step is done at its prompt and the
    # close is max(A0+72h, prompt+24h).
    assert rows(ledger, "try_all_methods") == [
        ("K-4", "2026-06-13T16:00:00+00:00", "met")
    ]
    assert rows(ledger, "close_unreachable") == [
        ("service", "2026-06-13T16:00:00+00:00", "open")
    ]


def test_ladder_stopped_by_customer_message() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")

    send(ledger, "customer_message", "2026-06-11T10:00:00", channel="email")
    ledger.advance(utc("2026-06-14T00:00:00"))

    assert rows(ledger, "try_other_method") == [
        ("K-4", "2026-06-12T14:30:00+00:00", "cancelled")
    ]
    assert mails(ledger, *LADDER_MAILS) == []
    assert ledger.status()["ladder"] is None


def test_ladder_stopped_by_reached_then_restarted() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")

    attempt(ledger, "2026-06-11T10:00:00", "phone", "reached")
    assert rows(ledger, "try_other_method") == [
        ("K-4", "2026-06-12T14:30:00+00:00", "cancelled")
    ]

    # A later failed attempt is a new A0.
    attempt(ledger, "2026-06-11T12:00:00", "email", "no_answer")
    ledger.advance(utc("2026-06-12T14:00:00"))

    assert rows(ledger, "try_other_method") == [
        ("K-4", "2026-06-12T14:30:00+00:00", "cancelled"),
        ("K-4", "2026-06-13T12:00:00+00:00", "open"),
    ]
    assert mails(ledger, *LADDER_MAILS) == [
        ("try_other_method", "tech", "K-4", "2026-06-12T12:00:00+00:00")
    ]
    assert ledger.status()["ladder"]["started_at"] == "2026-06-11T12:00:00+00:00"


def test_ladder_stopped_after_close_scheduled() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    attempt(ledger, "2026-06-11T16:00:00", "email", "no_answer")
    attempt(ledger, "2026-06-12T17:00:00", "phone", "no_answer")
    attempt(ledger, "2026-06-12T18:00:00", "email", "no_answer")

    send(ledger, "customer_message", "2026-06-13T12:00:00", channel="phone")
    ledger.advance(utc("2026-06-14T00:00:00"))

    assert rows(ledger, "close_unreachable") == [
        ("service", "2026-06-13T18:00:00+00:00", "cancelled")
    ]
    assert ledger.status()["state"] == "claimed"
    assert mails(ledger, "closed_unreachable") == []


def test_ladder_close_waits_for_morning_normal() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    attempt(ledger, "2026-06-11T16:00:00", "email", "no_answer")
    # A2 at 21:30 local on June 12: 24h later is 21:30 local, quiet.
    attempt(ledger, "2026-06-13T01:00:00", "phone", "no_answer")
    attempt(ledger, "2026-06-13T01:30:00", "email", "no_answer")

    assert rows(ledger, "close_unreachable") == [
        ("service", "2026-06-14T12:00:00+00:00", "open")
    ]
    ledger.advance(utc("2026-06-14T12:00:00"))
    assert mails(ledger, "closed_unreachable") == [
        ("closed_unreachable", "customer", "C-17", "2026-06-14T12:00:00+00:00"),
        ("closed_unreachable", "ops", None, "2026-06-14T12:00:00+00:00"),
        ("closed_unreachable", "tech", "K-4", "2026-06-14T12:00:00+00:00"),
    ]


def test_ladder_close_urgent_not_held() -> None:
    ledger = claimed_ledger(priority="high")
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    attempt(ledger, "2026-06-11T16:00:00", "email", "no_answer")
    attempt(ledger, "2026-06-13T01:00:00", "phone", "no_answer")
    attempt(ledger, "2026-06-13T01:30:00", "email", "no_answer")

    assert rows(ledger, "close_unreachable") == [
        ("service", "2026-06-14T01:30:00+00:00", "open")
    ]


def test_ladder_moves_with_reassignment() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")

    send(ledger, "reassign", "2026-06-11T10:00:00", tech=K7)
    ledger.advance(utc("2026-06-11T14:30:00"))
    assert rows(ledger, "try_other_method") == [
        ("K-7", "2026-06-12T14:30:00+00:00", "open")
    ]
    assert mails(ledger, "try_other_method") == [
        ("try_other_method", "tech", "K-7", "2026-06-11T14:30:00+00:00")
    ]

    attempt(ledger, "2026-06-11T16:00:00", "email", "no_answer")
    ledger.advance(utc("2026-06-12T16:00:00"))
    assert rows(ledger, "try_all_methods") == [
        ("K-7", "2026-06-13T16:00:00+00:00", "open")
    ]
    assert mails(ledger, "try_all_methods") == [
        ("try_all_methods", "tech", "K-7", "2026-06-12T16:00:00+00:00")
    ]


def test_ladder_stopped_by_release() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")

    send(ledger, "release", "2026-06-11T10:00:00")
    ledger.advance(utc("2026-06-14T00:00:00"))

    assert rows(ledger, "try_other_method") == [
        ("K-4", "2026-06-12T14:30:00+00:00", "cancelled")
    ]
    assert mails(ledger, *LADDER_MAILS) == []


def test_ladder_across_fall_back_is_elapsed() -> None:
    # A0 at 10:00 EDT on 2026-10-31: the prompt is 24 elapsed hours later,
    # 09:00 EST on November 1.
    ledger = claimed_ledger("2026-10-31T13:30:00", opened_at="2026-10-31T13:00:00")
    attempt(ledger, "2026-10-31T14:00:00", "phone", "no_answer")

    ledger.advance(utc("2026-11-02T14:00:00"))

    assert mails(ledger, *LADDER_MAILS) == [
        ("try_other_method", "tech", "K-4", "2026-11-01T14:00:00+00:00"),
        ("ladder_incomplete", "ops", None, "2026-11-02T14:00:00+00:00"),
    ]


# Rule 7: reassignment


def test_reassign_moves_reply_keeps_notes() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:05:00", "phone", "reached")
    send(ledger, "customer_message", "2026-06-10T14:10:00", channel="email")

    send(ledger, "reassign", "2026-06-10T14:30:00", tech=K7, reason="leave")

    status = ledger.status()
    assert status["tech_id"] == "K-7"
    assert status["state"] == "claimed"
    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T15:00:00+00:00", "met"),
        ("K-7", "2026-06-10T15:30:00+00:00", "open"),
    ]
    assert rows(ledger, "reply") == [("K-7", "2026-06-11T14:10:00+00:00", "open")]
    assert rows(ledger, "notes") == [("K-4", "2026-06-11T02:05:00+00:00", "open")]

    ledger.advance(utc("2026-06-11T15:00:00"))
    assert mails(ledger) == [
        ("assigned", "tech", "K-7", "2026-06-10T14:30:00+00:00"),
        ("first_contact_reminder", "tech", "K-7", "2026-06-10T15:15:00+00:00"),
        ("first_contact_breach", "ops", None, "2026-06-10T15:30:00+00:00"),
        ("first_contact_breach", "tech", "K-7", "2026-06-10T15:30:00+00:00"),
        ("check_in", "customer", "C-17", "2026-06-10T17:00:00+00:00"),
        ("notes_reminder", "tech", "K-4", "2026-06-11T00:05:00+00:00"),
        ("notes_breach", "ops", None, "2026-06-11T02:05:00+00:00"),
        ("notes_breach", "tech", "K-4", "2026-06-11T02:05:00+00:00"),
        ("reply_reminder", "tech", "K-7", "2026-06-11T10:10:00+00:00"),
        ("reply_breach", "ops", None, "2026-06-11T14:10:00+00:00"),
        ("reply_breach", "tech", "K-7", "2026-06-11T14:10:00+00:00"),
    ]


def test_reassign_stops_old_first_contact() -> None:
    ledger = claimed_ledger()

    send(ledger, "reassign", "2026-06-10T14:30:00", tech=K7)
    ledger.advance(utc("2026-06-10T16:00:00"))

    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T15:00:00+00:00", "cancelled"),
        ("K-7", "2026-06-10T15:30:00+00:00", "breached"),
    ]
    assert mails(ledger, "first_contact_reminder", "first_contact_breach") == [
        ("first_contact_reminder", "tech", "K-7", "2026-06-10T15:15:00+00:00"),
        ("first_contact_breach", "ops", None, "2026-06-10T15:30:00+00:00"),
        ("first_contact_breach", "tech", "K-7", "2026-06-10T15:30:00+00:00"),
    ]


def test_reassign_in_quiet_window_due_nine() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:05:00", "phone", "reached")

    # 22:00 local: the new tech's clock starts at 08:00, due 09:00 local.
    send(ledger, "reassign", "2026-06-11T02:00:00", tech=K7)

    assert rows(ledger, "first_contact")[-1] == (
        "K-7",
        "2026-06-11T13:00:00+00:00",
        "open",
    )
    ledger.advance(utc("2026-06-11T12:45:00"))
    assert mails(ledger, "first_contact_reminder") == [
        ("first_contact_reminder", "tech", "K-7", "2026-06-11T12:45:00+00:00")
    ]


def test_reassign_urgent_at_night() -> None:
    ledger = claimed_ledger(priority="emergency")

    send(ledger, "reassign", "2026-06-11T02:00:00", tech=K7)

    assert rows(ledger, "first_contact")[-1] == (
        "K-7",
        "2026-06-11T03:00:00+00:00",
        "open",
    )


def test_reassign_unclaimed_acts_as_claim() -> None:
    ledger = new_ledger()

    send(ledger, "reassign", "2026-06-10T14:00:00", tech=K7)

    assert ledger.status()["state"] == "claimed"
    assert ledger.status()["tech_id"] == "K-7"
    assert rows(ledger, "claim") == [("ops", "2026-06-10T21:00:00+00:00", "met")]
    assert rows(ledger, "first_contact") == [
        ("K-7", "2026-06-10T15:00:00+00:00", "open")
    ]
    assert rows(ledger, "check_in") == [
        ("service", "2026-06-10T17:00:00+00:00", "open")
    ]
    assert mails(ledger, "assigned") == [
        ("assigned", "tech", "K-7", "2026-06-10T14:00:00+00:00")
    ]


def test_reassign_sends_one_mail_each_time() -> None:
    ledger = claimed_ledger()

    send(ledger, "reassign", "2026-06-10T14:30:00", tech=K7)
    send(ledger, "reassign", "2026-06-10T16:00:00", tech=K4)

    assert mails(ledger, "assigned") == [
        ("assigned", "tech", "K-7", "2026-06-10T14:30:00+00:00"),
        ("assigned", "tech", "K-4", "2026-06-10T16:00:00+00:00"),
    ]


def test_claim_sends_no_assigned_mail() -> None:
    ledger = claimed_ledger()

    assert mails(ledger, "assigned") == []


def test_reassign_to_same_tech_rejected() -> None:
    ledger = claimed_ledger()
    before = obligations_snapshot(ledger)

    event_id = send(ledger, "reassign", "2026-06-10T14:30:00", tech=K4)

    assert obligations_snapshot(ledger) == before
    assert mails(ledger, "assigned") == []
    rejected = ledger.status()["rejected"]
    assert [entry["event_id"] for entry in rejected] == [event_id]
    assert "K-4" in rejected[0]["reason"]


# Rule 8: release


def test_release_cancels_and_restarts_claim() -> None:
    ledger = claimed_ledger()
    send(ledger, "customer_message", "2026-06-10T14:10:00", channel="email")

    send(ledger, "release", "2026-06-10T14:20:00", reason="out sick")

    status = ledger.status()
    assert status["state"] == "unclaimed"
    assert status["tech_id"] is None
    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T15:00:00+00:00", "cancelled")
    ]
    assert rows(ledger, "reply") == [("K-4", "2026-06-11T14:10:00+00:00", "cancelled")]
    assert rows(ledger, "check_in") == [
        ("service", "2026-06-10T17:00:00+00:00", "cancelled")
    ]
    assert rows(ledger, "claim") == [
        ("ops", "2026-06-10T21:00:00+00:00", "met"),
        ("ops", "2026-06-10T22:20:00+00:00", "open"),
    ]

    ledger.advance(utc("2026-06-10T22:20:00"))
    assert mails(ledger) == [
        ("released", "ops", None, "2026-06-10T14:20:00+00:00"),
        ("unclaimed_breach", "ops", None, "2026-06-10T22:20:00+00:00"),
    ]


def test_release_then_claim_starts_rule_two() -> None:
    ledger = claimed_ledger()
    send(ledger, "release", "2026-06-10T14:20:00")

    # Claimed 19:00 local: first contact 20:00 local, check-in 22:00 local
    # is held to 08:00 the next morning.
    send(ledger, "claim", "2026-06-10T23:00:00", tech=K7)

    assert rows(ledger, "claim") == [
        ("ops", "2026-06-10T21:00:00+00:00", "met"),
        ("ops", "2026-06-10T22:20:00+00:00", "breached"),
    ]
    assert rows(ledger, "first_contact")[-1] == (
        "K-7",
        "2026-06-11T00:00:00+00:00",
        "open",
    )
    assert rows(ledger, "check_in")[-1] == (
        "service",
        "2026-06-11T12:00:00+00:00",
        "open",
    )
    ledger.advance(utc("2026-06-10T23:45:00"))
    assert mails(ledger, "first_contact_reminder") == [
        ("first_contact_reminder", "tech", "K-7", "2026-06-10T23:45:00+00:00")
    ]


def test_release_keeps_notes_with_tech() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:05:00", "phone", "reached")

    send(ledger, "release", "2026-06-10T14:20:00")
    ledger.advance(utc("2026-06-11T02:05:00"))

    assert rows(ledger, "notes") == [("K-4", "2026-06-11T02:05:00+00:00", "breached")]
    assert mails(ledger, "notes_reminder", "notes_breach") == [
        ("notes_reminder", "tech", "K-4", "2026-06-11T00:05:00+00:00"),
        ("notes_breach", "ops", None, "2026-06-11T02:05:00+00:00"),
        ("notes_breach", "tech", "K-4", "2026-06-11T02:05:00+00:00"),
    ]


@pytest.mark.parametrize(
    ("signal", "fields"),
    [
        ("release", {}),
        ("contact_attempt", {"channel": "phone", "outcome": "reached"}),
    ],
)
def test_unclaimed_rejects_release_and_attempt(
    signal: str, fields: dict[str, str]
) -> None:
    ledger = new_ledger()
    before = obligations_snapshot(ledger)

    event_id = send(ledger, signal, "2026-06-10T14:00:00", **fields)

    assert obligations_snapshot(ledger) == before
    rejected = ledger.status()["rejected"]
    assert [entry["event_id"] for entry in rejected] == [event_id]
    assert "not claimed" in rejected[0]["reason"]


def test_claim_on_claimed_ticket_rejected() -> None:
    ledger = claimed_ledger()
    before = obligations_snapshot(ledger)

    event_id = send(ledger, "claim", "2026-06-10T14:10:00", tech=K7)

    assert obligations_snapshot(ledger) == before
    assert ledger.status()["tech_id"] == "K-4"
    rejected = ledger.status()["rejected"]
    assert [entry["event_id"] for entry in rejected] == [event_id]
    assert "already claimed" in rejected[0]["reason"]


# Rule 9: close


def test_close_cancels_everything_and_stops_mail() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    send(ledger, "customer_message", "2026-06-10T14:40:00", channel="email")
    attempt(ledger, "2026-06-10T14:50:00", "email", "no_answer")

    send(ledger, "close", "2026-06-10T15:10:00", reason="resolved")

    status = ledger.status()
    assert status["state"] == "closed"
    assert status["close_reason"] == "resolved"
    assert status["closed_at"] == "2026-06-10T15:10:00+00:00"
    assert [row for row in status["obligations"] if row["status"] == "open"] == []
    assert rows(ledger, "notes") == [
        ("K-4", "2026-06-11T02:30:00+00:00", "cancelled"),
        ("K-4", "2026-06-11T02:50:00+00:00", "cancelled"),
    ]
    # The 10:40 message stopped the first ladder. The 10:50 attempt began
    # another, which the close cancels.
    assert rows(ledger, "try_other_method") == [
        ("K-4", "2026-06-12T14:30:00+00:00", "cancelled"),
        ("K-4", "2026-06-12T14:50:00+00:00", "cancelled"),
    ]
    assert ledger.next_due() is None

    ledger.advance(utc("2026-06-30T00:00:00"))
    assert mails(ledger) == []


def test_events_after_close_rejected() -> None:
    ledger = claimed_ledger()
    send(ledger, "close", "2026-06-10T15:10:00", reason="duplicate")
    before = obligations_snapshot(ledger)

    ids = [
        send(ledger, "notes_updated", "2026-06-10T16:00:00"),
        send(ledger, "customer_message", "2026-06-10T16:00:00", channel="email"),
        send(ledger, "close", "2026-06-10T16:00:00", reason="resolved"),
        send(ledger, "reassign", "2026-06-10T16:00:00", tech=K7),
    ]

    assert obligations_snapshot(ledger) == before
    rejected = ledger.status()["rejected"]
    assert [entry["event_id"] for entry in rejected] == ids
    assert all("closed" in entry["reason"] for entry in rejected)
    assert ledger.status()["close_reason"] == "duplicate"


def test_manual_unreachable_close_sends_no_mail() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")

    send(ledger, "close", "2026-06-11T10:00:00", reason="unreachable")

    assert ledger.status()["close_reason"] == "unreachable"
    assert mails(ledger, "closed_unreachable") == []


# Rule 10: tickets a tech creates


def test_tech_created_ticket() -> None:
    ledger = new_ledger(source="tech_created", tech=K4)

    status = ledger.status()
    assert status["state"] == "claimed"
    assert status["tech_id"] == "K-4"
    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T13:00:00+00:00", "met")
    ]
    assert rows(ledger, "notes") == [("K-4", "2026-06-11T01:00:00+00:00", "open")]
    assert rows(ledger, "check_in") == []

    ledger.advance(utc("2026-06-12T00:00:00"))
    assert mails(ledger) == [
        ("notes_reminder", "tech", "K-4", "2026-06-10T23:00:00+00:00"),
        ("notes_breach", "ops", None, "2026-06-11T01:00:00+00:00"),
        ("notes_breach", "tech", "K-4", "2026-06-11T01:00:00+00:00"),
    ]


def test_tech_created_reassign_no_check_in() -> None:
    ledger = new_ledger(source="tech_created", tech=K4)

    send(ledger, "reassign", "2026-06-10T14:00:00", tech=K7)
    ledger.advance(utc("2026-06-12T00:00:00"))

    assert rows(ledger, "check_in") == []
    assert mails(ledger, "check_in") == []


def test_tech_created_reclaim_no_check_in() -> None:
    ledger = new_ledger(source="tech_created", tech=K4)
    send(ledger, "release", "2026-06-10T14:00:00")
    send(ledger, "claim", "2026-06-10T15:00:00", tech=K7)

    ledger.advance(utc("2026-06-12T00:00:00"))

    assert rows(ledger, "check_in") == []
    assert mails(ledger, "check_in") == []


def test_opening_with_tech_starts_claimed() -> None:
    ledger = new_ledger(tech=K4, claimed_at="2026-06-10T15:00:00")

    assert ledger.status()["state"] == "claimed"
    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T16:00:00+00:00", "open")
    ]
    assert rows(ledger, "check_in") == [
        ("service", "2026-06-10T18:00:00+00:00", "open")
    ]


def test_opening_with_tech_claims_at_opening() -> None:
    ledger = new_ledger(tech=K4)

    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T14:00:00+00:00", "open")
    ]


def test_opening_tech_claim_due_eight_hours() -> None:
    ledger = new_ledger(tech=K4, claimed_at="2026-06-10T15:00:00")

    assert rows(ledger, "claim") == [("ops", "2026-06-10T21:00:00+00:00", "met")]


# Rule 11: subscription customers


def subscription_ledger() -> TicketLedger:
    customer = {**CUSTOMER, "included_hours_per_month": 10}
    # Opened 08:00 local on March 31, 2027 (EDT), claimed 08:30 local.
    return claimed_ledger(
        "2027-03-31T12:30:00", opened_at="2027-03-31T12:00:00", customer=customer
    )


def test_subscription_message_opens_notes() -> None:
    ledger = subscription_ledger()

    send(ledger, "customer_message", "2027-03-31T13:00:00", channel="phone")

    assert rows(ledger, "notes") == [("K-4", "2027-04-01T01:00:00+00:00", "open")]
    assert rows(ledger, "reply") == [("K-4", "2027-04-01T13:00:00+00:00", "open")]


def test_subscription_message_unclaimed_notes_to_ops() -> None:
    customer = {**CUSTOMER, "included_hours_per_month": 10}
    ledger = new_ledger(customer=customer)

    send(ledger, "customer_message", "2026-06-10T13:30:00", channel="email")

    assert rows(ledger, "notes") == [("ops", "2026-06-11T01:30:00+00:00", "open")]


def test_plain_customer_message_opens_no_notes() -> None:
    ledger = claimed_ledger()

    send(ledger, "customer_message", "2026-06-10T15:00:00", channel="phone")

    assert rows(ledger, "notes") == []


def test_subscription_hours_count_to_local_month() -> None:
    ledger = subscription_ledger()

    # 22:30 local on March 31 is April 1 in UTC, but March's hours.
    event_id = send(ledger, "time_logged", "2027-04-01T02:30:00", hours=2.5)

    assert ledger.take_hours_requests() == [
        HoursInput(
            ticket_id="T-1001",
            event_id=event_id,
            customer_id="C-17",
            month="2027-03",
            hours=2.5,
            included_hours=10.0,
            logged_at="2027-04-01T02:30:00+00:00",
            warning_thresholds=[0.8, 1.0],
        )
    ]
    assert ledger.take_hours_requests() == []
    assert ledger.status()["hours_by_month"] == {"2027-03": 2.5}

    send(ledger, "time_logged", "2027-04-01T04:00:00", hours=1)
    assert [request.month for request in ledger.take_hours_requests()] == ["2027-04"]
    assert ledger.status()["hours_by_month"] == {"2027-03": 2.5, "2027-04": 1.0}


def test_plain_customer_hours_not_requested() -> None:
    ledger = claimed_ledger()

    send(ledger, "time_logged", "2026-06-10T15:00:00", hours=2)

    assert ledger.take_hours_requests() == []
    assert ledger.status()["hours_by_month"] == {"2026-06": 2.0}


def test_hours_warning_to_ops_and_tech() -> None:
    ledger = subscription_ledger()
    send(ledger, "time_logged", "2027-04-01T02:30:00", hours=2.5)
    (request,) = ledger.take_hours_requests()

    ledger.apply_hours_result(request, 8.5, [0.8], utc("2027-04-01T02:30:05"))

    assert mails(ledger, "hours_warning") == [
        ("hours_warning", "ops", None, "2027-04-01T02:30:05+00:00"),
        ("hours_warning", "tech", "K-4", "2027-04-01T02:30:05+00:00"),
    ]
    warning = next(
        n for n in ledger.pending_notifications() if n.kind == "hours_warning"
    )
    assert warning.hours_used == 8.5
    assert warning.hours_included == 10.0
    assert warning.month == "2027-03"


def test_hours_warning_per_threshold() -> None:
    ledger = subscription_ledger()
    send(ledger, "time_logged", "2027-04-01T02:30:00", hours=12)
    (request,) = ledger.take_hours_requests()

    ledger.apply_hours_result(request, 12.0, [0.8, 1.0], utc("2027-04-01T02:30:05"))

    assert len(mails(ledger, "hours_warning")) == 4


def test_hours_no_threshold_no_warning() -> None:
    ledger = subscription_ledger()
    send(ledger, "time_logged", "2027-04-01T02:30:00", hours=1)
    (request,) = ledger.take_hours_requests()

    ledger.apply_hours_result(request, 1.0, [], utc("2027-04-01T02:30:05"))

    assert mails(ledger, "hours_warning") == []


# Events: duplicates, times, rejections


def test_repeated_event_id_changes_nothing() -> None:
    ledger = new_ledger()
    send(ledger, "claim", "2026-06-10T14:00:00", tech=K4, event_id="e-claim")
    send(
        ledger,
        "customer_message",
        "2026-06-10T15:00:00",
        channel="email",
        event_id="e-msg",
    )
    before = ledger.status()

    send(ledger, "claim", "2026-06-10T16:00:00", tech=K7, event_id="e-claim")
    send(
        ledger,
        "customer_message",
        "2026-06-11T16:00:00",
        channel="email",
        event_id="e-msg",
    )

    assert ledger.status() == before
    assert ledger.status()["rejected"] == []


def test_event_too_far_ahead_rejected() -> None:
    ledger = claimed_ledger()
    before = obligations_snapshot(ledger)

    event_id = send(
        ledger,
        "contact_attempt",
        "2026-06-10T14:35:01",
        received="2026-06-10T14:30:00",
        channel="phone",
        outcome="reached",
    )

    assert obligations_snapshot(ledger) == before
    rejected = ledger.status()["rejected"]
    assert [entry["event_id"] for entry in rejected] == [event_id]
    assert "occurred_at" in rejected[0]["reason"]
    assert "future" in rejected[0]["reason"]


def test_event_five_minutes_ahead_counts_now() -> None:
    ledger = claimed_ledger()

    send(
        ledger,
        "contact_attempt",
        "2026-06-10T14:35:00",
        received="2026-06-10T14:30:00",
        channel="phone",
        outcome="reached",
    )

    assert ledger.status()["rejected"] == []
    assert rows(ledger, "notes") == [("K-4", "2026-06-11T02:30:00+00:00", "open")]


def test_event_before_opening_rejected() -> None:
    ledger = new_ledger()
    before = obligations_snapshot(ledger)

    event_id = send(
        ledger, "claim", "2026-06-10T12:59:59", received="2026-06-10T14:00:00", tech=K4
    )

    assert obligations_snapshot(ledger) == before
    rejected = ledger.status()["rejected"]
    assert [entry["event_id"] for entry in rejected] == [event_id]
    assert "before the ticket opened" in rejected[0]["reason"]
    assert ledger.status()["state"] == "unclaimed"


def test_event_at_opening_accepted() -> None:
    ledger = new_ledger()

    send(ledger, "claim", OPENED, received="2026-06-10T14:00:00", tech=K4)

    assert ledger.status()["rejected"] == []
    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T14:00:00+00:00", "open")
    ]


def test_event_without_occurred_at_uses_receipt() -> None:
    ledger = new_ledger()

    event = parse_event("claim", {"event_id": "e-now", "tech": K4})
    ledger.receive(event, utc("2026-06-10T14:00:00"))

    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T15:00:00+00:00", "open")
    ]


def test_late_event_counts_at_occurrence() -> None:
    # The attempt at 10:30 local reaches the ledger at 12:00 local, before
    # the ledger moved past the first-contact deadline.
    ledger = claimed_ledger()

    send(
        ledger,
        "contact_attempt",
        "2026-06-10T14:30:00",
        received="2026-06-10T16:00:00",
        channel="phone",
        outcome="no_answer",
    )
    ledger.advance(utc("2026-06-10T16:00:00"))

    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T15:00:00+00:00", "met")
    ]
    assert rows(ledger, "notes") == [("K-4", "2026-06-11T02:30:00+00:00", "open")]
    assert rows(ledger, "try_other_method") == [
        ("K-4", "2026-06-12T14:30:00+00:00", "open")
    ]
    assert mails(ledger, "first_contact_reminder", "first_contact_breach") == []


def test_late_event_settles_earlier_deadlines_first() -> None:
    # Opened 09:00 local. A claim made at 17:30 local arrives at 18:00 local.
    ledger = new_ledger()

    send(
        ledger, "claim", "2026-06-10T21:30:00", received="2026-06-10T22:00:00", tech=K4
    )

    assert rows(ledger, "claim") == [("ops", "2026-06-10T21:00:00+00:00", "breached")]
    assert mails(ledger) == [
        ("unclaimed_breach", "ops", None, "2026-06-10T21:00:00+00:00")
    ]
    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T22:30:00+00:00", "open")
    ]


def test_late_event_after_breach_keeps_breach() -> None:
    ledger = claimed_ledger()
    ledger.advance(utc("2026-06-10T15:00:00"))

    send(
        ledger,
        "contact_attempt",
        "2026-06-10T14:30:00",
        received="2026-06-10T15:30:00",
        channel="phone",
        outcome="reached",
    )

    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T15:00:00+00:00", "breached")
    ]
    assert rows(ledger, "notes") == [("K-4", "2026-06-11T02:30:00+00:00", "open")]


def test_out_of_order_reply_met() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T16:00:00", "email", "reached")

    # The customer wrote at 11:00 local. The message reaches the ledger after
    # the tech's 12:00 local attempt, which meets the reply.
    send(
        ledger,
        "customer_message",
        "2026-06-10T15:00:00",
        received="2026-06-10T16:30:00",
        channel="email",
    )

    assert rows(ledger, "reply") == [("K-4", "2026-06-11T15:00:00+00:00", "met")]


def test_out_of_order_ladder_kept() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T16:00:00", "phone", "no_answer")

    send(
        ledger,
        "customer_message",
        "2026-06-10T15:00:00",
        received="2026-06-10T16:30:00",
        channel="email",
    )

    assert rows(ledger, "try_other_method") == [
        ("K-4", "2026-06-12T16:00:00+00:00", "open")
    ]


def test_reject_records_reason() -> None:
    ledger = new_ledger()
    before = obligations_snapshot(ledger)

    ledger.reject("claim", None, "missing field 'tech'", utc("2026-06-10T14:00:00"))
    ledger.reject(
        "close", "e-bad", "invalid reason 'fixed'", utc("2026-06-10T14:01:00")
    )

    assert obligations_snapshot(ledger) == before
    assert ledger.status()["rejected"] == [
        {
            "event_id": None,
            "signal": "claim",
            "reason": "missing field 'tech'",
            "at": "2026-06-10T14:00:00+00:00",
        },
        {
            "event_id": "e-bad",
            "signal": "close",
            "reason": "invalid reason 'fixed'",
            "at": "2026-06-10T14:01:00+00:00",
        },
    ]
    record = ledger.take_record()
    assert record is not None
    rejected = [entry for entry in record.entries if entry.entry_type == "rejected"]
    assert [entry.details["event_id"] for entry in rejected] == [None, "e-bad"]


# Daylight saving: 24h and 12h deadlines are elapsed time


def test_reply_across_new_york_spring_forward() -> None:
    # Message at 12:00 EST on March 13, 2027: due 13:00 EDT on March 14.
    ledger = claimed_ledger("2027-03-13T16:00:00", opened_at="2027-03-13T15:00:00")

    send(ledger, "customer_message", "2027-03-13T17:00:00", channel="email")
    ledger.advance(utc("2027-03-14T17:00:00"))

    assert rows(ledger, "reply") == [("K-4", "2027-03-14T17:00:00+00:00", "breached")]
    assert mails(ledger, "reply_reminder", "reply_breach") == [
        ("reply_reminder", "tech", "K-4", "2027-03-14T13:00:00+00:00"),
        ("reply_breach", "ops", None, "2027-03-14T17:00:00+00:00"),
        ("reply_breach", "tech", "K-4", "2027-03-14T17:00:00+00:00"),
    ]


def test_notes_across_new_york_fall_back() -> None:
    # Attempt at 19:00 EDT on October 31, 2026: due 06:00 EST on November 1.
    ledger = claimed_ledger("2026-10-31T13:00:00", opened_at="2026-10-31T12:00:00")

    attempt(ledger, "2026-10-31T23:00:00", "phone", "reached")

    assert rows(ledger, "notes") == [("K-4", "2026-11-01T11:00:00+00:00", "open")]
    ledger.advance(utc("2026-11-01T11:00:00"))
    assert mails(ledger, "notes_reminder") == [
        ("notes_reminder", "tech", "K-4", "2026-11-01T09:00:00+00:00")
    ]


def test_claim_across_berlin_spring_forward() -> None:
    # Opened 23:00 CET on March 27, 2027: the claim is due 08:00 CEST.
    ledger = new_ledger("2027-03-27T22:00:00", zone=BERLIN)

    ledger.advance(utc("2027-03-28T06:00:00"))

    assert mails(ledger) == [
        ("unclaimed_breach", "ops", None, "2027-03-28T06:00:00+00:00")
    ]


def test_reply_across_berlin_fall_back() -> None:
    # Message at 12:00 CEST on October 24, 2026: due 11:00 CET on October 25.
    ledger = claimed_ledger(
        "2026-10-24T09:00:00", opened_at="2026-10-24T08:00:00", zone=BERLIN
    )

    send(ledger, "customer_message", "2026-10-24T10:00:00", channel="email")

    assert rows(ledger, "reply") == [("K-4", "2026-10-25T10:00:00+00:00", "open")]


@pytest.mark.parametrize(
    ("zone", "opened_at", "claimed_at", "first_contact", "check_in"),
    [
        # Claimed 23:00 EST on March 13, 2027: 09:00 and 11:00 EDT.
        (
            NEW_YORK,
            "2027-03-14T03:00:00",
            "2027-03-14T04:00:00",
            "2027-03-14T13:00:00+00:00",
            "2027-03-14T15:00:00+00:00",
        ),
        # Claimed 23:00 EDT on October 31, 2026: 09:00 and 11:00 EST.
        (
            NEW_YORK,
            "2026-11-01T02:00:00",
            "2026-11-01T03:00:00",
            "2026-11-01T14:00:00+00:00",
            "2026-11-01T16:00:00+00:00",
        ),
        # Claimed 23:00 CET on March 27, 2027: 09:00 and 11:00 CEST.
        (
            BERLIN,
            "2027-03-27T21:00:00",
            "2027-03-27T22:00:00",
            "2027-03-28T07:00:00+00:00",
            "2027-03-28T09:00:00+00:00",
        ),
        # Claimed 23:00 CEST on October 24, 2026: 09:00 and 11:00 CET.
        (
            BERLIN,
            "2026-10-24T20:00:00",
            "2026-10-24T21:00:00",
            "2026-10-25T08:00:00+00:00",
            "2026-10-25T10:00:00+00:00",
        ),
    ],
)
def test_quiet_claim_on_dst_night(
    zone: str, opened_at: str, claimed_at: str, first_contact: str, check_in: str
) -> None:
    ledger = claimed_ledger(claimed_at, opened_at=opened_at, zone=zone)

    assert rows(ledger, "first_contact") == [("K-4", first_contact, "open")]
    assert rows(ledger, "check_in") == [("service", check_in, "open")]


# An operator's own policy reaches the ledger


def test_custom_policy_durations() -> None:
    policy = Policy(
        claim_within=timedelta(hours=4),
        first_contact_within=timedelta(minutes=30),
        first_contact_reminder_before=timedelta(minutes=5),
        notes_within=timedelta(hours=6),
        notes_reminder_before=timedelta(hours=1),
        reply_within=timedelta(hours=8),
        reply_reminder_before=timedelta(hours=2),
        ladder_step=timedelta(hours=12),
    )
    ledger = new_ledger(policy=policy)
    assert rows(ledger, "claim") == [("ops", "2026-06-10T17:00:00+00:00", "open")]

    send(ledger, "claim", "2026-06-10T14:00:00", tech=K4)
    attempt(ledger, "2026-06-10T15:00:00", "phone", "no_answer")
    send(ledger, "customer_message", "2026-06-10T15:30:00", channel="email")

    assert rows(ledger, "first_contact") == [
        ("K-4", "2026-06-10T14:30:00+00:00", "breached")
    ]
    assert rows(ledger, "notes") == [("K-4", "2026-06-10T21:00:00+00:00", "open")]
    assert rows(ledger, "reply") == [("K-4", "2026-06-10T23:30:00+00:00", "open")]
    # The customer message stopped the ladder. The step was due at A0 + 2 steps.
    assert rows(ledger, "try_other_method") == [
        ("K-4", "2026-06-11T15:00:00+00:00", "cancelled")
    ]
    assert mails(ledger, "first_contact_reminder") == [
        ("first_contact_reminder", "tech", "K-4", "2026-06-10T14:25:00+00:00")
    ]


# Status, record, delivery and scheduling


def test_status_has_contract_shape() -> None:
    ledger = claimed_ledger()
    ledger.reject("close", "e-9", "invalid reason 'fixed'", utc("2026-06-10T14:05:00"))
    ledger.advance(utc("2026-06-10T17:00:00"))

    status = ledger.status()

    for key in (
        "ticket_id",
        "state",
        "tech_id",
        "priority",
        "obligations",
        "notifications",
        "rejected",
    ):
        assert key in status
    assert status["ticket_id"] == "T-1001"
    assert status["state"] == "claimed"
    assert status["tech_id"] == "K-4"
    assert status["priority"] == "normal"
    first = status["obligations"][0]
    assert {"kind", "owner", "due_at", "status"} <= set(first)
    assert first["kind"] == "claim"
    assert first["status"] in ("open", "met", "breached", "cancelled")
    mail = status["notifications"][0]
    assert {"kind", "to", "at"} <= set(mail)
    assert mail == {
        **mail,
        "kind": "first_contact_reminder",
        "to": "tech",
        "at": "2026-06-10T14:45:00+00:00",
    }
    assert {"event_id", "reason"} <= set(status["rejected"][0])
    for row in status["obligations"]:
        assert row["due_at"].endswith("+00:00")
        assert datetime.fromisoformat(row["due_at"]).utcoffset() == timedelta(0)
    for row in status["notifications"]:
        assert row["at"].endswith("+00:00")


def test_status_unclaimed_has_no_tech() -> None:
    status = new_ledger(priority="emergency").status()

    assert status["state"] == "unclaimed"
    assert status["tech_id"] is None
    assert status["priority"] == "emergency"
    assert status["notifications"] == []
    assert status["rejected"] == []


def test_obligation_kinds_are_contract_kinds() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    send(ledger, "customer_message", "2026-06-10T15:00:00", channel="email")
    attempt(ledger, "2026-06-10T15:30:00", "phone", "no_answer")
    attempt(ledger, "2026-06-10T16:00:00", "email", "no_answer")
    attempt(ledger, "2026-06-12T17:00:00", "phone", "no_answer")
    attempt(ledger, "2026-06-12T18:00:00", "email", "no_answer")

    kinds = {row["kind"] for row in ledger.status()["obligations"]}

    assert kinds == {
        "claim",
        "first_contact",
        "check_in",
        "notes",
        "reply",
        "try_other_method",
        "try_all_methods",
        "close_unreachable",
    }


def test_take_record_numbers_entries() -> None:
    ledger = new_ledger()

    first = ledger.take_record()
    assert first is not None
    assert first.ticket_id == "T-1001"
    assert first.state == "unclaimed"
    assert first.opened_at == "2026-06-10T13:00:00+00:00"
    assert first.timezone == NEW_YORK
    assert [entry.sequence for entry in first.entries] == [1, 2]
    assert first.entries[0].entry_type == "event"
    assert first.entries[0].details == {
        "event": "opened",
        "source": "portal",
        "policy_changes": {},
    }
    assert first.entries[1].entry_type == "obligation"
    assert first.entries[1].details["kind"] == "claim"
    assert ledger.take_record() is None

    send(ledger, "claim", "2026-06-10T14:00:00", tech=K4, event_id="e-claim")
    second = ledger.take_record()
    assert second is not None
    assert second.state == "claimed"
    assert second.entries[0].sequence == 3
    assert second.entries[0].details == {
        "event": "claim",
        "event_id": "e-claim",
        "tech_id": "K-4",
    }
    assert second.entries[0].at == "2026-06-10T14:00:00+00:00"


def test_mark_delivered_clears_pending() -> None:
    ledger = new_ledger()
    ledger.advance(utc("2026-06-10T21:00:00"))
    (pending,) = ledger.pending_notifications()
    assert pending.sequence == 1
    assert pending.kind == "unclaimed_breach"
    assert pending.timezone == NEW_YORK
    assert pending.owed_kind == "claim"
    assert pending.owed_due_at == "2026-06-10T21:00:00+00:00"

    ledger.mark_delivered(
        1,
        NotificationResult(status="sent", message_id="<m1@x>"),
        utc("2026-06-10T21:00:02"),
    )

    assert ledger.pending_notifications() == []
    assert ledger.status()["notifications"][0]["status"] == "sent"
    assert ledger.status()["notifications"][0]["message_id"] == "<m1@x>"


def test_next_due_reports_earliest() -> None:
    ledger = new_ledger()
    when, obligation, is_reminder = ledger.next_due() or (None, None, None)
    assert when == utc("2026-06-10T21:00:00")
    assert obligation is not None and obligation.kind == "claim"
    assert is_reminder is False

    send(ledger, "claim", "2026-06-10T14:00:00", tech=K4)
    when, obligation, is_reminder = ledger.next_due() or (None, None, None)
    assert when == utc("2026-06-10T14:45:00")
    assert obligation is not None and obligation.kind == "first_contact"
    assert is_reminder is True


def test_check_in_names_owed_contact() -> None:
    ledger = claimed_ledger("2026-06-11T03:45:00", opened_at="2026-06-10T23:30:00")
    ledger.advance(utc("2026-06-11T12:00:00"))
    attempt(ledger, "2026-06-11T12:10:00", "phone", "no_answer")
    # K-4 made first contact, and K-7 owes a new one, due 11:30 local.
    send(ledger, "reassign", "2026-06-11T14:30:00", tech=K7)

    ledger.advance(utc("2026-06-11T15:00:00"))

    (check_in,) = [n for n in ledger.pending_notifications() if n.kind == "check_in"]
    assert check_in.recipient is not None
    assert check_in.recipient.id == "C-17"
    assert check_in.owed_kind == "first_contact"
    assert check_in.owed_due_at == "2026-06-11T15:30:00+00:00"


# Checking an event without applying it (Update validators)


def event_of(signal: str, at: str, event_id: str = "e-check", **fields: Any) -> Event:
    payload = {"event_id": event_id, "occurred_at": utc(at).isoformat(), **fields}
    return parse_event(signal, payload)


@pytest.mark.parametrize(
    ("signal", "fields", "reason"),
    [
        ("claim", {"tech": K7}, "already claimed by K-4; send reassign to move it"),
        ("reassign", {"tech": K4}, "ticket is already assigned to K-4"),
    ],
)
def test_check_rejects_like_receive(
    signal: str, fields: dict[str, Any], reason: str
) -> None:
    ledger = claimed_ledger()
    event = event_of(signal, "2026-06-10T14:10:00", **fields)
    before = ledger.status()

    with pytest.raises(InvalidEvent) as raised:
        ledger.check(event, utc("2026-06-10T14:10:00"))

    assert reason in str(raised.value)
    assert ledger.status() == before
    ledger.receive(event, utc("2026-06-10T14:10:00"))
    assert [r["reason"] for r in ledger.status()["rejected"]] == [str(raised.value)]


@pytest.mark.parametrize("signal", ["release", "contact_attempt"])
def test_check_rejects_unclaimed(signal: str) -> None:
    ledger = new_ledger()
    event = event_of(signal, "2026-06-10T14:00:00", channel="phone", outcome="reached")

    with pytest.raises(InvalidEvent, match="is not claimed; claim it first"):
        ledger.check(event, utc("2026-06-10T14:00:00"))


@pytest.mark.parametrize(
    ("occurred", "reason"),
    [
        ("2026-06-10T12:59:59", "before the ticket opened"),
        ("2026-06-10T14:05:01", "more than 5 minutes in the future"),
    ],
)
def test_check_rejects_time_out_of_range(occurred: str, reason: str) -> None:
    ledger = claimed_ledger()
    event = event_of("notes_updated", occurred)

    with pytest.raises(InvalidEvent, match=reason):
        ledger.check(event, utc("2026-06-10T14:00:00"))


def test_check_accepts_without_changing_anything() -> None:
    ledger = claimed_ledger()
    event = event_of(
        "contact_attempt", "2026-06-10T14:30:00", channel="phone", outcome="reached"
    )
    before = ledger.status()
    record_before = ledger.take_record()

    ledger.check(event, utc("2026-06-10T14:30:00"))

    assert ledger.status() == before
    assert ledger.take_record() is None
    assert record_before is not None


def test_check_passes_repeated_event_id() -> None:
    ledger = new_ledger()
    send(ledger, "claim", "2026-06-10T14:00:00", event_id="e-claim", tech=K4)
    repeated = event_of("claim", "2026-06-10T14:10:00", "e-claim", tech=K7)

    ledger.check(repeated, utc("2026-06-10T14:10:00"))

    assert ledger.receive(repeated, utc("2026-06-10T14:10:00")) is None
    assert ledger.status()["tech_id"] == "K-4"


def test_check_closed_ticket_raises_closed() -> None:
    ledger = claimed_ledger()
    send(ledger, "close", "2026-06-10T14:10:00", reason="resolved")

    with pytest.raises(TicketClosed, match="ticket T-1001 is closed"):
        ledger.check(
            event_of("notes_updated", "2026-06-10T14:20:00"), utc("2026-06-10T14:20:00")
        )


def test_check_foresees_ladder_closing() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    attempt(ledger, "2026-06-11T16:00:00", "email", "no_answer")
    ledger.advance(utc("2026-06-12T16:00:00"))
    attempt(ledger, "2026-06-12T17:00:00", "phone", "no_answer")
    attempt(ledger, "2026-06-12T18:00:00", "email", "no_answer")
    # The ladder closes the ticket at 18:00 UTC on June 13, and the ledger has
    # not been advanced there yet.
    late = event_of("notes_updated", "2026-06-13T18:00:01")

    with pytest.raises(TicketClosed):
        ledger.check(late, utc("2026-06-13T18:00:01"))
    ledger.check(
        event_of("notes_updated", "2026-06-13T18:00:00"), utc("2026-06-13T18:00:00")
    )
    rejection = ledger.receive(late, utc("2026-06-13T18:00:01"))
    assert isinstance(rejection, TicketClosed)
    # The rejection settles nothing; the workflow advances the ledger next.
    assert ledger.status()["state"] == "claimed"
    ledger.advance(utc("2026-06-13T18:00:01"))
    assert ledger.status()["state"] == "closed"


def test_receive_returns_rejection() -> None:
    ledger = new_ledger()
    rejection = ledger.receive(
        event_of("release", "2026-06-10T14:00:00"), utc("2026-06-10T14:00:00")
    )

    assert isinstance(rejection, InvalidEvent)
    assert ledger.status()["rejected"][0]["reason"] == str(rejection)


def test_recent_events_keep_latest_five() -> None:
    ledger = claimed_ledger()
    for minute in range(10, 16):
        send(ledger, "notes_updated", f"2026-06-10T14:{minute}:00")

    kinds = [(at, details["event"]) for at, details in ledger.recent_events]
    assert kinds == [
        (utc(f"2026-06-10T14:{minute}:00"), "notes_updated") for minute in range(11, 16)
    ]


# What the UI and list queries show of the ledger


def test_details_show_each_ladder_step() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    step_one = current_details(ledger)
    attempt(ledger, "2026-06-11T16:00:00", "email", "no_answer")
    step_two = current_details(ledger)
    ledger.advance(utc("2026-06-12T16:00:00"))
    attempt(ledger, "2026-06-12T17:00:00", "phone", "no_answer")
    attempt(ledger, "2026-06-12T18:00:00", "email", "message_left")
    step_three = current_details(ledger)

    started = "started Wed 2026-06-10 10:30 EDT"
    assert (
        "**Unreachable ladder**: step 1 of 3, try another method; "
        "prompt Thu 2026-06-11 10:30 EDT, due Fri 2026-06-12 10:30 EDT "
        f"({started}; tried phone)"
    ) in step_one
    assert (
        "**Unreachable ladder**: step 2 of 3, try every method on file; "
        "prompt Fri 2026-06-12 12:00 EDT, due Sat 2026-06-13 12:00 EDT "
        f"({started}; tried email, phone)"
    ) in step_two
    assert (
        "**Unreachable ladder**: step 3 of 3, the ticket closes as unreachable "
        f"at Sat 2026-06-13 14:00 EDT ({started}; tried email, phone)"
    ) in step_three


def test_details_show_overdue_step_and_close() -> None:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    ledger.advance(utc("2026-06-12T15:00:00"))
    overdue = current_details(ledger)
    send(ledger, "close", "2026-06-12T15:10:00", reason="cancelled")

    assert "overdue since Fri 2026-06-12 10:30 EDT" in overdue
    assert current_details(ledger).splitlines()[0] == (
        "**T-1001**: closed as cancelled, normal, K-4; times in America/New_York"
    )
    assert "Nothing open." in current_details(ledger)


def test_search_values_follow_ledger() -> None:
    ledger = new_ledger(priority="high")
    opened = ticket_search_values(ledger)
    send(ledger, "claim", "2026-06-10T14:00:00", tech=K4)
    ledger.advance(utc("2026-06-10T15:30:00"))
    breached = ticket_search_values(ledger)

    assert opened == {
        "TechId": None,
        "TicketState": "unclaimed",
        "TicketPriority": "high",
        "NextDueAt": utc("2026-06-10T21:00:00"),
        "NextDueKind": "claim",
        "BreachCount": 0,
        "LastBreachAt": None,
        "CustomerTimezone": NEW_YORK,
    }
    assert breached == {
        **opened,
        "TechId": "K-4",
        "TicketState": "claimed",
        "NextDueAt": utc("2026-06-10T17:00:00"),
        "NextDueKind": "check_in",
        "BreachCount": 1,
        "LastBreachAt": utc("2026-06-10T15:00:00"),
    }


def test_search_updates_only_changed_values() -> None:
    previous = {"TechId": "K-4", "TicketState": "claimed", "NextDueKind": "notes"}
    current = {"TechId": "K-4", "TicketState": "closed", "NextDueKind": None}

    updates = search_attribute_updates(previous, current)

    assert [(u.key.name, u.value) for u in updates] == [
        ("TicketState", "closed"),
        ("NextDueKind", None),
    ]
    assert search_attribute_updates(current, current) == []


def test_summary_names_ids_not_contacts() -> None:
    opening = {
        "ticket_id": "T-1001",
        "opened_at": "2026-06-10T13:00:00+00:00",
        "priority": "emergency",
        "source": "tech_created",
        "customer": {**CUSTOMER, "included_hours_per_month": 10},
        "tech": K4,
    }

    summary, details = ticket_summary(opening)

    assert summary == "Ticket T-1001: emergency, opened Wed 2026-06-10 09:00 EDT"
    assert details.splitlines() == [
        "**Ticket T-1001**",
        "",
        "- priority: emergency",
        "- source: tech_created",
        "- opened: Wed 2026-06-10 09:00 EDT (2026-06-10T13:00:00+00:00)",
        "- customer: C-17",
        "- time zone: America/New_York",
        "- subscription: 10 hours a month",
        "- claimed at start by K-4 at Wed 2026-06-10 09:00 EDT",
    ]


def test_summary_without_zone_reads_utc() -> None:
    customer = {key: value for key, value in CUSTOMER.items() if key != "timezone"}
    opening = {
        "ticket_id": "T-1002",
        "opened_at": "2026-06-10T13:00:00+00:00",
        "customer": customer,
    }

    summary, details = ticket_summary(opening)

    assert summary == "Ticket T-1002: normal, opened Wed 2026-06-10 13:00 UTC"
    assert "- time zone: the service default" in details.splitlines()


def test_summary_rejects_invalid_opening() -> None:
    with pytest.raises(InvalidEvent, match="invalid priority 'urgent'"):
        ticket_summary(
            {
                "ticket_id": "T-1003",
                "opened_at": utc(OPENED).isoformat(),
                "priority": "urgent",
                "customer": CUSTOMER,
            }
        )


# Snapshot for continue-as-new


def released_ledger() -> TicketLedger:
    ledger = claimed_ledger()
    send(ledger, "customer_message", "2026-06-10T14:30:00", channel="email")
    send(ledger, "release", "2026-06-10T15:00:00", reason="wrong team")
    return ledger


def reassigned_ledger() -> TicketLedger:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    send(ledger, "customer_message", "2026-06-10T14:40:00", channel="email")
    attempt(ledger, "2026-06-10T14:50:00", "phone", "no_answer")
    send(ledger, "reassign", "2026-06-10T15:00:00", tech=K7, reason="shift end")
    return ledger


def ladder_started_ledger() -> TicketLedger:
    ledger = claimed_ledger()
    attempt(ledger, "2026-06-10T14:30:00", "phone", "no_answer")
    return ledger


def ladder_prompted_ledger() -> TicketLedger:
    """A ladder past step one whose try-all prompt went out and one method is done."""
    ledger = ladder_started_ledger()
    attempt(ledger, "2026-06-11T13:00:00", "email", "no_answer")
    ledger.advance(utc("2026-06-12T14:30:00"))
    attempt(ledger, "2026-06-12T15:00:00", "sms", "no_answer")
    return ledger


def ladder_closing_ledger() -> TicketLedger:
    ledger = ladder_prompted_ledger()
    attempt(ledger, "2026-06-12T15:10:00", "email", "message_left")
    return ledger


def delivered_ledger() -> TicketLedger:
    """A ledger with one mail delivered, one failed and one still pending."""
    ledger = claimed_ledger()
    ledger.advance(utc("2026-06-10T15:00:00"))
    ledger.mark_delivered(
        1,
        NotificationResult(status="sent", message_id="<m1@x>"),
        utc("2026-06-10T14:45:01"),
    )
    ledger.mark_delivered(
        2,
        NotificationResult(
            status="failed", message_id="<m2@x>", detail="550 no such user"
        ),
        utc("2026-06-10T15:00:01"),
    )
    return ledger


def hours_pending_ledger() -> TicketLedger:
    """A subscription ledger with an hours request and a warning not yet sent."""
    ledger = subscription_ledger()
    send(ledger, "time_logged", "2027-04-01T02:30:00", hours=9)
    (request,) = ledger.take_hours_requests()
    ledger.apply_hours_result(request, 9.0, [0.8], utc("2027-04-01T02:30:05"))
    send(ledger, "time_logged", "2027-04-01T03:00:00", hours=2)
    return ledger


def rejected_ledger() -> TicketLedger:
    ledger = claimed_ledger()
    send(ledger, "claim", "2026-06-10T14:10:00", tech=K7)
    ledger.reject(
        "close", "e-bad", "invalid reason 'fixed'", utc("2026-06-10T14:20:00")
    )
    return ledger


def closed_ledger() -> TicketLedger:
    ledger = ladder_started_ledger()
    send(ledger, "close", "2026-06-10T16:00:00", reason="resolved")
    return ledger


def custom_policy_ledger() -> TicketLedger:
    policy = Policy(
        claim_within=timedelta(hours=2),
        notes_within=timedelta(hours=6, minutes=30),
        quiet_starts=time(21, 30),
        quiet_ends=time(7, 15),
        first_contact_channels=frozenset({"phone", "email", "sms"}),
        hours_warning_thresholds=(0.5, 0.9, 1.0),
        method_channels={"phone": frozenset({"phone"}), "email": frozenset({"email"})},
    )
    return claimed_ledger(policy=policy, zone=BERLIN)


def late_reminders_skipped_ledger() -> TicketLedger:
    ledger = claimed_ledger()
    ledger.skip_late_reminders = True
    ledger.advance(utc("2026-06-10T16:00:00"))
    return ledger


SNAPSHOT_CASES: dict[str, Callable[[], TicketLedger]] = {
    "unclaimed": new_ledger,
    "claimed": claimed_ledger,
    "opened_with_tech": lambda: new_ledger(tech=K4, claimed_at=OPENED),
    "tech_created": lambda: new_ledger(source="tech_created", tech=K4),
    "urgent": lambda: claimed_ledger(priority="emergency"),
    "released": released_ledger,
    "reassigned": reassigned_ledger,
    "ladder_started": ladder_started_ledger,
    "ladder_prompted": ladder_prompted_ledger,
    "ladder_closing": ladder_closing_ledger,
    "mail_delivered": delivered_ledger,
    "hours_pending": hours_pending_ledger,
    "rejected": rejected_ledger,
    "closed": closed_ledger,
    "custom_policy": custom_policy_ledger,
    "late_reminders_skipped": late_reminders_skipped_ledger,
}


def restored(ledger: TicketLedger) -> TicketLedger:
    """Return a ledger rebuilt from the snapshot after a trip through JSON text."""
    snapshot = json.loads(json.dumps(ledger.to_snapshot()))
    return TicketLedger.from_snapshot(snapshot)


@pytest.mark.parametrize("case", SNAPSHOT_CASES)
def test_snapshot_round_trip_keeps_state(case: str) -> None:
    ledger = SNAPSHOT_CASES[case]()

    copy = restored(ledger)

    assert copy.status() == ledger.status()
    # Every attribute, including unsent mail, unstored record entries, the
    # policy, the seen event ids and the recent events.
    assert vars(copy).keys() == vars(ledger).keys()
    for name, value in vars(ledger).items():
        assert vars(copy)[name] == value, name
    assert copy.to_snapshot() == ledger.to_snapshot()


@pytest.mark.parametrize("case", SNAPSHOT_CASES)
def test_snapshot_keeps_shared_obligations(case: str) -> None:
    copy = restored(SNAPSHOT_CASES[case]())

    # The ladder steps and the check-in are obligations of the list, so a
    # change to one shows in the other.
    if copy.check_in is not None:
        assert copy.check_in is copy.obligations[copy.check_in.sequence - 1]
    if copy.ladder is not None:
        for step in copy.ladder.obligations():
            assert step is copy.obligations[step.sequence - 1]


def next_events(ledger: TicketLedger) -> None:
    """Feed the same events and times to a ledger, whatever state it is in."""
    send(
        ledger, "customer_message", "2027-05-03T14:00:00", event_id="n-1", channel="sms"
    )
    send(ledger, "claim", "2027-05-03T14:10:00", event_id="n-2", tech=K7)
    attempt_id = "n-3"
    send(
        ledger,
        "contact_attempt",
        "2027-05-03T14:20:00",
        event_id=attempt_id,
        channel="phone",
        outcome="no_answer",
    )
    send(ledger, "time_logged", "2027-05-03T14:30:00", event_id="n-4", hours=3)

    ledger.advance(utc("2027-05-04T15:00:00"))
    send(
        ledger,
        "contact_attempt",
        "2027-05-04T15:00:00",
        event_id="n-5",
        channel="email",
        outcome="message_left",
    )
    send(ledger, "notes_updated", "2027-05-04T15:05:00", event_id="n-6")

    # A repeated id changes nothing, on the original and on the copy alike.
    send(
        ledger,
        "contact_attempt",
        "2027-05-04T15:10:00",
        event_id=attempt_id,
        channel="phone",
        outcome="reached",
    )

    ledger.advance(utc("2027-05-09T12:00:00"))


@pytest.mark.parametrize("case", SNAPSHOT_CASES)
def test_snapshot_copy_reacts_like_original(case: str) -> None:
    ledger = SNAPSHOT_CASES[case]()
    copy = restored(ledger)

    next_events(ledger)
    next_events(copy)

    assert copy.status() == ledger.status()
    assert copy.pending_notifications() == ledger.pending_notifications()
    assert copy.take_hours_requests() == ledger.take_hours_requests()
    assert copy.take_record() == ledger.take_record()
    assert copy.next_due() == ledger.next_due()


def test_snapshot_copy_reacts_to_mail_results() -> None:
    ledger = delivered_ledger()
    ledger.advance(utc("2026-06-10T17:00:00"))
    copy = restored(ledger)
    # The breach mail to the tech and the check-in are still unsent.
    pending = [n.sequence for n in ledger.pending_notifications()]
    assert pending == [3, 4]

    for twin in (ledger, copy):
        twin.mark_delivered(
            3,
            NotificationResult(status="already_sent", message_id="<m3@x>"),
            utc("2026-06-10T17:00:02"),
        )
        twin.mark_delivered(
            4,
            NotificationResult(status="sent", message_id="<m4@x>"),
            utc("2026-06-10T17:00:03"),
        )

    assert copy.pending_notifications() == []
    assert copy.status() == ledger.status()
    assert copy.take_record() == ledger.take_record()


def test_snapshot_is_plain_json() -> None:
    snapshot = ladder_prompted_ledger().to_snapshot()

    assert json.loads(json.dumps(snapshot)) == snapshot
    assert snapshot["version"] == 1
    assert snapshot["zone_name"] == NEW_YORK
    assert snapshot["ladder"]["covered_methods"] == ["phone"]


def test_snapshot_keeps_seen_ids_sorted() -> None:
    ledger = new_ledger()
    for event_id in ("e-c", "e-a", "e-b"):
        send(ledger, "time_logged", "2026-06-10T13:30:00", event_id=event_id, hours=1)

    assert ledger.to_snapshot()["seen_event_ids"] == ["e-a", "e-b", "e-c"]
    assert ledger.status()["events_applied"] == 3


def test_snapshot_other_version_rejected() -> None:
    snapshot = claimed_ledger().to_snapshot()
    snapshot["version"] = 2

    with pytest.raises(ValueError, match="unsupported ledger snapshot version 2"):
        TicketLedger.from_snapshot(snapshot)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"obligations": []}, "no obligation 3 among 0"),
        ({"opened_at_naive": True}, "has no UTC offset"),
        ({"policy": "8h"}, "policy must be a JSON object"),
        ({"state": "open"}, "invalid state 'open'"),
    ],
)
def test_snapshot_malformed_rejected(change: dict[str, Any], reason: str) -> None:
    snapshot = claimed_ledger().to_snapshot()
    if change.pop("opened_at_naive", False):
        snapshot["opening"]["opened_at"] = "2026-06-10T13:00:00"
    snapshot.update(change)

    with pytest.raises(ValueError, match=reason):
        TicketLedger.from_snapshot(snapshot)


def test_status_counts_applied_events_once() -> None:
    ledger = new_ledger()
    # Rejected because no tech has claimed the ticket yet.
    attempt(ledger, "2026-06-10T13:50:00", "phone", "reached")
    send(ledger, "claim", "2026-06-10T14:00:00", tech=K4, event_id="e-claim")
    send(ledger, "claim", "2026-06-10T14:00:00", tech=K4, event_id="e-claim")

    assert len(ledger.rejected) == 1
    assert ledger.status()["events_applied"] == 1
