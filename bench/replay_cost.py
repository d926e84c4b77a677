"""Measure the CPU time of the ticket workflow's own code by replaying histories.

Usage: ``python -m bench.replay_cost ADDRESS WORKFLOW_ID...``. It replays
each history with the worker's sandboxed runner and with the SDK's
unsandboxed runner. It prints one JSON object: the CPU milliseconds per
history of each runner, the least of a few rounds, and the mean events and
workflow tasks per history. A replay creates the workflow instance and runs
every activation, as a worker does for a new ticket, without any server or
activity work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from worker import sandboxed_runner, workflow_runner
from workflows.ticket import TicketWorkflow

ROUNDS = 3


async def replay_milliseconds(
    replayer: Replayer, histories: Sequence[WorkflowHistory]
) -> float:
    """Return the least CPU milliseconds per history over ROUNDS replays of all."""
    # The first replay imports modules that later ones find loaded.
    await replayer.replay_workflow(histories[0])
    rounds = []
    for _ in range(ROUNDS):
        began = time.process_time()
        for history in histories:
            await replayer.replay_workflow(history)
        rounds.append((time.process_time() - began) / len(histories))
    return 1000 * min(rounds)


async def measure(address: str, workflow_ids: Sequence[str]) -> dict[str, float]:
    client = await Client.connect(address)
    histories = [
        await client.get_workflow_handle(workflow_id).fetch_history()
        for workflow_id in workflow_ids
    ]
    workflows = [TicketWorkflow]
    sandboxed = Replayer(workflows=workflows, workflow_runner=sandboxed_runner())
    unsandboxed = Replayer(workflows=workflows, workflow_runner=workflow_runner())
    tasks = [
        sum(
            event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
            for event in history.events
        )
        for history in histories
    ]
    return {
        "sandboxed_ms": await replay_milliseconds(sandboxed, histories),
        "unsandboxed_ms": await replay_milliseconds(unsandboxed, histories),
        "events": sum(len(history.events) for history in histories) / len(histories),
        "workflow_tasks": sum(tasks) / len(tasks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="Temporal frontend host:port")
    parser.add_argument("workflow_ids", nargs="+", help="ticket workflow ids")
    args = parser.parse_args()
    result = asyncio.run(measure(args.address, args.workflow_ids))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
