"""Fault scenarios on a local stack: killed worker, restarted server, store outage.

Each scenario starts the Temporal CLI's dev server with its state in a SQLite
file, a mail sink in this process and the real worker (``python worker.py``)
as a subprocess, with the ladder step shrunk to a few seconds through
POLICY_OVERRIDES. It drives its tickets through the whole unreachable ladder
and injects its fault between two steps. Then it compares each mail's arrival
with the time it was due, the sink's copies with the mails the tickets owe,
and the stored record with the workflows' final status.

``run_<scenario>(workdir)`` returns a ScenarioResult. It raises ScenarioError
when the stored record is wrong or the fault had no effect, and
ScenarioSkipped when a service it needs is not running. Every process it
starts is stopped before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError

from activities.store import Store
from mailsink import MailSink
from migrations import upgrade
from stack import SEARCH_ATTRIBUTES, temporal_responds
from tests.binaries import dev_server_path, free_port
from tests.faultresult import ScenarioResult
from worker import STICKY_QUEUE_TIMEOUT

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent.parent
WORKER_SCRIPT = PROJECT_DIR / "worker.py"
LOOPBACK = "127.0.0.1"
NAMESPACE = "default"
OPS_EMAIL = "ops@company.test"
MAIL_DOMAIN = "ticket-guard.test"

# Each ladder step lasts this long instead of 24 hours. Restarting the worker
# or the dev server took 1 to 2 seconds on a two-core machine, so a restart
# injected right after a step ends before the next step falls due.
LADDER_STEP = timedelta(seconds=4)
POLICY_OVERRIDES = {"ladder_step": f"{int(LADDER_STEP.total_seconds())}s"}
TICKETS_PER_SCENARIO = 2

# How far from its due time a mail may arrive and still count as on time. A
# timer fires on the server at its due time. The workflow task, the send
# activity and the SMTP exchange on loopback then took under a second on a
# busy two-core machine, so the rest is headroom. It stays below the ladder
# step and the first 5-second retry interval, so a mail that waited for
# either fails the check.
DEADLINE_TOLERANCE_SECONDS = 2.0

# A worker killed with SIGKILL leaves its sticky task queue behind. A
# workflow task that falls due just after the kill still goes there and waits
# out worker.py's STICKY_QUEUE_TIMEOUT before another worker gets it. So a
# deadline just after a crash fires up to this much later.
STICKY_QUEUE_TIMEOUT_SECONDS = STICKY_QUEUE_TIMEOUT.total_seconds()

STARTUP_TIMEOUT_SECONDS = 60.0
# A scenario whose tickets have not closed by then has hung. It is below
# pytest's timeout of 120 seconds, so the scenario stops its processes itself.
SCENARIO_TIMEOUT_SECONDS = 90.0
# How long to wait for a mail past its due time before calling it lost.
MAIL_WAIT_SECONDS = 40.0
POLL_SECONDS = 0.05
STOP_TIMEOUT_SECONDS = 10.0

# How long the store stays unreachable, each of the two times in a scenario.
# A locked SQLite file makes a write wait for the 5-second busy timeout
# before it fails, so its outage must be longer. A cut PostgreSQL connection
# fails at once, and an outage shorter than the first 5-second retry interval
# ends before that retry.
SQLITE_OUTAGE = timedelta(seconds=7)
# What the mailer logs when it tries again to record a sent mail.
SENT_RECORD_RETRIED = "Recording a sent mail failed, trying again"
POSTGRES_OUTAGE = timedelta(seconds=4)

# The PostgreSQL server of the development machine and CI, as in the tests'
# conftest. Scenarios use their own schema there and drop it afterwards.
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

# Kinds of the mails that the mailer sends ops about another mail that failed
# or may not have arrived. They are not notifications a ticket owes.
REPORT_KINDS = frozenset({"delivery_failure", "delivery_unconfirmed"})

# Settings read by the worker, and the Temporal client profile variables,
# that the scenario replaces so the developer's environment cannot change it.
_REPLACED_PREFIXES = (
    "TEMPORAL_",
    "SMTP_",
    "DATABASE_",
    "POLICY_",
    "PAYLOAD_",
    "TICKET_",
)
_REPLACED_NAMES = ("MAIL_FROM", "OPS_EMAIL", "DEFAULT_TIMEZONE")


class ScenarioError(Exception):
    """A scenario check failed beyond the mail counts, or its fault had no effect."""


class ScenarioSkipped(Exception):
    """A service that the scenario needs is not running. The message names it."""


# Processes


class ChildProcess:
    """A subprocess in its own process group, with its output in a log file."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    async def spawn(
        self, command: Sequence[str], cwd: Path, environment: dict[str, str] | None
    ) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                cwd=cwd,
                env=environment,
                start_new_session=True,
            )

    def check_running(self) -> None:
        """Raise ScenarioError with the end of the log if the process exited."""
        if self.process is not None and self.process.returncode is not None:
            lines = self.log_path.read_text(errors="replace").splitlines()[-20:]
            tail = "\n".join(f"  | {line}" for line in lines)
            raise ScenarioError(
                f"{self.name} exited with code {self.process.returncode}; "
                f"end of {self.log_path.name}:\n{tail}"
            )

    def kill(self) -> None:
        """Send SIGKILL to the process group, so that no cleanup code runs."""
        self._signal_group(signal.SIGKILL)

    async def stop(self, stop_signal: signal.Signals = signal.SIGTERM) -> None:
        """Send ``stop_signal`` and wait for the process to exit.

        The process group is killed if it is still running after
        STOP_TIMEOUT_SECONDS.
        """
        if self.process is None:
            return
        self._signal_group(stop_signal)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            logger.warning("Process did not stop; killing it", extra=self._ids())
            self._signal_group(signal.SIGKILL)
            await self.process.wait()

    def _signal_group(self, signal_number: signal.Signals) -> None:
        # Only before the process is reaped, because its id may be reused
        # after that.
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal_number)

    def _ids(self) -> dict[str, Any]:
        pid = self.process.pid if self.process is not None else None
        return {"process": self.name, "pid": pid}


