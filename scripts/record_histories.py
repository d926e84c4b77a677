"""Record the workflow history of every example ticket for the replay tests.

Usage, from the project root: ``python -m scripts.record_histories [FILE ...]``

Runs each examples file (default: every ``examples/*.jsonl``) the way
``starter.py simulate`` does: on the time-skipping test server, with the real
worker, activities, a temporary database and a local mail sink. Then it writes
each ticket's history, in the JSON format of ``WorkflowHistory.to_json``, to
``tests/histories/<file stem>/<ticket id>.json``. A ticket that continued as
new gets one file per run: ``<ticket id>.json`` for the first run, then
``<ticket id>+run2.json`` and so on (``+`` never occurs in a ticket id).

``tests/test_replay.py`` replays every file, so a workflow change that would
break running tickets fails the tests. ``docs/changing-the-workflow.md``
describes when to record again. ``--keep-as LABEL`` first copies the current histories
of the files to ``tests/histories/archive/LABEL/``, where the tests keep
replaying them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from temporalio.client import Client, WorkflowHistory
from temporalio.converter import DefaultPayloadConverter

from activities.store import Store
from starter import (
    ScheduleError,
    Simulation,
    StarterError,
    TicketClient,
    TicketOutcome,
    read_schedule,
    workflow_id,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
HISTORIES = ROOT / "tests" / "histories"
# Under HISTORIES: histories of earlier workflow code, kept by --keep-as.
ARCHIVE = "archive"

# Separates a ticket id from the run number in a file name.
RUN_SEPARATOR = "+run"

# The worker's identity contains its process id and host name, and the
# simulation's task queue name a random uuid. Fixed values keep the files the
# same from one recording to the next, and replay reads neither.
RECORDED_IDENTITY = "record-histories"
RECORDED_TASK_QUEUE = "ticket-histories"

# How long the simulation runs on after the last event, as `simulate` does.
HORIZON = timedelta(days=7)

LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# The payload encodings of the SDK's default data converter, which the replay
# tests use.
PLAIN_ENCODINGS = frozenset(
    converter.encoding
    for converter in DefaultPayloadConverter.default_encoding_payload_converters
)


class RecordingError(Exception):
    """A file could not be recorded. The message names the file."""


def history_file_name(ticket_id: str, run_number: int) -> str:
    """Return the file name of one run's history. Runs count from 1."""
    if run_number == 1:
        return f"{ticket_id}.json"
    return f"{ticket_id}{RUN_SEPARATOR}{run_number}.json"


def ticket_id_of(path: Path) -> str:
    """Return the ticket id of a history file written by this script."""
    return path.stem.partition(RUN_SEPARATOR)[0]


async def fetch_runs(client: Client, ticket_workflow_id: str) -> list[WorkflowHistory]:
    """Fetch the history of every run of a workflow, the first run first.

    Starts from the latest run and follows ``continued_execution_run_id`` in
    each run's start event back to the first run.
    """
    runs = []
    run_id: str | None = None
    while True:
        handle = client.get_workflow_handle(ticket_workflow_id, run_id=run_id)
        history = await handle.fetch_history()
        runs.append(history)
        started = history.events[0].workflow_execution_started_event_attributes
        if not started.continued_execution_run_id:
            break
        run_id = started.continued_execution_run_id
    runs.reverse()
    return runs


def check_plain_payloads(history: WorkflowHistory) -> None:
    """Raise RecordingError when the start input is not in a default encoding.

    A payload codec, such as the encryption that PAYLOAD_ENCRYPTION_KEY
    turns on, would leave histories that only its key can read.
    """
    started = history.events[0].workflow_execution_started_event_attributes
    for payload in started.input.payloads:
        encoding = payload.metadata.get("encoding", b"").decode(errors="replace")
        if encoding not in PLAIN_ENCODINGS:
            raise RecordingError(
                f"the payloads of {history.workflow_id} have the encoding "
                f"{encoding!r}, not one of the default data converter; unset "
                "PAYLOAD_ENCRYPTION_KEY, so the histories are readable without a key"
            )


def history_json(history: WorkflowHistory) -> str:
    """Return the history as JSON with the run's machine-specific values fixed.

    The key order is protobuf's field order and the indent two spaces, so two
    recordings differ only where the runs did.
    """
    recorded = history.to_json_dict()
    started = history.events[0].workflow_execution_started_event_attributes
    _normalize(recorded, started.task_queue.name)
    return json.dumps(recorded, indent=2, ensure_ascii=False) + "\n"


def _normalize(value: Any, task_queue: str) -> None:
    """Replace identities and the task queue name in place, and sort SDK flag sets."""
    if isinstance(value, list):
        for item in value:
            _normalize(item, task_queue)
        return
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        if key == "identity":
            value[key] = RECORDED_IDENTITY
        elif item == task_queue:
            value[key] = RECORDED_TASK_QUEUE
        elif key in ("langUsedFlags", "coreUsedFlags"):
            # Sets of flag numbers that the SDK lists in no fixed order.
            value[key] = sorted(item)
        else:
            _normalize(item, task_queue)


