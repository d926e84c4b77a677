"""Long tickets that continue as new, end to end.

The worker's activities give each ticket a history limit of a few hundred
events instead of ten thousand, so a ticket continues as new many times in one
test. The tests then check that nothing a ticket owes is lost or doubled
across its runs: deadlines, the ladder, mail, the record and Update replies.
Most run on the time-skipping server like ``test_workflow.py``; the search
attributes and UI texts need the dev server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import (
    EventType,
    WorkflowTaskFailedCause,
)
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowHistory,
)
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities import TicketActivities
from activities.mailer import Mailer
from activities.store import Store
from mailsink import MailSink
from settings import load_settings
from tests.binaries import dev_server_path, time_skipping_server_path
from tests.test_devserver import wait_idle
from tests.test_workflow import (
    NEW_YORK,
    TECH_K4,
    Service,
    future_day,
    iso,
    local,
    new_ticket,
    status,
)
from worker import create_worker, sandboxed_runner
from workflows.display import ticket_summary
from workflows.events import parse_event, parse_opening
from workflows.ledger import TicketLedger
from workflows.model import CarriedTicket, TicketDefaults
from workflows.search import (
    NEXT_DUE_AT,
    NEXT_DUE_KIND,
    TECH_ID,
    TICKET_SEARCH_ATTRIBUTES,
    TICKET_STATE,
)
from workflows.ticket import TicketWorkflow

# Signals sent at once, as concurrent calls on the client's one gRPC channel.
SIGNALS_AT_ONCE = 250


# A fresh server per test, as in test_workflow.py: a ticket terminated under
# a running activity can stop the shared server from skipping time.
@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=time_skipping_server_path()
    )
    async with environment:
        yield environment


@pytest.fixture
def history_limit() -> int:
    """The history length at which the test's tickets continue as new."""
    return 500


@pytest.fixture
def policy_overrides() -> dict[str, str]:
    return {}


@pytest.fixture
async def service(
    env: WorkflowEnvironment,
    tmp_path: Path,
    history_limit: int,
    policy_overrides: dict[str, str],
) -> AsyncIterator[Service]:
    async with MailSink("127.0.0.1", 0) as sink:
        settings = load_settings(
            temporal_task_queue=f"tickets-{uuid.uuid4()}",
            database_url=f"sqlite:///{tmp_path / 'tickets.db'}",
            **sink.smtp_settings(),
            ops_email="ops@company.test",
            default_timezone="America/New_York",
        )
        activities = worker_activities(settings, history_limit, policy_overrides)
        try:
            async with create_worker(env.client, settings, activities):
                running = Service(env, env.client, settings, activities, sink)
                yield running
                await running.terminate_open_tickets()
        finally:
            activities.close()


def worker_activities(
    settings: Any, history_limit: int, policy_overrides: dict[str, str] | None = None
) -> TicketActivities:
    store = Store(settings.database_url)
    store.create_tables()
    return TicketActivities(
        store,
        Mailer(settings, store),
        settings.default_timezone,
        policy_overrides,
        max_history_length=history_limit,
    )


async def run_histories(
    client: Client, workflow_id: str, first_run_id: str | None
) -> list[WorkflowHistory]:
    """Return the history of every run of a workflow, following continue-as-new."""
    histories = []
    run_id = first_run_id
    while run_id:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        history = await handle.fetch_history()
        histories.append(history)
        last = history.events[-1]
        run_id = None
        if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            attributes = last.workflow_execution_continued_as_new_event_attributes
            run_id = attributes.new_execution_run_id
    return histories


def task_failure_causes(histories: list[WorkflowHistory]) -> list[str]:
    return [
        WorkflowTaskFailedCause.Name(event.workflow_task_failed_event_attributes.cause)
        for history in histories
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    ]


async def replay_failures(histories: list[WorkflowHistory]) -> list[str]:
    """Replay each run on the current workflow code and return what failed."""
    replayer = Replayer(workflows=[TicketWorkflow], workflow_runner=sandboxed_runner())
    failures = []
    for history in histories:
        replayed = await replayer.replay_workflow(
            history, raise_on_replay_failure=False
        )
        if replayed.replay_failure is not None:
            failures.append(f"{history.run_id}: {replayed.replay_failure}")
    return failures


async def signal_all(
    handle: WorkflowHandle[Any, Any], signal: str, payloads: list[dict[str, Any]]
) -> None:
    for start in range(0, len(payloads), SIGNALS_AT_ONCE):
        batch = payloads[start : start + SIGNALS_AT_ONCE]
        await asyncio.gather(*(handle.signal(signal, payload) for payload in batch))


