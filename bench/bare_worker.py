"""Run a worker for the bare timer workflow: ``python -m bench.bare_worker``.

It uses the workflow runner of the ticket worker, so the two workers differ
only in the workflow they run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from temporalio.client import Client
from temporalio.worker import Worker

from bench.bare import BareTimerWorkflow
from worker import workflow_runner

logger = logging.getLogger(__name__)


async def run(address: str, task_queue: str) -> None:
    client = await Client.connect(address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(stop_signal, stop.set)

    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[BareTimerWorkflow],
        workflow_runner=workflow_runner(),
    ):
        logger.info("Bare worker polling", extra={"task_queue": task_queue})
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="Temporal frontend host:port")
    parser.add_argument("--task-queue", required=True, help="task queue to poll")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    asyncio.run(run(args.address, args.task_queue))


if __name__ == "__main__":
    main()
