"""The mailer against a real SMTP sink: wording, Message-IDs, sending at most once."""

from __future__ import annotations

import logging
import mailbox
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy.exc import OperationalError

from activities.mailer import (
    MailDeliveryDelayed,
    MailDeliveryUnconfirmed,
    Mailer,
    message_id_for,
    unconfirmed_report_id,
)
from activities.notices import InvalidNotification
from activities.store import Store
from mailsink import MailSink
from settings import Settings
from workflows.model import NotificationInput, Person

CUSTOMER = Person(
    id="C-17", name="Dana Reyes", email="dana@customer.test", phone="+1 555 0100"
)
TECH = Person(id="K-4", name="Kim Park", email="kim@techs.test")
OPS = "ops@ticket-guard.localhost"

# 2026-06-10 is a Wednesday; New York is on daylight time (UTC-4).
OWED_DUE_AT = "2026-06-10T13:00:00+00:00"
OWED_DUE_LOCAL = "Wednesday 10 June 2026, 09:00 EDT (America/New_York)"
MAIL_DUE_AT = "2026-06-10T15:00:00+00:00"
MAIL_DUE_LOCAL = "Wednesday 10 June 2026, 11:00 EDT (America/New_York)"

# Words of the service's inner workings that a customer must never read.
INTERNAL_WORDS = [
    "ops",
    "breach",
    "obligation",
    "escalat",
    "ladder",
    "unreachable",
    "sla",
]

MESSAGE_ID_SYNTAX = re.compile(
    r"<[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*>"
)


def notification(kind: str, role: str, **overrides: Any) -> NotificationInput:
    recipients = {"tech": TECH, "customer": CUSTOMER, "ops": None}
    fields: dict[str, Any] = {
        "ticket_id": "T-1001",
        "sequence": 3,
        "kind": kind,
        "role": role,
        "recipient": recipients[role],
        "due_at": MAIL_DUE_AT,
        "timezone": "America/New_York",
        "priority": "normal",
        "customer_name": "Dana Reyes",
        "tech_name": "Kim Park",
        "owed_kind": None,
        "owed_due_at": None,
    }
    fields.update(overrides)
    return NotificationInput(**fields)


def compose_settings(**overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "_env_file": None,
        "database_url": "sqlite://",
        "mail_from": "ticket-guard <no-reply@ticket-guard.localhost>",
        "ops_email": OPS,
        "default_timezone": "America/New_York",
    }
    fields.update(overrides)
    return Settings(**fields)


@pytest.fixture
def composer() -> Iterator[Mailer]:
    """A mailer for composing only: its store and SMTP server are never used."""
    store = Store("sqlite://")
    yield Mailer(compose_settings(), store)
    store.dispose()


@pytest.fixture
async def mailer(settings: Settings, store: Store) -> AsyncIterator[Mailer]:
    yield Mailer(settings, store)


# Composing

# Every (kind, role) the ticket workflow sends to staff, with the obligation
# it is about and a phrase that only that mail has.
STAFF_MAILS = [
    ("assigned", "tech", "first_contact", "is now assigned to you"),
    ("first_contact_reminder", "tech", "first_contact", "Leaving a message counts"),
    ("first_contact_breach", "tech", "first_contact", "call or email the customer now"),
    (
        "first_contact_breach",
        "ops",
        "first_contact",
        "Kim Park has not logged first contact",
    ),
    ("notes_reminder", "tech", "notes", "even if nobody reached the customer"),
    ("notes_breach", "tech", "notes", "update the ticket notes now"),
    ("notes_breach", "ops", "notes", "ask the tech to update the notes"),
    ("reply_reminder", "tech", "reply", "waiting for your reply"),
    ("reply_reminder", "ops", "reply", "which has no tech"),
    ("reply_breach", "tech", "reply", "still waiting for a reply"),
    ("reply_breach", "ops", "reply", "Nobody has replied"),
    ("try_other_method", "tech", "try_other_method", "a method not tried yet"),
    ("try_all_methods", "tech", "try_all_methods", "every contact method on file"),
    ("ladder_incomplete", "ops", "try_all_methods", "the ticket stays open"),
    ("closed_unreachable", "tech", None, f"closed as unreachable on {MAIL_DUE_LOCAL}"),
    ("closed_unreachable", "ops", None, f"closed as unreachable on {MAIL_DUE_LOCAL}"),
    ("unclaimed_breach", "ops", "claim", "No tech has claimed ticket T-1001"),
    ("released", "ops", None, f"was released on {MAIL_DUE_LOCAL}"),
    ("hours_warning", "tech", None, "tell the customer how many included hours"),
    ("hours_warning", "ops", None, "check with the customer"),
]