class DevServer(ChildProcess):
    """The Temporal CLI's dev server on a fixed port, its state in a SQLite file.

    Started again after a stop, it opens the same file on the same port, so
    workers and clients reconnect to the same workflows.
    """

    def __init__(self, workdir: Path) -> None:
        super().__init__("temporal", workdir / "temporal.log")
        self.database = workdir / "temporal.db"
        self.port = free_port()
        self.address = f"{LOOPBACK}:{self.port}"

    async def start(self) -> None:
        command = [
            dev_server_path(),
            "server",
            "start-dev",
            "--ip",
            LOOPBACK,
            "--port",
            str(self.port),
            "--headless",
            "--db-filename",
            str(self.database),
            "--log-level",
            "warn",
        ]
        for name, attribute_type in SEARCH_ATTRIBUTES.items():
            command += ["--search-attribute", f"{name}={attribute_type}"]
        await self.spawn(command, self.database.parent, None)
        await wait_until(
            lambda: temporal_responds(self.address, NAMESPACE),
            f"Temporal dev server at {self.address}",
            self,
        )


class WorkerProcess(ChildProcess):
    """One run of ``python worker.py`` with the scenario's environment."""

    def __init__(self, workdir: Path, number: int, environment: dict[str, str]):
        super().__init__(f"worker {number}", workdir / f"worker-{number}.log")
        self.workdir = workdir
        self.environment = environment

    async def start(self, client: Client, task_queue: str) -> None:
        """Start the worker and wait until it polls the task queue."""
        # The worker runs in the scenario's folder, so a .env file in the
        # project cannot change its settings.
        command = [sys.executable, str(WORKER_SCRIPT)]
        await self.spawn(command, self.workdir, self.environment)
        assert self.process is not None
        # A killed worker stays in the poller list for a while, so only a
        # poller with this process's identity counts.
        identity_prefix = f"{self.process.pid}@"

        async def polls() -> bool:
            identities = await poller_identities(client, task_queue)
            return any(i.startswith(identity_prefix) for i in identities)

        await wait_until(polls, f"{self.name} polling {task_queue}", self)


