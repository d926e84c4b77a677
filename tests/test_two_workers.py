"""Two worker processes on one task queue share the tickets without a duplicate.

Two runs of ``python worker.py`` poll one task queue of a dev server and share
one store, PostgreSQL when the local server runs and SQLite otherwise. The
policy is shrunk to seconds, so each ticket, claimed at its opening, gets its
first-contact reminder after 6 seconds, misses first contact after 12 and
has its customer check-in after 15. Tickets open at 20 a second. The test
then closes every ticket and checks that each deadline fired once, that each
mail arrived once, that the store recorded each entry once, and, from the
workers' metrics endpoints, that both workers sent mail and completed
tickets.

The default run drives 40 tickets; the variant marked ``slow`` drives 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from activities.mailer import MAILS_SENT_METRIC
from activities.store import Store
from tests.binaries import free_port
from tests.restarts import (
    LOOPBACK,
    POSTGRES_URL,
    LadderTicket,
    LocalStack,
    MailKey,
    ScenarioSkipped,
    check_store,
    opening,
    postgres_schema,
)
from workflows.ticket import BREACHES_METRIC

# The ticket skips a reminder that it only gets to once the deadline itself
# has passed, so reminder and deadline are 6 seconds apart, which leaves room
# for workflow tasks that wait behind others on two busy cores.
POLICY_OVERRIDES = {
    "first_contact_reminder_before": "6s",
    "first_contact_within": "12s",
    "check_in_after": "15s",
}
# Tickets opened per second. A support desk opens them over time, and 200
# at once would queue every first reminder behind 200 openings.
OPENINGS_PER_SECOND = 20
# The mails each ticket owes by its check-in, as (kind, role). The tech's
# first-contact reminder comes too, unless the ticket got to it only after the
# deadline had passed. The ticket then skips it and sends the breach mail.
DEADLINE_MAILS = (
    ("first_contact_breach", "ops"),
    ("first_contact_breach", "tech"),
    ("check_in", "customer"),
)
REMINDER = ("first_contact_reminder", "tech")
# Real seconds to wait for the deadline mails after the last ticket opened.
# On two cores shared with other work, 200 tickets got their breach mails up
# to 41 seconds late, so this leaves room beyond that.
MAIL_WAIT_SECONDS = 90.0
# Updates in flight at once when closing the tickets.
CONCURRENT_UPDATES = 20


class TwoWorkerStack(LocalStack):
    """The local stack whose workers each serve metrics on a port of their own."""

    def __init__(self, workdir: Path, database_url: str) -> None:
        super().__init__(workdir, database_url)
        self.metrics_ports: list[int] = []

    def worker_environment(self) -> dict[str, str]:
        environment = super().worker_environment()
        port = free_port()
        self.metrics_ports.append(port)
        environment.update(
            {
                "POLICY_OVERRIDES": json.dumps(POLICY_OVERRIDES),
                "METRICS_PORT": str(port),
                "METRICS_ADDRESS": LOOPBACK,
            }
        )
        return environment


@contextlib.contextmanager
def shared_database(workdir: Path) -> Iterator[str]:
    """Yield the URL of an empty store: a PostgreSQL schema, else a SQLite file.

    LocalStack applies the migrations before it starts a worker.
    """
    with contextlib.ExitStack() as cleanup:
        try:
            schema, _port = cleanup.enter_context(postgres_schema())
            url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
        except ScenarioSkipped:
            url = f"sqlite:///{workdir / 'tickets.db'}"
        yield url


def scrape_counters(port: int, name: str) -> list[tuple[dict[str, str], float]]:
    """Return the labels and value of each sample of ``name`` at the endpoint."""
    url = f"http://{LOOPBACK}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode("utf-8")
    samples = []
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _space, value = line.rpartition(" ")
        labels: dict[str, str] = {}
        if "{" in series:
            for pair in series[series.index("{") + 1 : -1].split('",'):
                key, _equals, quoted = pair.partition("=")
                labels[key] = quoted.strip('"')
        samples.append((labels, float(value)))
    return samples


async def open_tickets(stack: LocalStack, count: int) -> list[LadderTicket]:
    """Start ``count`` tickets at OPENINGS_PER_SECOND, each claimed at its opening.

    A start that the server is slow to accept does not hold back the next.
    """

    async def start(ticket_id: str) -> LadderTicket:
        handle: WorkflowHandle[Any, Any] = await stack.client.start_workflow(
            "TicketWorkflow",
            opening(ticket_id, datetime.now(UTC)),
            id=f"ticket-{ticket_id}",
            task_queue=stack.task_queue,
        )
        return LadderTicket(ticket_id, handle)

    starts = []
    for _ in range(count):
        ticket_id = f"T-{uuid.uuid4().hex[:10]}"
        starts.append(asyncio.create_task(start(ticket_id)))
        await asyncio.sleep(1 / OPENINGS_PER_SECOND)
    return list(await asyncio.gather(*starts))


async def wait_for_mails(stack: LocalStack, tickets: Sequence[LadderTicket]) -> None:
    expected = {
        MailKey(ticket.ticket_id, kind, role)
        for ticket in tickets
        for kind, role in DEADLINE_MAILS
    }
    until = datetime.now(UTC) + timedelta(seconds=MAIL_WAIT_SECONDS)
    await stack.sink.wait_for(list(expected), until)


async def close_all(tickets: Sequence[LadderTicket]) -> list[dict[str, Any]]:
    """Close every ticket through its Update and return the final statuses."""
    limit = asyncio.Semaphore(CONCURRENT_UPDATES)

    async def close(ticket: LadderTicket) -> dict[str, Any]:
        async with limit:
            await ticket.send("close", datetime.now(UTC), reason="resolved")
            status: dict[str, Any] = await ticket.handle.result()
            return status

    return list(await asyncio.gather(*(close(t) for t in tickets)))


def breaches_recorded(
    database_url: str, ticket_ids: Sequence[str]
) -> list[Counter[str]]:
    """Count each ticket's stored obligation entries that record a breach, by kind."""
    store = Store(database_url)
    try:
        return [
            Counter(
                line.details["kind"]
                for line in store.ticket_record(ticket_id)
                if line.entry_type == "obligation"
                and line.details["change"] == "breached"
            )
            for ticket_id in ticket_ids
        ]
    finally:
        store.dispose()


