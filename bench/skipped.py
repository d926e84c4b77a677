"""Runs on the time-skipping test server: the ladder's wall time and history sizes.

Each run is ``starter.py simulate`` with the real worker, SQLite and a mail
sink. This module times its steps and counts each ticket's history events
before the simulation's server stops.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from temporalio.testing import WorkflowEnvironment

from activities.store import Store
from bench.measures import history_of
from starter import (
    Schedule,
    Simulation,
    TicketClient,
    TicketOutcome,
    parse_schedule,
    read_schedule,
)

LADDER_FILE = "unreachable-ladder.jsonl"
# The ticket of the ladder file that climbs the three steps on time.
LADDER_TICKET = "T-2002"
NEW_YORK = ZoneInfo("America/New_York")


@dataclass
class SimulationResult:
    """Wall times of one simulation and the history events of each ticket."""

    source: str
    # From the first event to the moment no ticket owes anything.
    play_seconds: float = 0.0
    # Including the server's and the worker's start and stop.
    total_seconds: float = 0.0
    history_events: dict[str, int] = field(default_factory=dict)


class MeasuredSimulation(Simulation):
    """A simulation that times its steps and counts each ticket's history events."""

    def __init__(self, schedule: Schedule, start: datetime | None) -> None:
        super().__init__(schedule, start=start, horizon=timedelta(days=7), log=None)
        self.result = SimulationResult(schedule.source)
        self._play_began = 0.0

    async def _play(self, env: WorkflowEnvironment, tickets: TicketClient) -> datetime:
        self._play_began = time.monotonic()
        return await super()._play(env, tickets)

    async def _read_outcomes(
        self, tickets: TicketClient, store: Store, default_timezone: str
    ) -> list[TicketOutcome]:
        self.result.play_seconds = time.monotonic() - self._play_began
        for ticket_id in self.ticket_ids:
            events = await history_of(tickets.client, f"ticket-{ticket_id}")
            self.result.history_events[ticket_id] = len(events)
        return await super()._read_outcomes(tickets, store, default_timezone)


async def simulate(schedule: Schedule) -> SimulationResult:
    """Run a schedule on a fresh time-skipping server and return what it measured."""
    simulation = MeasuredSimulation(schedule, future_start(schedule))
    began = time.monotonic()
    await simulation.run()
    simulation.result.total_seconds = time.monotonic() - began
    return simulation.result


def future_start(schedule: Schedule) -> datetime | None:
    """Return the schedule's start, moved by 52 weeks at a time until it is ahead.

    The time-skipping server only moves forward from the current time, so a
    file dated in the past runs on the same weekday and local time of a later
    year. None keeps the file's own start.
    """
    start = schedule.start
    if start is None:
        return None
    zone = schedule.timezone or NEW_YORK
    local = start.astimezone(zone)
    soon = datetime.now(UTC) + timedelta(days=1)
    if start > soon:
        return None
    while local.astimezone(UTC) <= soon:
        local = (local.replace(tzinfo=None) + timedelta(weeks=52)).replace(tzinfo=zone)
    return local.astimezone(UTC)


def ladder_schedule(examples: Path) -> Schedule:
    """Return the textbook unreachable ladder alone, from the ladder example file."""
    full = read_schedule(examples / LADDER_FILE)
    events = tuple(event for event in full.events if event.ticket_id == LADDER_TICKET)
    return Schedule(
        source=f"{LADDER_FILE} ({LADDER_TICKET})",
        start=full.start,
        timezone=full.timezone,
        events=events,
    )


def typical_schedule() -> Schedule:
    """Return one typical ticket: claim, contact, notes and close on a weekday.

    It starts at 09:00 New York time on the first Tuesday at least two days
    ahead, so neither the quiet window nor the start date varies between runs.
    """
    day = (datetime.now(NEW_YORK) + timedelta(days=2)).date()
    day += timedelta(days=(1 - day.weekday()) % 7)
    header = {
        "start": f"{day.isoformat()}T09:00",
        "timezone": "America/New_York",
        "techs": {"K-4": {"name": "Kim Park", "email": "kim.park@techs.test"}},
    }
    customer = {
        "id": "C-1",
        "name": "Dana Reyes",
        "email": "dana@customer.test",
        "phone": "+1 555 0100",
        "timezone": "America/New_York",
    }
    ticket = "T-TYPICAL"
    events: list[dict[str, Any]] = [
        {"after": "0", "event": "open", "priority": "normal", "customer": customer},
        {"after": "10m", "event": "claim", "tech": "K-4"},
        {
            "after": "30m",
            "event": "contact_attempt",
            "channel": "phone",
            "outcome": "reached",
        },
        {"after": "45m", "event": "notes_updated"},
        {"after": "2h", "event": "close", "reason": "resolved"},
    ]
    lines = [json.dumps(header)]
    lines += [json.dumps({"ticket": ticket, **event}) for event in events]
    return parse_schedule(lines, source="typical ticket")