async def poller_identities(client: Client, task_queue: str) -> list[str]:
    """Return the identities of the workflow pollers of ``task_queue``."""
    request = DescribeTaskQueueRequest(
        namespace=NAMESPACE,
        task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    try:
        description = await client.workflow_service.describe_task_queue(request)
    except RPCError:
        return []
    return [poller.identity for poller in description.pollers]


async def wait_until(
    is_ready: Callable[[], Awaitable[bool]], description: str, child: ChildProcess
) -> None:
    """Poll ``is_ready`` until it returns True.

    Raises ScenarioError when the child exits or STARTUP_TIMEOUT_SECONDS pass.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT_SECONDS
    while not await is_ready():
        child.check_running()
        if loop.time() > deadline:
            raise ScenarioError(
                f"{description} not ready after {STARTUP_TIMEOUT_SECONDS:g} s; "
                f"see {child.log_path}"
            )
        await asyncio.sleep(0.1)


# Mail


@dataclass(frozen=True)
class Arrival:
    """A mail the sink accepted, and when."""

    at: datetime
    message: EmailMessage

    @property
    def message_id(self) -> str:
        # A long Message-ID header is folded, and the parsed value keeps the
        # space that starts its second line.
        return str(self.message["Message-ID"]).strip()

    @property
    def key(self) -> MailKey:
        return mail_key(self.message)


@dataclass(frozen=True)
class MailKey:
    """One notification of one ticket: the mail sent for it must arrive once."""

    ticket_id: str
    kind: str
    role: str


def mail_key(message: EmailMessage) -> MailKey:
    return MailKey(
        str(message["X-Ticket-Id"]),
        str(message["X-Notification-Kind"]),
        str(message["X-Notification-Role"]),
    )


class TimedMailSink(MailSink):
    """A mail sink that also keeps when each accepted mail arrived."""

    def __init__(self) -> None:
        super().__init__(LOOPBACK, 0)
        self.arrivals: list[Arrival] = []

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        arrived_at = datetime.now(UTC)
        # MailSink appends the message before its first await, so it is the
        # one at this index.
        index = len(self.messages)
        reply = await super().handle_DATA(server, session, envelope)
        if len(self.messages) > index:
            self.arrivals.append(Arrival(arrived_at, self.messages[index]))
        return reply

    def arrivals_of(self, ticket_ids: set[str]) -> list[Arrival]:
        return [a for a in self.arrivals if a.key.ticket_id in ticket_ids]

    async def wait_for(self, keys: Sequence[MailKey], until: datetime) -> None:
        """Wait until a mail for each key arrived, or until ``until`` passes.

        A mail whose reply the sink delays counts as arrived.
        """
        expected_keys = set(keys)
        while not expected_keys <= {mail_key(m) for m in self.messages}:
            if datetime.now(UTC) > until:
                return
            await asyncio.sleep(POLL_SECONDS)


# The local stack


class LocalStack:
    """A dev server, a mail sink and a worker subprocess for one scenario.

    Use it with ``async with``. Leaving the block kills the worker and stops
    the server and the sink, whatever happened inside.
    """

    def __init__(self, workdir: Path, database_url: str) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.task_queue = f"tickets-{uuid.uuid4().hex}"
        self.server = DevServer(workdir)
        self.sink = TimedMailSink()
        self.workers: list[WorkerProcess] = []
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        assert self._client is not None, "the stack is not started"
        return self._client

    @property
    def worker(self) -> WorkerProcess:
        return self.workers[-1]

    def worker_environment(self) -> dict[str, str]:
        environment = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(_REPLACED_PREFIXES) and name not in _REPLACED_NAMES
        }
        environment.update(
            {
                "TEMPORAL_ADDRESS": self.server.address,
                "TEMPORAL_NAMESPACE": NAMESPACE,
                "TEMPORAL_TASK_QUEUE": self.task_queue,
                # No client profile from the developer's Temporal CLI config.
                "TEMPORAL_CONFIG_FILE": str(self.workdir / "no-temporal.toml"),
                "DATABASE_URL": self.database_url,
                "SMTP_HOST": LOOPBACK,
                "SMTP_PORT": str(self.sink.port),
                "SMTP_USERNAME": "",
                "SMTP_PASSWORD": "",
                "SMTP_TLS": "",
                "MAIL_FROM": f"ticket-guard <no-reply@{MAIL_DOMAIN}>",
                "OPS_EMAIL": OPS_EMAIL,
                "DEFAULT_TIMEZONE": "America/New_York",
                "POLICY_OVERRIDES": json.dumps(POLICY_OVERRIDES),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return environment

    async def start_worker(self) -> None:
        worker = WorkerProcess(
            self.workdir, len(self.workers) + 1, self.worker_environment()
        )
        self.workers.append(worker)
        await worker.start(self.client, self.task_queue)

    async def __aenter__(self) -> LocalStack:
        try:
            await self.sink.start()
            await self.server.start()
            self._client = await Client.connect(self.server.address)
            # The worker starts only on a database at the latest revision.
            await asyncio.to_thread(upgrade, self.database_url)
            await self.start_worker()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        for worker in self.workers:
            worker.kill()
            await worker.stop()
        await self.server.stop()
        await self.sink.stop()


# Tickets


@dataclass
class LadderTicket:
    """A ticket driven through the unreachable ladder, with the events it was sent."""

    ticket_id: str
    handle: WorkflowHandle[Any, Any]
    event_ids: list[str] = field(default_factory=list)

    async def send(self, event: str, occurred_at: datetime, **fields: Any) -> None:
        """Send an event through its Update, as the portal does, and wait until applied.

        The event counts at ``occurred_at``, so the due times it starts are exact.
        """
        event_id = f"e-{uuid.uuid4().hex[:12]}"
        payload = {"event_id": event_id, "occurred_at": occurred_at.isoformat()}
        await self.handle.execute_update(f"{event}_update", {**payload, **fields})
        self.event_ids.append(event_id)


def opening(ticket_id: str, opened_at: datetime) -> dict[str, Any]:
    """Return a high-priority ticket claimed at its opening.

    High priority keeps the quiet window out of every due time, whatever the
    hour of the run. The customer has both a phone and an email on file, so
    the last ladder step needs an attempt on each.
    """
    tag = ticket_id.lower()
    return {
        "ticket_id": ticket_id,
        "opened_at": opened_at.isoformat(),
        "priority": "high",
        "source": "portal",
        "customer": {
            "id": f"C-{ticket_id}",
            "name": "Dana Reyes",
            "email": f"dana-{tag}@customer.test",
            "phone": "+1 555 0100",
            "timezone": "America/New_York",
            "included_hours_per_month": None,
        },
        "tech": {"id": "K-4", "name": "Kim Park", "email": f"kim-{tag}@techs.test"},
        "claimed_at": opened_at.isoformat(),
    }


async def open_tickets(stack: LocalStack, count: int) -> list[LadderTicket]:
    opened_at = datetime.now(UTC) - timedelta(minutes=1)
    tickets = []
    for _ in range(count):
        ticket_id = f"T-{uuid.uuid4().hex[:10]}"
        handle: WorkflowHandle[Any, Any] = await stack.client.start_workflow(
            "TicketWorkflow",
            opening(ticket_id, opened_at),
            id=f"ticket-{ticket_id}",
            task_queue=stack.task_queue,
        )
        tickets.append(LadderTicket(ticket_id, handle))
    return tickets


async def wait_idle(tickets: Sequence[LadderTicket]) -> None:
    """Wait until no ticket has a workflow task or an activity in progress.

    A worker killed during an activity would leave that attempt to its
    60-second timeout, so faults are injected only at such a quiet moment.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAIL_WAIT_SECONDS
    for ticket in tickets:
        while True:
            described = await ticket.handle.describe()
            raw = described.raw_description
            busy = bool(raw.pending_activities) or raw.HasField("pending_workflow_task")
            if described.status != WorkflowExecutionStatus.RUNNING or not busy:
                break
            if loop.time() > deadline:
                raise ScenarioError(
                    f"{ticket.ticket_id} still busy after {MAIL_WAIT_SECONDS:g} s"
                )
            await asyncio.sleep(POLL_SECONDS)


async def retried_activities(tickets: Sequence[LadderTicket]) -> Counter[str]:
    """Count the tickets' activities that needed more than one attempt, by type.

    The history keeps only the last attempt of an activity, in its started
    event, so this counts started events with an attempt above 1.
    """
    retried: Counter[str] = Counter()
    for ticket in tickets:
        activity_types: dict[int, str] = {}
        async for event in ticket.handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                scheduled = event.activity_task_scheduled_event_attributes
                activity_types[event.event_id] = scheduled.activity_type.name
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started = event.activity_task_started_event_attributes
                if started.attempt > 1:
                    retried[activity_types[started.scheduled_event_id]] += 1
    return retried


# The ladder


@dataclass
class Deadline:
    """A mail due at ``due_at``. Its arrival time counts only when ``checked``."""

    key: MailKey
    due_at: datetime
    checked: bool = True
    # Set when the mail falls due during a fault: it must arrive after this.
    not_before: datetime | None = None


@dataclass
class Fault:
    """A fault that a scenario injects between two steps of the ladder.

    ``inject`` runs once every ticket has applied the attempts of step
    ``after`` (``other_method`` for A1, ``all_methods`` for A2) and is idle.
    It gets the mails of the next step and returns when the fault is over. A
    fault that delays those mails marks them unchecked and sets their
    ``not_before``. ``check`` runs after the tickets closed and raises
    ScenarioError if the fault had no effect.
    """

    inject: Callable[
        [LocalStack, Sequence[LadderTicket], Sequence[Deadline]], Awaitable[None]
    ]
    after: Literal["other_method", "all_methods"] = "other_method"
    check: Callable[[LocalStack, Sequence[LadderTicket]], Awaitable[None]] | None = None


async def drive_ladder(stack: LocalStack, name: str, fault: Fault) -> ScenarioResult:
    """Drive tickets through the whole ladder with ``fault`` injected, and check them.

    Raises ScenarioError when a check beyond the mail counts fails, or when
    the tickets do not close within SCENARIO_TIMEOUT_SECONDS.
    """
    try:
        async with asyncio.timeout(SCENARIO_TIMEOUT_SECONDS):
            tickets, deadlines, statuses = await _drive_steps(stack, name, fault)
            if fault.check is not None:
                await fault.check(stack, tickets)
    except TimeoutError:
        raise ScenarioError(
            f"{name}: the tickets did not close within "
            f"{SCENARIO_TIMEOUT_SECONDS:g} s; see the logs in {stack.workdir}"
        ) from None

    problems = check_statuses(tickets, statuses, deadlines)
    problems += _early_mail(stack.sink, deadlines)
    problems += await asyncio.to_thread(
        check_store, stack.database_url, tickets, statuses
    )
    if problems:
        raise ScenarioError(f"{name}: " + "; ".join(problems))
    return count_mail(name, stack.sink, tickets, deadlines)


async def _drive_steps(
    stack: LocalStack, name: str, fault: Fault
) -> tuple[list[LadderTicket], list[Deadline], list[dict[str, Any]]]:
    """Open tickets, send each step's attempts and wait for every mail.

    With the step S: the tech's first failed attempt at A0 brings the
    ``try_other_method`` prompt at A0 + S. An attempt on a new channel at A1
    brings ``try_all_methods`` at max(A0 + 2S, A1 + S). Attempts on every
    method on file at A2 close the ticket at max(A0 + 3S, A2 + S), with a
    ``closed_unreachable`` mail to the customer, the tech and ops. Each step's
    attempts go out as soon as its prompt arrived. Returns the tickets, the
    mails they owe and their final status.
    """
    step = LADDER_STEP
    tickets = await open_tickets(stack, TICKETS_PER_SCENARIO)
    deadlines: list[Deadline] = []

    started_at = datetime.now(UTC)
    for ticket in tickets:
        await ticket.send(
            "contact_attempt", started_at, channel="phone", outcome="no_answer"
        )
    prompt_at = started_at + step
    prompts = [Deadline(_key(t, "try_other_method"), prompt_at) for t in tickets]
    deadlines += prompts
    await _wait_for_deadlines(stack, prompts)

    other_method_at = datetime.now(UTC)
    for ticket in tickets:
        await ticket.send(
            "contact_attempt", other_method_at, channel="email", outcome="no_answer"
        )
    prompt_at = max(started_at + 2 * step, other_method_at + step)
    prompts = [Deadline(_key(t, "try_all_methods"), prompt_at) for t in tickets]
    deadlines += prompts
    if fault.after == "other_method":
        await _inject(stack, name, fault, tickets, prompts)
    await _wait_for_deadlines(stack, prompts)

    all_methods_at = datetime.now(UTC)
    for ticket in tickets:
        for channel in ("phone", "email"):
            await ticket.send(
                "contact_attempt", all_methods_at, channel=channel, outcome="no_answer"
            )
    close_at = max(started_at + 3 * step, all_methods_at + step)
    closing = [
        Deadline(_key(t, "closed_unreachable", role), close_at)
        for t in tickets
        for role in ("customer", "tech", "ops")
    ]
    deadlines += closing
    if fault.after == "all_methods":
        await _inject(stack, name, fault, tickets, closing)

    statuses = [await ticket.handle.result() for ticket in tickets]
    await _wait_for_deadlines(stack, closing)
    return tickets, deadlines, statuses


async def _inject(
    stack: LocalStack,
    name: str,
    fault: Fault,
    tickets: Sequence[LadderTicket],
    next_deadlines: Sequence[Deadline],
) -> None:
    await wait_idle(tickets)
    started_at = datetime.now(UTC)
    logger.info("Fault injected", extra={"scenario": name})
    await fault.inject(stack, tickets, next_deadlines)
    seconds = (datetime.now(UTC) - started_at).total_seconds()
    logger.info("Fault over", extra={"scenario": name, "seconds": seconds})


def _early_mail(sink: TimedMailSink, deadlines: Sequence[Deadline]) -> list[str]:
    """Return the mails due during a fault that arrived before it ended."""
    first_arrival: dict[MailKey, datetime] = {}
    for arrival in sink.arrivals:
        first_arrival.setdefault(arrival.key, arrival.at)
    problems = []
    for deadline in deadlines:
        arrived_at = first_arrival.get(deadline.key)
        if arrived_at is not None and deadline.not_before is not None:
            if arrived_at < deadline.not_before:
                problems.append(
                    f"{deadline.key} arrived during the fault, so the fault "
                    "did not hold it back"
                )
    return problems


def _key(ticket: LadderTicket, kind: str, role: str = "tech") -> MailKey:
    return MailKey(ticket.ticket_id, kind, role)


async def _wait_for_deadlines(stack: LocalStack, deadlines: Sequence[Deadline]) -> None:
    latest = max(d.due_at for d in deadlines)
    until = latest + timedelta(seconds=MAIL_WAIT_SECONDS)
    await stack.sink.wait_for([d.key for d in deadlines], until)


def count_mail(
    name: str,
    sink: TimedMailSink,
    tickets: Sequence[LadderTicket],
    deadlines: Sequence[Deadline],
) -> ScenarioResult:
    """Count the scenario's mails by Message-ID and measure the checked deadlines.

    A notification sent under two Message-IDs counts as a duplicate too,
    because its reader gets two copies. The mailer's own reports to ops are
    left out of the counts, except that a report sent twice is a duplicate.
    """
    arrivals = sink.arrivals_of({t.ticket_id for t in tickets})
    copies = Counter(a.message_id for a in arrivals)
    notifications = [a for a in arrivals if a.key.kind not in REPORT_KINDS]
    reports = len(arrivals) - len(notifications)
    if reports:
        logger.info("Reports to ops", extra={"scenario": name, "count": reports})

    ids_by_key: dict[MailKey, set[str]] = defaultdict(set)
    first_arrival: dict[MailKey, datetime] = {}
    for arrival in notifications:
        ids_by_key[arrival.key].add(arrival.message_id)
        first_arrival.setdefault(arrival.key, arrival.at)

    duplicates = sum(count - 1 for count in copies.values())
    duplicates += sum(len(ids) - 1 for ids in ids_by_key.values())
    lost = sum(1 for d in deadlines if d.key not in ids_by_key)
    errors = [
        abs((first_arrival[d.key] - d.due_at).total_seconds())
        for d in deadlines
        if d.checked and d.key in first_arrival
    ]
    return ScenarioResult(
        scenario=name,
        tickets=len(tickets),
        expected=len(deadlines),
        delivered=len({a.message_id for a in notifications}),
        duplicates=duplicates,
        lost=lost,
        deadline_error_seconds=max(errors, default=None),
    )


def check_statuses(
    tickets: Sequence[LadderTicket],
    statuses: Sequence[dict[str, Any]],
    deadlines: Sequence[Deadline],
) -> list[str]:
    """Return what is wrong with the tickets' final status.

    Each ticket must be closed as unreachable with no rejected event, and
    must list every mail it owes with the due time computed here.
    """
    problems = []
    due_times = {d.key: d.due_at.isoformat() for d in deadlines}
    for ticket, status in zip(tickets, statuses, strict=True):
        closing = (status["state"], status["close_reason"])
        if closing != ("closed", "unreachable"):
            problems.append(f"{ticket.ticket_id} ended as {closing}")
        if status["rejected"]:
            problems.append(f"{ticket.ticket_id} rejected {status['rejected']}")
        listed = {
            _key(ticket, n["kind"], n["to"]): n["at"] for n in status["notifications"]
        }
        for key, due_at in due_times.items():
            if key.ticket_id == ticket.ticket_id and listed.get(key) != due_at:
                problems.append(f"{key} is due at {listed.get(key)}, not {due_at}")
    return problems


def check_store(
    database_url: str,
    tickets: Sequence[LadderTicket],
    statuses: Sequence[dict[str, Any]],
) -> list[str]:
    """Return what the store lost or stored twice, compared with the final status.

    Each ticket's record must run from sequence 1 without a gap and contain
    each event sent, the close and each delivered notification exactly once.
    The last stored status of each obligation must match the final status.
    Every notification needs a sent_mail row that is not waiting for a retry.
    """
    store = Store(database_url)
    try:
        problems = []
        for ticket, status in zip(tickets, statuses, strict=True):
            problems += _record_problems(store, ticket, status)
        return problems
    finally:
        store.dispose()


def _record_problems(
    store: Store, ticket: LadderTicket, status: dict[str, Any]
) -> list[str]:
    ticket_id = ticket.ticket_id
    record = store.ticket_record(ticket_id)
    problems = []

    sequences = [line.sequence for line in record]
    if sequences != list(range(1, len(sequences) + 1)):
        problems.append(f"{ticket_id} record sequences are {sequences}")

    event_ids = Counter(
        line.details.get("event_id") for line in record if line.entry_type == "event"
    )
    for event_id in ticket.event_ids:
        if event_ids[event_id] != 1:
            problems.append(
                f"{ticket_id} record contains event {event_id} "
                f"{event_ids[event_id]} times"
            )
    closes = [line for line in record if line.details.get("event") == "closed"]
    if len(closes) != 1:
        problems.append(f"{ticket_id} record contains {len(closes)} closes")

    mail_entries: Counter[int] = Counter(
        line.details["sequence"] for line in record if line.entry_type == "notification"
    )
    notified = {n["sequence"] for n in status["notifications"]}
    unknown = sorted(set(mail_entries) - notified)
    if unknown:
        problems.append(f"{ticket_id} record contains unknown notifications {unknown}")
    for notification in status["notifications"]:
        sequence = notification["sequence"]
        if mail_entries[sequence] != 1:
            problems.append(
                f"{ticket_id} record contains notification {sequence} "
                f"{mail_entries[sequence]} times"
            )
        mail = store.mail(notification["message_id"] or "")
        if mail is None or mail.status not in ("sent", "unconfirmed"):
            found = None if mail is None else mail.status
            problems.append(
                f"{ticket_id} sent_mail of notification {sequence} is {found}"
            )

    final_status: dict[int, str] = {}
    for line in record:
        if line.entry_type == "obligation":
            final_status[line.details["sequence"]] = line.details["status"]
    for obligation in status["obligations"]:
        stored = final_status.get(obligation["sequence"])
        if stored != obligation["status"]:
            problems.append(
                f"{ticket_id} obligation {obligation['sequence']} is "
                f"{obligation['status']} but stored as {stored}"
            )

    row = store.ticket(ticket_id)
    if row is None or row.state != "closed" or row.last_sequence != len(record):
        stored_row = None if row is None else (row.state, row.last_sequence)
        problems.append(
            f"{ticket_id} ticket row is {stored_row}, expected closed at {len(record)}"
        )
    return problems


# Faults


async def _restart_worker(
    stack: LocalStack,
    _tickets: Sequence[LadderTicket],
    _next_deadlines: Sequence[Deadline],
) -> None:
    # SIGKILL: no graceful shutdown, so the server learns of the lost worker
    # only from its missing polls.
    stack.worker.kill()
    await stack.worker.stop()
    await stack.start_worker()


async def _check_new_worker(stack: LocalStack, tickets: Sequence[LadderTicket]) -> None:
    """Raise ScenarioError unless the last worker completed every ticket."""
    assert stack.worker.process is not None
    identity_prefix = f"{stack.worker.process.pid}@"
    timed_out = 0
    for ticket in tickets:
        identities = []
        async for event in ticket.handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                started = event.workflow_task_started_event_attributes
                identities.append(started.identity)
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                timed_out += 1
        if not identities or not identities[-1].startswith(identity_prefix):
            raise ScenarioError(
                f"{ticket.ticket_id} was not completed by the restarted worker"
            )
    # Each is a task that waited on the killed worker's sticky queue.
    logger.info("Workflow tasks timed out", extra={"count": timed_out})


async def _restart_server(
    stack: LocalStack,
    _tickets: Sequence[LadderTicket],
    _next_deadlines: Sequence[Deadline],
) -> None:
    await stack.server.stop(signal.SIGTERM)
    await stack.server.start()
    # The worker keeps running and must find the server again by itself.
    stack.worker.check_running()


class SqliteLock:
    """Another connection holding an exclusive lock on a SQLite file.

    While held, every read and write of other connections waits for SQLite's
    busy timeout and then fails with "database is locked".
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None

    def acquire(self) -> None:
        # Acquired in a thread, because BEGIN EXCLUSIVE waits for a writer to
        # finish, and released from the event loop.
        self._connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        self._connection.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self._connection is not None:
            self._connection.execute("ROLLBACK")
            self._connection.close()
            self._connection = None


class TcpProxy:
    """A TCP proxy to ``target_port`` on loopback, which a scenario can cut.

    ``cut`` closes the listening socket and every open connection, so the
    client sees refused connections, as when the server is down. ``restore``
    listens on the same port again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._forward, LOOPBACK, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Aborted before waiting, because from Python 3.12 on wait_closed()
        # also waits for the open connections.
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        await self.start()

    async def _forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(
                LOOPBACK, self.target_port
            )
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, server_writer}
        await asyncio.gather(
            self._pipe(client_reader, server_writer),
            self._pipe(server_reader, client_writer),
        )
        self._writers -= {client_writer, server_writer}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()


