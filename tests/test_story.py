"""A ticket's story, read back from the database, matches what happened.

The tickets run through the ledger, and each batch of record entries goes
through ``Store.record`` exactly as the ticket workflow stores it. Mail is
written to sent_mail with ``Store.record_mail`` as the mailer writes it, at
the time the mail fell due, so every expected time below is exact.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import async_playwright

import starter
from activities.mailer import failure_report_id, message_id_for
from activities.store import Store, open_store
from reports.story import (
    CSV_COLUMNS,
    TicketStory,
    load_story,
    render_html,
    render_text,
    write_csv,
)
from tests.test_browser import CHROMIUM_FLAGS, chromium_path
from workflows.events import parse_event, parse_opening
from workflows.ledger import TicketLedger
from workflows.model import NotificationInput, NotificationResult

NEW_YORK = "America/New_York"
MAIL_DOMAIN = "ticket-guard.localhost"
OPS_ADDRESS = "ops@ticket-guard.localhost"
TICKET_ID = "T-STORY-1"
BOUNCE = "550 5.1.1 mailbox unavailable"

CUSTOMER = {
    "id": "C-17",
    "name": "Dana Reyes",
    "email": "dana@customers.example",
    "phone": "+1 555 0100",
    "timezone": NEW_YORK,
}
KIM = {"id": "K-4", "name": "Kim Lee", "email": "kim@techs.example"}
RAVI = {"id": "K-7", "name": "Ravi Patel", "email": "ravi@techs.example"}


def utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 6, day, hour, minute, tzinfo=UTC)


Outcome = Callable[[NotificationInput], tuple[str, str | None]]


def all_sent(_notification: NotificationInput) -> tuple[str, str | None]:
    return "sent", None


class TicketRun:
    """Drives a ticket's ledger and stores its record and mail as the workflow does.

    After each event or timer the workflow stores the new record entries, sends
    the mail that fell due, marks it delivered and stores the record again.
    """

    def __init__(
        self, store: Store, opening: dict[str, Any], outcome: Outcome = all_sent
    ) -> None:
        self.store = store
        self.outcome = outcome
        self.ledger = TicketLedger(parse_opening(opening), NEW_YORK)
        self.ledger.skip_late_reminders = True
        self._deliver(datetime.fromisoformat(opening["opened_at"]))

    def send(self, signal: str, at: datetime, **fields: Any) -> None:
        self.ledger.receive(parse_event(signal, fields), at)
        self.ledger.advance(at)
        self._deliver(at)

    def wake(self, at: datetime) -> None:
        self.ledger.advance(at)
        self._deliver(at)

    def _deliver(self, at: datetime) -> None:
        self._store_record()
        for notification in self.ledger.pending_notifications():
            message_id = message_id_for(notification, MAIL_DOMAIN)
            status, detail = self.outcome(notification)
            recipient = (
                OPS_ADDRESS
                if notification.role == "ops"
                else notification.recipient.email
                if notification.recipient is not None
                else None
            )
            self.store.record_mail(
                message_id=message_id,
                ticket_id=notification.ticket_id,
                kind=notification.kind,
                role=notification.role,
                recipient=recipient,
                status=status,
                detail=detail,
                at=at,
            )
            if status == "failed" and notification.role != "ops":
                # The mailer reports a mail it could not deliver to ops.
                self.store.record_mail(
                    message_id=failure_report_id(message_id),
                    ticket_id=notification.ticket_id,
                    kind="delivery_failure",
                    role="ops",
                    recipient=OPS_ADDRESS,
                    status="sent",
                    at=at,
                )
            result = NotificationResult(status, message_id, detail)
            self.ledger.mark_delivered(notification.sequence, result, at)
        self._store_record()

    def _store_record(self) -> None:
        record = self.ledger.take_record()
        if record is not None:
            self.store.record(record)


def bounce_first_breach_to_tech(
    notification: NotificationInput,
) -> tuple[str, str | None]:
    if notification.kind == "first_contact_breach" and notification.role == "tech":
        return "failed", BOUNCE
    return "sent", None


def run_story_ticket(store: Store) -> None:
    """Run the ticket that the expected rows below describe.

    Wednesday 2026-06-10, New York (EDT, UTC-4). Kim claims at 09:30, misses
    first contact (due 10:30), calls at 10:50 without reaching the customer,
    updates notes at 13:00, and hands the ticket to Ravi at 13:30. The
    customer writes at 14:00, and Ravi reaches them by mail at 14:20 and
    closes the ticket at 15:30. A backdated event is rejected at 14:10.
    """
    run = TicketRun(
        store,
        {
            "ticket_id": TICKET_ID,
            "opened_at": utc(10, 13).isoformat(),
            "priority": "normal",
            "source": "portal",
            "customer": CUSTOMER,
        },
        outcome=bounce_first_breach_to_tech,
    )
    run.send("claim", utc(10, 13, 30), event_id="e-claim", tech=KIM)
    run.wake(utc(10, 14, 15))
    run.wake(utc(10, 14, 30))
    run.send(
        "contact_attempt",
        utc(10, 14, 50),
        event_id="e-call",
        channel="phone",
        outcome="no_answer",
    )
    run.wake(utc(10, 16, 30))
    run.send("notes_updated", utc(10, 17), event_id="e-notes")
    run.send(
        "reassign", utc(10, 17, 30), event_id="e-move", tech=RAVI, reason="shift change"
    )
    run.send("customer_message", utc(10, 18), event_id="e-msg", channel="email")
    run.send(
        "notes_updated",
        utc(10, 18, 10),
        event_id="e-early",
        occurred_at=utc(10, 12).isoformat(),
    )
    run.wake(utc(10, 18, 15))
    run.send(
        "contact_attempt",
        utc(10, 18, 20),
        event_id="e-mail",
        channel="email",
        outcome="reached",
    )
    run.send("close", utc(10, 19, 30), event_id="e-close", reason="resolved")


# (time, event, who, channel, outcome, event_id), local times
EXPECTED_EVENTS = [
    ("Wed 2026-06-10 09:00 EDT", "opened", "C-17", None, None, None),
    ("Wed 2026-06-10 09:30 EDT", "claim", "K-4", None, None, "e-claim"),
    ("Wed 2026-06-10 10:50 EDT", "contact_attempt", "K-4", "phone", "no_answer",
     "e-call"),
    ("Wed 2026-06-10 13:00 EDT", "notes_updated", "K-4", None, None, "e-notes"),
    ("Wed 2026-06-10 13:30 EDT", "reassign", "K-7", None, None, "e-move"),
    ("Wed 2026-06-10 14:00 EDT", "customer_message", "C-17", "email", None, "e-msg"),
    ("Wed 2026-06-10 14:20 EDT", "contact_attempt", "K-7", "email", "reached",
     "e-mail"),
    ("Wed 2026-06-10 15:30 EDT", "close", "K-7", None, None, "e-close"),
]  # fmt: skip

# (number, kind, owner, earlier owners, opened, due, status, ended, by, through)
EXPECTED_OBLIGATIONS = [
    (1, "claim", "ops", (), "Wed 2026-06-10 09:00 EDT", "Wed 2026-06-10 17:00 EDT",
     "met", "Wed 2026-06-10 09:30 EDT", "K-4", "claim"),
    (2, "first_contact", "K-4", (), "Wed 2026-06-10 09:30 EDT",
     "Wed 2026-06-10 10:30 EDT", "breached", "Wed 2026-06-10 10:30 EDT", None,
     "due time passed"),
    (3, "check_in", "service", (), "Wed 2026-06-10 09:30 EDT",
     "Wed 2026-06-10 12:30 EDT", "met", "Wed 2026-06-10 12:30 EDT", "service", None),
    (4, "notes", "K-4", (), "Wed 2026-06-10 10:50 EDT", "Wed 2026-06-10 22:50 EDT",
     "met", "Wed 2026-06-10 13:00 EDT", "K-4", "notes_updated"),
    (5, "try_other_method", "K-7", ("K-4",), "Wed 2026-06-10 10:50 EDT",
     "Fri 2026-06-12 10:50 EDT", "cancelled", "Wed 2026-06-10 14:00 EDT", "C-17",
     "customer_message"),
    (6, "first_contact", "K-7", (), "Wed 2026-06-10 13:30 EDT",
     "Wed 2026-06-10 14:30 EDT", "met", "Wed 2026-06-10 14:20 EDT", "K-7",
     "contact_attempt"),
    (7, "reply", "K-7", (), "Wed 2026-06-10 14:00 EDT", "Thu 2026-06-11 14:00 EDT",
     "met", "Wed 2026-06-10 14:20 EDT", "K-7", "contact_attempt"),
    (8, "notes", "K-7", (), "Wed 2026-06-10 14:20 EDT", "Thu 2026-06-11 02:20 EDT",
     "cancelled", "Wed 2026-06-10 15:30 EDT", "K-7", "close"),
]  # fmt: skip

# (notification, kind, role, recipient, status, due, sent or tried, detail)
EXPECTED_MAILS = [
    (1, "first_contact_reminder", "tech", "kim@techs.example", "sent",
     "Wed 2026-06-10 10:15 EDT", "Wed 2026-06-10 10:15 EDT", None),
    (2, "first_contact_breach", "ops", OPS_ADDRESS, "sent",
     "Wed 2026-06-10 10:30 EDT", "Wed 2026-06-10 10:30 EDT", None),
    (3, "first_contact_breach", "tech", "kim@techs.example", "failed",
     "Wed 2026-06-10 10:30 EDT", "Wed 2026-06-10 10:30 EDT", BOUNCE),
    (None, "delivery_failure", "ops", OPS_ADDRESS, "sent", "-",
     "Wed 2026-06-10 10:30 EDT", None),
    (4, "check_in", "customer", "dana@customers.example", "sent",
     "Wed 2026-06-10 12:30 EDT", "Wed 2026-06-10 12:30 EDT", None),
    (5, "assigned", "tech", "ravi@techs.example", "sent",
     "Wed 2026-06-10 13:30 EDT", "Wed 2026-06-10 13:30 EDT", None),
    (6, "first_contact_reminder", "tech", "ravi@techs.example", "sent",
     "Wed 2026-06-10 14:15 EDT", "Wed 2026-06-10 14:15 EDT", None),
]  # fmt: skip

EARLY_REASON = (
    "occurred_at 2026-06-10T12:00:00+00:00 is before the ticket opened at "
    "2026-06-10T13:00:00+00:00"
)


def local(moment: datetime | None) -> str:
    """Format a time as the expected rows write it: New York, to the minute."""
    if moment is None:
        return "-"
    return moment.astimezone(ZoneInfo(NEW_YORK)).strftime("%a %Y-%m-%d %H:%M %Z")


def test_story_matches_record(store: Store) -> None:
    run_story_ticket(store)

    story = load_story(store.engine, TICKET_ID)

    ticket = story.ticket
    assert (ticket.state, ticket.close_reason) == ("closed", "resolved")
    assert (ticket.customer_name, ticket.tech_id, ticket.tech_name) == (
        "Dana Reyes",
        "K-7",
        "Ravi Patel",
    )
    assert story.zone.key == NEW_YORK
    events = [
        (local(e.at), e.event, e.who, e.channel, e.outcome, e.event_id)
        for e in story.events
    ]
    assert events == EXPECTED_EVENTS
    assert story.events[4].previous_tech == "K-4"
    assert story.events[4].reason == "shift change"
    obligations = [
        (
            o.number,
            o.kind,
            o.owner,
            o.earlier_owners,
            local(o.opened_at),
            local(o.due_at),
            o.status,
            local(o.ended_at),
            o.ended_by,
            o.ended_through,
        )
        for o in story.obligations
    ]
    assert obligations == EXPECTED_OBLIGATIONS
    mails = [
        (
            m.notification,
            m.kind,
            m.role,
            m.recipient,
            m.status,
            local(m.due_at),
            local(m.attempted_at),
            m.detail,
        )
        for m in story.mails
    ]
    assert mails == EXPECTED_MAILS
    rejected = [(local(r.at), r.signal, r.event_id, r.reason) for r in story.rejected]
    assert rejected == [
        ("Wed 2026-06-10 14:10 EDT", "notes_updated", "e-early", EARLY_REASON)
    ]


def test_story_text_shows_local_tables(store: Store) -> None:
    run_story_ticket(store)

    text = render_text(load_story(store.engine, TICKET_ID))

    lines = text.splitlines()
    assert lines[0] == (
        "Ticket T-STORY-1: closed (resolved), priority normal, source portal"
    )
    assert lines[1] == "Customer C-17 (Dana Reyes), tech K-7 (Ravi Patel)"
    assert lines[2] == (
        "Opened Wed 2026-06-10 09:00 EDT, closed Wed 2026-06-10 15:30 EDT"
    )
    assert lines[3] == "Times are the customer's local time (America/New_York)."
    breach_line = next(line for line in lines if "due time passed" in line)
    assert re.split(r"\s{2,}", breach_line.strip()) == [
        "2",
        "first_contact",
        "K-4",
        "Wed 2026-06-10 09:30 EDT",
        "Wed 2026-06-10 10:30 EDT",
        "breached",
        "Wed 2026-06-10 10:30 EDT",
        "due time passed",
    ]
    reassign_line = next(line for line in lines if "reassign" in line)
    assert reassign_line.split("  ")[-1].strip() == (
        "from K-4; reason shift change; event e-move"
    )


EXPECTED_CSV = [
    ("2026-06-10T13:00:00+00:00", "2026-06-10T09:00:00-04:00", "event", "opened",
     "C-17", "", "source portal"),
    ("2026-06-10T13:00:00+00:00", "2026-06-10T09:00:00-04:00", "obligation",
     "claim", "ops", "met",
     "#1; due Wed 2026-06-10 17:00 EDT; met Wed 2026-06-10 09:30 EDT by K-4 (claim)"),
    ("2026-06-10T13:30:00+00:00", "2026-06-10T09:30:00-04:00", "event", "claim",
     "K-4", "", "event e-claim"),
    ("2026-06-10T13:30:00+00:00", "2026-06-10T09:30:00-04:00", "obligation",
     "first_contact", "K-4", "breached",
     "#2; due Wed 2026-06-10 10:30 EDT; breached Wed 2026-06-10 10:30 EDT by due "
     "time passed"),
    ("2026-06-10T13:30:00+00:00", "2026-06-10T09:30:00-04:00", "obligation",
     "check_in", "service", "met",
     "#3; due Wed 2026-06-10 12:30 EDT; met Wed 2026-06-10 12:30 EDT by service"),
    ("2026-06-10T14:15:00+00:00", "2026-06-10T10:15:00-04:00", "mail",
     "first_contact_reminder", "tech", "sent",
     "to kim@techs.example; due Wed 2026-06-10 10:15 EDT"),
    ("2026-06-10T14:30:00+00:00", "2026-06-10T10:30:00-04:00", "mail",
     "first_contact_breach", "ops", "sent",
     f"to {OPS_ADDRESS}; due Wed 2026-06-10 10:30 EDT"),
    ("2026-06-10T14:30:00+00:00", "2026-06-10T10:30:00-04:00", "mail",
     "first_contact_breach", "tech", "failed",
     f"to kim@techs.example; due Wed 2026-06-10 10:30 EDT; {BOUNCE}"),
    ("2026-06-10T14:30:00+00:00", "2026-06-10T10:30:00-04:00", "mail",
     "delivery_failure", "ops", "sent", f"to {OPS_ADDRESS}"),
    ("2026-06-10T14:50:00+00:00", "2026-06-10T10:50:00-04:00", "event",
     "contact_attempt", "K-4", "no_answer", "channel phone; event e-call"),
    ("2026-06-10T14:50:00+00:00", "2026-06-10T10:50:00-04:00", "obligation",
     "notes", "K-4", "met",
     "#4; due Wed 2026-06-10 22:50 EDT; met Wed 2026-06-10 13:00 EDT by K-4 "
     "(notes_updated)"),
    ("2026-06-10T14:50:00+00:00", "2026-06-10T10:50:00-04:00", "obligation",
     "try_other_method", "K-7", "cancelled",
     "#5; due Fri 2026-06-12 10:50 EDT; cancelled Wed 2026-06-10 14:00 EDT by C-17 "
     "(customer_message); earlier owners K-4"),
    ("2026-06-10T16:30:00+00:00", "2026-06-10T12:30:00-04:00", "mail", "check_in",
     "customer", "sent", "to dana@customers.example; due Wed 2026-06-10 12:30 EDT"),
    ("2026-06-10T17:00:00+00:00", "2026-06-10T13:00:00-04:00", "event",
     "notes_updated", "K-4", "", "event e-notes"),
    ("2026-06-10T17:30:00+00:00", "2026-06-10T13:30:00-04:00", "event", "reassign",
     "K-7", "", "from K-4; reason shift change; event e-move"),
    ("2026-06-10T17:30:00+00:00", "2026-06-10T13:30:00-04:00", "obligation",
     "first_contact", "K-7", "met",
     "#6; due Wed 2026-06-10 14:30 EDT; met Wed 2026-06-10 14:20 EDT by K-7 "
     "(contact_attempt)"),
    ("2026-06-10T17:30:00+00:00", "2026-06-10T13:30:00-04:00", "mail", "assigned",
     "tech", "sent", "to ravi@techs.example; due Wed 2026-06-10 13:30 EDT"),
    ("2026-06-10T18:00:00+00:00", "2026-06-10T14:00:00-04:00", "event",
     "customer_message", "C-17", "", "channel email; event e-msg"),
    ("2026-06-10T18:00:00+00:00", "2026-06-10T14:00:00-04:00", "obligation",
     "reply", "K-7", "met",
     "#7; due Thu 2026-06-11 14:00 EDT; met Wed 2026-06-10 14:20 EDT by K-7 "
     "(contact_attempt)"),
    ("2026-06-10T18:10:00+00:00", "2026-06-10T14:10:00-04:00", "rejected",
     "notes_updated", "", "rejected", f"event e-early: {EARLY_REASON}"),
    ("2026-06-10T18:15:00+00:00", "2026-06-10T14:15:00-04:00", "mail",
     "first_contact_reminder", "tech", "sent",
     "to ravi@techs.example; due Wed 2026-06-10 14:15 EDT"),
    ("2026-06-10T18:20:00+00:00", "2026-06-10T14:20:00-04:00", "event",
     "contact_attempt", "K-7", "reached", "channel email; event e-mail"),
    ("2026-06-10T18:20:00+00:00", "2026-06-10T14:20:00-04:00", "obligation",
     "notes", "K-7", "cancelled",
     "#8; due Thu 2026-06-11 02:20 EDT; cancelled Wed 2026-06-10 15:30 EDT by K-7 "
     "(close)"),
    ("2026-06-10T19:30:00+00:00", "2026-06-10T15:30:00-04:00", "event", "close",
     "K-7", "", "reason resolved; event e-close"),
]  # fmt: skip


def test_story_csv_reads_back(store: Store) -> None:
    run_story_ticket(store)
    story = load_story(store.engine, TICKET_ID)

    buffer = io.StringIO(newline="")
    count = write_csv(story, buffer)
    buffer.seek(0)
    reader = csv.DictReader(buffer)
    rows = list(reader)

    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    assert count == len(EXPECTED_CSV)
    assert [tuple(row[name] for name in CSV_COLUMNS) for row in rows] == EXPECTED_CSV


def test_story_of_tech_created_ticket(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'tickets.db'}") as store:
        run = TicketRun(
            store,
            {
                "ticket_id": "T-DIRECT",
                "opened_at": utc(10, 13).isoformat(),
                "priority": "normal",
                "source": "tech_created",
                "customer": CUSTOMER,
                "tech": KIM,
            },
        )
        run.send("release", utc(10, 14), event_id="e-back", reason="on leave")
        story = load_story(store.engine, "T-DIRECT")

    events = [(local(e.at), e.event, e.who) for e in story.events]
    assert events == [
        ("Wed 2026-06-10 09:00 EDT", "opened", "K-4"),
        ("Wed 2026-06-10 10:00 EDT", "release", "K-4"),
    ]
    obligations = [
        (o.number, o.kind, o.owner, o.status, local(o.ended_at), o.ended_by)
        for o in story.obligations
    ]
    assert obligations == [
        (1, "claim", "ops", "met", "Wed 2026-06-10 09:00 EDT", "K-4"),
        (2, "first_contact", "K-4", "met", "Wed 2026-06-10 09:00 EDT", "K-4"),
        (3, "notes", "K-4", "open", "-", None),
        (4, "claim", "ops", "open", "-", None),
    ]
    assert [(m.kind, m.role, m.status) for m in story.mails] == [
        ("released", "ops", "sent")
    ]


def test_history_command_prints_and_writes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database_url = f"sqlite:///{tmp_path / 'tickets.db'}"
    with open_store(database_url) as store:
        run_story_ticket(store)
    monkeypatch.setenv("DATABASE_URL", database_url)
    csv_path = tmp_path / "story.csv"
    html_path = tmp_path / "story.html"

    exit_code = starter.main(
        ["history", TICKET_ID, "--csv", str(csv_path), "--html", str(html_path)]
    )

    out = capsys.readouterr().out
    assert exit_code == 0
    assert out.startswith("Ticket T-STORY-1: closed (resolved)")
    assert f"Wrote {csv_path} ({len(EXPECTED_CSV)} rows)." in out
    assert f"Wrote {html_path}." in out
    with csv_path.open(newline="", encoding="utf-8") as file:
        assert len(list(csv.DictReader(file))) == len(EXPECTED_CSV)
    assert "<svg" in html_path.read_text(encoding="utf-8")


def test_history_command_unknown_ticket(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database_url = f"sqlite:///{tmp_path / 'tickets.db'}"
    with open_store(database_url) as store:
        run_story_ticket(store)
    monkeypatch.setenv("DATABASE_URL", database_url)

    exit_code = starter.main(["history", "T-NOPE"])

    captured = capsys.readouterr()
    assert exit_code == 1
    assert captured.out == ""
    assert "error: ticket T-NOPE not found in the database sqlite:///" in captured.err
    assert "check the id and DATABASE_URL" in captured.err


def test_history_command_missing_database(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "none.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{missing}")

    exit_code = starter.main(["history", TICKET_ID])

    assert exit_code == 1
    assert f"database file {missing} not found" in capsys.readouterr().err
    assert not missing.exists()


def urls_outside_xmlns(page: str) -> list[str]:
    """Return every ``http`` in the page that is not an xmlns attribute's value."""
    without_namespaces = re.sub(r'\sxmlns(:\w+)?="[^"]*"', "", page)
    return re.findall(r".{0,40}http.{0,40}", without_namespaces, re.IGNORECASE)


