"""Percentiles, bounded concurrency and the timings read from workflow histories."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

# A fired timer counts as the deadline's timer when it was set to fire this
# close to the deadline. Other timers of a ticket lie hours away.
DEADLINE_TIMER_TOLERANCE = timedelta(minutes=5)
# The marker the SDK core records for each local activity. Its "data" detail
# contains the activity's type and attempt as plain JSON.
LOCAL_ACTIVITY_MARKER = "core_local_activity"


@dataclass(frozen=True)
class Distribution:
    """The p50, p99 and maximum of a set of measurements, in their own unit.

    Percentiles use the nearest-rank method, so p99 of fewer than 100 values
    is the maximum.
    """

    count: int
    p50: float
    p99: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution | None:
        if not values:
            return None
        ordered = sorted(values)
        return cls(
            count=len(ordered),
            p50=nearest_rank(ordered, 50),
            p99=nearest_rank(ordered, 99),
            maximum=ordered[-1],
        )


def nearest_rank(ordered: Sequence[float], percent: float) -> float:
    """Return the ``percent`` percentile of sorted values by the nearest-rank method."""
    rank = max(math.ceil(percent / 100 * len(ordered)), 1)
    return ordered[rank - 1]


async def run_bounded(
    count: int,
    concurrency: int,
    job: Callable[[int], Awaitable[None]],
) -> float:
    """Run ``job(0)`` to ``job(count - 1)``, at most ``concurrency`` at a time.

    Returns the elapsed seconds. The first exception of a job cancels the rest
    and is raised.
    """
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await job(index)

    loop = asyncio.get_running_loop()
    began = loop.time()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, count)):
            group.create_task(lane())
    return loop.time() - began


async def history_of(client: Client, workflow_id: str) -> list[HistoryEvent]:
    """Return the events of every run of a workflow, the first run first.

    A ticket that continued as new has several runs. Each run's first event
    names the run before it.
    """
    runs: list[list[HistoryEvent]] = []
    run_id: str | None = None
    while True:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        events = [event async for event in handle.fetch_history_events()]
        runs.append(events)
        started = events[0].workflow_execution_started_event_attributes
        if not started.continued_execution_run_id:
            break
        run_id = started.continued_execution_run_id
    return [event for run in reversed(runs) for event in run]


def event_time(event: HistoryEvent) -> datetime:
    return event.event_time.ToDatetime(tzinfo=UTC)


def timer_lateness(events: Sequence[HistoryEvent], due: datetime) -> float | None:
    """Return seconds from ``due`` to the TimerFired of the timer set for it.

    The timer set for ``due`` is the fired one whose start time plus duration
    lies nearest to it, within DEADLINE_TIMER_TOLERANCE. None when no timer
    fired for it.
    """
    expected: dict[str, datetime] = {}
    fired: dict[str, datetime] = {}
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            started = event.timer_started_event_attributes
            duration = started.start_to_fire_timeout.ToTimedelta()
            expected[started.timer_id] = event_time(event) + duration
        elif event.event_type == EventType.EVENT_TYPE_TIMER_FIRED:
            fired[event.timer_fired_event_attributes.timer_id] = event_time(event)

    candidates = [
        timer_id
        for timer_id in fired
        if timer_id in expected
        and abs(expected[timer_id] - due) <= DEADLINE_TIMER_TOLERANCE
    ]
    if not candidates:
        return None
    nearest = min(candidates, key=lambda timer_id: abs(expected[timer_id] - due))
    return (fired[nearest] - due).total_seconds()


def activity_counts(events: Sequence[HistoryEvent]) -> Counter[str]:
    """Count scheduled activities by type, a local one as "<type> (local)"."""
    counts: Counter[str] = Counter()
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            counts[
                event.activity_task_scheduled_event_attributes.activity_type.name
            ] += 1
        elif (
            event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
            and event.marker_recorded_event_attributes.marker_name
            == LOCAL_ACTIVITY_MARKER
        ):
            counts[f"{local_activity_type(event)} (local)"] += 1
    return counts


def local_activity_type(marker: HistoryEvent) -> str:
    """Return the activity type of a local activity's marker, or "?" if unreadable."""
    details = marker.marker_recorded_event_attributes.details.get("data")
    if details is None or not details.payloads:
        return "?"
    try:
        data = json.loads(details.payloads[0].data)
    except ValueError:
        return "?"
    activity_type = data.get("activity_type") if isinstance(data, dict) else None
    return activity_type if isinstance(activity_type, str) else "?"