def _store_outage(
    start: Callable[[], Awaitable[None]],
    end: Callable[[], Awaitable[None]],
    duration: timedelta,
) -> Fault:
    """Return a fault that makes the store unreachable twice while the tickets close.

    The first outage meets the record writes: each ticket gets a
    ``notes_updated`` event in it, whose record write fails and is retried
    after the outage. The workflow sends the closing mails only once that
    record is stored. The second outage meets those mails in flight: the
    sink delays its reply to each until the store is gone, so the mailer
    cannot record a mail as sent and its activity is retried. The retry must
    find the mail unconfirmed and not send it again.
    """

    async def inject(
        stack: LocalStack,
        tickets: Sequence[LadderTicket],
        closing: Sequence[Deadline],
    ) -> None:
        await start()
        try:
            for ticket in tickets:
                await ticket.send("notes_updated", datetime.now(UTC))
            await asyncio.sleep(duration.total_seconds())
        finally:
            await end()
        for deadline in closing:
            deadline.checked = False
            deadline.not_before = datetime.now(UTC)

        stack.sink.hold_replies()
        try:
            until = datetime.now(UTC) + timedelta(seconds=MAIL_WAIT_SECONDS)
            await stack.sink.wait_for([d.key for d in closing], until)
            await start()
        finally:
            stack.sink.release_replies()
        try:
            await asyncio.sleep(duration.total_seconds())
        finally:
            await end()

    async def check_retried(stack: LocalStack, tickets: Sequence[LadderTicket]) -> None:
        retried = await retried_activities(tickets)
        logger.info("Activities retried", extra={"retried": dict(retried)})
        if retried["record_ticket_changes"] == 0:
            raise ScenarioError(
                "no record_ticket_changes activity needed a retry during the "
                "first store outage, so it tested nothing"
            )
        # Sends run only after the first outage, so a send that met the store
        # down met the second one. The mailer rides out a short outage after
        # the server took the mail, so the activity itself may not retry.
        mailer_retried = any(
            SENT_RECORD_RETRIED in worker.log_path.read_text(encoding="utf-8")
            for worker in stack.workers
        )
        if retried["send_notification"] == 0 and not mailer_retried:
            raise ScenarioError(
                "no mail met the second store outage, so it tested nothing"
            )

    return Fault(inject=inject, after="all_methods", check=check_retried)


