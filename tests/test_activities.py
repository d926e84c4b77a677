"""The activity methods: what they return and which errors Temporal may retry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import TicketActivities
from activities.mailer import MailDeliveryDelayed
from mailsink import MailSink
from settings import Settings
from workflows.model import (
    HoursInput,
    NotificationInput,
    Person,
    RecordEntry,
    RecordInput,
)

TECH = Person(id="K-4", name="Kim Park", email="kim@techs.test")


@pytest.fixture
def activities(settings: Settings) -> Iterator[TicketActivities]:
    built = TicketActivities.from_settings(settings)
    yield built
    built.close()


def record_input(opened_at: str = "2026-06-10T14:00:00+00:00") -> RecordInput:
    return RecordInput(
        ticket_id="T-1001",
        state="claimed",
        priority="normal",
        source="portal",
        opened_at=opened_at,
        timezone="America/New_York",
        customer=Person(id="C-17", name="Dana Reyes"),
        tech=TECH,
        included_hours_per_month=10.0,
        closed_at=None,
        close_reason=None,
        entries=[
            RecordEntry(1, "event", "2026-06-10T14:00:00+00:00", {"event": "opened"})
        ],
    )


def assigned(kind: str = "assigned") -> NotificationInput:
    return NotificationInput(
        ticket_id="T-1001",
        sequence=1,
        kind=kind,
        role="tech",
        recipient=TECH,
        due_at="2026-06-10T14:00:00+00:00",
        timezone="America/New_York",
        priority="normal",
    )


def hours_input(logged: float) -> HoursInput:
    return HoursInput(
        ticket_id="T-1001",
        event_id="e-1",
        customer_id="C-17",
        month="2026-06",
        hours=logged,
        included_hours=10.0,
        logged_at="2026-06-10T18:00:00+00:00",
    )


def test_all_lists_the_four_activities(activities: TicketActivities) -> None:
    assert activities.all() == [
        activities.record_ticket_changes,
        activities.send_notification,
        activities.log_hours,
        activities.ticket_defaults,
    ]


async def test_ticket_defaults_returns_zone(activities: TicketActivities) -> None:
    defaults = await ActivityEnvironment().run(activities.ticket_defaults)
    assert defaults.timezone == activities.default_timezone


async def test_ticket_defaults_carry_history_limit(settings: Settings) -> None:
    built = TicketActivities.from_settings(
        settings.model_copy(update={"max_history_length": 2500})
    )
    try:
        defaults = await ActivityEnvironment().run(built.ticket_defaults)
    finally:
        built.close()
    assert defaults.max_history_length == 2500


async def test_record_ticket_changes_stores_entries(
    activities: TicketActivities,
) -> None:
    await ActivityEnvironment().run(activities.record_ticket_changes, record_input())

    assert [line.details for line in activities.store.ticket_record("T-1001")] == [
        {"event": "opened"}
    ]


async def test_record_invalid_time_is_not_retried(activities: TicketActivities) -> None:
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(
            activities.record_ticket_changes, record_input("2026-06-10 14:00")
        )

    assert raised.value.non_retryable
    assert raised.value.type == "InvalidRecord"
    assert "opened_at '2026-06-10 14:00' has no UTC offset" in str(raised.value)


async def test_send_notification_sends_once(
    activities: TicketActivities, mail_sink: MailSink
) -> None:
    environment = ActivityEnvironment()

    first = await environment.run(activities.send_notification, assigned())
    second = await environment.run(activities.send_notification, assigned())

    assert first.status == "sent"
    assert second.status == "already_sent"
    assert len(mail_sink.messages) == 1


async def test_send_unknown_kind_is_not_retried(activities: TicketActivities) -> None:
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.send_notification, assigned("party"))

    assert raised.value.non_retryable
    assert raised.value.type == "InvalidNotification"


async def test_send_server_busy_is_retried(
    activities: TicketActivities, mail_sink: MailSink
) -> None:
    mail_sink.reply_to_data("421 4.3.2 Service not available")

    # Any exception but a non-retryable ApplicationError makes Temporal retry.
    with pytest.raises(MailDeliveryDelayed):
        await ActivityEnvironment().run(activities.send_notification, assigned())


async def test_log_hours_returns_crossed_thresholds(
    activities: TicketActivities,
) -> None:
    result = await ActivityEnvironment().run(activities.log_hours, hours_input(8))

    assert result.used_hours == 8
    assert result.crossed_thresholds == [0.8]


async def test_log_hours_negative_is_not_retried(activities: TicketActivities) -> None:
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.log_hours, hours_input(-1))

    assert raised.value.non_retryable
    assert raised.value.type == "InvalidHours"
