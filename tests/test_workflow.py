"""The ticket workflow end to end on the time-skipping server.

Each test runs the real workflow with the real activities, a real SQLite
database and a real SMTP server (aiosmtpd), and pins the exact due times and
mails of one rule. Times are read on the customer's wall clock: every test
skips ahead to a local date a few days past the server's clock, so the same
local times hold whatever day the suite runs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from email.utils import parseaddr
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities import TicketActivities
from mailsink import MailSink
from settings import Settings, load_settings
from tests.binaries import time_skipping_server_path
from worker import create_worker

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


# A fresh server per test: a workflow terminated while its activity runs can
# leave the shared time-skipping server unable to skip time for later tests.
@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=time_skipping_server_path()
    )
    async with environment:
        yield environment


@dataclass
class Service:
    """A running worker with its own task queue, database and mail server."""

    env: WorkflowEnvironment
    client: Client
    settings: Settings
    activities: TicketActivities
    sink: MailSink

    async def now(self) -> datetime:
        return (await self.env.get_current_time()).astimezone(UTC)

    clock: datetime | None = None
    started: list[str] = field(default_factory=list)

    async def skip_to(self, moment: datetime) -> None:
        """Let workflow time pass until ``moment``, firing every timer before it."""
        delta = moment - await self.now()
        assert delta >= timedelta(0), f"{moment} is in the server's past"
        # The test server rejects a zero-length sleep with a timeout error.
        if delta > timedelta(0):
            await self.env.sleep(delta)
        self.clock = moment
        await self.settle()

    async def settle(self) -> None:
        """Wait until no ticket of this test has a workflow task or activity running.

        Mail that fell due at the skip target is still being sent when the
        sleep returns, and the time-skipping server stops skipping for good
        when a workflow is terminated under a running activity.
        """
        for _ in range(200):
            busy = False
            for workflow_id in self.started:
                handle = self.client.get_workflow_handle(workflow_id)
                description = (await handle.describe()).raw_description
                if description.workflow_execution_info.status != 1:
                    continue
                # An activity waiting out its retry backoff is not busy: the
                # server skips time over the backoff like over a timer. The
                # test server still reports it as started, after its last
                # attempt completed.
                running = [
                    activity
                    for activity in description.pending_activities
                    if activity.state
                    == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                    and activity.last_attempt_complete_time.ToDatetime()
                    < activity.last_started_time.ToDatetime()
                ]
                if running or description.HasField("pending_workflow_task"):
                    busy = True
            if not busy:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("tickets still busy after 4 s of real time")

    def event(self, **fields: Any) -> dict[str, Any]:
        """Build an event payload that occurred at the last ``skip_to`` time.

        The server's clock runs a few milliseconds past the skip target, so
        events carry their time as the portal would, to pin exact due times.
        """
        payload = {"event_id": f"e-{uuid.uuid4().hex[:10]}", **fields}
        if self.clock is not None and "occurred_at" not in fields:
            payload["occurred_at"] = self.clock.isoformat()
        return payload

    async def open(
        self, ticket: dict[str, Any], **options: Any
    ) -> WorkflowHandle[Any, Any]:
        opened_at = datetime.fromisoformat(ticket["opened_at"])
        if opened_at > await self.now():
            await self.skip_to(opened_at)
        workflow_id = f"ticket-{ticket['ticket_id']}"
        self.started.append(workflow_id)
        return await self.client.start_workflow(
            "TicketWorkflow",
            ticket,
            id=workflow_id,
            task_queue=self.settings.temporal_task_queue,
            **options,
        )

    async def terminate_open_tickets(self) -> None:
        """End this test's running tickets.

        The time-skipping server stops skipping while a workflow task waits
        for a worker, so tickets left running would stall the next test.
        """
        await self.settle()
        for workflow_id in self.started:
            handle = self.client.get_workflow_handle(workflow_id)
            description = await handle.describe()
            if description.status == WorkflowExecutionStatus.RUNNING:
                await handle.terminate(reason="test finished")

    def mails(self, ticket_id: str) -> list[tuple[str, str]]:
        """Return (kind, recipient) of each mail the sink got for a ticket."""
        found = []
        for message in self.sink.messages:
            if message["X-Ticket-Id"] == ticket_id:
                address = parseaddr(str(message["To"]))[1]
                found.append((str(message["X-Notification-Kind"]), address))
        return found


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Settings a test changes for its service, by field name."""
    return {}