# Scenarios


async def run_worker_killed(workdir: Path) -> ScenarioResult:
    """Kill the worker with SIGKILL mid-ladder, then start another."""
    database_url = f"sqlite:///{workdir / 'tickets.db'}"
    fault = Fault(_restart_worker, after="other_method", check=_check_new_worker)
    async with LocalStack(workdir, database_url) as stack:
        return await drive_ladder(stack, "worker_killed", fault)


async def run_server_restarted(workdir: Path) -> ScenarioResult:
    """Stop the dev server with SIGTERM mid-ladder and start it on the same file."""
    database_url = f"sqlite:///{workdir / 'tickets.db'}"
    fault = Fault(_restart_server, after="other_method")
    async with LocalStack(workdir, database_url) as stack:
        return await drive_ladder(stack, "server_restarted", fault)


async def run_sqlite_locked(workdir: Path) -> ScenarioResult:
    """Hold an exclusive lock on the SQLite store while the ladder closes."""
    database = workdir / "tickets.db"
    lock = SqliteLock(database)

    async def start() -> None:
        await asyncio.to_thread(lock.acquire)

    async def end() -> None:
        lock.release()

    fault = _store_outage(start, end, SQLITE_OUTAGE)
    try:
        async with LocalStack(workdir, f"sqlite:///{database}") as stack:
            return await drive_ladder(stack, "sqlite_locked", fault)
    finally:
        lock.release()


