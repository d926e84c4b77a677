"""Replay the recorded history of every example ticket with today's workflow code.

``tests/histories/`` contains the histories that ``python -m
scripts.record_histories`` wrote from the examples files. A change to the
ticket workflow that would fail tickets already running, such as an activity
or timer added before existing ones, fails here. docs/changing-the-workflow.md
describes how to make such a change safely.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, Worker

from scripts.record_histories import (
    ARCHIVE,
    RECORDED_IDENTITY,
    RECORDED_TASK_QUEUE,
    fetch_runs,
    history_file_name,
    history_json,
    record_file,
    recording_start,
    ticket_id_of,
)
from starter import read_schedule, workflow_id
from tests.binaries import time_skipping_server_path
from worker import sandboxed_runner, workflow_runner
from workflows.ticket import TicketWorkflow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
HISTORIES = Path(__file__).resolve().parent / "histories"
HISTORY_FILES = sorted(HISTORIES.rglob("*.json"))
RECORD_COMMAND = "python -m scripts.record_histories"


def ticket_replayer(*workflows: type, sandboxed: bool = True) -> Replayer:
    """Return a replayer in the sandbox, or with the worker's own runner."""
    runner = sandboxed_runner() if sandboxed else workflow_runner()
    return Replayer(workflows=list(workflows), workflow_runner=runner)


def load_history(path: Path) -> WorkflowHistory:
    ticket_workflow_id = workflow_id(ticket_id_of(path))
    return WorkflowHistory.from_json(
        ticket_workflow_id, path.read_text(encoding="utf-8")
    )


def shown(path: Path) -> str:
    return path.relative_to(HISTORIES).as_posix()


# In the sandbox, replay also fails on a call that the sandbox forbids in the
# workflow's own code, which the worker runs outside it.
@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandbox", "worker"])
@pytest.mark.parametrize("path", HISTORY_FILES, ids=shown)
async def test_history_replays(path: Path, sandboxed: bool) -> None:
    replayer = ticket_replayer(TicketWorkflow, sandboxed=sandboxed)
    replayed = await replayer.replay_workflow(
        load_history(path), raise_on_replay_failure=False
    )

    assert replayed.replay_failure is None, (
        f"{shown(path)} no longer replays: {replayed.replay_failure}"
    )


def example_tickets() -> dict[str, list[str]]:
    """Return each examples file's stem with the ids of its tickets."""
    return {
        path.stem: read_schedule(path).ticket_ids
        for path in sorted(EXAMPLES.glob("*.jsonl"))
    }


def test_every_example_ticket_has_history() -> None:
    expected = [
        f"{stem}/{history_file_name(ticket_id, 1)}"
        for stem, ticket_ids in example_tickets().items()
        for ticket_id in ticket_ids
    ]

    missing = [name for name in expected if not (HISTORIES / name).is_file()]

    assert expected != []
    assert missing == [], f"record the missing histories with {RECORD_COMMAND}"


def test_every_history_has_example_ticket() -> None:
    tickets = example_tickets()
    current = [
        path
        for path in HISTORY_FILES
        if path.relative_to(HISTORIES).parts[0] != ARCHIVE
    ]

    orphans = [
        shown(path)
        for path in current
        if path.parent.parent != HISTORIES
        or ticket_id_of(path) not in tickets.get(path.parent.name, [])
    ]

    assert current != []
    assert orphans == [], (
        f"these histories belong to no example ticket: move them under "
        f"{ARCHIVE}/ with '{RECORD_COMMAND} --keep-as LABEL', or delete them"
    )


# Outside the sandbox, because the sandbox would import this module again and
# reject the file reads at its top. Nondeterminism is detected the same way.
@workflow.defn(name="TicketWorkflow", sandboxed=False)
class TimerFirstTicketWorkflow(TicketWorkflow):
    """The ticket workflow with a timer before its first step: not replay-safe."""

    # Takes whatever positional parameters the ticket workflow takes, so this
    # class keeps working when they change.
    @workflow.init
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)

    @workflow.run
    async def run(self, *args: Any) -> dict[str, Any]:
        await workflow.sleep(timedelta(seconds=1))
        return await super().run(*args)


async def test_extra_timer_fails_replay() -> None:
    history = load_history(HISTORIES / "berlin" / "T-5001.json")

    unchanged = await ticket_replayer(TicketWorkflow).replay_workflow(
        history, raise_on_replay_failure=False
    )
    changed = await ticket_replayer(TimerFirstTicketWorkflow).replay_workflow(
        history, raise_on_replay_failure=False
    )

    assert unchanged.replay_failure is None
    assert isinstance(changed.replay_failure, workflow.NondeterminismError)
    # TMPRL1100 is the SDK core's code for a nondeterminism error.
    assert "[TMPRL1100]" in str(changed.replay_failure)