@pytest.mark.parametrize(("kind", "role", "owed_kind", "phrase"), STAFF_MAILS)
def test_compose_staff_mail_names_ticket_and_due(
    composer: Mailer, kind: str, role: str, owed_kind: str | None, phrase: str
) -> None:
    owed_due_at = OWED_DUE_AT if owed_kind else None
    message = composer.compose(
        notification(
            kind,
            role,
            owed_kind=owed_kind,
            owed_due_at=owed_due_at,
            hours_used=8.5,
            hours_included=10.0,
            month="2026-06",
        )
    )
    body = message.get_content()
    flat_body = " ".join(body.split())

    assert "T-1001" in message["Subject"]
    assert "Ticket:     T-1001 (normal priority)" in body
    assert "Customer:   Dana Reyes" in body
    assert "What to do: " in body
    assert phrase in flat_body
    if owed_kind:
        assert f"Due by:     {OWED_DUE_LOCAL}" in body
    assert all(len(line) <= 72 for line in body.splitlines())


@pytest.mark.parametrize("kind", ["check_in", "closed_unreachable"])
def test_compose_customer_mail_hides_internal_words(
    composer: Mailer, kind: str
) -> None:
    message = composer.compose(
        notification(
            kind, "customer", owed_kind="first_contact", owed_due_at=OWED_DUE_AT
        )
    )
    subject = str(message["Subject"])
    body = message.get_content()

    for word in INTERNAL_WORDS:
        pattern = re.compile(rf"\b{word}", re.IGNORECASE)
        assert pattern.search(subject) is None, f"subject says {word!r}"
        assert pattern.search(body) is None, f"body says {word!r}"
    assert "T-1001" in subject
    assert "T-1001" in body
    assert "(America/New_York)" in body
    assert body.startswith("Hello Dana Reyes,")
    assert body.endswith("Thank you,\nYour support team\n")


def test_compose_check_in_says_when_tech_was_due(composer: Mailer) -> None:
    message = composer.compose(
        notification(
            "check_in", "customer", owed_kind="first_contact", owed_due_at=OWED_DUE_AT
        )
    )
    body = " ".join(message.get_content().split())

    assert message["Subject"] == "Ticket T-1001: has your technician been in touch?"
    assert body.startswith(
        "Hello Dana Reyes, Your support ticket T-1001 has been taken on by Kim Park."
    )
    assert f"Kim Park was due to contact you by {OWED_DUE_LOCAL}." in body
    assert "please let us know through the support portal" in body


def test_compose_check_in_after_reassign_says_is_due(composer: Mailer) -> None:
    # The new tech's first contact falls due after the check-in mail goes out.
    later = "2026-06-10T15:30:00+00:00"
    message = composer.compose(
        notification(
            "check_in", "customer", owed_kind="first_contact", owed_due_at=later
        )
    )
    body = " ".join(message.get_content().split())

    assert (
        "Kim Park is due to contact you by Wednesday 10 June 2026, 11:30 EDT "
        "(America/New_York)."
    ) in body
    assert "was due" not in body


def test_compose_check_in_without_open_first_contact(composer: Mailer) -> None:
    message = composer.compose(notification("check_in", "customer", tech_name=None))
    body = " ".join(message.get_content().split())

    assert (
        "Your support ticket T-1001 has been taken on by your technician. "
        "Your technician should have been in touch with you by now."
    ) in body


