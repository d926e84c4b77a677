"""The worker's Prometheus endpoint: the SDK's metrics and the ticket counters.

The tickets run on the time-skipping server with the real activities, a
SQLite store and a mail sink. The worker's client uses the runtime that
``worker.create_runtime`` builds, and each test reads the counters over HTTP
from ``/metrics`` on loopback, as Prometheus would.
"""

from __future__ import annotations

import asyncio
import re
import socket
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.runtime import MetricBuffer, Runtime, TelemetryConfig
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Replayer

from activities import TicketActivities
from activities.mailer import (
    MAILS_SENT_METRIC,
    MailDeliveryUnconfirmed,
    Mailer,
)
from activities.store import Store
from mailsink import MailSink
from settings import Settings, SettingsError, load_settings
from tests.binaries import free_port, time_skipping_server_path
from tests.restarts import opening
from worker import (
    MetricsEndpointError,
    create_runtime,
    create_worker,
    workflow_runner,
)
from workflows.model import NotificationInput, Person
from workflows.ticket import BREACHES_METRIC, TicketWorkflow

# How long to wait in real time for mail or a metric that is on its way.
WAIT_SECONDS = 10.0

# One line of the Prometheus text format: a name, optional labels, a value.
_SAMPLE_LINE = re.compile(
    r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$"
)
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')

# The mails of a high-priority ticket claimed at its opening, whose tech
# misses first contact and whose customer's address is rejected, by kind,
# role and status, up to its close after the three-hour check-in.
BREACH_TICKET_MAILS = {
    ("first_contact_reminder", "tech", "sent"): 1.0,
    ("first_contact_breach", "ops", "sent"): 1.0,
    ("first_contact_breach", "tech", "sent"): 1.0,
    ("check_in", "customer", "failed"): 1.0,
    ("delivery_failure", "ops", "sent"): 1.0,
}