@workflow.defn(name="Countdown", sandboxed=False)
class CountdownWorkflow:
    """Continues as new until ``remaining`` reaches 0, one timer per run."""

    @workflow.run
    async def run(self, remaining: int) -> str:
        await workflow.sleep(timedelta(minutes=1))
        if remaining > 0:
            workflow.continue_as_new(remaining - 1)
        return "done"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=time_skipping_server_path()
    )
    async with environment:
        yield environment.client


async def test_fetch_runs_follows_continue_as_new(client: Client) -> None:
    task_queue = f"countdown-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[CountdownWorkflow],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        handle = await client.start_workflow(
            CountdownWorkflow.run,
            2,
            id=f"countdown-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        assert await handle.result() == "done"

    runs = await fetch_runs(client, handle.id)

    started = [
        run.events[0].workflow_execution_started_event_attributes for run in runs
    ]
    assert len(runs) == 3
    assert started[0].continued_execution_run_id == ""
    assert started[1].continued_execution_run_id == runs[0].run_id
    assert started[2].continued_execution_run_id == runs[1].run_id
    assert runs[0].run_id == handle.first_execution_run_id
    assert runs[2].run_id == (await handle.describe()).run_id
    assert [run.workflow_id for run in runs] == [handle.id] * 3


async def test_history_json_hides_machine_values(client: Client) -> None:
    task_queue = f"countdown-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[CountdownWorkflow],
        workflow_runner=UnsandboxedWorkflowRunner(),
        identity="4242@build-host",
    ):
        handle = await client.start_workflow(
            CountdownWorkflow.run,
            0,
            id=f"countdown-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        await handle.result()
    (history,) = await fetch_runs(client, handle.id)

    text = history_json(history)

    assert task_queue not in text
    assert "build-host" not in text
    assert text.endswith("}\n")
    recorded = json.loads(text)
    identities = {
        attributes["identity"]
        for event in recorded["events"]
        for key, attributes in event.items()
        if key.endswith("Attributes") and "identity" in attributes
    }
    assert identities == {RECORDED_IDENTITY}
    started = recorded["events"][0]["workflowExecutionStartedEventAttributes"]
    assert started["taskQueue"]["name"] == RECORDED_TASK_QUEUE
    # The file reads back as the same events apart from the fixed values.
    reread = WorkflowHistory.from_json(handle.id, text)
    assert [event.event_type for event in reread.events] == [
        event.event_type for event in history.events
    ]


def test_history_file_names_round_trip() -> None:
    for ticket_id in ("T-1001", "T-1.run2", "a:b_c"):
        for run_number in (1, 2, 12):
            path = Path(history_file_name(ticket_id, run_number))
            assert ticket_id_of(path) == ticket_id
    assert history_file_name("T-1001", 1) == "T-1001.json"
    assert history_file_name("T-1001", 2) == "T-1001+run2.json"


def test_recording_start_moves_past_files() -> None:
    thursday = datetime(2027, 3, 18, 18, 0, tzinfo=UTC)

    assert recording_start(thursday, thursday - timedelta(days=30)) == thursday
    assert recording_start(None, thursday) is None
    moved = recording_start(thursday, datetime(2027, 4, 1, tzinfo=UTC))
    assert moved == datetime(2028, 3, 16, 18, 0, tzinfo=UTC)
    assert moved is not None
    assert moved.weekday() == thursday.weekday()
    twice = recording_start(thursday, datetime(2028, 3, 17, tzinfo=UTC))
    assert twice == datetime(2029, 3, 15, 18, 0, tzinfo=UTC)


async def test_fresh_recording_replays(tmp_path: Path) -> None:
    # A file left by a run that no longer exists must go.
    stale = tmp_path / "berlin" / history_file_name("T-5001", 2)
    stale.parent.mkdir()
    stale.write_text("{}", encoding="utf-8")
    out = io.StringIO()

    await record_file(EXAMPLES / "berlin.jsonl", tmp_path, out)

    written = sorted(path.name for path in (tmp_path / "berlin").iterdir())
    assert written == ["T-5001.json", "T-5002.json"]
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{tmp_path / 'berlin' / 'T-5001.json'}: 1 run, ")
    assert lines[1].startswith(f"{tmp_path / 'berlin' / 'T-5002.json'}: 1 run, ")
    assert lines[2] == f"{stale}: removed"
    for name in written:
        history = WorkflowHistory.from_json(
            workflow_id(name.removesuffix(".json")),
            (tmp_path / "berlin" / name).read_text(encoding="utf-8"),
        )
        replayed = await ticket_replayer(TicketWorkflow).replay_workflow(
            history, raise_on_replay_failure=False
        )
        assert replayed.replay_failure is None, f"{name}: {replayed.replay_failure}"
