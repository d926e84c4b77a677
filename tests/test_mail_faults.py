"""Each notification reaches its reader exactly once while the mail server fails.

The scenario tests run one scenario of ``tests/mail_faults.py`` each: real
tickets, the real worker and activities, a SQLite store and a mail sink that
the scenario makes fail. Three run on the time-skipping server in a few
seconds. The killed worker runs on the dev server in about 20 seconds of real
time. The mailer tests below them pin the two ends of the ambiguous window,
where a stopped attempt may or may not have left the message with the server.
"""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest

from activities.mailer import MailDeliveryDelayed, Mailer
from activities.store import Store
from mailsink import MailSink
from settings import Settings
from tests.mail_faults import (
    TICKETS_PER_SCENARIO,
    MailFaultResult,
    run_connection_refused,
    run_reply_held,
    run_server_busy,
    run_worker_killed_mid_send,
)
from tests.restarts import DEADLINE_TOLERANCE_SECONDS
from workflows.model import NotificationInput, Person

# A ticket claimed at its opening sends four mails in its first three hours:
# the first contact reminder, the breach to ops and to the tech, and the
# check-in.
MAILS_PER_CLAIMED_TICKET = 4
# The time-skipping server fires a timer at its due time, to the millisecond.
SKIPPED_DEADLINE_TOLERANCE_SECONDS = 1.0


def assert_each_mail_once(result: MailFaultResult, expected: int) -> None:
    assert result.expected == expected
    assert result.delivered == expected
    assert result.duplicates == 0
    assert result.lost == 0


async def test_reply_held_sends_one_copy(tmp_path: Path) -> None:
    result = await run_reply_held(tmp_path)

    assert result.tickets == TICKETS_PER_SCENARIO
    # The held reminders stay unconfirmed, and ops get one report for each.
    assert result.ops_reports == TICKETS_PER_SCENARIO
    assert_each_mail_once(
        result, TICKETS_PER_SCENARIO * MAILS_PER_CLAIMED_TICKET + result.ops_reports
    )
    # Each held reminder's first attempt timed out and failed; one retry each.
    assert result.retried_sends == TICKETS_PER_SCENARIO
    assert result.deadline_error_seconds is not None
    assert result.deadline_error_seconds <= SKIPPED_DEADLINE_TOLERANCE_SECONDS


async def test_server_busy_delivers_after_421(tmp_path: Path) -> None:
    result = await run_server_busy(tmp_path)

    assert result.tickets == TICKETS_PER_SCENARIO
    assert result.ops_reports == 0
    assert_each_mail_once(result, TICKETS_PER_SCENARIO * MAILS_PER_CLAIMED_TICKET)
    # The reminder and both breaches of each ticket met a 421 at least once.
    assert result.retried_sends == 3 * TICKETS_PER_SCENARIO
    assert result.fault_replies > 3 * TICKETS_PER_SCENARIO
    assert result.deadline_error_seconds is not None
    assert result.deadline_error_seconds <= SKIPPED_DEADLINE_TOLERANCE_SECONDS


async def test_connection_refused_delivers_after_outage(tmp_path: Path) -> None:
    result = await run_connection_refused(tmp_path)

    assert result.tickets == TICKETS_PER_SCENARIO
    assert result.ops_reports == 0
    assert_each_mail_once(result, TICKETS_PER_SCENARIO * MAILS_PER_CLAIMED_TICKET)
    # Both breaches of each ticket fell due in the outage.
    assert result.retried_sends == 2 * TICKETS_PER_SCENARIO
    assert result.deadline_error_seconds is not None
    assert result.deadline_error_seconds <= SKIPPED_DEADLINE_TOLERANCE_SECONDS


async def test_worker_killed_mid_send_loses_none(tmp_path: Path) -> None:
    result = await run_worker_killed_mid_send(tmp_path)

    # Two tickets had their mail held after the final dot, two before DATA.
    assert result.tickets == 2 * TICKETS_PER_SCENARIO
    assert result.ops_reports == TICKETS_PER_SCENARIO
    assert_each_mail_once(result, result.tickets + result.ops_reports)
    assert result.retried_sends == result.tickets
    assert result.deadline_error_seconds is not None
    assert result.deadline_error_seconds <= DEADLINE_TOLERANCE_SECONDS


# The mailer at the edges of the ambiguous window


def assignment() -> NotificationInput:
    return NotificationInput(
        ticket_id="T-1001",
        sequence=2,
        kind="assigned",
        role="tech",
        recipient=Person(id="K-4", name="Kim Park", email="kim@techs.test"),
        due_at="2026-06-10T14:00:00+00:00",
        timezone="America/New_York",
        priority="normal",
    )


async def test_send_stopped_before_data_sends_again(
    settings: Settings, store: Store, mail_sink: MailSink
) -> None:
    # The sink holds back the 354 reply, so the attempt times out before any
    # of the message went out. The server has none of it, so the mail is
    # delayed, not unconfirmed.
    quick = Mailer(settings.model_copy(update={"smtp_timeout_seconds": 0.2}), store)
    mail_sink.hold_data_commands()

    with pytest.raises(MailDeliveryDelayed, match="timed out"):
        await quick.send(assignment())
    assert store.mail_status(quick.message_id(assignment())) == "delayed"
    mail_sink.release_replies()
    result = await quick.send(assignment())

    assert result.status == "sent"
    assert len(mail_sink.messages_with_id(result.message_id)) == 1
    assert mail_sink.messages_with_id(result.message_id)[0]["To"] == (
        "Kim Park <kim@techs.test>"
    )


async def test_send_421_after_data_sends_again(
    mailer: Mailer, mail_sink: MailSink
) -> None:
    # A 421 to the end of the data comes after the final dot, but it means
    # the server did not take the message.
    mail_sink.reply_to_data("421 4.3.0 Try again later")

    with pytest.raises(MailDeliveryDelayed, match="421"):
        await mailer.send(assignment())
    assert mailer.store.mail_status(mailer.message_id(assignment())) == "delayed"
    result = await mailer.send(assignment())

    assert result.status == "sent"
    assert mail_sink.fault_replies == ["421 4.3.0 Try again later"]
    assert len(mail_sink.messages_with_id(result.message_id)) == 1


async def test_send_keeps_leading_dots(
    mailer: Mailer, mail_sink: MailSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The data ends at a line with a lone dot, so the mailer doubles a dot
    # that starts a line and the server takes it away again.
    body = ".\n..two dots\n. dot and space\nlast line\n"
    composed = mailer.compose(assignment())
    composed.set_content(body)
    monkeypatch.setattr(mailer, "compose", lambda _notification: composed)

    result = await mailer.send(assignment())

    [received] = mail_sink.messages_with_id(result.message_id)
    assert isinstance(received, EmailMessage)
    # The sink keeps the CRLF line ends that SMTP sends.
    assert received.get_content().splitlines() == body.splitlines()


@pytest.fixture
async def mailer(settings: Settings, store: Store) -> Mailer:
    return Mailer(settings, store)
