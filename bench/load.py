"""Load on the dev server: the bare ceiling, ticket claims, deadlines, events, mail.

Every deadline of a pass falls at one moment, ``lead`` after its start, so
the timers fire as one burst after all starts or claims are done. A start or
claim that returns less than LATE_MARGIN before that moment is left out of
the lateness figures, and counted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from activities.store import SentMail, Store
from bench.bare import BareTimerWorkflow
from bench.measures import (
    activity_counts,
    event_time,
    history_of,
    run_bounded,
    timer_lateness,
)
from bench.processes import BenchError, CpuMeter, CpuUsage
from portal import PortalError, Tech, TicketPortal
from workflows.policy import DEFAULT_POLICY

LATE_MARGIN = timedelta(seconds=1)
# Concurrent history reads after a pass; each is one or two RPCs.
HISTORY_CONCURRENCY = 16
BREACH_KIND = "first_contact_breach"
# Each breach goes to ops and to the tech.
MAILS_PER_BREACH = 2
TECH_COUNT = 20
EVENT_TIMEOUT = 10.0
# Seconds after the last timer was due that the bare workflows may take to
# complete before the pass gives up.
COMPLETION_TIMEOUT = 300.0
PROGRESS_INTERVAL = 5.0

PrintLine = Callable[[str], None]


@dataclass
class BareResult:
    """The ceiling: starts per second and how late the one timer fired."""

    count: int
    start_rate: float
    lateness: list[float]
    late_starts: int


@dataclass
class TicketResult:
    """Claims per second, deadline lateness and mail throughput of one pass."""

    count: int
    ticket_ids: list[str]
    claim_rate: float
    late_claims: int
    lateness: list[float]
    breach_mail_lateness: list[float]
    mail_rate: float | None
    mails_sent: int
    activities: Counter[str] = field(default_factory=Counter)
    history_events: list[int] = field(default_factory=list)


async def measure_bare(
    client: Client,
    task_queue: str,
    count: int,
    concurrency: int,
    lead: timedelta,
) -> BareResult:
    """Start ``count`` bare workflows whose timers all fall due ``lead`` from now."""
    tag = uuid.uuid4().hex[:8]
    due = datetime.now(UTC) + lead
    late: set[int] = set()

    def workflow_id(index: int) -> str:
        return f"bare-{tag}-{index}"

    async def start(index: int) -> None:
        await start_bare(client, task_queue, workflow_id(index), due)
        if datetime.now(UTC) > due - LATE_MARGIN:
            late.add(index)

    seconds = await run_bounded(count, concurrency, start)

    lateness: list[float] = []

    async def read_lateness(index: int) -> None:
        await client.get_workflow_handle(workflow_id(index)).result()
        if index in late:
            return
        late_by = timer_lateness(await history_of(client, workflow_id(index)), due)
        if late_by is not None:
            lateness.append(late_by)

    # Every timer is due by now plus the lead, so only a stopped worker or
    # server lets this wait run out.
    try:
        async with asyncio.timeout(lead.total_seconds() + COMPLETION_TIMEOUT):
            await run_bounded(count, HISTORY_CONCURRENCY, read_lateness)
    except TimeoutError:
        raise BenchError(
            f"the bare workflows did not complete within "
            f"{COMPLETION_TIMEOUT:g} s of their timers; see bare-worker.log"
        ) from None
    return BareResult(count, count / seconds, lateness, len(late))


async def start_bare(
    client: Client, task_queue: str, workflow_id: str, due: datetime
) -> None:
    """Start one bare workflow with update-with-start and wait for its first task."""
    operation = WithStartWorkflowOperation(
        BareTimerWorkflow.run,
        due.isoformat(),
        id=workflow_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    await client.execute_update_with_start_workflow(
        BareTimerWorkflow.started, start_workflow_operation=operation
    )


def bench_opening(ticket_id: str, opened_at: datetime) -> dict[str, Any]:
    """Return a high-priority ticket's opening, so no quiet window moves a deadline."""
    return {
        "ticket_id": ticket_id,
        "opened_at": opened_at.isoformat(),
        "priority": "high",
        "source": "portal",
        "customer": {
            "id": f"C-{ticket_id}",
            "name": "Bench Customer",
            "email": f"{ticket_id.lower()}@customer.test",
            "phone": "+1 555 0100",
            "timezone": "America/New_York",
            "included_hours_per_month": None,
        },
        "tech": None,
        "claimed_at": None,
    }