def message_ids(service: Service, ticket_id: str) -> Counter[str]:
    return Counter(
        str(message["Message-ID"])
        for message in service.sink.messages
        if message["X-Ticket-Id"] == ticket_id
    )


def month(moment: datetime) -> str:
    return moment.astimezone(NEW_YORK).strftime("%Y-%m")


async def test_five_thousand_events_keep_deadlines(service: Service) -> None:
    day = await future_day(service)
    day_2, day_3, day_4 = (day + timedelta(days=n) for n in (1, 2, 3))
    ticket = new_ticket(local(day, 9, 0))
    ticket_id = ticket["ticket_id"]
    first = await service.open(ticket)
    # Without a run id, the handle reaches whichever run is current.
    handle = service.client.get_workflow_handle(first.id)
    sent: list[dict[str, Any]] = []

    async def signal(name: str, **fields: Any) -> None:
        payload = service.event(**fields)
        sent.append(payload)
        await handle.signal(name, payload)

    async def log_hours(count: int) -> list[dict[str, Any]]:
        payloads = [service.event(hours=0.25) for _ in range(count)]
        sent.extend(payloads)
        await signal_all(handle, "time_logged", payloads)
        return payloads

    await signal("claim", tech=TECH_K4)
    # A0: a voicemail at 09:30 starts the ladder and owes notes by 21:30.
    await service.skip_to(local(day, 9, 30))
    await signal("contact_attempt", channel="phone", outcome="no_answer")

    # Each burst pushes the history past the limit. The time-skipping server
    # moves time on only while the ticket is idle, so each continuation ends
    # before the next burst and no signal races one here.
    bursts = []
    for burst in range(8):
        await service.skip_to(local(day, 10, 0) + burst * timedelta(minutes=30))
        bursts.append(await log_hours(500))
    await service.skip_to(local(day, 14, 0))
    runs_before_notes_due = len(
        await run_histories(service.client, first.id, first.result_run_id)
    )

    # The notes owed since 09:30 fall due after eight continuations.
    await service.skip_to(local(day, 21, 31))
    evening = await status(handle)
    notes_mails = [
        (n["kind"], n["to"], n["at"])
        for n in evening["notifications"]
        if n["kind"].startswith("notes_")
    ]
    assert notes_mails == [
        ("notes_reminder", "tech", iso(local(day, 19, 30))),
        ("notes_breach", "ops", iso(local(day, 21, 30))),
        ("notes_breach", "tech", iso(local(day, 21, 30))),
    ]

    # An event id applied several runs ago still changes nothing.
    record_length = len(service.activities.store.ticket_record(ticket_id))
    await handle.signal("time_logged", bursts[0][0])
    await service.skip_to(local(day, 21, 32))
    assert await status(handle) == evening
    assert len(service.activities.store.ticket_record(ticket_id)) == record_length

    # A1: an email the next morning, before the try-other prompt.
    await service.skip_to(local(day_2, 9, 0))
    await signal("contact_attempt", channel="email", outcome="no_answer")
    await signal("notes_updated")
    await service.skip_to(local(day_2, 10, 0))
    await log_hours(496)
    # After the try-all prompt at 09:30, both methods on file are tried.
    await service.skip_to(local(day_3, 10, 0))
    await signal("contact_attempt", channel="phone", outcome="no_answer")
    await service.skip_to(local(day_3, 10, 5))
    await signal("contact_attempt", channel="email", outcome="no_answer")
    await signal("notes_updated")
    await service.skip_to(local(day_3, 11, 0))
    await log_hours(496)

    # The start's handle follows the runs and, unlike one from
    # get_workflow_handle, lets the time-skipping server skip time meanwhile.
    result = await first.result()

    # 5,000 signals in all: every event once, and the repeated one.
    assert len(sent) + 1 == 5000
    assert len({payload["event_id"] for payload in sent}) == len(sent)
    assert result["events_applied"] == len(sent)
    assert result["rejected"] == []
    hours: dict[str, float] = {}
    for burst_day, count in ((day, 4000), (day_2, 496), (day_3, 496)):
        burst_month = month(local(burst_day, 12))
        hours[burst_month] = hours.get(burst_month, 0.0) + 0.25 * count
    assert result["hours_by_month"] == hours
    # The ladder went on across the runs and closed on schedule: the later
    # of A0 + 72h (09:30) and the last method tried + 24h (10:05).
    assert result["state"] == "closed"
    assert result["close_reason"] == "unreachable"
    assert result["closed_at"] == iso(local(day_4, 10, 5))
    assert [(o["kind"], o["due_at"], o["status"]) for o in result["obligations"]] == [
        ("claim", iso(local(day, 17, 0)), "met"),
        ("first_contact", iso(local(day, 10, 0)), "met"),
        ("check_in", iso(local(day, 12, 0)), "met"),
        ("notes", iso(local(day, 21, 30)), "breached"),
        ("try_other_method", iso(local(day_3, 9, 30)), "met"),
        ("notes", iso(local(day_2, 21, 0)), "met"),
        ("try_all_methods", iso(local(day_4, 9, 30)), "met"),
        ("notes", iso(local(day_3, 22, 0)), "met"),
        ("notes", iso(local(day_3, 22, 5)), "met"),
        ("close_unreachable", iso(local(day_4, 10, 5)), "met"),
    ]
    assert [(n["kind"], n["to"], n["at"]) for n in result["notifications"]] == [
        ("check_in", "customer", iso(local(day, 12, 0))),
        *notes_mails,
        ("try_all_methods", "tech", iso(local(day_3, 9, 30))),
        ("closed_unreachable", "customer", iso(local(day_4, 10, 5))),
        ("closed_unreachable", "tech", iso(local(day_4, 10, 5))),
        ("closed_unreachable", "ops", iso(local(day_4, 10, 5))),
    ]
    assert {n["status"] for n in result["notifications"]} == {"sent"}

    # Every mail went once, under the Message-ID its notification keeps.
    mailed = message_ids(service, ticket_id)
    assert set(mailed.values()) == {1}
    assert set(mailed) == {n["message_id"] for n in result["notifications"]}

    # The record keeps every entry once, numbered without a gap, and each
    # event once.
    record = service.activities.store.ticket_record(ticket_id)
    assert [entry.sequence for entry in record] == list(range(1, len(record) + 1))
    recorded_events = Counter(
        entry.details["event_id"]
        for entry in record
        if entry.entry_type == "event" and "event_id" in entry.details
    )
    assert set(recorded_events.values()) == {1}
    assert set(recorded_events) == {payload["event_id"] for payload in sent}

    histories = await run_histories(service.client, first.id, first.result_run_id)
    assert runs_before_notes_due >= 9
    assert len(histories) >= 11
    assert task_failure_causes(histories) == []
    assert await replay_failures(histories) == []


