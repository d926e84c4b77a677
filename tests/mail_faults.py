"""Mail fault scenarios: each notification reaches its reader exactly once.

Each ``run_<scenario>(workdir)`` opens tickets with the real workflow, the real
activities, a SQLite store and a mail sink. It makes the sink fail in one way
while mail falls due, then counts the copies of each Message-ID that the sink
received. The Message-IDs it expects come from the tickets' final status,
plus one report to ops for each mail to a tech or customer that the store
records as unconfirmed.

The held reply, busy server and refused connection scenarios run the worker
in this process on the time-skipping test server. The killed worker scenario
runs ``python worker.py`` on the dev server with ``tests.restarts.LocalStack``.

A scenario returns a MailFaultResult and raises ScenarioError when a ticket or
the store ended wrong, or when its fault had no effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities import TicketActivities
from activities.mailer import message_id_for, unconfirmed_report_id
from activities.store import Store
from mailsink import MailSink, message_id_of
from settings import Settings
from tests.binaries import time_skipping_server_path
from tests.faultresult import ScenarioResult
from tests.restarts import (
    MAIL_DOMAIN,
    OPS_EMAIL,
    LocalStack,
    ScenarioError,
    opening,
)
from worker import create_worker
from workflows.model import SEND_ACTIVITY, NotificationInput

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
TICKETS_PER_SCENARIO = 2

# A ticket claimed at its opening sends, by three hours later: the first
# contact reminder at 45 minutes, the breach to ops and to the tech at one
# hour and the check-in to the customer at three hours.
REMINDER_AT = timedelta(minutes=45)
BREACH_AT = timedelta(hours=1)
LAST_MAIL_AT = timedelta(hours=3)

# Short enough that a held reply fails the attempt at once, long enough for
# an SMTP exchange on loopback on a busy machine.
HELD_REPLY_SMTP_TIMEOUT_SECONDS = 1.0
SMTP_TIMEOUT_SECONDS = 5.0
# The held mails wait about a second for the kill, and the next worker sends
# a mail left ``sending`` again once this much time has passed.
KILLED_WORKER_SMTP_TIMEOUT_SECONDS = 4.0
# How long the sink stops listening, in workflow time, so connections are refused.
OUTAGE_LENGTH = timedelta(minutes=10)

# Real seconds to wait for the sink or a ticket to reach an expected state.
WAIT_SECONDS = 60.0
POLL_SECONDS = 0.05

# Statuses of a notification that went out, and of its sent_mail row.
DELIVERED_STATUSES = ("sent", "already_sent")
FINAL_MAIL_STATUSES = ("sent", "unconfirmed")


@dataclass
class MailFaultResult(ScenarioResult):
    """A ScenarioResult with what the fault did to the sends.

    ``retried_sends`` counts the send activities that needed more than one
    attempt, ``ops_reports`` the reports to ops among the expected mails and
    ``fault_replies`` the replies that the sink's faults sent.
    """

    retried_sends: int = 0
    ops_reports: int = 0
    fault_replies: int = 0


# Tickets


async def start_tickets(
    client: Client, task_queue: str, openings: Sequence[dict[str, Any]]
) -> list[WorkflowHandle[Any, Any]]:
    handles = []
    for ticket in openings:
        handle: WorkflowHandle[Any, Any] = await client.start_workflow(
            "TicketWorkflow",
            ticket,
            id=f"ticket-{ticket['ticket_id']}",
            task_queue=task_queue,
        )
        handles.append(handle)
    return handles


def new_ticket_id() -> str:
    return f"T-{uuid.uuid4().hex[:10]}"


async def status_of(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    status: dict[str, Any] = await handle.query("status")
    return status


# Sends in the history


@dataclass(frozen=True)
class Send:
    """One send activity of a ticket, as its history shows it."""

    notification: NotificationInput
    scheduled_at: datetime
    # The attempt of the last start, which the history keeps alone.
    last_attempt: int


async def sends_of(client: Client, handle: WorkflowHandle[Any, Any]) -> list[Send]:
    """Return the ticket's send activities that have started, in schedule order."""
    scheduled: dict[int, tuple[NotificationInput, datetime]] = {}
    sends = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            if attributes.activity_type.name != SEND_ACTIVITY:
                continue
            [notification] = await client.data_converter.decode(
                attributes.input.payloads, [NotificationInput]
            )
            scheduled[event.event_id] = (notification, event.event_time.ToDatetime(UTC))
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            if started.scheduled_event_id not in scheduled:
                continue
            notification, scheduled_at = scheduled[started.scheduled_event_id]
            sends.append(Send(notification, scheduled_at, started.attempt))
    return sends