def bench_tech(index: int) -> Tech:
    number = index % TECH_COUNT
    return Tech(id=f"K-{number}", email=f"tech-{number}@techs.test", name="Bench Tech")


async def measure_tickets(
    client: Client,
    task_queue: str,
    store: Store,
    count: int,
    concurrency: int,
    lead: timedelta,
    print_line: PrintLine,
) -> TicketResult:
    """Open and claim ``count`` tickets whose first contact falls due ``lead`` from now.

    Each claim goes through the portal client as update-with-start, dated one
    first-contact period before the deadline. Its reminder is then already
    due, so the tech gets it at the claim, and at the deadline ops and the
    tech each get a breach mail.
    """
    portal = TicketPortal(client, task_queue)
    tag = uuid.uuid4().hex[:8]
    due = datetime.now(UTC) + lead
    claimed_at = due - DEFAULT_POLICY.first_contact_within
    opened_at = claimed_at - timedelta(minutes=1)
    ticket_ids = [f"B{tag}-{index}" for index in range(count)]
    late: set[str] = set()

    async def claim(index: int) -> None:
        ticket_id = ticket_ids[index]
        await portal.claim(
            ticket_id,
            bench_tech(index),
            opening=bench_opening(ticket_id, opened_at),
            occurred_at=claimed_at,
        )
        if datetime.now(UTC) > due - LATE_MARGIN:
            late.add(ticket_id)

    seconds = await run_bounded(count, concurrency, claim)
    print_line(
        f"  claimed {count} tickets in {seconds:.1f} s; waiting for the deadline"
    )

    breaches = await wait_for_mail(
        store, BREACH_KIND, MAILS_PER_BREACH * count, due, print_line
    )
    on_time = [mail for mail in breaches if mail[0] not in late]
    breach_mail_lateness = [(sent_at - due).total_seconds() for _, sent_at in on_time]
    sent_times = sorted(sent_at for _, sent_at in breaches)
    mail_rate = None
    if len(sent_times) > 1 and sent_times[-1] > sent_times[0]:
        burst = (sent_times[-1] - sent_times[0]).total_seconds()
        mail_rate = (len(sent_times) - 1) / burst

    result = TicketResult(
        count=count,
        ticket_ids=ticket_ids,
        claim_rate=count / seconds,
        late_claims=len(late),
        lateness=[],
        breach_mail_lateness=breach_mail_lateness,
        mail_rate=mail_rate,
        mails_sent=len(breaches),
    )

    async def read_history(index: int) -> None:
        ticket_id = ticket_ids[index]
        events = await history_of(client, f"ticket-{ticket_id}")
        result.history_events.append(len(events))
        result.activities.update(activity_counts(events))
        if ticket_id in late:
            return
        late_by = timer_lateness(events, due)
        if late_by is not None:
            result.lateness.append(late_by)

    await run_bounded(count, HISTORY_CONCURRENCY, read_history)
    return result


@dataclass
class RateResult:
    """Bare starts and claims dated now, timed in alternating rounds."""

    count: int
    start_rate: float
    claim_rate: float
    # Claim rate over start rate, round by round.
    round_ratios: list[float]
    bare_cpu: CpuUsage
    claim_cpu: CpuUsage


