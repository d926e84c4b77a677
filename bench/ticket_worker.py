"""Run the ticket worker for a benchmark: ``python -m bench.ticket_worker``.

The worker is the one ``worker.create_worker`` builds. Its settings come as a
JSON object of Settings fields in the ``BENCH_WORKER_SETTINGS`` variable, so
no ``.env`` file or stray variable changes a run. It also counts the database
statements and commits of each activity type, and on SIGTERM it stops, then
writes those counts and the worker's configuration to the ``--stats`` file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.client import Client

from activities import TicketActivities
from codec import data_converter
from settings import Settings
from worker import ExtraFieldsFormatter, create_worker

SETTINGS_VARIABLE = "BENCH_WORKER_SETTINGS"
# Statements run outside any activity, such as creating the tables.
OUTSIDE_ACTIVITIES = "(no activity)"


class StatementCounter:
    """Counts the statements and commits an engine runs, by activity type.

    Activities call the store through ``asyncio.to_thread``, which copies the
    activity's context to the thread, so ``activity.info()`` names the
    activity there too.
    """

    def __init__(self, engine: Engine) -> None:
        self.statements: Counter[str] = Counter()
        self.commits: Counter[str] = Counter()
        # Distinct (workflow run, activity id, attempt) that used the database.
        self.executions: dict[str, set[tuple[str, str, int]]] = {}
        event.listen(engine, "before_cursor_execute", self._on_statement)
        event.listen(engine, "commit", self._on_commit)

    def _activity_type(self) -> str:
        if not activity.in_activity():
            return OUTSIDE_ACTIVITIES
        info = activity.info()
        execution = (info.workflow_run_id or "", info.activity_id, info.attempt)
        self.executions.setdefault(info.activity_type, set()).add(execution)
        return info.activity_type

    def _on_statement(self, *_args: Any) -> None:
        self.statements[self._activity_type()] += 1

    def _on_commit(self, *_args: Any) -> None:
        self.commits[self._activity_type()] += 1

    def summary(self) -> dict[str, dict[str, int]]:
        """Return statements, commits and executions by activity type."""
        names = sorted(set(self.statements) | set(self.commits))
        return {
            name: {
                "statements": self.statements[name],
                "commits": self.commits[name],
                "executions": len(self.executions.get(name, ())),
            }
            for name in names
        }


def settings_from_environment() -> Settings:
    """Build the Settings from the JSON object in BENCH_WORKER_SETTINGS."""
    fields = json.loads(os.environ[SETTINGS_VARIABLE])
    return Settings(_env_file=None, **fields)


async def run(settings: Settings, stats_path: Path) -> None:
    client = await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(stop_signal, stop.set)

    activities = TicketActivities.from_settings(settings)
    counter = StatementCounter(activities.store.engine)
    worker = create_worker(client, settings, activities)
    config = worker.config()
    try:
        async with worker:
            await stop.wait()
    finally:
        activities.close()

    stats = {
        "max_cached_workflows": config.get("max_cached_workflows"),
        "max_concurrent_workflow_tasks": config.get("max_concurrent_workflow_tasks"),
        "max_concurrent_activities": config.get("max_concurrent_activities"),
        "database": counter.summary(),
    }
    stats_path.write_text(json.dumps(stats, indent=2), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stats",
        type=Path,
        required=True,
        help="JSON file that gets the statement counts when the worker stops",
    )
    args = parser.parse_args()

    handler = logging.StreamHandler()
    handler.setFormatter(
        ExtraFieldsFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    asyncio.run(run(settings_from_environment(), args.stats))


if __name__ == "__main__":
    main()