def deadline_error_seconds(sends: Sequence[Send]) -> float | None:
    """Return the largest gap between a mail's due time and its send's scheduling.

    A mail fault may delay delivery, but the send must still start when the
    mail falls due.
    """
    errors = [
        abs(send.scheduled_at - datetime.fromisoformat(send.notification.due_at))
        for send in sends
    ]
    return max(errors).total_seconds() if errors else None


# Counting


def notification_message_id(ticket_id: str, notification: dict[str, Any]) -> str:
    """Return the Message-ID of one entry of the status ``notifications``.

    The status contains the Message-ID once the mail went out. For a mail
    still pending it is derived the way the mailer derives it.
    """
    message_id: str | None = notification["message_id"]
    if message_id is not None:
        return message_id
    derived = NotificationInput(
        ticket_id=ticket_id,
        sequence=notification["sequence"],
        kind=notification["kind"],
        role=notification["to"],
        recipient=None,
        due_at=notification["at"],
        timezone="UTC",
        priority="normal",
    )
    return message_id_for(derived, MAIL_DOMAIN)


@dataclass
class ExpectedMail:
    """The Message-IDs that the tickets owe, and which of them are ops reports."""

    message_ids: set[str]
    reports: set[str]


def expected_mail(
    store: Store, statuses: Sequence[dict[str, Any]]
) -> tuple[ExpectedMail, list[str]]:
    """Return the mail the tickets owe, and what is wrong with their outcome.

    Every notification must have gone out, and its sent_mail row must show
    that the server accepted it or may have. An unconfirmed mail to a tech or
    customer owes ops one report.
    """
    expected = ExpectedMail(set(), set())
    problems = []
    for status in statuses:
        ticket_id = status["ticket_id"]
        for notification in status["notifications"]:
            message_id = notification_message_id(ticket_id, notification)
            expected.message_ids.add(message_id)
            if notification["status"] not in DELIVERED_STATUSES:
                problems.append(f"{message_id} ended as {notification['status']}")

            mail = store.mail(message_id)
            found = None if mail is None else mail.status
            if found not in FINAL_MAIL_STATUSES:
                problems.append(f"sent_mail of {message_id} is {found}")
            if found == "unconfirmed" and notification["to"] != "ops":
                expected.reports.add(unconfirmed_report_id(message_id))
    expected.message_ids |= expected.reports
    return expected, problems


def count_copies(
    sink: MailSink,
    name: str,
    ticket_ids: set[str],
    expected: ExpectedMail,
    sends: Sequence[Send],
) -> MailFaultResult:
    """Count the sink's copies of the tickets' mail against ``expected``.

    ``duplicates`` counts every copy beyond the first of an expected
    Message-ID and every mail that no notification or report explains.
    """
    received = [
        message_id_of(message)
        for message in sink.messages
        if str(message["X-Ticket-Id"]) in ticket_ids
    ]
    copies = Counter(received)
    delivered = sum(1 for message_id in expected.message_ids if copies[message_id])
    return MailFaultResult(
        scenario=name,
        tickets=len(ticket_ids),
        expected=len(expected.message_ids),
        delivered=delivered,
        duplicates=len(received) - delivered,
        lost=len(expected.message_ids) - delivered,
        deadline_error_seconds=deadline_error_seconds(sends),
        retried_sends=sum(1 for send in sends if send.last_attempt > 1),
        ops_reports=len(expected.reports),
        fault_replies=len(sink.fault_replies),
    )


async def check_and_count(
    name: str,
    client: Client,
    sink: MailSink,
    database_url: str,
    handles: Sequence[WorkflowHandle[Any, Any]],
) -> MailFaultResult:
    """Read the tickets' status, history and store, then count their mail.

    Raises ScenarioError when a ticket or its stored mail ended wrong.
    """
    statuses = [await status_of(handle) for handle in handles]
    sends = []
    for handle in handles:
        sends += await sends_of(client, handle)

    store = Store(database_url)
    try:
        expected, problems = await asyncio.to_thread(expected_mail, store, statuses)
    finally:
        store.dispose()
    if problems:
        raise ScenarioError(f"{name}: " + "; ".join(problems))

    ticket_ids = {status["ticket_id"] for status in statuses}
    return count_copies(sink, name, ticket_ids, expected, sends)