def owed_mails(ticket_id: str, status: dict[str, Any]) -> Counter[MailKey]:
    """Count the mails listed in the ticket's final status, by kind and role."""
    return Counter(
        MailKey(ticket_id, notification["kind"], notification["to"])
        for notification in status["notifications"]
    )


async def scrape_all(ports: Sequence[int], name: str) -> list[list[Any]]:
    """Scrape counter ``name`` from each worker's endpoint, in worker order."""
    scrapes = [asyncio.to_thread(scrape_counters, port, name) for port in ports]
    return list(await asyncio.gather(*scrapes))


async def run_two_workers(workdir: Path, ticket_count: int) -> None:
    with shared_database(workdir) as database_url:
        await check_two_workers(workdir, database_url, ticket_count)


async def check_two_workers(
    workdir: Path, database_url: str, ticket_count: int
) -> None:
    stack = TwoWorkerStack(workdir, database_url)
    async with stack:
        await stack.start_worker()
        tickets = await open_tickets(stack, ticket_count)
        await wait_for_mails(stack, tickets)
        statuses = await close_all(tickets)
        for worker in stack.workers:
            worker.check_running()

        ports = stack.metrics_ports
        mails = await scrape_all(ports, MAILS_SENT_METRIC)
        breaches = await scrape_all(ports, BREACHES_METRIC)
        completed = await scrape_all(ports, "temporal_workflow_completed")

    # Each ticket owes each deadline's mails once, and the reminder at most once.
    owed: Counter[MailKey] = Counter()
    for ticket, status in zip(tickets, statuses, strict=True):
        assert (status["state"], status["close_reason"]) == ("closed", "resolved")
        ticket_owes = owed_mails(ticket.ticket_id, status)
        for kind, role in DEADLINE_MAILS:
            assert ticket_owes[MailKey(ticket.ticket_id, kind, role)] == 1
        assert ticket_owes[MailKey(ticket.ticket_id, *REMINDER)] <= 1
        assert sum(ticket_owes.values()) == len(status["notifications"])
        owed += ticket_owes

    # Each owed mail arrived once, under one Message-ID, and no other mail.
    arrivals = stack.sink.arrivals_of({t.ticket_id for t in tickets})
    copies = Counter(arrival.message_id for arrival in arrivals)
    assert [mid for mid, count in copies.items() if count > 1] == []
    assert Counter(arrival.key for arrival in arrivals) == owed

    # The store recorded each event, obligation change and mail once.
    problems = await asyncio.to_thread(check_store, database_url, tickets, statuses)
    assert problems == []
    ticket_ids = [ticket.ticket_id for ticket in tickets]
    recorded = await asyncio.to_thread(breaches_recorded, database_url, ticket_ids)
    for ticket_id, breaches_of_ticket in zip(ticket_ids, recorded, strict=True):
        assert breaches_of_ticket == Counter({"first_contact": 1}), ticket_id

    # Both workers worked, and together they counted each mail and breach once.
    sent_by_worker = [
        sum(value for labels, value in samples if labels["status"] == "sent")
        for samples in mails
    ]
    assert all(sent > 0 for sent in sent_by_worker), sent_by_worker
    assert sum(sent_by_worker) == len(arrivals)
    breaches_by_worker = [sum(value for _, value in samples) for samples in breaches]
    assert sum(breaches_by_worker) == ticket_count
    completed_by_worker = [sum(value for _, value in samples) for samples in completed]
    assert all(count > 0 for count in completed_by_worker), completed_by_worker
    assert sum(completed_by_worker) == ticket_count


async def test_two_workers_share_forty_tickets(tmp_path: Path) -> None:
    await run_two_workers(tmp_path, 40)


# Took 60 to 100 seconds on two shared cores, near the suite's 120-second limit.
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_two_workers_share_two_hundred_tickets(tmp_path: Path) -> None:
    await run_two_workers(tmp_path, 200)