@dataclass(frozen=True)
class Sample:
    """One sample of a scrape: metric name, labels and value."""

    name: str
    labels: dict[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    """Parse the Prometheus text exposition format, skipping comments."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_LINE.match(line)
        assert match is not None, f"not a Prometheus sample line: {line!r}"
        labels = dict(_LABEL.findall(match["labels"] or ""))
        samples.append(Sample(match["name"], labels, float(match["value"])))
    return samples


async def scrape(port: int) -> list[Sample]:
    """Fetch and parse ``/metrics`` from the endpoint on loopback."""

    def fetch() -> str:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
            return body.decode("utf-8")

    return parse_metrics(await asyncio.to_thread(fetch))


def counter_values(
    samples: list[Sample], name: str, task_queue: str, label_names: tuple[str, ...]
) -> dict[tuple[str, ...], float]:
    """Return the values of counter ``name`` on ``task_queue``, keyed by labels."""
    return {
        tuple(sample.labels.get(label, "") for label in label_names): sample.value
        for sample in samples
        if sample.name == name and sample.labels.get("task_queue") == task_queue
    }


@dataclass
class MeteredService:
    """A worker whose client exposes metrics on ``port``, and its mail sink."""

    env: WorkflowEnvironment
    runtime: Runtime
    settings: Settings
    sink: MailSink
    port: int

    @property
    def task_queue(self) -> str:
        return self.settings.temporal_task_queue

    async def mails(self) -> dict[tuple[str, ...], float]:
        samples = await scrape(self.port)
        return counter_values(
            samples, MAILS_SENT_METRIC, self.task_queue, ("kind", "role", "status")
        )

    async def breaches(self) -> dict[tuple[str, ...], float]:
        samples = await scrape(self.port)
        return counter_values(samples, BREACHES_METRIC, self.task_queue, ("kind",))

    async def wait_for_mails(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_SECONDS
        while len(self.sink.messages) < count:
            assert loop.time() < deadline, (
                f"{len(self.sink.messages)} mails after {WAIT_SECONDS:g} s, "
                f"expected {count}"
            )
            await asyncio.sleep(0.05)


@pytest.fixture
def history_limit() -> int:
    """History events after which the test's tickets continue as new."""
    return 10_000


@pytest.fixture
async def metered(tmp_path: Path, history_limit: int) -> AsyncIterator[MeteredService]:
    port = free_port()
    async with MailSink("127.0.0.1", 0) as sink:
        settings = load_settings(
            temporal_task_queue=f"tickets-{uuid.uuid4().hex}",
            database_url=f"sqlite:///{tmp_path / 'tickets.db'}",
            **sink.smtp_settings(),
            ops_email="ops@company.test",
            default_timezone="America/New_York",
            metrics_port=port,
            metrics_address="127.0.0.1",
        )
        runtime = create_runtime(settings)
        env = await WorkflowEnvironment.start_time_skipping(
            runtime=runtime, test_server_existing_path=time_skipping_server_path()
        )
        store = Store(settings.database_url)
        store.create_tables()
        activities = TicketActivities(
            store,
            Mailer(settings, store),
            settings.default_timezone,
            max_history_length=history_limit,
        )
        try:
            async with env, create_worker(env.client, settings, activities):
                yield MeteredService(env, runtime, settings, sink, port)
        finally:
            activities.close()


async def open_breaching_ticket(
    service: MeteredService,
) -> tuple[WorkflowHandle[Any, Any], datetime]:
    """Open a ticket claimed at once whose customer's mail address is rejected."""
    opened_at = await service.env.get_current_time()
    ticket_id = f"T-{uuid.uuid4().hex[:10]}"
    ticket = opening(ticket_id, opened_at)
    service.sink.reject_recipient(ticket["customer"]["email"])
    handle: WorkflowHandle[Any, Any] = await service.env.client.start_workflow(
        "TicketWorkflow",
        ticket,
        id=f"ticket-{ticket_id}",
        task_queue=service.task_queue,
    )
    return handle, opened_at


async def close_ticket(handle: WorkflowHandle[Any, Any], at: datetime) -> None:
    await handle.execute_update(
        "close_update",
        {
            "event_id": f"e-{uuid.uuid4().hex[:10]}",
            "occurred_at": at.isoformat(),
            "reason": "resolved",
        },
    )
    await handle.result()


async def run_breach_ticket(service: MeteredService) -> WorkflowHandle[Any, Any]:
    """Run a ticket past its first-contact breach and failed check-in, then close it."""
    handle, opened_at = await open_breaching_ticket(service)
    await service.env.sleep(timedelta(hours=3, minutes=1))
    await service.wait_for_mails(4)
    await close_ticket(handle, opened_at + timedelta(hours=3, minutes=1))
    return handle


async def test_metrics_count_mails_and_breaches(metered: MeteredService) -> None:
    await run_breach_ticket(metered)

    assert await metered.mails() == BREACH_TICKET_MAILS
    assert await metered.breaches() == {("first_contact",): 1.0}


async def test_metrics_include_sdk_metrics(metered: MeteredService) -> None:
    await run_breach_ticket(metered)

    # The worker records the completion after the server has the result.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while True:
        samples = await scrape(metered.port)
        completed = counter_values(
            samples, "temporal_workflow_completed", metered.task_queue, ()
        )
        if completed or loop.time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert completed == {(): 1.0}
    slots = counter_values(
        samples,
        "temporal_worker_task_slots_available",
        metered.task_queue,
        ("worker_type",),
    )
    assert ("WorkflowWorker",) in slots
    assert ("ActivityWorker",) in slots


async def test_replayed_ticket_counts_no_breach_again(
    metered: MeteredService,
) -> None:
    handle = await run_breach_ticket(metered)
    history = await handle.fetch_history()

    replayer = Replayer(
        workflows=[TicketWorkflow],
        workflow_runner=workflow_runner(),
        runtime=metered.runtime,
    )
    await replayer.replay_workflow(history)

    # The replayer labels metrics with its own namespace and task queue, so
    # every sample of the counter counts.
    samples = await scrape(metered.port)
    breaches = [s for s in samples if s.name == BREACHES_METRIC]
    assert [(s.labels["kind"], s.value) for s in breaches] == [("first_contact", 1.0)]


@pytest.mark.parametrize("history_limit", [150])
async def test_continued_ticket_counts_breach_once(
    metered: MeteredService,
) -> None:
    handle, opened_at = await open_breaching_ticket(metered)
    await metered.env.sleep(timedelta(hours=1, minutes=5))
    await metered.wait_for_mails(3)
    first_run_id = (await handle.describe()).run_id

    # Each applied event adds its Update, a workflow task and a record write
    # to the history, until the run continues as new.
    at = opened_at + timedelta(hours=1, minutes=5)
    for _ in range(40):
        await handle.execute_update(
            "notes_updated_update",
            {"event_id": f"e-{uuid.uuid4().hex[:10]}", "occurred_at": at.isoformat()},
        )
        if (await handle.describe()).run_id != first_run_id:
            break
    await close_ticket(handle, at)

    first_run = metered.env.client.get_workflow_handle(handle.id, run_id=first_run_id)
    last_event = None
    async for event in first_run.fetch_history_events():
        last_event = event
    assert last_event is not None
    assert (
        last_event.event_type
        == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    )
    assert await metered.breaches() == {("first_contact",): 1.0}


async def test_unconfirmed_mail_counted_as_unconfirmed(
    tmp_path: Path, mail_sink: MailSink
) -> None:
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'tickets.db'}",
        **mail_sink.smtp_settings(),
        smtp_timeout_seconds=1,
        ops_email="ops@company.test",
    )
    store = Store(settings.database_url)
    store.create_tables()
    buffer = MetricBuffer(100)
    runtime = Runtime(telemetry=TelemetryConfig(metrics=buffer))
    environment = ActivityEnvironment()
    environment.metric_meter = runtime.metric_meter
    notification = NotificationInput(
        ticket_id="T-1001",
        sequence=2,
        kind="first_contact_breach",
        role="tech",
        recipient=Person(id="K-4", name="Kim Park", email="kim@techs.test"),
        due_at="2026-06-10T13:00:00+00:00",
        timezone="America/New_York",
        priority="high",
        customer_name="Dana Reyes",
        tech_name="Kim Park",
        owed_kind="first_contact",
        owed_due_at="2026-06-10T13:00:00+00:00",
    )

    mail_sink.hold_replies()
    try:
        with pytest.raises(MailDeliveryUnconfirmed):
            await environment.run(Mailer(settings, store).send, notification)
    finally:
        mail_sink.release_replies()
        store.dispose()

    counted = [
        (update.value, dict(update.attributes))
        for update in buffer.retrieve_updates()
        if update.metric.name == MAILS_SENT_METRIC
    ]
    assert len(counted) == 1
    value, attributes = counted[0]
    assert value == 1
    assert attributes["kind"] == "first_contact_breach"
    assert attributes["role"] == "tech"
    assert attributes["status"] == "unconfirmed"


def test_port_in_use_raises_metrics_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = load_settings(metrics_port=port, metrics_address="127.0.0.1")

        with pytest.raises(MetricsEndpointError, match=f"127.0.0.1:{port}"):
            create_runtime(settings)


def test_metrics_endpoint_off_without_port() -> None:
    settings = load_settings(metrics_port="")

    assert settings.metrics_port is None
    assert settings.metrics_bind_address is None


def test_metrics_bind_address_brackets_ipv6() -> None:
    settings = load_settings(metrics_port=9464, metrics_address="::")

    assert settings.metrics_bind_address == "[::]:9464"


def test_metrics_address_must_be_ip() -> None:
    with pytest.raises(SettingsError, match="METRICS_ADDRESS: .*not an IP address"):
        load_settings(metrics_address="metrics.example.com")