# The time-skipping stack


class SkippingStack:
    """The worker in this process on the time-skipping test server.

    It has its own server, mail sink and SQLite store under ``workdir``. Use it
    with ``async with``; leaving the block stops the worker, the sink and the
    server.
    """

    def __init__(
        self, workdir: Path, smtp_timeout_seconds: float = SMTP_TIMEOUT_SECONDS
    ) -> None:
        self.workdir = workdir
        self.smtp_timeout_seconds = smtp_timeout_seconds
        self.database_url = f"sqlite:///{workdir / 'tickets.db'}"
        self.sink = MailSink(LOOPBACK, 0)
        self.handles: list[WorkflowHandle[Any, Any]] = []
        self._env: WorkflowEnvironment | None = None
        self._settings: Settings | None = None
        self._exit = contextlib.AsyncExitStack()

    @property
    def env(self) -> WorkflowEnvironment:
        assert self._env is not None, "the stack is not started"
        return self._env

    @property
    def settings(self) -> Settings:
        assert self._settings is not None, "the stack is not started"
        return self._settings

    async def __aenter__(self) -> SkippingStack:
        try:
            await self._start()
        except BaseException:
            await self._exit.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._exit.aclose()

    async def _start(self) -> None:
        self._env = await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=time_skipping_server_path()
        )
        self._exit.push_async_callback(self._env.shutdown)
        await self.sink.start()
        self._exit.push_async_callback(self.sink.stop)

        # Every setting the worker reads is given, so neither the environment
        # nor a .env file can change the scenario.
        self._settings = Settings(
            _env_file=None,
            temporal_task_queue=f"tickets-{uuid.uuid4().hex}",
            database_url=self.database_url,
            **self.sink.smtp_settings(),
            smtp_timeout_seconds=self.smtp_timeout_seconds,
            mail_from=f"ticket-guard <no-reply@{MAIL_DOMAIN}>",
            ops_email=OPS_EMAIL,
            default_timezone="America/New_York",
            policy_overrides={},
            ticket_search_attributes=False,
        )
        activities = TicketActivities.from_settings(self._settings)
        self._exit.callback(activities.close)
        worker = create_worker(self.env.client, self._settings, activities)
        await self._exit.enter_async_context(worker)

    async def now(self) -> datetime:
        return (await self.env.get_current_time()).astimezone(UTC)

    async def open_claimed_tickets(self, count: int) -> datetime:
        """Open ``count`` tickets claimed now and return their opening time."""
        opened_at = await self.now()
        openings = [opening(new_ticket_id(), opened_at) for _ in range(count)]
        self.handles += await start_tickets(
            self.env.client, self.settings.temporal_task_queue, openings
        )
        return opened_at

    async def skip_to(self, moment: datetime) -> None:
        """Let workflow time pass until ``moment``, then wait for the tickets to settle.

        The server skips over timers and retry backoffs, but a running
        activity holds the clock until it ends.
        """
        delta = moment - await self.now()
        if delta > timedelta(0):
            await self.env.sleep(delta)
        await self.settle()

    async def settle(self) -> None:
        """Wait until no ticket has an activity attempt running.

        The server reports an activity waiting out its retry backoff as
        started, with its last attempt already complete.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_SECONDS
        while await self._busy():
            if loop.time() > deadline:
                raise ScenarioError(f"tickets still busy after {WAIT_SECONDS:g} s")
            await asyncio.sleep(POLL_SECONDS)

    async def _busy(self) -> bool:
        for handle in self.handles:
            description = await handle.describe()
            if description.status != WorkflowExecutionStatus.RUNNING:
                continue
            raw = description.raw_description
            if raw.HasField("pending_workflow_task"):
                return True
            for pending in raw.pending_activities:
                started = pending.state == (
                    PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                )
                complete = pending.last_attempt_complete_time.ToDatetime()
                if started and complete < pending.last_started_time.ToDatetime():
                    return True
        return False

    async def result(self, name: str) -> MailFaultResult:
        return await check_and_count(
            name, self.env.client, self.sink, self.database_url, self.handles
        )


def require(condition: bool, name: str, problem: str) -> None:
    """Raise ScenarioError saying ``problem`` unless ``condition`` holds."""
    if not condition:
        raise ScenarioError(f"{name}: {problem}")


# Scenarios


async def run_reply_held(workdir: Path) -> MailFaultResult:
    """Hold the reply to the first contact reminders past the SMTP timeout.

    The sink keeps each reminder but never replies to its data, so the
    attempt times out with the mail unconfirmed and fails. The retry must
    send no second copy and report each reminder to ops once.
    """
    name = "reply_held"
    async with SkippingStack(workdir, HELD_REPLY_SMTP_TIMEOUT_SECONDS) as stack:
        opened_at = await stack.open_claimed_tickets(TICKETS_PER_SCENARIO)
        await stack.skip_to(opened_at + REMINDER_AT - timedelta(minutes=1))
        stack.sink.hold_replies(count=TICKETS_PER_SCENARIO)
        logger.info("Fault injected", extra={"scenario": name})
        await stack.skip_to(opened_at + LAST_MAIL_AT + timedelta(minutes=1))
        result = await stack.result(name)

    # Each unconfirmed mail owes ops a report.
    require(
        result.ops_reports == TICKETS_PER_SCENARIO,
        name,
        f"{result.ops_reports} mails ended unconfirmed, expected "
        f"{TICKETS_PER_SCENARIO}; the held replies had no effect",
    )
    return result


async def run_server_busy(workdir: Path) -> MailFaultResult:
    """Reply 421 to MAIL FROM, then to the end of the data, then recover.

    The reminders fall due while the sink rejects the sender, the breaches
    while it rejects the data. A 421 means the server took nothing, so every
    retried mail must arrive once the sink recovers.
    """
    name = "server_busy"
    async with SkippingStack(workdir) as stack:
        opened_at = await stack.open_claimed_tickets(TICKETS_PER_SCENARIO)
        await stack.skip_to(opened_at + REMINDER_AT - timedelta(minutes=5))
        stack.sink.reply_to_sender("421 4.3.2 Service not available, try later")
        logger.info("Fault injected", extra={"scenario": name, "at": "MAIL FROM"})
        await stack.skip_to(opened_at + BREACH_AT - timedelta(minutes=5))

        stack.sink.clear_faults()
        stack.sink.reply_to_data("421 4.3.0 Try again later", times=None)
        logger.info("Fault injected", extra={"scenario": name, "at": "DATA"})
        await stack.skip_to(opened_at + BREACH_AT + timedelta(minutes=10))

        stack.sink.clear_faults()
        logger.info("Fault over", extra={"scenario": name})
        await stack.skip_to(opened_at + LAST_MAIL_AT + timedelta(minutes=1))
        replies = Counter(reply.split()[1] for reply in stack.sink.fault_replies)
        result = await stack.result(name)

    require(replies["4.3.2"] > 1, name, "no retry met the 421 to MAIL FROM")
    require(replies["4.3.0"] > 1, name, "no retry met the 421 to the data")
    return result


async def run_connection_refused(workdir: Path) -> MailFaultResult:
    """Refuse SMTP connections for ten minutes of workflow time around the breaches.

    The sink stops listening a minute before the breaches fall due and
    listens again on the same port ten minutes later. Every breach must
    arrive once after that.
    """
    name = "connection_refused"
    async with SkippingStack(workdir) as stack:
        opened_at = await stack.open_claimed_tickets(TICKETS_PER_SCENARIO)
        outage_start = opened_at + BREACH_AT - timedelta(minutes=1)
        await stack.skip_to(outage_start)
        await stack.sink.stop()
        logger.info("Fault injected", extra={"scenario": name})
        await stack.skip_to(outage_start + OUTAGE_LENGTH)

        received_in_outage = len(stack.sink.messages)
        await stack.sink.start()
        logger.info("Fault over", extra={"scenario": name})
        await stack.skip_to(opened_at + LAST_MAIL_AT + timedelta(minutes=1))
        result = await stack.result(name)

    # Only the reminders fell due before the outage.
    require(
        received_in_outage == TICKETS_PER_SCENARIO,
        name,
        f"{received_in_outage} mails arrived before the sink listened again",
    )
    return result


class ShortTimeoutStack(LocalStack):
    """A LocalStack whose worker gives each SMTP exchange a few seconds only.

    A mail left ``sending`` by a killed worker is sent again once the SMTP
    timeout has passed, so a short one keeps the scenario short.
    """

    def worker_environment(self) -> dict[str, str]:
        environment = super().worker_environment()
        environment["SMTP_TIMEOUT_SECONDS"] = str(KILLED_WORKER_SMTP_TIMEOUT_SECONDS)
        return environment


async def run_worker_killed_mid_send(workdir: Path) -> MailFaultResult:
    """Kill the worker with SIGKILL while it sends, then start another one.

    Each ticket is reassigned, which mails the new tech at once. Half of the
    tickets have that mail held after the final dot, the other half before
    the DATA command got its 354 reply. After the kill the first mails are
    unconfirmed: the sink has them, and the next worker must not send them
    again but report each to ops. The others never reached the sink, and the
    next worker must send each once.

    Temporal would retry a killed attempt once its 60-second start-to-close
    timeout passed. The scenario fails each dead attempt through the client
    instead, which brings the same retry without a minute of waiting.
    """
    name = "worker_killed_mid_send"
    database_url = f"sqlite:///{workdir / 'tickets.db'}"
    per_group = TICKETS_PER_SCENARIO
    async with ShortTimeoutStack(workdir, database_url) as stack:
        client = stack.client
        sink = stack.sink
        opened_at = datetime.now(UTC)
        openings = [opening(new_ticket_id(), opened_at) for _ in range(2 * per_group)]
        handles = await start_tickets(client, stack.task_queue, openings)
        after_dot, before_dot = handles[:per_group], handles[per_group:]

        sink.hold_replies()
        await reassign(after_dot)
        await wait_for(
            lambda: len(sink.messages) == per_group, name, "mail held after the dot"
        )
        sink.hold_data_commands()
        await reassign(before_dot)
        await wait_for(
            lambda: sink.data_commands_waiting == per_group,
            name,
            "DATA commands held",
        )

        attempts = await running_sends(handles)
        require(
            len(attempts) == len(handles),
            name,
            f"{len(attempts)} first send attempts running, expected {len(handles)}",
        )
        stack.worker.kill()
        await stack.worker.stop()
        logger.info("Worker killed", extra={"scenario": name})

        sink.release_replies()
        for workflow_id, run_id, activity_id in attempts:
            await client.get_async_activity_handle(
                workflow_id=workflow_id, run_id=run_id, activity_id=activity_id
            ).fail(ApplicationError("the worker was killed", type="WorkerKilled"))
        await stack.start_worker()

        await wait_until_settled(handles, name)
        return await check_and_count(name, client, sink, database_url, handles)


async def reassign(handles: Sequence[WorkflowHandle[Any, Any]]) -> None:
    """Reassign each ticket to a new tech, which mails that tech at once."""
    for handle in handles:
        tag = handle.id.lower()
        await handle.signal(
            "reassign",
            {
                "event_id": f"e-{uuid.uuid4().hex[:12]}",
                "occurred_at": datetime.now(UTC).isoformat(),
                "tech": {
                    "id": "K-7",
                    "name": "Lee Moss",
                    "email": f"lee-{tag}@techs.test",
                },
            },
        )


async def wait_for(condition: Callable[[], bool], name: str, description: str) -> None:
    """Poll ``condition`` in real time; raise ScenarioError if it stays false."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while not condition():
        if loop.time() > deadline:
            raise ScenarioError(f"{name}: no {description} after {WAIT_SECONDS:g} s")
        await asyncio.sleep(POLL_SECONDS)


async def running_sends(
    handles: Sequence[WorkflowHandle[Any, Any]],
) -> list[tuple[str, str, str]]:
    """Return (workflow id, run id, activity id) of each first send attempt running."""
    attempts = []
    for handle in handles:
        description = await handle.describe()
        for pending in description.raw_description.pending_activities:
            started = PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            first_running = pending.state == started and pending.attempt == 1
            if pending.activity_type.name == SEND_ACTIVITY and first_running:
                attempt = (handle.id, description.run_id, pending.activity_id)
                attempts.append(attempt)
    return attempts


async def wait_until_settled(
    handles: Sequence[WorkflowHandle[Any, Any]], name: str
) -> None:
    """Wait until no ticket has an activity or a workflow task pending.

    It reads the server's description rather than the ``status`` query,
    because a query can go to the killed worker's sticky queue and wait there.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    for handle in handles:
        while True:
            raw = (await handle.describe()).raw_description
            if not raw.pending_activities and not raw.HasField("pending_workflow_task"):
                break
            if loop.time() > deadline:
                raise ScenarioError(
                    f"{name}: {handle.id} still busy after {WAIT_SECONDS:g} s"
                )
            await asyncio.sleep(0.2)