@pytest.mark.parametrize("history_limit", [60])
async def test_updates_return_across_continuations(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    first = await service.open(ticket)
    handle = service.client.get_workflow_handle(first.id)
    await handle.execute_update("claim_update", service.event(tech=TECH_K4))

    # Each caller waits for its reply before sending the next Update, so an
    # Update is nearly always in flight when the ticket wants to continue.
    for count in range(1, 31):
        current = await handle.execute_update(
            "time_logged_update", service.event(hours=0.5)
        )
        assert current["hours_by_month"] == {month(local(day, 9)): 0.5 * count}
        assert current["events_applied"] == count + 1
    # Updates sent at once, so some arrive while the ticket continues as new.
    for _ in range(3):
        replies = await asyncio.gather(
            *(
                handle.execute_update("time_logged_update", service.event(hours=0.5))
                for _ in range(20)
            )
        )
        assert [reply["state"] for reply in replies] == ["claimed"] * 20

    await service.skip_to(local(day, 9, 5))
    current = await status(handle)
    assert current["events_applied"] == 1 + 30 + 60
    assert current["hours_by_month"] == {month(local(day, 9)): 45.0}
    histories = await run_histories(service.client, first.id, first.result_run_id)
    assert len(histories) >= 4
    assert task_failure_causes(histories) == []
    record = service.activities.store.ticket_record(ticket["ticket_id"])
    assert [entry.sequence for entry in record] == list(range(1, len(record) + 1))


@pytest.mark.parametrize("history_limit", [200])
async def test_signals_racing_continuation_are_kept(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    first = await service.open(ticket)
    handle = service.client.get_workflow_handle(first.id)
    await handle.signal("claim", service.event(tech=TECH_K4))

    # Sent in small batches back to back, so signals keep arriving while the
    # ticket continues as new.
    payloads = [service.event(hours=0.25) for _ in range(1500)]
    for start in range(0, len(payloads), 50):
        await asyncio.gather(
            *(
                handle.signal("time_logged", payload)
                for payload in payloads[start : start + 50]
            )
        )
    await service.skip_to(local(day, 9, 1))

    current = await status(handle)
    assert current["events_applied"] == 1501
    assert current["hours_by_month"] == {month(local(day, 9)): 375.0}
    record = service.activities.store.ticket_record(ticket["ticket_id"])
    recorded_events = Counter(
        entry.details["event_id"]
        for entry in record
        if entry.entry_type == "event" and "event_id" in entry.details
    )
    assert set(recorded_events.values()) == {1}
    assert len(recorded_events) == 1501
    histories = await run_histories(service.client, first.id, first.result_run_id)
    assert len(histories) >= 2
    # A signal that reaches the server before it completes the task that
    # continues makes it fail that task, and the worker runs the task again
    # with the signal. The race is likely but not certain, and no other task
    # failure is expected.
    assert set(task_failure_causes(histories)) <= {
        "WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND"
    }


@pytest.mark.parametrize("history_limit", [100])
@pytest.mark.parametrize("policy_overrides", [{"notes_within": "6h"}])
async def test_continued_ticket_keeps_start_policy(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0), timezone=None)
    first = await service.open(ticket)
    handle = service.client.get_workflow_handle(first.id)
    await handle.signal("claim", service.event(tech=TECH_K4))
    # Lets the ticket fetch the defaults before they change.
    await service.skip_to(local(day, 9, 1))
    # The service's settings change while the ticket runs. They apply to
    # tickets opened from now on, not to this one when it continues as new.
    service.activities.policy_overrides = {}
    service.activities.default_timezone = "Europe/Berlin"

    await signal_all(
        handle, "time_logged", [service.event(hours=0.25) for _ in range(150)]
    )
    await service.skip_to(local(day, 9, 30))
    await handle.signal(
        "contact_attempt", service.event(channel="phone", outcome="reached")
    )
    later = new_ticket(local(day, 9, 30), timezone=None)
    later_handle = await service.open(later)
    await service.skip_to(local(day, 9, 35))

    histories = await run_histories(service.client, first.id, first.result_run_id)
    assert len(histories) >= 2
    current = await status(handle)
    assert current["timezone"] == "America/New_York"
    notes = [(o["due_at"], o["status"]) for o in current["obligations"]]
    assert (iso(local(day, 15, 30)), "open") in notes
    assert (await status(later_handle))["timezone"] == "Europe/Berlin"


async def test_run_with_snapshot_goes_on(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    # The state a previous run hands over: claimed at 09:00, with the
    # first-contact reminder due and the whole record not yet stored.
    ledger = TicketLedger(parse_opening(ticket), "America/New_York")
    ledger.skip_late_reminders = True
    claim = service.event(tech=TECH_K4, occurred_at=iso(local(day, 9, 0)))
    await service.skip_to(local(day, 9, 45))
    ledger.receive(parse_event("claim", claim), local(day, 9, 0))
    ledger.advance(local(day, 9, 45))
    carried = CarriedTicket(
        ledger=ledger.to_snapshot(),
        defaults=TicketDefaults(timezone="Europe/Berlin", max_history_length=1000),
        continued_runs=3,
    )
    workflow_id = f"ticket-{ticket['ticket_id']}"
    service.started.append(workflow_id)
    handle = await service.client.start_workflow(
        "TicketWorkflow",
        args=[ticket, carried],
        id=workflow_id,
        task_queue=service.settings.temporal_task_queue,
    )
    # The claim applied in the previous run is not applied twice.
    await handle.signal("claim", claim)
    await service.skip_to(local(day, 10, 1))

    current = await status(handle)
    # The zone and policy come from the snapshot, not from the defaults.
    assert current["timezone"] == "America/New_York"
    assert current["events_applied"] == 1
    assert current["rejected"] == []
    assert [(n["kind"], n["to"], n["at"]) for n in current["notifications"]] == [
        ("first_contact_reminder", "tech", iso(local(day, 9, 45))),
        ("first_contact_breach", "ops", iso(local(day, 10, 0))),
        ("first_contact_breach", "tech", iso(local(day, 10, 0))),
    ]
    # The two breach mails are sent at once, in either order.
    assert Counter(service.mails(ticket["ticket_id"])) == Counter(
        [
            ("first_contact_reminder", "kim@techs.test"),
            ("first_contact_breach", "ops@company.test"),
            ("first_contact_breach", "kim@techs.test"),
        ]
    )
    record = service.activities.store.ticket_record(ticket["ticket_id"])
    assert [entry.sequence for entry in record] == list(range(1, len(record) + 1))
    assert record[0].details["event"] == "opened"


async def test_invalid_carried_input_fails(service: Service) -> None:
    day = await future_day(service)
    ticket = new_ticket(local(day, 9, 0))
    await service.skip_to(local(day, 9, 0))
    workflow_id = f"ticket-{ticket['ticket_id']}"
    service.started.append(workflow_id)
    handle = await service.client.start_workflow(
        "TicketWorkflow",
        args=[ticket, {"ledger": {"version": 99}, "defaults": {"timezone": "UTC"}}],
        id=workflow_id,
        task_queue=service.settings.temporal_task_queue,
    )

    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "InvalidCarriedTicket"
    assert "unsupported ledger snapshot version 99" in cause.message
    histories = await run_histories(service.client, workflow_id, handle.result_run_id)
    assert task_failure_causes(histories) == []


# The dev server: search attributes and the UI's current details


@pytest.fixture
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=dev_server_path(),
        search_attributes=TICKET_SEARCH_ATTRIBUTES,
        ui=False,
    )
    async with environment:
        yield environment


def upserts(history: WorkflowHistory) -> int:
    return sum(
        1
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
    )


def on_clock(moment: datetime) -> str:
    return moment.astimezone(NEW_YORK).strftime("%a %Y-%m-%d %H:%M %Z")


async def test_continued_ticket_keeps_attributes_and_details(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with MailSink("127.0.0.1", 0) as sink:
        settings = load_settings(
            temporal_task_queue=f"tickets-{uuid.uuid4()}",
            database_url=f"sqlite:///{tmp_path / 'tickets.db'}",
            **sink.smtp_settings(),
            ops_email="ops@company.test",
            default_timezone="America/New_York",
        )
        activities = worker_activities(settings, history_limit=40)
        try:
            async with create_worker(dev_env.client, settings, activities):
                await check_attributes_and_details(dev_env.client, settings)
        finally:
            activities.close()


async def check_attributes_and_details(client: Client, settings: Any) -> None:
    # High priority, so no quiet window moves a due time at any hour of the run.
    opened_at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    ticket = new_ticket(opened_at, priority="high")
    ticket_id = ticket["ticket_id"]
    summary, details = ticket_summary(ticket)
    first = await client.start_workflow(
        "TicketWorkflow",
        ticket,
        id=f"ticket-{ticket_id}",
        task_queue=settings.temporal_task_queue,
        static_summary=summary,
        static_details=details,
    )
    handle = client.get_workflow_handle(first.id)
    claimed_at = opened_at + timedelta(minutes=1)
    event = {"event_id": "e-claim", "occurred_at": iso(claimed_at), "tech": TECH_K4}
    await handle.execute_update("claim_update", event)

    for count in range(30):
        await handle.execute_update(
            "time_logged_update", {"event_id": f"e-hours-{count}", "hours": 0.5}
        )
        if (await handle.describe()).run_id != first.result_run_id:
            break
    await wait_idle(handle)

    # The new run took the attributes over and upserted nothing, because
    # nothing they show changed.
    histories = await run_histories(client, first.id, first.result_run_id)
    assert len(histories) == 2
    assert upserts(histories[0]) >= 1
    assert upserts(histories[1]) == 0
    first_contact_due = claimed_at + timedelta(hours=1)
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(TECH_ID) == "K-4"
    assert attributes.get(TICKET_STATE) == "claimed"
    assert attributes.get(NEXT_DUE_KIND) == "first_contact"
    assert attributes.get(NEXT_DUE_AT) == first_contact_due

    metadata = await handle.query(
        "__temporal_workflow_metadata", result_type=WorkflowMetadata
    )
    lines = metadata.current_details.splitlines()
    assert lines[0] == f"**{ticket_id}**: claimed, high, K-4; times in America/New_York"
    # Table rows are matched by their cells, whatever the padding between them.
    (row,) = [line for line in lines if line.startswith("| first_contact")]
    assert "K-4" in row
    assert on_clock(first_contact_due) in row

    # A change after the continuation is upserted by the new run.
    await handle.execute_update(
        "contact_attempt_update",
        {"event_id": "e-call", "channel": "phone", "outcome": "reached"},
    )
    await wait_idle(handle)
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(NEXT_DUE_KIND) == "check_in"
    assert attributes.get(NEXT_DUE_AT) == claimed_at + timedelta(hours=3)
    metadata = await handle.query(
        "__temporal_workflow_metadata", result_type=WorkflowMetadata
    )
    lines = metadata.current_details.splitlines()
    assert [line for line in lines if line.startswith("| first_contact")] == []
    assert any(line.startswith("| check_in") for line in lines)

    await handle.execute_update(
        "close_update", {"event_id": "e-close", "reason": "resolved"}
    )
    result = await handle.result()
    # The claim, the hours, the call and the close.
    assert result["events_applied"] == 1 + (count + 1) + 1 + 1
    histories = await run_histories(client, first.id, first.result_run_id)
    assert upserts(histories[-1]) >= 1
    assert task_failure_causes(histories) == []
    assert await replay_failures(histories) == []