def story_page(store: Store) -> tuple[TicketStory, str]:
    run_story_ticket(store)
    story = load_story(store.engine, TICKET_ID)
    return story, render_html(story)


def test_story_page_names_no_url(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'tickets.db'}") as store:
        _story, page = story_page(store)

    assert urls_outside_xmlns(page) == []
    assert page.count("<svg") == 1
    # The chart's labels are text in the SVG, not drawn outlines.
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert "#2 first_contact (K-4)" in svg
    assert "breached" in svg
    assert "Local time (America/New_York)" in svg


def test_story_page_escapes_text(tmp_path: Path) -> None:
    hostile = "<img src=x onerror=alert(1)> & <b>"
    with open_store(f"sqlite:///{tmp_path / 'tickets.db'}") as store:
        TicketRun(
            store,
            {
                "ticket_id": "T-ESCAPE",
                "opened_at": utc(10, 13).isoformat(),
                "priority": "normal",
                "source": "portal",
                "customer": {**CUSTOMER, "name": hostile},
            },
        )
        page = render_html(load_story(store.engine, "T-ESCAPE"))

    assert "<img" not in page
    assert "<b>" not in page
    assert "C-17 (&lt;img src=x onerror=alert(1)&gt; &amp; &lt;b&gt;)" in page


async def test_story_page_offline_in_chromium(tmp_path: Path) -> None:
    chromium = chromium_path()
    with open_store(f"sqlite:///{tmp_path / 'tickets.db'}") as store:
        _story, page = story_page(store)
    html_path = tmp_path / "story.html"
    html_path.write_text(page, encoding="utf-8")
    page_url = html_path.as_uri()

    requests: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_FLAGS
        )
        try:
            tab = await browser.new_page()
            tab.on("request", lambda request: requests.append(request.url))
            await tab.goto(page_url, wait_until="load")
            body = await tab.inner_text("body")
            breached_rows = await tab.locator("tr.breached").all_inner_texts()
            chart_texts = await tab.locator("svg text").all_text_contents()
        finally:
            await browser.close()

    assert requests == [page_url]
    assert body.startswith(
        "Ticket T-STORY-1: closed (resolved), priority normal, source portal"
    )
    for kind in ("first_contact", "check_in", "try_other_method", "reply", "notes"):
        assert kind in body
    assert len(breached_rows) == 1
    assert "first_contact" in breached_rows[0]
    assert "breached" in breached_rows[0]
    assert "breached" in chart_texts
    assert "#2 first_contact (K-4)" in chart_texts