def test_compose_assigned_without_due_time(composer: Mailer) -> None:
    message = composer.compose(notification("assigned", "tech"))
    body = " ".join(message.get_content().split())

    assert "call or email the customer as soon as you can" in body
    assert "the due time" not in body
    assert "Due by:" not in body


def test_compose_assigned_names_due_time(composer: Mailer) -> None:
    message = composer.compose(
        notification(
            "assigned", "tech", owed_kind="first_contact", owed_due_at=OWED_DUE_AT
        )
    )
    body = " ".join(message.get_content().split())

    assert "call or email the customer before the due time" in body
    assert f"Due by: {OWED_DUE_LOCAL}" in body


def test_compose_closed_unreachable_tells_customer_when(composer: Mailer) -> None:
    message = composer.compose(notification("closed_unreachable", "customer"))
    body = " ".join(message.get_content().split())

    assert message["Subject"] == "Your support ticket T-1001 is closed"
    assert f"so we closed the ticket on {MAIL_DUE_LOCAL}." in body
    assert "open a new request through the support portal" in body


def test_compose_winter_time_shows_standard_zone(composer: Mailer) -> None:
    message = composer.compose(
        notification(
            "first_contact_reminder",
            "tech",
            owed_kind="first_contact",
            owed_due_at="2026-01-13T14:00:00+00:00",
        )
    )

    assert "Due by:     Tuesday 13 January 2026, 09:00 EST (America/New_York)" in (
        message.get_content()
    )
    assert message["Subject"] == "[T-1001] First contact due by Tue 13 Jan 09:00 EST"


def test_compose_uses_customer_zone(composer: Mailer) -> None:
    message = composer.compose(
        notification(
            "reply_reminder",
            "tech",
            timezone="Europe/Berlin",
            owed_kind="reply",
            owed_due_at=OWED_DUE_AT,
        )
    )

    assert "Due by:     Wednesday 10 June 2026, 15:00 CEST (Europe/Berlin)" in (
        message.get_content()
    )


def test_compose_uses_default_zone_without_ticket_zone() -> None:
    store = Store("sqlite://")
    mailer = Mailer(compose_settings(default_timezone="Asia/Tokyo"), store)

    message = mailer.compose(
        notification(
            "notes_reminder",
            "tech",
            timezone="",
            owed_kind="notes",
            owed_due_at=OWED_DUE_AT,
        )
    )

    assert (
        "Due by:     Wednesday 10 June 2026, 22:00 JST (Asia/Tokyo)"
        in message.get_content()
    )
    store.dispose()


def test_compose_hours_warning_shows_usage(composer: Mailer) -> None:
    message = composer.compose(
        notification(
            "hours_warning", "ops", hours_used=8.5, hours_included=10.0, month="2026-06"
        )
    )
    body = " ".join(message.get_content().split())

    assert (
        message["Subject"] == "[T-1001] Dana Reyes: 8.5 of 10 included hours (85%) used"
    )
    assert "Dana Reyes has used 8.5 of 10 included hours (85%) for June 2026" in body
    assert "until the end of June 2026 (America/New_York)" in body