async def measure_rates(
    client: Client,
    bare_queue: str,
    ticket_queue: str,
    count: int,
    concurrency: int,
    rounds: int,
    meter: CpuMeter,
) -> RateResult:
    """Time ``count`` bare starts and ``count`` claims, taking turns in ``rounds``.

    A claim here is what the portal sends when a tech claims a new ticket:
    update-with-start that opens and claims it at once. Its first contact falls
    due an hour later, so it sends no mail during the pass, and the bare
    workflows' timers fall due a day later. Taking turns exposes both to the
    same changes in the machine's speed: on a 2-core machine the bare start
    rate alone ranged from 42 to 63 per second over passes minutes apart.
    """
    portal = TicketPortal(client, ticket_queue)
    tag = uuid.uuid4().hex[:8]
    bare_due = datetime.now(UTC) + timedelta(days=1)
    base, extra = divmod(count, rounds)
    sizes = [base + (1 if turn < extra else 0) for turn in range(rounds)]
    bare_seconds: list[float] = []
    claim_seconds: list[float] = []
    bare_usage: list[CpuUsage] = []
    claim_usage: list[CpuUsage] = []
    offset = 0
    for turn, size in enumerate(sizes):

        async def start(index: int, first: int = offset) -> None:
            workflow_id = f"rate-{tag}-{first + index}"
            await start_bare(client, bare_queue, workflow_id, bare_due)

        async def claim(index: int, first: int = offset) -> None:
            ticket_id = f"R{tag}-{first + index}"
            now = datetime.now(UTC)
            await portal.claim(
                ticket_id,
                bench_tech(first + index),
                opening=bench_opening(ticket_id, now - timedelta(minutes=1)),
                occurred_at=now,
            )

        # Work left over from one half of a round, such as the server's
        # visibility updates, lands in the other. Swapping the order each
        # round shares it out.
        halves = [
            (start, bare_seconds, bare_usage),
            (claim, claim_seconds, claim_usage),
        ]
        if turn % 2:
            halves.reverse()
        for run_one, seconds, usage in halves:
            meter.start()
            seconds.append(await run_bounded(size, concurrency, run_one))
            usage.append(meter.read())
        offset += size
    return RateResult(
        count=count,
        start_rate=count / sum(bare_seconds),
        claim_rate=count / sum(claim_seconds),
        round_ratios=[
            bare / claim
            for bare, claim in zip(bare_seconds, claim_seconds, strict=True)
        ],
        bare_cpu=CpuUsage.total(bare_usage),
        claim_cpu=CpuUsage.total(claim_usage),
    )


async def wait_for_mail(
    store: Store, kind: str, expected: int, due: datetime, print_line: PrintLine
) -> list[tuple[str, datetime]]:
    """Wait until ``expected`` mails of ``kind`` are sent; return (ticket, sent_at).

    Gives up, with what was sent so far, when no mail of any kind was sent
    for a minute after the due time. Mail of other kinds that fell due
    earlier, such as reminders, may still hold the mailer when it is due.
    """
    loop = asyncio.get_running_loop()
    # The quiet minute counts from the due time at the earliest: mail sent
    # before it, such as reminders, may end long before.
    due_on_loop = loop.time() + (due - datetime.now(UTC)).total_seconds()
    last_count = -1
    last_change = loop.time()
    last_report = loop.time()
    while True:
        sent = await asyncio.to_thread(sent_mail, store, kind)
        every_kind = await asyncio.to_thread(count_sent_mail, store)
        now = loop.time()
        if len(sent) >= expected:
            return sent
        if every_kind != last_count:
            last_count, last_change = every_kind, now
        elif now > due_on_loop and now - max(last_change, due_on_loop) > 60:
            print_line(f"  only {len(sent)} of {expected} {kind} mails were sent")
            return sent
        if now - last_report > PROGRESS_INTERVAL and datetime.now(UTC) > due:
            print_line(f"  {len(sent)} of {expected} {kind} mails sent")
            last_report = now
        await asyncio.sleep(0.5)