async def run_postgres_cut(workdir: Path) -> ScenarioResult:
    """Cut the connections to PostgreSQL while the ladder closes, then restore them."""
    with postgres_schema() as (schema, target_port):
        proxy = TcpProxy(target_port)
        await proxy.start()
        url = make_url(POSTGRES_URL).set(
            host=LOOPBACK, port=proxy.port, query={"options": f"-csearch_path={schema}"}
        )
        database_url = url.render_as_string(hide_password=False)
        fault = _store_outage(proxy.cut, proxy.restore, POSTGRES_OUTAGE)
        try:
            async with LocalStack(workdir, database_url) as stack:
                return await drive_ladder(stack, "postgres_cut", fault)
        finally:
            await proxy.cut()


@contextlib.contextmanager
def postgres_schema() -> Iterator[tuple[str, int]]:
    """Create a schema of its own in the test PostgreSQL, and drop it on exit.

    Yields the schema name and the server's port. Raises ScenarioSkipped when
    the server is not reachable.
    """
    schema = f"faults_{uuid.uuid4().hex}"
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as error:
        admin.dispose()
        server = make_url(POSTGRES_URL).render_as_string(hide_password=True)
        raise ScenarioSkipped(
            f"PostgreSQL at {server} is unreachable: {error.orig}"
        ) from None
    try:
        yield schema, make_url(POSTGRES_URL).port or 5432
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