def test_compose_addresses_each_role(composer: Mailer) -> None:
    to_tech = composer.compose(notification("assigned", "tech"))
    to_customer = composer.compose(notification("check_in", "customer"))
    to_ops = composer.compose(notification("unclaimed_breach", "ops"))

    assert to_tech["To"] == "Kim Park <kim@techs.test>"
    assert to_customer["To"] == "Dana Reyes <dana@customer.test>"
    assert to_ops["To"] == OPS
    assert to_ops["From"] == "ticket-guard <no-reply@ticket-guard.localhost>"
    assert to_ops["Auto-Submitted"] == "auto-generated"
    assert to_ops["X-Ticket-Id"] == "T-1001"
    assert to_ops["X-Notification-Kind"] == "unclaimed_breach"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"kind": "birthday"}, "unknown notification kind 'birthday'"),
        ({"role": "customer", "recipient": CUSTOMER}, "never sent to customers"),
        ({"role": "manager"}, "unknown role 'manager'"),
        ({"kind": "check_in"}, "kind 'check_in' is only sent to customers"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"due_at": "2026-06-10T15:00:00"}, "due_at .* has no UTC offset"),
        ({"owed_due_at": "soon"}, "owed_due_at 'soon' is not an ISO 8601 time"),
        ({"ticket_id": "T-1\r\nBcc: x@y.test"}, "invalid mail header"),
    ],
)
def test_compose_rejects_invalid_notification(
    composer: Mailer, changes: dict[str, Any], error: str
) -> None:
    invalid = replace(notification("notes_breach", "tech"), **changes)

    with pytest.raises(InvalidNotification, match=error):
        composer.compose(invalid)


def test_compose_keeps_names_on_one_line(composer: Mailer) -> None:
    message = composer.compose(
        notification(
            "hours_warning",
            "tech",
            recipient=replace(TECH, name="Kim\r\nPark"),
            customer_name="Dana\nReyes",
            hours_used=8,
            hours_included=10,
        )
    )

    assert message["To"] == "Kim Park <kim@techs.test>"
    assert (
        message["Subject"] == "[T-1001] Dana Reyes: 8 of 10 included hours (80%) used"
    )


# Message-IDs


def test_message_id_names_ticket_sequence_kind_role() -> None:
    message_id = message_id_for(
        notification("check_in", "customer"), "ticket-guard.localhost"
    )

    assert message_id == "<T-1001.3.check_in.customer@ticket-guard.localhost>"


def test_message_id_is_stable_and_distinct() -> None:
    base = notification("notes_breach", "tech")
    variants = [
        base,
        replace(base, sequence=4),
        replace(base, kind="notes_reminder"),
        replace(base, role="ops"),
        replace(base, ticket_id="T-1002"),
    ]

    ids = [message_id_for(variant, "example.test") for variant in variants]

    assert message_id_for(base, "example.test") == ids[0]
    assert len(set(ids)) == len(ids)


def test_message_id_escapes_any_ticket_id() -> None:
    ticket_ids = ["T 1", "T.1", "T-1", "T=1", "T=2E1", "Tä<1>", "T@1", "", "T\r\n1"]

    ids = [
        message_id_for(
            notification("assigned", "tech", ticket_id=ticket_id), "example.test"
        )
        for ticket_id in ticket_ids
    ]

    for message_id in ids:
        assert MESSAGE_ID_SYNTAX.fullmatch(message_id), message_id
    assert len(set(ids)) == len(ids)


def test_compose_uses_mail_from_domain_in_message_id() -> None:
    store = Store("sqlite://")
    mailer = Mailer(
        compose_settings(mail_from="Support <help@mail.example.test>"), store
    )

    message = mailer.compose(notification("assigned", "tech"))

    assert message["Message-ID"] == "<T-1001.3.assigned.tech@mail.example.test>"
    store.dispose()


# Sending


def received(sink: MailSink, to: str) -> list[str]:
    """Return the Message-IDs the sink received for address ``to``, in order."""
    return [str(m["Message-ID"]) for m in sink.messages if to in str(m["To"])]


async def test_send_twice_delivers_one_copy(
    mailer: Mailer, mail_sink: MailSink
) -> None:
    check_in = notification("check_in", "customer")

    first = await mailer.send(check_in)
    second = await mailer.send(check_in)

    expected_id = "<T-1001.3.check_in.customer@ticket-guard.localhost>"
    assert (first.status, first.message_id, first.detail) == ("sent", expected_id, None)
    assert (second.status, second.message_id) == ("already_sent", expected_id)
    assert len(mail_sink.messages_with_id(expected_id)) == 1
    assert mailer.store.mail_status(expected_id) == "sent"


async def test_send_ops_goes_to_ops_address(
    mailer: Mailer, mail_sink: MailSink
) -> None:
    result = await mailer.send(notification("unclaimed_breach", "ops"))

    assert result.status == "sent"
    assert received(mail_sink, OPS) == [result.message_id]