def sent_mail(store: Store, kind: str) -> list[tuple[str, datetime]]:
    """Return (ticket_id, sent_at) of every mail of ``kind`` the mailer sent."""
    with Session(store.engine) as session:
        rows = session.exec(
            select(SentMail.ticket_id, SentMail.sent_at).where(
                col(SentMail.kind) == kind, col(SentMail.status) == "sent"
            )
        ).all()
    return [(ticket_id, sent_at) for ticket_id, sent_at in rows]


def count_sent_mail(store: Store) -> int:
    """Return the number of mails of every kind the mailer sent."""
    with Session(store.engine) as session:
        query = select(func.count()).where(col(SentMail.status) == "sent")
        return int(session.exec(query).one())


def count_rows(store: Store, table: Any) -> int:
    """Return the number of rows in one of the store's tables."""
    with Session(store.engine) as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


async def measure_event_latency(
    client: Client,
    task_queue: str,
    ticket_ids: list[str],
    rate: float,
    seconds: float,
    *,
    through_update: bool,
) -> tuple[list[float], int]:
    """Send contact attempts at ``rate`` a second, round robin over the tickets.

    A signal's latency runs from just before it is sent to the end of the
    first workflow task after it whose status counts it in ``events_applied``.
    That moment comes from the history, which the driver long-polls, so the
    wait adds one status query per workflow task instead of a stream of them.
    An Update's latency is its round trip, which returns the new status.
    Returns the latencies in seconds and the number of events that did not
    show, or whose Update failed, within EVENT_TIMEOUT.
    """
    portal = TicketPortal(client, task_queue)
    total = max(int(rate * seconds), 1)
    used = ticket_ids[: min(len(ticket_ids), total)]
    applied: dict[str, int] = {}

    async def read_applied(index: int) -> None:
        status = await portal.status(used[index])
        applied[used[index]] = int(status["events_applied"])

    await run_bounded(len(used), HISTORY_CONCURRENCY, read_applied)

    loop = asyncio.get_running_loop()

    async def send(ticket_id: str, target: int) -> float | None:
        try:
            async with asyncio.timeout(EVENT_TIMEOUT):
                if through_update:
                    began = loop.time()
                    await portal.contact_attempt(
                        ticket_id, channel="phone", outcome="reached"
                    )
                    return loop.time() - began
                return await signal_to_status(client, ticket_id, target)
        except (TimeoutError, PortalError, RPCError):
            return None

    tasks = []
    began = loop.time()
    for number in range(total):
        delay = began + number / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        ticket_id = used[number % len(used)]
        applied[ticket_id] += 1
        tasks.append(asyncio.create_task(send(ticket_id, applied[ticket_id])))
    outcomes = await asyncio.gather(*tasks)
    latencies = [latency for latency in outcomes if latency is not None]
    return latencies, len(outcomes) - len(latencies)


async def signal_to_status(client: Client, ticket_id: str, target: int) -> float:
    """Send one contact attempt signal; return seconds until the status counts it.

    ``target`` is the ``events_applied`` count that includes this event. The
    end is the event time of the WorkflowTaskCompleted after which a status
    query first reached it.
    """
    handle = client.get_workflow_handle(f"ticket-{ticket_id}")
    event_id = f"bench-{uuid.uuid4()}"
    payload = {"event_id": event_id, "channel": "phone", "outcome": "reached"}
    sent_at = datetime.now(UTC)
    await handle.signal("contact_attempt", payload)

    converter = client.data_converter.payload_converter
    signaled = False
    async for event in handle.fetch_history_events(wait_new_event=True):
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            payloads = event.workflow_execution_signaled_event_attributes.input.payloads
            received = converter.from_payload(payloads[0]) if payloads else None
            if isinstance(received, dict) and received.get("event_id") == event_id:
                signaled = True
        elif (
            signaled
            and event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        ):
            status = await handle.query("status")
            if int(status["events_applied"]) >= target:
                return (event_time(event) - sent_at).total_seconds()
    raise TimeoutError(f"ticket {ticket_id} ended before it applied {event_id}")