@pytest.fixture
async def service(
    env: WorkflowEnvironment, tmp_path: Any, settings_overrides: dict[str, Any]
) -> AsyncIterator[Service]:
    sink = MailSink(port=0)
    await sink.start()
    settings = load_settings(
        temporal_task_queue=f"tickets-{uuid.uuid4()}",
        database_url=f"sqlite:///{tmp_path / 'tickets.db'}",
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        ops_email="ops@company.test",
        default_timezone="America/New_York",
        **settings_overrides,
    )
    activities = TicketActivities.from_settings(settings)
    try:
        async with create_worker(env.client, settings, activities):
            running = Service(env, env.client, settings, activities, sink)
            yield running
            await running.terminate_open_tickets()
    finally:
        await sink.stop()


def local(
    day: date, hour: int, minute: int = 0, second: int = 0, zone: ZoneInfo = NEW_YORK
) -> datetime:
    return datetime.combine(day, time(hour, minute, second), tzinfo=zone).astimezone(
        UTC
    )


async def future_day(service: Service, days_ahead: int = 2) -> date:
    """Return a local date far enough ahead that all of its times are future."""
    now = (await service.now()).astimezone(NEW_YORK)
    return now.date() + timedelta(days=days_ahead)


def new_ticket(
    opened_at: datetime,
    *,
    priority: str = "normal",
    zone: str = "America/New_York",
    **customer: Any,
) -> dict[str, Any]:
    ticket_id = f"T-{uuid.uuid4().hex[:8]}"
    return {
        "ticket_id": ticket_id,
        "opened_at": opened_at.isoformat(),
        "priority": priority,
        "source": "portal",
        "customer": {
            "id": f"C-{ticket_id}",
            "name": "Dana Reyes",
            "email": "dana@customer.test",
            "phone": "+1 555 0100",
            "timezone": zone,
            "included_hours_per_month": None,
            **customer,
        },
        "tech": None,
        "claimed_at": None,
    }


TECH_K4 = {"id": "K-4", "name": "Kim Park", "email": "kim@techs.test"}
TECH_K7 = {"id": "K-7", "name": "Lee Moss", "email": "lee@techs.test"}


async def status(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await handle.query("status")
    return result


def obligation_times(current: dict[str, Any], kind: str) -> list[tuple[str, str]]:
    return [
        (o["due_at"], o["status"]) for o in current["obligations"] if o["kind"] == kind
    ]


def notification_times(current: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(n["kind"], n["to"], n["at"]) for n in current["notifications"]]


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


async def assert_no_task_failures(handle: WorkflowHandle[Any, Any]) -> None:
    async for history_event in handle.fetch_history_events():
        assert history_event.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED


async def test_quiet_window_claim_waits_until_nine(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 22, 0))
    handle = await service.open(ticket)

    await service.skip_to(local(day, 23, 45))
    await handle.signal("claim", service.event(tech=TECH_K4))
    next_day = day + timedelta(days=1)
    await service.skip_to(local(next_day, 11, 30))

    current = await status(handle)
    assert obligation_times(current, "first_contact") == [
        (iso(local(next_day, 9, 0)), "breached")
    ]
    assert notification_times(current) == [
        ("first_contact_reminder", "tech", iso(local(next_day, 8, 45))),
        ("first_contact_breach", "ops", iso(local(next_day, 9, 0))),
        ("first_contact_breach", "tech", iso(local(next_day, 9, 0))),
        ("check_in", "customer", iso(local(next_day, 11, 0))),
    ]
    assert Counter(service.mails(ticket["ticket_id"])) == Counter(
        {
            ("first_contact_reminder", "kim@techs.test"): 1,
            ("first_contact_breach", "ops@company.test"): 1,
            ("first_contact_breach", "kim@techs.test"): 1,
            ("check_in", "dana@customer.test"): 1,
        }
    )
    await assert_no_task_failures(handle)


async def test_claim_at_eight_pm_is_quiet(service: Service) -> None:
    day = await future_day(service)
    before = new_ticket(local(day, 19, 0))
    at_eight = new_ticket(local(day, 19, 0))
    before_handle = await service.open(before)
    eight_handle = await service.open(at_eight)

    await service.skip_to(local(day, 19, 59, 59))
    await before_handle.signal("claim", service.event(tech=TECH_K4))
    await service.skip_to(local(day, 20, 0, 0))
    await eight_handle.signal("claim", service.event(tech=TECH_K7))
    await service.skip_to(local(day, 20, 30))

    next_day = day + timedelta(days=1)
    assert obligation_times(await status(before_handle), "first_contact") == [
        (iso(local(day, 20, 59, 59)), "open")
    ]
    assert obligation_times(await status(eight_handle), "first_contact") == [
        (iso(local(next_day, 9, 0)), "open")
    ]