async def test_send_421_raises_then_retry_sends_once(
    mailer: Mailer, mail_sink: MailSink
) -> None:
    assigned = notification("assigned", "tech")
    mail_sink.reply_to_data("421 4.3.0 Try again later")

    with pytest.raises(MailDeliveryDelayed, match="421"):
        await mailer.send(assigned)
    delayed_id = mailer.message_id(assigned)
    assert mailer.store.mail_status(delayed_id) == "delayed"
    assert mail_sink.messages == []

    retried = await mailer.send(assigned)

    assert retried.status == "sent"
    assert len(mail_sink.messages_with_id(delayed_id)) == 1


async def test_send_451_recipient_raises(mailer: Mailer, mail_sink: MailSink) -> None:
    mail_sink.reject_recipient("kim@techs.test", "451 4.7.1 Greylisted, try later")

    with pytest.raises(MailDeliveryDelayed, match="451"):
        await mailer.send(notification("assigned", "tech"))

    assert mail_sink.messages == []


async def test_send_to_stopped_server_raises(
    mailer: Mailer, mail_sink: MailSink
) -> None:
    await mail_sink.stop()

    with pytest.raises(MailDeliveryDelayed):
        await mailer.send(notification("assigned", "tech"))

    assert mailer.store.mail_status(
        mailer.message_id(notification("assigned", "tech"))
    ) == ("delayed")


async def test_send_550_recipient_fails_and_reports_once(
    mailer: Mailer, mail_sink: MailSink
) -> None:
    mail_sink.reject_recipient("dana@customer.test", "550 5.1.1 No such user")
    check_in = notification("check_in", "customer")

    first = await mailer.send(check_in)
    second = await mailer.send(check_in)

    assert first.status == "failed"
    assert first.detail == "recipient rejected: 550 5.1.1 No such user"
    assert (second.status, second.detail) == ("failed", first.detail)
    report_id = "<T-1001.3.check_in.customer.failure-report@ticket-guard.localhost>"
    assert received(mail_sink, OPS) == [report_id]
    report = mail_sink.messages_with_id(report_id)[0]
    assert report["Subject"] == "[T-1001] Mail to the customer could not be delivered"
    assert first.message_id in report.get_content()
    assert "550 5.1.1 No such user" in report.get_content()
    statuses = {
        mail.message_id: mail.status for mail in mailer.store.sent_mail("T-1001")
    }
    assert statuses == {first.message_id: "failed", report_id: "sent"}


async def test_send_550_data_to_ops_sends_no_report(
    mailer: Mailer, mail_sink: MailSink, caplog: pytest.LogCaptureFixture
) -> None:
    mail_sink.reply_to_data("550 5.7.1 Message rejected")
    caplog.set_level(logging.DEBUG, logger="activities")

    result = await mailer.send(notification("released", "ops"))

    assert result.status == "failed"
    assert result.detail == "message rejected: 550 5.7.1 Message rejected"
    assert mail_sink.messages == []
    # No report goes out about it, so the log is the only trace.
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "Mail to ops failed permanently")
    ]


@pytest.mark.parametrize(
    "email", [None, "", "not an address", "kim@techs.test\r\nBcc: x@y.test"]
)
async def test_send_without_valid_address_fails_and_reports(
    mailer: Mailer, mail_sink: MailSink, email: str | None
) -> None:
    to_tech = notification("assigned", "tech", recipient=replace(TECH, email=email))

    result = await mailer.send(to_tech)

    assert result.status == "failed"
    assert result.detail is not None and result.detail.startswith("the tech")
    assert len(mail_sink.messages) == 1
    assert received(mail_sink, OPS) == [
        "<T-1001.3.assigned.tech.failure-report@ticket-guard.localhost>"
    ]


