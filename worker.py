"""Run the ticket-guard Temporal worker.

Usage: ``python worker.py``. Settings come from the environment, as described
in ``settings.py``. A Temporal client profile, from the CLI's TOML file or the
``TEMPORAL_*`` variables, can add TLS, an API key or gRPC metadata. With
``PAYLOAD_ENCRYPTION_KEY`` set, payloads are encrypted (see ``codec.py``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import (
    SandboxedWorkflowRunner,
    SandboxRestrictions,
)

from activities import TicketActivities
from codec import EncryptionCodec, data_converter
from settings import Settings, SettingsError, load_settings
from workflows.ticket import TicketWorkflow

logger = logging.getLogger(__name__)

# Modules without I/O or global state that workflows import. Passing them
# through loads them once, outside the sandbox, instead of once per workflow
# run; zoneinfo then also shares its cache of loaded zones.
PASSTHROUGH_MODULES = (
    "workflows.policy",
    "workflows.events",
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

# Attributes that every LogRecord has, so whatever else a record carries came
# from a caller's ``extra``.
_STANDARD_RECORD_FIELDS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


class ExtraFieldsFormatter(logging.Formatter):
    """Log formatter that appends a record's ``extra`` fields as key=value.

    Fields named ``temporal_*`` are left out because the SDK's workflow and
    activity loggers already append the same details to the message.
    """

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{key}={value!r}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD_RECORD_FIELDS and not key.startswith("temporal_")
        ]
        if not fields:
            return line
        return line + " " + " ".join(fields)


def create_worker(
    client: Client, settings: Settings, activities: TicketActivities
) -> Worker:
    """Build a worker for the ticket workflow and its activities.

    The worker is not started: run it with ``Worker.run()`` or ``async with``.
    """
    restrictions = SandboxRestrictions.default.with_passthrough_modules(
        *PASSTHROUGH_MODULES
    )
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[TicketWorkflow],
        activities=activities.all(),
        workflow_runner=SandboxedWorkflowRunner(restrictions=restrictions),
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN_TIMEOUT,
        sticky_queue_schedule_to_start_timeout=STICKY_QUEUE_TIMEOUT,
    )


async def connect_client(settings: Settings) -> Client:
    """Connect to Temporal, retrying with backoff until the server accepts.

    The connection options come from ``Settings.temporal_connect_config``, and
    the data converter, which encrypts payloads when a key is set, from
    ``codec.data_converter``.
    """
    connect_config = settings.temporal_connect_config()
    converter = data_converter(settings)

    delay = CONNECT_RETRY_FIRST_DELAY
    attempt = 1
    while True:
        try:
            return await Client.connect(**connect_config, data_converter=converter)
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


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    """Connect, run the worker until ``stop`` is set, then shut it down."""
    connecting = asyncio.create_task(connect_client(settings))
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

    activities = TicketActivities.from_settings(settings)
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
    handler = logging.StreamHandler()
    handler.setFormatter(
        ExtraFieldsFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    try:
        settings = load_settings()
    except SettingsError as err:
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
        },
    )
    asyncio.run(_run_until_signal(settings))
    logger.info("Worker stopped")


async def _run_until_signal(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(stop_signal, stop.set)
    await run_worker(settings, stop)


if __name__ == "__main__":
    main()