async def test_emergency_at_night_is_due_in_an_hour(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 1, 0), priority="emergency")
    handle = await service.open(ticket)

    await service.skip_to(local(day, 2, 10))
    await handle.signal("claim", service.event(tech=TECH_K4))
    await service.skip_to(local(day, 5, 30))

    current = await status(handle)
    assert obligation_times(current, "first_contact") == [
        (iso(local(day, 3, 10)), "breached")
    ]
    # Urgent tickets mail the customer at night too.
    assert ("check_in", "customer", iso(local(day, 5, 10))) in notification_times(
        current
    )


async def test_contact_meets_first_contact_and_notes(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    handle = await service.open(ticket)

    await service.skip_to(local(day, 10, 0))
    await handle.signal("claim", service.event(tech=TECH_K4))
    await service.skip_to(local(day, 10, 40))
    await handle.signal(
        "contact_attempt", service.event(channel="phone", outcome="reached")
    )
    await service.skip_to(local(day, 12, 0))
    await handle.signal("notes_updated", service.event())
    await service.skip_to(local(day + timedelta(days=1), 12, 0))

    current = await status(handle)
    assert obligation_times(current, "first_contact") == [
        (iso(local(day, 11, 0)), "met")
    ]
    assert obligation_times(current, "notes") == [(iso(local(day, 22, 40)), "met")]
    assert notification_times(current) == [
        ("check_in", "customer", iso(local(day, 13, 0)))
    ]
    assert service.mails(ticket["ticket_id"]) == [("check_in", "dana@customer.test")]


async def test_notes_breach_mails_ops_and_tech(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    handle = await service.open(ticket)
    await handle.signal(
        "claim", service.event(tech=TECH_K4, occurred_at=iso(local(day, 9, 5)))
    )
    await service.skip_to(local(day, 9, 30))
    await handle.signal(
        "contact_attempt", service.event(channel="email", outcome="reached")
    )
    await service.skip_to(local(day, 22, 0))

    current = await status(handle)
    assert obligation_times(current, "notes") == [(iso(local(day, 21, 30)), "breached")]
    kinds = notification_times(current)
    assert ("notes_reminder", "tech", iso(local(day, 19, 30))) in kinds
    assert ("notes_breach", "ops", iso(local(day, 21, 30))) in kinds
    assert ("notes_breach", "tech", iso(local(day, 21, 30))) in kinds


async def test_reply_breach_keeps_first_deadline(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    handle = await service.open(ticket)
    await handle.signal(
        "claim", service.event(tech=TECH_K4, occurred_at=iso(local(day, 9, 0)))
    )
    await service.skip_to(local(day, 9, 20))
    await handle.signal(
        "contact_attempt", service.event(channel="phone", outcome="reached")
    )
    await handle.signal("notes_updated", service.event())

    await service.skip_to(local(day, 14, 0))
    await handle.signal("customer_message", service.event(channel="email"))
    await service.skip_to(local(day, 18, 0))
    await handle.signal("customer_message", service.event(channel="phone"))
    await service.skip_to(local(day + timedelta(days=1), 15, 0))

    current = await status(handle)
    next_day = day + timedelta(days=1)
    assert obligation_times(current, "reply") == [
        (iso(local(next_day, 14, 0)), "breached")
    ]
    kinds = notification_times(current)
    assert ("reply_reminder", "tech", iso(local(next_day, 10, 0))) in kinds
    assert ("reply_breach", "ops", iso(local(next_day, 14, 0))) in kinds
    assert ("reply_breach", "tech", iso(local(next_day, 14, 0))) in kinds


async def test_unreachable_ladder_closes_after_three_days(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    handle = await service.open(ticket)
    await handle.signal(
        "claim", service.event(tech=TECH_K4, occurred_at=iso(local(day, 9, 0)))
    )

    # A0: a voicemail at 09:30 starts the ladder.
    await service.skip_to(local(day, 9, 30))
    await handle.signal(
        "contact_attempt", service.event(channel="phone", outcome="message_left")
    )
    await handle.signal("notes_updated", service.event())
    # A1: an email the next morning, a channel not tried yet, before the
    # try-other prompt would have gone out.
    day_2 = day + timedelta(days=1)
    await service.skip_to(local(day_2, 9, 0))
    await handle.signal(
        "contact_attempt", service.event(channel="email", outcome="no_answer")
    )
    await handle.signal("notes_updated", service.event())
    # The try-all prompt comes at the later of A0 + 48h and A1 + 24h (09:30);
    # both methods on file are tried after it.
    day_3 = day + timedelta(days=2)
    await service.skip_to(local(day_3, 10, 0))
    await handle.signal(
        "contact_attempt", service.event(channel="phone", outcome="no_answer")
    )
    await service.skip_to(local(day_3, 10, 5))
    await handle.signal(
        "contact_attempt", service.event(channel="email", outcome="no_answer")
    )
    await handle.signal("notes_updated", service.event())

    result = await handle.result()

    assert result["state"] == "closed"
    assert result["close_reason"] == "unreachable"
    day_4 = day + timedelta(days=3)
    ladder = [
        (o["kind"], o["due_at"], o["status"])
        for o in result["obligations"]
        if o["kind"] in ("try_other_method", "try_all_methods", "close_unreachable")
    ]
    assert ladder == [
        ("try_other_method", iso(local(day_3, 9, 30)), "met"),
        ("try_all_methods", iso(local(day_4, 9, 30)), "met"),
        # The later of A0 + 72h (09:30) and A2 + 24h (10:05).
        ("close_unreachable", iso(local(day_4, 10, 5)), "met"),
    ]
    kinds = notification_times(result)
    assert ("try_all_methods", "tech", iso(local(day_3, 9, 30))) in kinds
    assert [k for k in kinds if k[0] == "try_other_method"] == []
    assert [k for k in kinds if k[0] == "closed_unreachable"] == [
        ("closed_unreachable", "customer", iso(local(day_4, 10, 5))),
        ("closed_unreachable", "tech", iso(local(day_4, 10, 5))),
        ("closed_unreachable", "ops", iso(local(day_4, 10, 5))),
    ]
    mails = Counter(service.mails(ticket["ticket_id"]))
    assert mails[("closed_unreachable", "dana@customer.test")] == 1
    assert mails[("closed_unreachable", "kim@techs.test")] == 1
    assert mails[("closed_unreachable", "ops@company.test")] == 1
    assert all(count == 1 for count in mails.values())
    await assert_no_task_failures(handle)


async def test_customer_answer_on_day_two_stops_ladder(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    handle = await service.open(ticket)
    await handle.signal(
        "claim", service.event(tech=TECH_K4, occurred_at=iso(local(day, 9, 0)))
    )
    await service.skip_to(local(day, 9, 30))
    await handle.signal(
        "contact_attempt", service.event(channel="phone", outcome="no_answer")
    )
    await handle.signal("notes_updated", service.event())

    day_2 = day + timedelta(days=1)
    await service.skip_to(local(day_2, 11, 0))
    await handle.signal("customer_message", service.event(channel="email"))
    await service.skip_to(local(day + timedelta(days=4), 12, 0))

    current = await status(handle)
    assert current["state"] == "claimed"
    assert obligation_times(current, "try_other_method") == [
        (iso(local(day + timedelta(days=2), 9, 30)), "cancelled")
    ]
    kinds = [k for k, _, _ in notification_times(current)]
    assert "try_other_method" in kinds
    assert "try_all_methods" not in kinds
    assert "closed_unreachable" not in kinds


async def test_reassign_before_first_contact(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    handle = await service.open(ticket)
    await handle.signal(
        "claim", service.event(tech=TECH_K4, occurred_at=iso(local(day, 9, 0)))
    )
    await service.skip_to(local(day, 9, 30))
    await handle.signal("reassign", service.event(tech=TECH_K7, reason="K-4 is ill"))
    await service.skip_to(local(day, 12, 0))

    current = await status(handle)
    assert current["tech_id"] == "K-7"
    first_contacts = [
        (o["owner"], o["due_at"], o["status"])
        for o in current["obligations"]
        if o["kind"] == "first_contact"
    ]
    assert first_contacts == [
        ("K-4", iso(local(day, 10, 0)), "cancelled"),
        ("K-7", iso(local(day, 10, 30)), "breached"),
    ]
    mails = service.mails(ticket["ticket_id"])
    assert mails.count(("assigned", "lee@techs.test")) == 1
    assert [m for m in mails if m[1] == "kim@techs.test"] == []


async def test_release_and_reclaim(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    handle = await service.open(ticket)
    await handle.signal(
        "claim", service.event(tech=TECH_K4, occurred_at=iso(local(day, 9, 0)))
    )
    await service.skip_to(local(day, 9, 40))
    await handle.signal("release", service.event(reason="Not my field"))
    await service.skip_to(local(day, 13, 0))
    await handle.signal("claim", service.event(tech=TECH_K7))
    await service.skip_to(local(day, 16, 30))

    current = await status(handle)
    assert current["tech_id"] == "K-7"
    assert obligation_times(current, "claim") == [
        (iso(local(day, 17, 0)), "met"),
        (iso(local(day, 17, 40)), "met"),
    ]
    assert obligation_times(current, "check_in") == [
        (iso(local(day, 12, 0)), "cancelled"),
        (iso(local(day, 16, 0)), "met"),
    ]
    assert notification_times(current) == [
        ("released", "ops", iso(local(day, 9, 40))),
        ("first_contact_reminder", "tech", iso(local(day, 13, 45))),
        ("first_contact_breach", "ops", iso(local(day, 14, 0))),
        ("first_contact_breach", "tech", iso(local(day, 14, 0))),
        ("check_in", "customer", iso(local(day, 16, 0))),
    ]


async def test_unclaimed_ticket_breaches_after_eight_hours(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 6, 15))
    handle = await service.open(ticket)
    await service.skip_to(local(day, 15, 0))

    current = await status(handle)
    assert obligation_times(current, "claim") == [(iso(local(day, 14, 15)), "breached")]
    assert notification_times(current) == [
        ("unclaimed_breach", "ops", iso(local(day, 14, 15)))
    ]
    assert service.mails(ticket["ticket_id"]) == [
        ("unclaimed_breach", "ops@company.test")
    ]


async def test_tech_created_ticket_owes_notes_only(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 21, 0))
    ticket["source"] = "tech_created"
    ticket["tech"] = TECH_K4
    handle = await service.open(ticket)
    await service.skip_to(local(day + timedelta(days=1), 12, 0))

    current = await status(handle)
    assert current["state"] == "claimed"
    assert obligation_times(current, "first_contact") == [
        (iso(local(day, 21, 0)), "met")
    ]
    assert obligation_times(current, "notes") == [
        (iso(local(day + timedelta(days=1), 9, 0)), "breached")
    ]
    assert obligation_times(current, "check_in") == []
    assert "check_in" not in [k for k, _, _ in notification_times(current)]


async def test_subscription_hours_warn_once_per_month(service: Service) -> None:
    day = await future_day(service)
    first = new_ticket(local(day, 9, 0), included_hours_per_month=10)
    second = new_ticket(local(day, 9, 0), included_hours_per_month=10)
    second["customer"]["id"] = first["customer"]["id"]
    handles = [await service.open(first), await service.open(second)]
    for handle in handles:
        await handle.signal(
            "claim", service.event(tech=TECH_K4, occurred_at=iso(local(day, 9, 0)))
        )

    await service.skip_to(local(day, 10, 0))
    await handles[0].signal("time_logged", service.event(hours=5))
    await service.skip_to(local(day, 11, 0))
    await handles[1].signal("time_logged", service.event(hours=3.5))
    await service.skip_to(local(day, 12, 0))
    await handles[0].signal("time_logged", service.event(hours=1))
    await service.skip_to(local(day, 13, 0))
    await handles[1].signal("time_logged", service.event(hours=2))
    await service.skip_to(local(day, 13, 30))

    first_status, second_status = [await status(h) for h in handles]
    first_warnings = [
        n for n in notification_times(first_status) if n[0] == "hours_warning"
    ]
    second_warnings = [
        n for n in notification_times(second_status) if n[0] == "hours_warning"
    ]
    # 8.5 of 10 hours after the second entry passes 80%; 11.5 passes 100%.
    assert second_warnings == [
        ("hours_warning", "ops", iso(local(day, 11, 0))),
        ("hours_warning", "tech", iso(local(day, 11, 0))),
        ("hours_warning", "ops", iso(local(day, 13, 0))),
        ("hours_warning", "tech", iso(local(day, 13, 0))),
    ]
    assert first_warnings == []


async def test_bad_events_are_rejected_and_kept(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    handle = await service.open(ticket)
    await handle.signal(
        "claim", service.event(tech=TECH_K4, occurred_at=iso(local(day, 9, 0)))
    )
    await service.skip_to(local(day, 9, 10))

    naive = local(day, 9, 5).replace(tzinfo=None).isoformat()
    bad_events = [
        (
            "contact_attempt",
            service.event(channel="pigeon", outcome="reached"),
            "invalid channel",
        ),
        (
            "contact_attempt",
            service.event(channel="phone", outcome="maybe"),
            "invalid outcome",
        ),
        ("contact_attempt", service.event(channel="phone"), "missing field 'outcome'"),
        ("time_logged", service.event(hours=-1), "invalid hours"),
        ("time_logged", service.event(hours=25), "invalid hours"),
        ("time_logged", service.event(hours="2"), "must be a number"),
        ("close", service.event(reason="bored"), "invalid reason"),
        ("notes_updated", service.event(occurred_at=naive), "needs an offset"),
        (
            "notes_updated",
            service.event(occurred_at=iso(local(day, 9, 30))),
            "in the future",
        ),
        (
            "notes_updated",
            service.event(occurred_at=iso(local(day, 8, 0))),
            "before the ticket opened",
        ),
        ("claim", service.event(tech=TECH_K7), "already claimed"),
        (
            "notes_updated",
            {"occurred_at": iso(local(day, 9, 5))},
            "missing field 'event_id'",
        ),
        ("notes_updated", ["not", "an", "object"], "must be a JSON object"),
        ("claim_ticket", service.event(), "unknown event"),
        (
            "reassign",
            service.event(tech={**TECH_K7, "name": "Lee\x00Moss"}),
            "control character U+0000",
        ),
    ]
    for signal, payload, _ in bad_events:
        await handle.signal(signal, payload)
    await handle.signal(
        "contact_attempt", service.event(channel="phone", outcome="reached")
    )
    await service.skip_to(local(day, 9, 20))

    current = await status(handle)
    reasons = [r["reason"] for r in current["rejected"]]
    assert len(reasons) == len(bad_events)
    for reason, (_, _, expected) in zip(reasons, bad_events, strict=True):
        assert expected in reason
    assert obligation_times(current, "first_contact") == [
        (iso(local(day, 10, 0)), "met")
    ]
    assert current["tech_id"] == "K-4"
    await assert_no_task_failures(handle)


async def test_reported_update_rejection_is_kept(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    handle = await service.open(ticket)
    await handle.signal(
        "claim", service.event(tech=TECH_K4, occurred_at=iso(local(day, 9, 0)))
    )
    await service.skip_to(local(day, 9, 10))
    before = await status(handle)

    reason = "invalid channel 'pigeon'; expected one of phone, email"
    report = {"event": "contact_attempt", "event_id": "e-pigeon", "reason": reason}
    await handle.signal("record_rejection", report)
    # Sent again, it is kept once.
    await handle.signal("record_rejection", report)
    # A report that is itself bad is rejected under its own name.
    await handle.signal(
        "record_rejection", {"event": "teleport", "reason": "no", "event_id": "e-x"}
    )
    await service.skip_to(local(day, 9, 20))

    current = await status(handle)
    assert [
        (r["signal"], r["event_id"], r["reason"][:40]) for r in current["rejected"]
    ] == [
        ("contact_attempt", "e-pigeon", reason[:40]),
        ("record_rejection", "e-x", "invalid event 'teleport'; expected one o"),
    ]
    assert {**current, "rejected": []} == {**before, "rejected": []}
    record = service.activities.store.ticket_record(ticket["ticket_id"])
    rejected = [entry.details for entry in record if entry.entry_type == "rejected"]
    assert rejected[0] == {
        "event_id": "e-pigeon",
        "signal": "contact_attempt",
        "reason": reason,
    }
    assert len(rejected) == 2
    await assert_no_task_failures(handle)


async def test_signal_with_two_inputs_is_rejected(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    handle = await service.open(ticket)
    await handle.signal(
        "claim", service.event(tech=TECH_K4, occurred_at=iso(local(day, 9, 0)))
    )
    await service.skip_to(local(day, 9, 10))

    first, second = service.event(), service.event()
    await handle.signal("notes_updated", args=[first, second])
    await handle.signal("no_such_signal", args=[first, second])
    await handle.signal(
        "contact_attempt", service.event(channel="phone", outcome="reached")
    )
    await service.skip_to(local(day, 9, 20))

    current = await status(handle)
    expected = "expected one JSON object as the input, got 2 values"
    assert [(r["signal"], r["reason"]) for r in current["rejected"]] == [
        ("notes_updated", expected),
        ("no_such_signal", expected),
    ]
    # The ticket goes on: the next event is applied.
    assert obligation_times(current, "first_contact") == [
        (iso(local(day, 10, 0)), "met")
    ]
    await assert_no_task_failures(handle)


async def test_repeated_event_id_changes_nothing(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    handle = await service.open(ticket)
    await handle.signal(
        "claim", service.event(tech=TECH_K4, occurred_at=iso(local(day, 9, 0)))
    )
    await service.skip_to(local(day, 9, 30))
    message = service.event(channel="email")
    await handle.signal("customer_message", message)
    await service.skip_to(local(day, 15, 0))
    await handle.signal("customer_message", message)
    await service.skip_to(local(day, 15, 5))

    current = await status(handle)
    assert obligation_times(current, "reply") == [
        (iso(local(day + timedelta(days=1), 9, 30)), "open")
    ]
    assert current["rejected"] == []


async def test_closed_ticket_rejects_signals(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    handle = await service.open(ticket)
    await handle.signal(
        "claim", service.event(tech=TECH_K4, occurred_at=iso(local(day, 9, 0)))
    )
    await service.skip_to(local(day, 9, 20))
    await handle.signal("close", service.event(reason="resolved"))
    result = await handle.result()

    assert result["state"] == "closed"
    assert result["close_reason"] == "resolved"
    assert {o["status"] for o in result["obligations"] if o["kind"] != "claim"} == {
        "cancelled"
    }
    assert result["notifications"] == []
    assert service.mails(ticket["ticket_id"]) == []
    with pytest.raises(RPCError, match="[Cc]ompleted workflow"):
        await handle.signal("notes_updated", service.event())


async def test_signal_to_unknown_ticket_raises(service: Service) -> None:
    handle = service.client.get_workflow_handle(f"ticket-T-{uuid.uuid4().hex}")
    with pytest.raises(RPCError, match="not found"):
        await handle.signal("notes_updated", service.event())


async def test_claim_with_signal_with_start(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    await service.skip_to(local(day, 9, 15))
    handle = await service.open(
        ticket,
        start_signal="claim",
        start_signal_args=[service.event(tech=TECH_K4)],
    )
    await service.skip_to(local(day, 9, 20))

    current = await status(handle)
    assert current["state"] == "claimed"
    assert obligation_times(current, "claim") == [(iso(local(day, 17, 0)), "met")]
    assert obligation_times(current, "first_contact") == [
        (iso(local(day, 10, 15)), "open")
    ]


async def test_ticket_without_zone_uses_default(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 22, 0))
    del ticket["customer"]["timezone"]
    handle = await service.open(ticket)
    await service.skip_to(local(day, 23, 0))
    await handle.signal("claim", service.event(tech=TECH_K4))
    await service.skip_to(local(day, 23, 5))

    current = await status(handle)
    assert current["timezone"] == "America/New_York"
    assert obligation_times(current, "first_contact") == [
        (iso(local(day + timedelta(days=1), 9, 0)), "open")
    ]


async def test_berlin_customer_reads_berlin_clock(service: Service) -> None:
    now = (await service.now()).astimezone(BERLIN)
    day = now.date() + timedelta(days=2)
    ticket = new_ticket(local(day, 19, 0, zone=BERLIN), zone="Europe/Berlin")
    handle = await service.open(ticket)
    await service.skip_to(local(day, 21, 30, zone=BERLIN))
    await handle.signal("claim", service.event(tech=TECH_K4))
    await service.skip_to(local(day, 21, 35, zone=BERLIN))

    current = await status(handle)
    next_day = day + timedelta(days=1)
    assert obligation_times(current, "first_contact") == [
        (iso(local(next_day, 9, 0, zone=BERLIN)), "open")
    ]
    assert obligation_times(current, "check_in") == [
        (iso(local(next_day, 11, 0, zone=BERLIN)), "open")
    ]


async def test_us_dst_night_keeps_local_nine(service: Service) -> None:
    spring_forward = date(2027, 3, 13)
    if local(spring_forward, 18, 0) <= await service.now():
        pytest.skip("the 2027-03-14 change is in the server's past")
    ticket = new_ticket(local(spring_forward, 18, 0))
    handle = await service.open(ticket)
    await service.skip_to(local(spring_forward, 23, 30))
    await handle.signal("claim", service.event(tech=TECH_K4))
    await service.skip_to(local(spring_forward, 23, 35))

    current = await status(handle)
    # 09:00 EDT on the 14th is 13:00 UTC; the night before it was 14:00 UTC.
    assert obligation_times(current, "first_contact") == [
        ("2027-03-14T13:00:00+00:00", "open")
    ]
    assert obligation_times(current, "check_in") == [
        ("2027-03-14T15:00:00+00:00", "open")
    ]


async def test_record_keeps_events_obligations_and_mail(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    handle = await service.open(ticket)
    await handle.signal(
        "claim", service.event(tech=TECH_K4, occurred_at=iso(local(day, 9, 0)))
    )
    await service.skip_to(local(day, 9, 10))
    await handle.signal("time_logged", service.event(hours=-3))
    await service.skip_to(local(day, 13, 10))

    record = service.activities.store.ticket_record(ticket["ticket_id"])
    entry_types = Counter(entry.entry_type for entry in record)
    assert entry_types["event"] >= 2
    assert entry_types["rejected"] == 1
    assert entry_types["obligation"] >= 4
    assert entry_types["notification"] == 4
    sequences = [entry.sequence for entry in record]
    assert sequences == sorted(set(sequences))
    sent = service.activities.store.sent_mail(ticket["ticket_id"])
    assert sorted(mail.kind for mail in sent) == sorted(
        [
            "first_contact_reminder",
            "first_contact_breach",
            "first_contact_breach",
            "check_in",
        ]
    )


@pytest.mark.parametrize(
    "settings_overrides",
    [{"policy_overrides": {"claim_within": "2h", "first_contact_within": "30m"}}],
)
async def test_policy_overrides_apply_to_new_tickets(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    handle = await service.open(ticket)
    await service.skip_to(local(day, 11, 30))
    await handle.signal("claim", service.event(tech=TECH_K4))
    await service.skip_to(local(day, 11, 35))

    current = await status(handle)
    assert obligation_times(current, "claim") == [(iso(local(day, 11, 0)), "breached")]
    assert obligation_times(current, "first_contact") == [
        (iso(local(day, 12, 0)), "open")
    ]


async def test_timer_summary_names_local_due(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 22, 0))
    handle = await service.open(ticket)
    await service.skip_to(local(day, 23, 45))
    await handle.signal("claim", service.event(tech=TECH_K4))
    await service.skip_to(local(day, 23, 50))

    summaries = []
    async for history_event in handle.fetch_history_events():
        if history_event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            summary = history_event.user_metadata.summary
            summaries.append(
                service.client.data_converter.payload_converter.from_payload(
                    summary, str
                )
            )
    next_day = day + timedelta(days=1)

    def on_clock(hour: int) -> str:
        return (
            local(next_day, hour).astimezone(NEW_YORK).strftime("%a %Y-%m-%d %H:%M %Z")
        )

    assert summaries == [
        f"claim of ops, due {on_clock(6)}",
        f"reminder for first_contact of K-4, due {on_clock(9)}",
    ]


async def test_invalid_opening_fails_with_reason(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0), priority="urgent")
    handle = await service.open(ticket)

    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "InvalidTicketInput"
    assert "invalid priority 'urgent'" in cause.message
    await assert_no_task_failures(handle)


async def test_failing_mail_holds_back_nothing_else(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    handle = await service.open(ticket)
    # The tech's mailbox replies "try again later" to every mail for now.
    service.sink.reject_recipient("kim@techs.test", "451 4.2.1 Mailbox busy")
    await handle.signal("claim", service.event(tech=TECH_K4))
    await service.skip_to(local(day, 9, 59))
    await handle.signal(
        "contact_attempt", service.event(channel="phone", outcome="reached")
    )
    await service.skip_to(local(day, 10, 5))

    current = await status(handle)
    assert obligation_times(current, "first_contact") == [
        (iso(local(day, 10, 0)), "met")
    ]
    delivered = {(n["kind"], n["to"]): n["status"] for n in current["notifications"]}
    assert delivered[("first_contact_reminder", "tech")] == "pending"
    assert service.mails(ticket["ticket_id"]) == []

    # Once the mailbox takes mail again, the retried reminder arrives once.
    service.sink.clear_faults()
    await service.skip_to(local(day, 10, 30))
    current = await status(handle)
    delivered = {(n["kind"], n["to"]): n["status"] for n in current["notifications"]}
    assert delivered[("first_contact_reminder", "tech")] == "sent"
    assert service.mails(ticket["ticket_id"]) == [
        ("first_contact_reminder", "kim@techs.test")
    ]


async def test_workflow_id_must_match_ticket(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    await service.skip_to(local(day, 9, 0))
    workflow_id = f"ticket-other-{uuid.uuid4().hex[:8]}"
    service.started.append(workflow_id)
    handle = await service.client.start_workflow(
        "TicketWorkflow",
        ticket,
        id=workflow_id,
        task_queue=service.settings.temporal_task_queue,
    )

    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert f"must run as 'ticket-{ticket['ticket_id']}'" in cause.message


async def test_missing_input_fails_cleanly(service: Service) -> None:
    workflow_id = f"ticket-T-{uuid.uuid4().hex[:8]}"
    service.started.append(workflow_id)
    handle = await service.client.start_workflow(
        "TicketWorkflow",
        id=workflow_id,
        task_queue=service.settings.temporal_task_queue,
    )

    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert "missing ticket input" in cause.message
    await assert_no_task_failures(handle)