async def test_send_retries_delayed_failure_report(
    mailer: Mailer, mail_sink: MailSink
) -> None:
    # The customer's address is rejected for good. The report to ops then gets
    # a 421, so the attempt raises and the retry sends the report.
    mail_sink.reject_recipient("dana@customer.test")
    mail_sink.reply_to_data("421 4.3.0 Try again later")
    check_in = notification("check_in", "customer")

    with pytest.raises(MailDeliveryDelayed):
        await mailer.send(check_in)
    assert mailer.store.mail_status(mailer.message_id(check_in)) == "failed"

    retried = await mailer.send(check_in)
    again = await mailer.send(check_in)

    assert retried.status == "failed"
    assert again.status == "failed"
    assert len(received(mail_sink, OPS)) == 1


async def test_send_unanswered_data_is_reported(
    settings: Settings, store: Store, mail_sink: MailSink
) -> None:
    # The server keeps the message but its reply never comes: sending again
    # could give the reader a second copy, so the retry reports it to ops.
    quick = Mailer(settings.model_copy(update={"smtp_timeout_seconds": 0.2}), store)
    reminder = notification("reply_reminder", "tech")
    message_id = quick.message_id(reminder)
    mail_sink.hold_replies()

    with pytest.raises(MailDeliveryUnconfirmed, match="no reply to the message data"):
        await quick.send(reminder)
    mail_sink.release_replies()
    retried = await quick.send(reminder)
    again = await quick.send(reminder)

    assert retried.status == "already_sent"
    assert retried.detail is not None
    assert retried.detail.startswith("unconfirmed, so not sent again: ")
    assert again.status == "already_sent"
    assert len(mail_sink.messages_with_id(message_id)) == 1
    assert store.mail_status(message_id) == "unconfirmed"
    report_id = unconfirmed_report_id(message_id)
    assert len(received(mail_sink, OPS)) == 1
    [report] = mail_sink.messages_with_id(report_id)
    assert report["Subject"] == "[T-1001] Mail to the tech may not have arrived"
    assert message_id in report.get_content()
    assert store.mail_status(report_id) == "sent"