class RecordingSimulation(Simulation):
    """A simulation that also fetches every ticket's history at its end."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.histories: dict[str, list[WorkflowHistory]] = {}

    async def _read_outcomes(
        self, tickets: TicketClient, store: Store, default_timezone: str
    ) -> list[TicketOutcome]:
        # NOTE: this overrides a private step of Simulation.run, the only
        # point where its test server is still running after the last event.
        for ticket_id in self.ticket_ids:
            self.histories[ticket_id] = await fetch_runs(
                tickets.client, workflow_id(ticket_id)
            )
        return await super()._read_outcomes(tickets, store, default_timezone)


def recording_start(first: datetime | None, now: datetime) -> datetime | None:
    """Return when to run a file: its own start, or 52 weeks later until that is ahead.

    The time-skipping server starts at the real clock and only moves forward,
    so a start less than an hour ahead of ``now`` moves too. Whole weeks keep
    the weekday, and the local times stay the same unless the two dates have
    different UTC offsets in the file's zone.
    """
    if first is None:
        return None
    start = first
    while start <= now + timedelta(hours=1):
        start += timedelta(weeks=52)
    return start


async def record_file(path: Path, histories: Path, out: TextIO) -> None:
    """Simulate one examples file and write its tickets' histories.

    Files in the file's folder that this run did not write are removed, such
    as the second run of a ticket that no longer continues as new.

    Raises:
        RecordingError: the file is invalid, an event failed, or the payloads
            are encrypted.
    """
    try:
        schedule = read_schedule(path)
    except ScheduleError as error:
        raise RecordingError(str(error)) from None
    start = recording_start(schedule.start, datetime.now(UTC))
    simulation = RecordingSimulation(schedule, start=start, horizon=HORIZON, log=None)
    try:
        await simulation.run()
    except StarterError as error:
        raise RecordingError(f"{path.name}: {error}") from None
    if simulation.failed_events:
        failed = simulation.failed_events[0]
        raise RecordingError(
            f"{path.name} line {failed['line']}: {failed['event']} of ticket "
            f"{failed['ticket_id']} failed: {failed['error']}; fix the file or "
            "the workflow, then record again"
        )

    for runs in simulation.histories.values():
        for history in runs:
            check_plain_payloads(history)

    folder = histories / path.stem
    folder.mkdir(parents=True, exist_ok=True)
    written: set[Path] = set()
    for ticket_id in sorted(schedule.ticket_ids):
        runs = simulation.histories[ticket_id]
        for run_number, history in enumerate(runs, start=1):
            target = folder / history_file_name(ticket_id, run_number)
            target.write_text(history_json(history), encoding="utf-8")
            written.add(target)
        events = sum(len(history.events) for history in runs)
        moved = "" if start == schedule.start else f", run from {start:%Y-%m-%d}"
        print(
            f"{_shown(folder / history_file_name(ticket_id, 1))}: "
            f"{len(runs)} run{'s' if len(runs) > 1 else ''}, "
            f"{events} events{moved}",
            file=out,
        )

    for stale in sorted(set(folder.glob("*.json")) - written):
        stale.unlink()
        print(f"{_shown(stale)}: removed", file=out)


def keep_histories(files: Sequence[Path], histories: Path, label: str) -> None:
    """Copy the current histories of ``files`` to the archive folder ``label``.

    Raises:
        RecordingError: the label is invalid or already used.
    """
    if not LABEL_PATTERN.fullmatch(label):
        raise RecordingError(
            f"invalid label {label!r}: use letters, digits, '.', '_' and '-'"
        )
    archive = histories / ARCHIVE / label
    if archive.exists():
        raise RecordingError(f"{_shown(archive)} already exists; choose another label")
    for path in files:
        current = histories / path.stem
        if current.is_dir():
            shutil.copytree(current, archive / path.stem)


def _shown(path: Path) -> str:
    """Return the path relative to the project root when it lies inside."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.record_histories",
        description=(
            "Run examples files on the time-skipping test server and write "
            "each ticket's workflow history under tests/histories/ for the "
            "replay tests."
        ),
    )
    parser.add_argument(
        "files",
        metavar="FILE",
        nargs="*",
        type=Path,
        help="examples files to record (default: every examples/*.jsonl)",
    )
    parser.add_argument(
        "--keep-as",
        metavar="LABEL",
        help="first copy the files' current histories to "
        "tests/histories/archive/LABEL/, so replay keeps testing them",
    )
    return parser.parse_args(argv)


async def record(
    files: Sequence[Path], histories: Path, keep_as: str | None, out: TextIO
) -> None:
    if keep_as is not None:
        keep_histories(files, histories, keep_as)
    for path in files:
        await record_file(path, histories, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Record the histories and return the exit code: 0, or 1 on an error."""
    args = parse_args(argv)
    files = sorted(args.files or EXAMPLES.glob("*.jsonl"))
    try:
        asyncio.run(record(files, HISTORIES, args.keep_as, sys.stdout))
    except RecordingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
