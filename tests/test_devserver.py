"""Updates, update-with-start, search attributes and UI texts on a dev server.

The time-skipping test server supports neither update-with-start nor list
queries by custom search attributes. So these tests start the Temporal CLI's
dev server once for the module, with the ticket's search attributes
registered. The real worker, SQLite and a mail sink run against it in real
time. Tickets are high priority, so no quiet window moves a due time
whatever the hour of the run, and a ticket that needs a deadline behind it
opens hours in the past instead of waiting for a timer.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributeKey,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities import TicketActivities
from activities.store import Store
from mailsink import MailSink
from portal import EventRejected, Tech, TicketClosed, TicketNotFound, TicketPortal
from settings import Settings, load_settings
from tests.binaries import dev_server_path
from worker import create_worker, sandboxed_runner
from workflows.display import ticket_summary
from workflows.search import (
    BREACH_COUNT,
    CUSTOMER_TIMEZONE,
    LAST_BREACH_AT,
    NEXT_DUE_AT,
    NEXT_DUE_KIND,
    TECH_ID,
    TICKET_PRIORITY,
    TICKET_SEARCH_ATTRIBUTES,
    TICKET_STATE,
)
from workflows.ticket import TicketWorkflow

NEW_YORK = ZoneInfo("America/New_York")
# Real seconds to wait for the worker or the visibility store to catch up.
WAIT_SECONDS = 5.0


@pytest.fixture(scope="module")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=dev_server_path(),
        search_attributes=TICKET_SEARCH_ATTRIBUTES,
        ui=False,
    )
    async with environment:
        yield environment


@dataclass
class DevService:
    """A worker on the dev server with its own task queue, database and mail sink."""

    client: Client
    settings: Settings
    sink: MailSink

    def tech(self) -> dict[str, str]:
        """Return a tech with an id and mail address no other test uses."""
        tag = uuid.uuid4().hex[:8]
        return {"id": f"K-{tag}", "name": "Kim Park", "email": f"kim-{tag}@techs.test"}

    def start_operation(
        self, ticket: dict[str, Any]
    ) -> WithStartWorkflowOperation[Any, Any]:
        """Return the start half of update-with-start, as a portal would send it."""
        summary, details = ticket_summary(ticket)
        return WithStartWorkflowOperation(
            "TicketWorkflow",
            ticket,
            id=f"ticket-{ticket['ticket_id']}",
            task_queue=self.settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary=summary,
            static_details=details,
        )

    async def open(self, ticket: dict[str, Any]) -> WorkflowHandle[Any, Any]:
        summary, details = ticket_summary(ticket)
        handle: WorkflowHandle[Any, Any] = await self.client.start_workflow(
            "TicketWorkflow",
            ticket,
            id=f"ticket-{ticket['ticket_id']}",
            task_queue=self.settings.temporal_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary=summary,
            static_details=details,
        )
        await wait_idle(handle)
        return handle

    async def list_ids(self, query: str, expected: set[str]) -> set[str]:
        """Return the workflow ids the query finds, once they are ``expected``.

        The visibility store catches up with the workflows shortly after each
        workflow task, so the query is repeated until it matches or time is up.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_SECONDS
        while True:
            found = {w.id async for w in self.client.list_workflows(query)}
            if found == expected or loop.time() > deadline:
                return found
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def service(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[DevService]:
    database = tmp_path_factory.mktemp("devserver") / "tickets.db"
    async with MailSink("127.0.0.1", 0) as sink:
        settings = load_settings(
            temporal_task_queue=f"tickets-{uuid.uuid4()}",
            database_url=f"sqlite:///{database}",
            **sink.smtp_settings(),
            ops_email="ops@company.test",
            default_timezone="America/New_York",
        )
        activities = TicketActivities.from_settings(settings)
        try:
            async with create_worker(dev_env.client, settings, activities):
                yield DevService(dev_env.client, settings, sink)
        finally:
            activities.close()


def seconds_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def new_ticket(opened_at: datetime) -> dict[str, Any]:
    ticket_id = f"T-{uuid.uuid4().hex[:10]}"
    return {
        "ticket_id": ticket_id,
        "opened_at": opened_at.isoformat(),
        "priority": "high",
        "source": "portal",
        "customer": {
            "id": f"C-{ticket_id}",
            "name": "Dana Reyes",
            "email": "dana@customer.test",
            "phone": "+1 555 0100",
            "timezone": "America/New_York",
            "included_hours_per_month": None,
        },
        "tech": None,
        "claimed_at": None,
    }


def event(**fields: Any) -> dict[str, Any]:
    return {"event_id": f"e-{uuid.uuid4().hex[:10]}", **fields}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def on_clock(moment: datetime) -> str:
    return moment.astimezone(NEW_YORK).strftime("%a %Y-%m-%d %H:%M %Z")


async def wait_idle(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait until the ticket has no workflow task and no activity attempt running.

    An activity that failed and waits out its retry backoff counts as idle,
    because it adds nothing to the history until its last attempt ends.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while loop.time() < deadline:
        described = await handle.describe()
        if described.status != WorkflowExecutionStatus.RUNNING:
            return
        description = described.raw_description
        running = [
            activity
            for activity in description.pending_activities
            if activity.state != PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED
            or activity.attempt == 1
        ]
        if not running and not description.HasField("pending_workflow_task"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{handle.id} still busy after {WAIT_SECONDS} s")


async def history_length(handle: WorkflowHandle[Any, Any]) -> int:
    return len([e async for e in handle.fetch_history_events()])


async def search_value(
    handle: WorkflowHandle[Any, Any], key: SearchAttributeKey[Any]
) -> Any:
    attributes = (await handle.describe()).typed_search_attributes
    return attributes.get(key)


def update_error(
    raised: pytest.ExceptionInfo[WorkflowUpdateFailedError],
) -> ApplicationError:
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def test_update_returns_new_status(service: DevService) -> None:
    opened_at = seconds_now() - timedelta(minutes=2)
    ticket = new_ticket(opened_at)
    handle = await service.open(ticket)
    tech = service.tech()
    claimed_at = opened_at + timedelta(minutes=1)

    claimed = await handle.execute_update(
        "claim_update", event(tech=tech, occurred_at=iso(claimed_at))
    )
    contact = event(channel="phone", outcome="reached")
    contacted = await handle.execute_update("contact_attempt_update", contact)
    repeated = await handle.execute_update("contact_attempt_update", contact)

    assert claimed["state"] == "claimed"
    assert claimed["tech_id"] == tech["id"]
    first_contact = [o for o in claimed["obligations"] if o["kind"] == "first_contact"]
    assert [(o["due_at"], o["status"]) for o in first_contact] == [
        (iso(claimed_at + timedelta(hours=1)), "open")
    ]
    statuses = {o["kind"]: o["status"] for o in contacted["obligations"]}
    assert statuses["first_contact"] == "met"
    assert statuses["notes"] == "open"
    assert repeated["obligations"] == contacted["obligations"]
    assert repeated["rejected"] == []


async def test_signal_still_applies_without_reply(service: DevService) -> None:
    ticket = new_ticket(seconds_now() - timedelta(minutes=1))
    handle = await service.open(ticket)
    tech = service.tech()

    await handle.signal("claim", event(tech=tech))
    await wait_idle(handle)

    current = await handle.query("status")
    assert current["state"] == "claimed"
    assert current["tech_id"] == tech["id"]


async def test_bad_update_leaves_history_unchanged(service: DevService) -> None:
    opened_at = seconds_now() - timedelta(minutes=2)
    ticket = new_ticket(opened_at)
    handle = await service.open(ticket)
    tech = service.tech()
    await handle.execute_update("claim_update", event(tech=tech))
    await wait_idle(handle)
    length_before = await history_length(handle)

    other_tech = {"id": "K-9", "email": "k9@techs.test"}
    cases = [
        (
            "contact_attempt_update",
            event(channel="pigeon", outcome="reached"),
            "invalid channel 'pigeon'",
        ),
        ("time_logged_update", event(hours=25), "invalid hours 25"),
        ("close_update", event(reason="bored"), "invalid reason 'bored'"),
        ("claim_update", event(tech=other_tech), "already claimed"),
        ("customer_message_update", event(), "missing field 'channel'"),
        ("reassign_update", event(tech=tech), f"already assigned to {tech['id']}"),
        (
            "notes_updated_update",
            event(occurred_at=iso(seconds_now() + timedelta(hours=1))),
            "more than 5 minutes in the future",
        ),
        (
            "notes_updated_update",
            event(occurred_at=iso(opened_at - timedelta(minutes=1))),
            "before the ticket opened",
        ),
        ("notes_updated_update", {"channel": "phone"}, "missing field 'event_id'"),
        ("release_update", ["not", "an", "object"], "must be a JSON object"),
    ]
    for update_name, payload, reason in cases:
        with pytest.raises(WorkflowUpdateFailedError) as raised:
            await handle.execute_update(update_name, payload)
        error = update_error(raised)
        assert error.type == "InvalidEvent", update_name
        assert reason in error.message, update_name
        # The details say the ticket's record does not contain it yet.
        assert list(error.details) == [{"recorded": False}], update_name

    assert await history_length(handle) == length_before
    # Nothing reached the workflow, so the record keeps no rejection yet.
    assert (await handle.query("status"))["rejected"] == []


async def test_update_with_two_inputs_is_rejected(service: DevService) -> None:
    handle = await service.open(new_ticket(seconds_now() - timedelta(minutes=1)))
    await handle.execute_update("claim_update", event(tech=service.tech()))
    await wait_idle(handle)
    length_before = await history_length(handle)

    with pytest.raises(WorkflowUpdateFailedError) as raised:
        await handle.execute_update("notes_updated_update", args=[event(), event()])

    error = update_error(raised)
    assert error.type == "InvalidEvent"
    assert error.message == "expected one JSON object as the input, got 2 values"
    assert await history_length(handle) == length_before


@pytest.mark.parametrize("update_name", ["release_update", "contact_attempt_update"])
async def test_update_on_unclaimed_is_rejected(
    service: DevService, update_name: str
) -> None:
    handle = await service.open(new_ticket(seconds_now() - timedelta(minutes=1)))
    length_before = await history_length(handle)

    with pytest.raises(WorkflowUpdateFailedError) as raised:
        await handle.execute_update(
            update_name, event(channel="phone", outcome="reached")
        )

    error = update_error(raised)
    assert error.type == "InvalidEvent"
    assert "is not claimed; claim it first" in error.message
    assert await history_length(handle) == length_before


async def test_closed_ticket_rejects_update(service: DevService) -> None:
    handle = await service.open(new_ticket(seconds_now() - timedelta(minutes=1)))
    tech = service.tech()
    # The tech's mailbox defers the assignment mail, so the closed ticket keeps
    # running to deliver it and can still receive an Update.
    service.sink.reject_recipient(tech["email"], "451 4.2.1 Mailbox busy")
    try:
        await handle.execute_update("reassign_update", event(tech=tech))
        closed = await handle.execute_update("close_update", event(reason="resolved"))
        await wait_idle(handle)
        length_before = await history_length(handle)

        with pytest.raises(WorkflowUpdateFailedError) as raised:
            await handle.execute_update("notes_updated_update", event())

        assert closed["state"] == "closed"
        error = update_error(raised)
        assert error.type == "TicketClosed"
        assert error.message == f"ticket {closed['ticket_id']} is closed"
        assert await history_length(handle) == length_before
    finally:
        service.sink.clear_faults()


async def test_update_to_completed_ticket_raises(service: DevService) -> None:
    handle = await service.open(new_ticket(seconds_now() - timedelta(minutes=1)))
    await handle.execute_update("close_update", event(reason="duplicate"))
    await handle.result()

    with pytest.raises(RPCError, match="workflow execution already completed"):
        await handle.execute_update("notes_updated_update", event())


async def test_update_with_start_claims_new_ticket(service: DevService) -> None:
    ticket = new_ticket(seconds_now() - timedelta(minutes=1))
    tech = service.tech()
    operation = service.start_operation(ticket)

    current = await service.client.execute_update_with_start_workflow(
        "claim_update", event(tech=tech), start_workflow_operation=operation
    )

    assert current["ticket_id"] == ticket["ticket_id"]
    assert current["state"] == "claimed"
    assert current["tech_id"] == tech["id"]
    handle = await operation.workflow_handle()
    description = await handle.describe()
    summary, details = ticket_summary(ticket)
    assert await description.static_summary() == summary
    assert await description.static_details() == details


async def test_update_with_start_claims_existing(service: DevService) -> None:
    ticket = new_ticket(seconds_now() - timedelta(minutes=1))
    opened = await service.open(ticket)
    tech = service.tech()

    current = await service.client.execute_update_with_start_workflow(
        "claim_update",
        event(tech=tech),
        start_workflow_operation=service.start_operation(ticket),
    )

    assert current["state"] == "claimed"
    assert current["tech_id"] == tech["id"]
    description = await opened.describe()
    assert description.run_id == opened.result_run_id
    assert description.status == WorkflowExecutionStatus.RUNNING


async def test_update_with_start_on_claimed_rejects(service: DevService) -> None:
    ticket = new_ticket(seconds_now() - timedelta(minutes=1))
    handle = await service.open(ticket)
    first_tech = service.tech()
    await handle.execute_update("claim_update", event(tech=first_tech))
    await wait_idle(handle)
    length_before = await history_length(handle)

    with pytest.raises(WorkflowUpdateFailedError) as raised:
        await service.client.execute_update_with_start_workflow(
            "claim_update",
            event(tech=service.tech()),
            start_workflow_operation=service.start_operation(ticket),
        )

    error = update_error(raised)
    assert error.type == "InvalidEvent"
    assert f"already claimed by {first_tech['id']}" in error.message
    assert await history_length(handle) == length_before


async def test_update_with_start_on_closed_raises(service: DevService) -> None:
    ticket = new_ticket(seconds_now() - timedelta(minutes=1))
    handle = await service.open(ticket)
    await handle.execute_update("close_update", event(reason="resolved"))
    await handle.result()
    operation = service.start_operation(ticket)

    # A ticket id is used once: REJECT_DUPLICATE keeps update-with-start from
    # opening a second run for a closed ticket.
    with pytest.raises(WorkflowAlreadyStartedError):
        await service.client.execute_update_with_start_workflow(
            "claim_update",
            event(tech=service.tech()),
            start_workflow_operation=operation,
        )
    # The operation's handle fails the same way. Reading it keeps asyncio from
    # reporting an exception that was never retrieved.
    with pytest.raises(WorkflowAlreadyStartedError):
        await operation.workflow_handle()


async def test_update_with_start_checks_event_late(service: DevService) -> None:
    opened_at = seconds_now() - timedelta(minutes=1)
    ticket = new_ticket(opened_at)
    too_early = opened_at - timedelta(hours=1)
    payload = event(tech=service.tech(), occurred_at=iso(too_early))
    operation = service.start_operation(ticket)

    # Before the ledger exists the validator checks the payload's shape only,
    # so the ticket starts and the main loop rejects the claim afterwards.
    with pytest.raises(WorkflowUpdateFailedError) as raised:
        await service.client.execute_update_with_start_workflow(
            "claim_update", payload, start_workflow_operation=operation
        )

    error = update_error(raised)
    assert error.type == "InvalidEvent"
    assert "before the ticket opened" in error.message
    current = await (await operation.workflow_handle()).query("status")
    assert current["state"] == "unclaimed"
    assert [r["event_id"] for r in current["rejected"]] == [payload["event_id"]]


async def test_update_with_start_bad_payload(service: DevService) -> None:
    ticket = new_ticket(seconds_now() - timedelta(minutes=1))
    operation = service.start_operation(ticket)

    with pytest.raises(WorkflowUpdateFailedError) as raised:
        await service.client.execute_update_with_start_workflow(
            "claim_update", event(), start_workflow_operation=operation
        )

    error = update_error(raised)
    assert error.type == "InvalidEvent"
    assert error.message == "missing tech"
    # The start does not depend on the Update: the ticket is open, unclaimed.
    current = await (await operation.workflow_handle()).query("status")
    assert current["state"] == "unclaimed"
    assert current["rejected"] == []


async def test_update_with_start_invalid_opening(service: DevService) -> None:
    ticket = new_ticket(seconds_now() - timedelta(minutes=1))
    ticket["priority"] = "urgent"
    operation: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
        "TicketWorkflow",
        ticket,
        id=f"ticket-{ticket['ticket_id']}",
        task_queue=service.settings.temporal_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )

    with pytest.raises(WorkflowUpdateFailedError) as raised:
        await service.client.execute_update_with_start_workflow(
            "claim_update",
            event(tech=service.tech()),
            start_workflow_operation=operation,
        )

    error = update_error(raised)
    assert error.type == "InvalidTicketInput"
    assert "invalid priority 'urgent'" in error.message
    with pytest.raises(WorkflowFailureError):
        await (await operation.workflow_handle()).result()


async def test_search_attributes_follow_ticket(service: DevService) -> None:
    # Opened nine hours ago, so the eight-hour claim deadline is breached.
    opened_at = seconds_now() - timedelta(hours=9)
    ticket = new_ticket(opened_at)
    handle = await service.open(ticket)
    tech = service.tech()

    assert await search_value(handle, TICKET_STATE) == "unclaimed"
    assert await search_value(handle, TECH_ID) is None
    assert await search_value(handle, BREACH_COUNT) == 1
    assert await search_value(handle, NEXT_DUE_AT) is None

    claimed_at = seconds_now() - timedelta(seconds=30)
    await handle.execute_update(
        "claim_update", event(tech=tech, occurred_at=iso(claimed_at))
    )
    await wait_idle(handle)
    attributes = (await handle.describe()).typed_search_attributes
    values = {key.name: attributes.get(key) for key in TICKET_SEARCH_ATTRIBUTES}
    assert values == {
        TECH_ID.name: tech["id"],
        TICKET_STATE.name: "claimed",
        TICKET_PRIORITY.name: "high",
        NEXT_DUE_AT.name: claimed_at + timedelta(hours=1),
        NEXT_DUE_KIND.name: "first_contact",
        BREACH_COUNT.name: 1,
        LAST_BREACH_AT.name: opened_at + timedelta(hours=8),
        CUSTOMER_TIMEZONE.name: "America/New_York",
    }

    await handle.execute_update("close_update", event(reason="resolved"))
    await handle.result()
    assert await search_value(handle, TICKET_STATE) == "closed"
    assert await search_value(handle, NEXT_DUE_AT) is None
    assert await search_value(handle, NEXT_DUE_KIND) is None


async def test_search_attributes_hold_no_contact_data(service: DevService) -> None:
    ticket = new_ticket(seconds_now() - timedelta(minutes=1))
    handle = await service.open(ticket)
    await handle.execute_update("claim_update", event(tech=service.tech()))
    await wait_idle(handle)

    attributes = (await handle.describe()).typed_search_attributes
    attribute_text = " ".join(str(pair.value) for pair in attributes)
    for private in ("Dana Reyes", "dana@customer.test", "+1 555 0100", "Kim Park"):
        assert private not in attribute_text
    summary, details = ticket_summary(ticket)
    for private in ("Dana Reyes", "dana@customer.test", "+1 555 0100"):
        assert private not in summary
        assert private not in details


async def test_list_queries_find_tickets(service: DevService) -> None:
    now = seconds_now()
    tech = service.tech()
    other_tech = service.tech()
    claimed = await service.open(new_ticket(now - timedelta(minutes=1)))
    closed = await service.open(new_ticket(now - timedelta(minutes=1)))
    breached = await service.open(new_ticket(now - timedelta(hours=9)))
    unclaimed = await service.open(new_ticket(now - timedelta(minutes=1)))
    await claimed.execute_update("claim_update", event(tech=tech))
    await closed.execute_update("claim_update", event(tech=tech))
    await closed.execute_update("close_update", event(reason="resolved"))
    await breached.execute_update("claim_update", event(tech=other_tech))
    handles = [claimed, closed, breached, unclaimed]
    for handle in handles:
        await wait_idle(handle)
    ours = "WorkflowId IN (" + ", ".join(f'"{h.id}"' for h in handles) + ")"

    by_tech = await service.list_ids(
        f'TechId = "{tech["id"]}" AND TicketState = "claimed"', {claimed.id}
    )
    closed_by_tech = await service.list_ids(
        f'TechId = "{tech["id"]}" AND TicketState = "closed"', {closed.id}
    )
    with_breach = await service.list_ids(f"{ours} AND BreachCount > 0", {breached.id})
    # The claim deadline was missed an hour ago.
    breached_lately = await service.list_ids(
        f'{ours} AND LastBreachAt > "{iso(now - timedelta(hours=2))}"', {breached.id}
    )
    breached_before = await service.list_ids(
        f'{ours} AND LastBreachAt < "{iso(now - timedelta(hours=2))}"', set()
    )
    # First contact is due within the hour on the two claimed tickets; the
    # unclaimed one owes its claim in eight hours.
    soon = iso(now + timedelta(hours=2))
    due_soon = await service.list_ids(
        f'{ours} AND NextDueAt < "{soon}"', {claimed.id, breached.id}
    )
    claims_owed = await service.list_ids(
        f'{ours} AND NextDueKind = "claim"', {unclaimed.id}
    )
    every_id = {handle.id for handle in handles}
    high = await service.list_ids(f'{ours} AND TicketPriority = "high"', every_id)
    normal = await service.list_ids(f'{ours} AND TicketPriority = "normal"', set())
    in_new_york = await service.list_ids(
        f'{ours} AND CustomerTimezone = "America/New_York"', every_id
    )

    assert by_tech == {claimed.id}
    assert closed_by_tech == {closed.id}
    assert with_breach == {breached.id}
    assert breached_lately == {breached.id}
    assert breached_before == set()
    assert due_soon == {claimed.id, breached.id}
    assert claims_owed == {unclaimed.id}
    assert high == every_id
    assert normal == set()
    assert in_new_york == every_id


async def test_describe_shows_details_and_timers(service: DevService) -> None:
    opened_at = seconds_now() - timedelta(minutes=3)
    ticket = new_ticket(opened_at)
    handle = await service.open(ticket)
    tech = service.tech()
    claimed_at = opened_at + timedelta(minutes=1)
    attempted_at = opened_at + timedelta(minutes=2)
    await handle.execute_update(
        "claim_update", event(tech=tech, occurred_at=iso(claimed_at))
    )
    await handle.execute_update(
        "contact_attempt_update",
        event(channel="phone", outcome="no_answer", occurred_at=iso(attempted_at)),
    )
    await wait_idle(handle)

    description = await handle.describe()
    summary, _ = ticket_summary(ticket)
    assert await description.static_summary() == summary
    assert summary == (
        f"Ticket {ticket['ticket_id']}: high, opened {on_clock(opened_at)}"
    )
    metadata = await handle.query(
        "__temporal_workflow_metadata", result_type=WorkflowMetadata
    )
    ladder_due = attempted_at + timedelta(hours=48)
    check_in_due = on_clock(claimed_at + timedelta(hours=3))
    notes_due = on_clock(attempted_at + timedelta(hours=12))
    assert metadata.current_details == "\n\n".join(
        [
            f"**{ticket['ticket_id']}**: claimed, high, {tech['id']}; "
            "times in America/New_York",
            # Every cell but the last ends in an em space (display.COLUMN_GAP).
            "| obligation\u2003 | owner\u2003 | due |\n|---|---|---|\n"
            f"| check_in\u2003 | service\u2003 | {check_in_due} |\n"
            f"| notes\u2003 | {tech['id']}\u2003 | {notes_due} |\n"
            f"| try_other_method\u2003 | {tech['id']}\u2003 | {on_clock(ladder_due)} |",
            "**Unreachable ladder**: step 1 of 3, try another method; "
            f"prompt {on_clock(attempted_at + timedelta(hours=24))}, "
            f"due {on_clock(ladder_due)} "
            f"(started {on_clock(attempted_at)}; tried phone)",
            "**Latest events**\n\n"
            f"- {on_clock(attempted_at)}: contact_attempt (phone, no_answer)\n"
            f"- {on_clock(claimed_at)}: claim ({tech['id']})\n"
            f"- {on_clock(opened_at)}: opened (portal)",
        ]
    )

    summaries = []
    converter = service.client.data_converter.payload_converter
    async for history_event in handle.fetch_history_events():
        if history_event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            payload = history_event.user_metadata.summary
            summaries.append(converter.from_payload(payload, str))
    first_contact_due = on_clock(claimed_at + timedelta(hours=1))
    assert summaries == [
        f"claim of ops, due {on_clock(opened_at + timedelta(hours=8))}",
        f"reminder for first_contact of {tech['id']}, due {first_contact_due}",
        f"check_in of service, due {check_in_due}",
    ]


async def test_ticket_history_replays(service: DevService) -> None:
    ticket = new_ticket(seconds_now() - timedelta(minutes=1))
    operation = service.start_operation(ticket)
    await service.client.execute_update_with_start_workflow(
        "claim_update", event(tech=service.tech()), start_workflow_operation=operation
    )
    handle = await operation.workflow_handle()
    await handle.execute_update(
        "contact_attempt_update", event(channel="email", outcome="no_answer")
    )
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update("time_logged_update", event(hours=0))
    await handle.signal("customer_message", event(channel="phone"))
    await handle.execute_update("close_update", event(reason="resolved"))
    await handle.result()

    replayer = Replayer(workflows=[TicketWorkflow], workflow_runner=sandboxed_runner())
    replayed = await replayer.replay_workflow(
        await handle.fetch_history(), raise_on_replay_failure=False
    )
    assert replayed.replay_failure is None


async def test_unregistered_attributes_stay_off(tmp_path: Path) -> None:
    # A namespace without the ticket's attributes: tickets must run without
    # them rather than fail every workflow task on the upsert.
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=dev_server_path(), ui=False
    )
    async with environment, MailSink("127.0.0.1", 0) as sink:
        settings = load_settings(
            temporal_task_queue=f"tickets-{uuid.uuid4()}",
            database_url=f"sqlite:///{tmp_path / 'tickets.db'}",
            **sink.smtp_settings(),
        )
        activities = TicketActivities.from_settings(settings)
        try:
            async with create_worker(environment.client, settings, activities):
                service = DevService(environment.client, settings, sink)
                handle = await service.open(new_ticket(seconds_now()))
                claimed = await handle.execute_update(
                    "claim_update", event(tech=service.tech())
                )
                await wait_idle(handle)
                event_types = [
                    e.event_type async for e in handle.fetch_history_events()
                ]
        finally:
            activities.close()

    assert claimed["state"] == "claimed"
    assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in event_types
    assert EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES not in event_types


@pytest.fixture
def portal(service: DevService) -> TicketPortal:
    return TicketPortal(service.client, service.settings.temporal_task_queue)


def portal_tech(service: DevService) -> Tech:
    tech = service.tech()
    return Tech(id=tech["id"], email=tech["email"], name=tech["name"])


async def test_portal_claim_opens_new_ticket(
    portal: TicketPortal, service: DevService
) -> None:
    ticket = new_ticket(seconds_now())
    tech = portal_tech(service)

    status = await portal.claim(ticket["ticket_id"], tech, opening=ticket)

    assert status["state"] == "claimed"
    assert status["tech_id"] == tech.id
    with pytest.raises(EventRejected) as rejected:
        await portal.claim(ticket["ticket_id"], portal_tech(service), opening=ticket)
    assert "already claimed by" in rejected.value.reason


def record_writes(events: list[Any]) -> list[str]:
    """Return the ticket's record writes in order: "local" or "activity"."""
    writes = []
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            if attributes.activity_type.name == "record_ticket_changes":
                writes.append("activity")
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            details = event.marker_recorded_event_attributes.details.get("data")
            data = json.loads(details.payloads[0].data) if details else {}
            if data.get("activity_type") == "record_ticket_changes":
                writes.append("local")
    return writes


async def claim_new_ticket(portal: TicketPortal, service: DevService) -> dict[str, Any]:
    """Open and claim a new ticket through the portal; return its opening."""
    ticket = new_ticket(seconds_now())
    await portal.claim(ticket["ticket_id"], portal_tech(service), opening=ticket)
    return ticket


async def test_claim_stores_ticket_in_first_task(
    portal: TicketPortal, service: DevService
) -> None:
    ticket_id = (await claim_new_ticket(portal, service))["ticket_id"]

    store = Store(service.settings.database_url)
    try:
        record = store.ticket_record(ticket_id)
    finally:
        store.dispose()
    recorded = [line.details["event"] for line in record if line.entry_type == "event"]
    assert recorded == ["opened", "claim"]
    handle = service.client.get_workflow_handle(f"ticket-{ticket_id}")
    events = [e async for e in handle.fetch_history_events()]
    completed = [
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    ]
    timers = [
        e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    ]
    assert len(completed) == 1
    assert timers != []
    assert timers[0] > completed[0]
    assert record_writes(events) == ["local"]


async def test_close_in_first_task_writes_activity(service: DevService) -> None:
    # A run must not end in a task that a local activity keeps open.
    ticket = new_ticket(seconds_now())
    handle = await service.client.start_workflow(
        "TicketWorkflow",
        ticket,
        id=f"ticket-{ticket['ticket_id']}",
        task_queue=service.settings.temporal_task_queue,
        start_signal="close",
        start_signal_args=[event(reason="duplicate")],
    )
    await handle.result()

    events = [e async for e in handle.fetch_history_events()]
    assert record_writes(events) == ["activity"]


async def test_portal_rejects_bad_event(
    portal: TicketPortal, service: DevService
) -> None:
    ticket = new_ticket(seconds_now())
    await portal.claim(ticket["ticket_id"], portal_tech(service), opening=ticket)

    with pytest.raises(EventRejected) as rejected:
        await portal.contact_attempt(
            ticket["ticket_id"], channel="pigeon", outcome="reached", event_id="e-bad"
        )
    assert rejected.value.event == "contact_attempt"
    assert "invalid channel 'pigeon'" in rejected.value.reason

    status = await portal.contact_attempt(
        ticket["ticket_id"], channel="phone", outcome="reached"
    )
    assert [
        o["status"] for o in status["obligations"] if o["kind"] == "first_contact"
    ] == ["met"]
    # The portal reported the validator's rejection, so the record keeps it.
    assert [(r["signal"], r["event_id"], r["reason"]) for r in status["rejected"]] == [
        ("contact_attempt", "e-bad", rejected.value.reason)
    ]


async def test_portal_unknown_ticket_not_found(portal: TicketPortal) -> None:
    with pytest.raises(TicketNotFound, match="ticket T-nobody not found"):
        await portal.notes_updated("T-nobody")
    with pytest.raises(TicketNotFound):
        await portal.status("T-nobody")


async def test_portal_closed_ticket_raises(
    portal: TicketPortal, service: DevService
) -> None:
    ticket = await claim_new_ticket(portal, service)
    ticket_id = ticket["ticket_id"]
    status = await portal.close(ticket_id, reason="duplicate")
    assert status["state"] == "closed"
    await portal.handle(ticket_id).result()

    with pytest.raises(TicketClosed, match=f"ticket {ticket_id} is closed"):
        await portal.notes_updated(ticket_id)
    with pytest.raises(TicketClosed, match=f"ticket {ticket_id} is closed"):
        await portal.claim(ticket_id, portal_tech(service), opening=ticket)