async def test_sent_record_survives_short_outage(
    mailer: Mailer, mail_sink: MailSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The database fails the first two writes of "sent" after the server took
    # the mail; the attempt keeps trying instead of leaving it unconfirmed.
    monkeypatch.setattr("activities.mailer.SENT_RECORD_RETRY_INTERVAL_SECONDS", 0.01)
    record_mail = mailer.store.record_mail
    failures: list[str] = []

    def flaky_record_mail(**row: Any) -> None:
        if row["status"] == "sent" and len(failures) < 2:
            failures.append(row["message_id"])
            raise OperationalError(
                "UPDATE sent_mail", {}, Exception("database is locked")
            )
        record_mail(**row)

    monkeypatch.setattr(mailer.store, "record_mail", flaky_record_mail)
    reminder = notification("reply_reminder", "tech")
    message_id = mailer.message_id(reminder)

    result = await mailer.send(reminder)

    assert result.status == "sent"
    assert failures == [message_id, message_id]
    assert mailer.store.mail_status(message_id) == "sent"
    assert len(mail_sink.messages_with_id(message_id)) == 1
    assert received(mail_sink, OPS) == []


def record_earlier_attempt(
    mailer: Mailer, to_send: NotificationInput, status: str, seconds_ago: float
) -> None:
    """Store the sent_mail row that an attempt ended ``seconds_ago`` left behind."""
    mailer.store.record_mail(
        message_id=mailer.message_id(to_send),
        ticket_id=to_send.ticket_id,
        kind=to_send.kind,
        role=to_send.role,
        recipient="kim@techs.test",
        status=status,
        at=datetime.now(UTC) - timedelta(seconds=seconds_ago),
    )


async def test_send_after_stop_before_dot_sends(
    mailer: Mailer, mail_sink: MailSink
) -> None:
    # A worker that stopped before writing the final dot leaves the mail in
    # "sending", and the server has none of it.
    breach = notification("notes_breach", "tech")
    record_earlier_attempt(mailer, breach, "sending", seconds_ago=60)

    result = await mailer.send(breach)

    assert result.status == "sent"
    assert len(mail_sink.messages_with_id(result.message_id)) == 1
    assert mailer.store.mail_status(result.message_id) == "sent"


async def test_send_waits_for_attempt_still_sending(
    mailer: Mailer, mail_sink: MailSink
) -> None:
    # The settings' SMTP timeout is 5 seconds, so an attempt that recorded
    # "sending" a second ago may still write the final dot.
    breach = notification("notes_breach", "tech")
    record_earlier_attempt(mailer, breach, "sending", seconds_ago=1)

    with pytest.raises(MailDeliveryDelayed, match="may still be running"):
        await mailer.send(breach)

    assert mail_sink.messages == []
    assert mailer.store.mail_status(mailer.message_id(breach)) == "sending"


async def test_send_after_stop_after_dot_reports(
    mailer: Mailer, mail_sink: MailSink
) -> None:
    # A worker that stopped after writing the final dot leaves the mail in
    # "unconfirmed": the server may have it, so it is reported, not resent.
    breach = notification("notes_breach", "tech")
    record_earlier_attempt(mailer, breach, "unconfirmed", seconds_ago=60)

    first = await mailer.send(breach)
    second = await mailer.send(breach)

    assert first.status == "already_sent"
    assert second.status == "already_sent"
    assert mail_sink.messages_with_id(first.message_id) == []
    assert len(received(mail_sink, OPS)) == 1
    assert len(mail_sink.messages_with_id(unconfirmed_report_id(first.message_id))) == 1
    assert mailer.store.mail_status(first.message_id) == "unconfirmed"


async def test_send_with_smtp_login(settings: Settings, store: Store) -> None:
    async with MailSink(credentials=("guard", "s3cret")) as sink:
        login = {"smtp_port": sink.port, "smtp_username": "guard"}
        right = settings.model_copy(
            update={**login, "smtp_password": SecretStr("s3cret")}
        )
        wrong = settings.model_copy(
            update={**login, "smtp_password": SecretStr("nope")}
        )

        with pytest.raises(MailDeliveryDelayed, match="535"):
            await Mailer(wrong, store).send(notification("assigned", "tech"))
        result = await Mailer(right, store).send(notification("assigned", "tech"))

        assert result.status == "sent"
        assert len(sink.messages) == 1


async def test_send_logs_no_recipient_address(
    mailer: Mailer, mail_sink: MailSink, caplog: pytest.LogCaptureFixture
) -> None:
    mail_sink.reject_recipient(
        "dana@customer.test", "550 5.1.1 <dana@customer.test> unknown"
    )
    caplog.set_level(logging.DEBUG, logger="activities")

    await mailer.send(notification("check_in", "customer"))
    await mailer.send(notification("assigned", "tech"))

    assert caplog.records
    for record in caplog.records:
        logged = record.getMessage() + " " + " ".join(map(str, vars(record).values()))
        assert "dana@customer.test" not in logged
        assert "kim@techs.test" not in logged
    assert [
        (record.getMessage(), record.__dict__["kind"]) for record in caplog.records
    ] == [
        ("Mail delivery failed permanently", "check_in"),
        ("Mail sent", "delivery_failure"),
        ("Mail sent", "assigned"),
    ]
    assert (
        caplog.records[0].__dict__["reason"]
        == "recipient rejected: 550 5.1.1 <address> unknown"
    )


# The mail sink


async def test_mail_sink_keeps_maildir_copy(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'mail.db'}")
    store.create_tables()
    async with MailSink(maildir=tmp_path / "mail") as sink:
        settings = compose_settings(
            database_url=f"sqlite:///{tmp_path / 'mail.db'}",
            **sink.smtp_settings(),
        )
        result = await Mailer(settings, store).send(notification("assigned", "tech"))
    store.dispose()

    stored = list(mailbox.Maildir(tmp_path / "mail", create=False))
    assert [message["Message-ID"] for message in stored] == [result.message_id]
