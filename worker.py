"""Run the ticket-guard Temporal worker.

Usage: ``python worker.py``. Settings come from the environment, as described
in ``settings.py``. A Temporal client profile, from the CLI's TOML file or the
``TEMPORAL_*`` variables, can add TLS, an API key or gRPC metadata. With
``PAYLOAD_ENCRYPTION_KEY`` set, payloads are encrypted (see ``codec.py``).
With ``METRICS_PORT`` set, the SDK's Prometheus endpoint serves ``/metrics``;
``LOG_FORMAT=json`` writes one JSON object per log line (see ``logs.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from datetime import timedelta

from temporalio.client import Client
from temporalio.runtime import (
    LoggingConfig,
    LoggingFormat,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import (
    SandboxedWorkflowRunner,
    SandboxRestrictions,
)

from activities import TicketActivities
from codec import EncryptionCodec, data_converter
from logs import (
    TextFormatter,
    configure_logging,
    requested_log_format,
    secret_values,
)
from migrations import DatabaseNotReady, check_revision
from settings import Settings, SettingsError, load_settings
from workflows.ticket import TicketWorkflow

logger = logging.getLogger(__name__)

# Modules without I/O or global state that workflows import. In the sandbox,
# passing them through loads them once instead of once per workflow run, and
# zoneinfo then shares its cache of loaded zones.
PASSTHROUGH_MODULES = (
    "workflows.policy",
    "workflows.events",
    "workflows.inbox",
    "workflows.ledger",
    "workflows.model",
    "workflows.display",
    "workflows.search",
    "zoneinfo",
)

# How long shutdown waits for running activities (a mail being sent) before
# it cancels them.
GRACEFUL_SHUTDOWN_TIMEOUT = timedelta(seconds=10)
# How long a ticket's next workflow task waits for the worker that ran the
# last one before any worker may take it. After a crash, deadlines fire this
# much late at most; the SDK's 10-second default would make it longer. The
# cost is a replay from history when a busy worker is slower than this.
STICKY_QUEUE_TIMEOUT = timedelta(seconds=3)

CONNECT_RETRY_FIRST_DELAY = 1.0
CONNECT_RETRY_MAX_DELAY = 30.0

# The text formatter under the name that the scripts and benchmarks import.
ExtraFieldsFormatter = TextFormatter

# The SDK's Core, its Rust part, writes its warnings and errors to standard
# error itself, not through Python logging. The SDK's LogForwardingConfig
# would route them there, but it calls into Python from Core's threads.
CORE_LOG_FILTER = TelemetryFilter(core_level="WARN", other_level="ERROR")


class MetricsEndpointError(Exception):
    """The Prometheus endpoint could not bind its address, for the reason given."""


def create_runtime(settings: Settings) -> Runtime:
    """Build the SDK runtime of the worker's client.

    It serves Prometheus metrics on ``METRICS_ADDRESS:METRICS_PORT`` at
    ``/metrics`` when METRICS_PORT is set. With LOG_FORMAT=json the SDK's
    Core writes its log lines as JSON too, with its own keys (``timestamp``,
    ``level``, ``fields``). Raises MetricsEndpointError when the endpoint
    cannot listen, such as on a port in use.
    """
    metrics = None
    bind_address = settings.metrics_bind_address
    if bind_address is not None:
        metrics = PrometheusConfig(bind_address=bind_address)
    core_format = LoggingFormat.JSON if settings.log_format == "json" else None
    logging_config = LoggingConfig(filter=CORE_LOG_FILTER, format=core_format)
    try:
        return Runtime(
            telemetry=TelemetryConfig(logging=logging_config, metrics=metrics)
        )
    except ValueError as error:
        # The SDK raises ValueError when the exporter cannot bind.
        raise MetricsEndpointError(
            f"the Prometheus endpoint cannot listen on {bind_address}: {error}; "
            "choose a free METRICS_PORT or leave it unset"
        ) from error


def sandboxed_runner() -> SandboxedWorkflowRunner:
    """Return the SDK's workflow sandbox, passing this project's pure modules through.

    The worker runs the ticket workflow outside it (see ``workflow_runner``).
    The tests replay every recorded ticket history in it, so workflow code
    that the sandbox forbids, such as reading the clock, fails there.
    """
    restrictions = SandboxRestrictions.default.with_passthrough_modules(
        *PASSTHROUGH_MODULES
    )
    return SandboxedWorkflowRunner(restrictions=restrictions)


def workflow_runner() -> UnsandboxedWorkflowRunner:
    """Return the runner of the worker's workflows: the SDK's, without the sandbox.

    The sandbox imports ``workflows/ticket.py`` again for every new ticket and
    checks every call the workflow makes. In the benchmark that about doubled
    the ticket worker's CPU time per claim (docs/benchmarks.md). It guards
    little here: the ticket's rules live in the modules above, which it passes
    through and so does not check, and ``workflows/ticket.py`` has no
    module-level state that a run changes. Replay of the recorded histories in
    the sandbox (tests/test_replay.py) still catches a forbidden call in the
    workflow's own code.
    """
    return UnsandboxedWorkflowRunner()


def create_worker(
    client: Client, settings: Settings, activities: TicketActivities
) -> Worker:
    """Build a worker for the ticket workflow and its activities.

    The worker is not started: run it with ``Worker.run()`` or ``async with``.
    """
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[TicketWorkflow],
        activities=activities.all(),
        workflow_runner=workflow_runner(),
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN_TIMEOUT,
        sticky_queue_schedule_to_start_timeout=STICKY_QUEUE_TIMEOUT,
    )


async def connect_client(settings: Settings, runtime: Runtime | None = None) -> Client:
    """Connect to Temporal, retrying with backoff until the server accepts.

    The connection options come from ``Settings.temporal_connect_config``, and
    the data converter, which encrypts payloads when a key is set, from
    ``codec.data_converter``. Without ``runtime`` the client uses the SDK's
    default runtime, which has no metrics endpoint.
    """
    connect_config = settings.temporal_connect_config()
    converter = data_converter(settings)

    delay = CONNECT_RETRY_FIRST_DELAY
    attempt = 1
    while True:
        try:
            return await Client.connect(
                **connect_config, data_converter=converter, runtime=runtime
            )
        except RuntimeError as err:
            # The SDK raises RuntimeError for a refused or failed connection.
            # The server may still be starting, so wait and try again.
            logger.warning(
                "Temporal server not reachable, retrying",
                extra={
                    "address": settings.temporal_address,
                    "attempt": attempt,
                    "retry_in_seconds": delay,
                    "error": str(err),
                },
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, CONNECT_RETRY_MAX_DELAY)
        attempt += 1


async def run_worker(
    settings: Settings, stop: asyncio.Event, runtime: Runtime | None = None
) -> None:
    """Connect, run the worker until ``stop`` is set, then shut it down."""
    connecting = asyncio.create_task(connect_client(settings, runtime))
    stop_requested = asyncio.create_task(stop.wait())
    await asyncio.wait(
        {connecting, stop_requested}, return_when=asyncio.FIRST_COMPLETED
    )
    if stop.is_set():
        connecting.cancel()
        return
    client = connecting.result()
    logger.info(
        "Connected to Temporal",
        extra={"address": settings.temporal_address},
    )

    activities = TicketActivities.from_settings(settings, create_tables=False)
    try:
        await _run_until_stopped(create_worker(client, settings, activities), stop)
    finally:
        activities.close()


async def _run_until_stopped(worker: Worker, stop: asyncio.Event) -> None:
    running = asyncio.create_task(worker.run())
    stop_requested = asyncio.create_task(stop.wait())
    await asyncio.wait({running, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        # The worker stopped by itself, which only happens on a fatal error
        # such as an unknown namespace: result() raises it.
        stop_requested.cancel()
        running.result()
        return

    logger.info("Shutting down worker")
    await worker.shutdown()
    await running


def main() -> None:
    """Run the worker until SIGINT or SIGTERM."""
    configure_logging(requested_log_format())
    try:
        settings = load_settings()
    except SettingsError as err:
        logger.error("Worker not started: %s", err)
        sys.exit(2)

    configure_logging(settings.log_format, secret_values(settings))

    # The migrations own the schema, so a database at another revision stops
    # the worker before it writes anything.
    try:
        check_revision(settings.database_url)
    except DatabaseNotReady as err:
        logger.error("Worker not started: %s", err)
        sys.exit(1)

    try:
        runtime = create_runtime(settings)
    except MetricsEndpointError as err:
        logger.error("Worker not started: %s", err)
        sys.exit(2)

    # The key id, never the key, shows which key encrypts new payloads.
    codec = EncryptionCodec.from_settings(settings)
    encryption_key = codec.encryption_key if codec is not None else None
    logger.info(
        "Starting worker",
        extra={
            "address": settings.temporal_address,
            "namespace": settings.temporal_namespace,
            "task_queue": settings.temporal_task_queue,
            "payload_key_id": (
                encryption_key.key_id if encryption_key is not None else None
            ),
            "metrics_endpoint": settings.metrics_bind_address,
        },
    )
    asyncio.run(_run_until_signal(settings, runtime))
    logger.info("Worker stopped")
    # With SDK 1.35, about 1 stop in 10 ended in "Fatal Python error:
    # PyGILState_Release" and exit code -6, because the SDK's Rust threads
    # still ran while the interpreter finalized. The worker has stopped and
    # its logs are flushed here, so it exits without finalizing.
    logging.shutdown()
    os._exit(0)


async def _run_until_signal(settings: Settings, runtime: Runtime) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(stop_signal, stop.set)
    await run_worker(settings, stop, runtime)


if __name__ == "__main__":
    main()
