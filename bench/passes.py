"""The passes of a benchmark run, each with the processes it needs.

The load passes and the at-rest pass each get a dev server of their own; the
mail sink serves both. The time-skipping passes run in this process.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client

from activities.store import Store
from bench.load import (
    measure_bare,
    measure_event_latency,
    measure_rates,
    measure_tickets,
)
from bench.processes import (
    LOOPBACK,
    PROJECT_DIR,
    ChildProcess,
    CpuMeter,
    DevServer,
    free_port,
    resident_memory,
    smtp_responds,
    start_dev_server,
    start_python,
    stop_child,
    wait_until,
    worker_polls,
)
from bench.rest import measure_at_rest
from bench.results import PhaseCpu, Plan, Results
from bench.skipped import ladder_schedule, simulate, typical_schedule
from bench.ticket_worker import SETTINGS_VARIABLE
from starter import TicketClient, read_schedule

EXAMPLES_DIR = PROJECT_DIR / "examples"
# A guess at the slowest start rate, which sizes the bare pass's lead time
# before its measured rate is known.
ASSUMED_START_RATE = 20.0
# The claims get this many times the bare pass's start time as lead time,
# because a claim does more work than a bare start.
CLAIM_LEAD_FACTOR = 6.0
# Ticket histories replayed to measure the workflow code's own CPU time.
REPLAY_SAMPLE = 20
# Time for a worker's imports and first poll after its start.
WORKER_SETTLE_SECONDS = 2.0


def print_line(message: str) -> None:
    """Print a progress line or the table for the person running the benchmark."""
    print(message, flush=True)


def worker_settings(
    address: str, task_queue: str, database: Path, smtp_port: int
) -> dict[str, Any]:
    """Return every Settings field that matters, so the environment changes none."""
    return {
        "temporal_address": address,
        "temporal_namespace": "default",
        "temporal_task_queue": task_queue,
        "database_url": f"sqlite:///{database}",
        "smtp_host": LOOPBACK,
        "smtp_port": smtp_port,
        "smtp_username": None,
        "smtp_password": None,
        "smtp_tls": None,
        "mail_from": "ticket-guard <no-reply@ticket-guard.localhost>",
        "ops_email": "ops@ticket-guard.localhost",
        "default_timezone": "America/New_York",
        "policy_overrides": {},
        "ticket_search_attributes": True,
        "payload_encryption_key": None,
        "payload_decryption_keys": [],
    }


async def start_ticket_worker(
    name: str, settings: dict[str, Any], work_dir: Path
) -> ChildProcess:
    return await start_python(
        name,
        ["-m", "bench.ticket_worker", "--stats", str(work_dir / f"{name}-stats.json")],
        work_dir,
        {SETTINGS_VARIABLE: json.dumps(settings)},
    )


async def wait_for_worker(client: Client, child: ChildProcess, task_queue: str) -> None:
    async def polling() -> bool:
        return await worker_polls(client, task_queue)

    await wait_until(child, f"{child.name} (polling {task_queue})", polling)


async def measure_load(
    plan: Plan, work_dir: Path, smtp_port: int, results: Results
) -> None:
    """Passes 1 and 2: the bare ceiling, then tickets, on one dev server."""
    print_line("Starting the dev server for the load passes")
    server = await start_dev_server(
        "load-server", work_dir / "load-temporal.db", work_dir
    )
    try:
        await _run_load_workers(plan, server, work_dir, smtp_port, results)
    finally:
        await stop_child(server.child)

    stats_path = work_dir / "load-worker-stats.json"
    if stats_path.exists():
        results.worker_stats = json.loads(stats_path.read_text(encoding="utf-8"))


async def _run_load_workers(
    plan: Plan, server: DevServer, work_dir: Path, smtp_port: int, results: Results
) -> None:
    bare_queue = f"bench-bare-{uuid.uuid4().hex[:8]}"
    ticket_queue = f"bench-tickets-{uuid.uuid4().hex[:8]}"
    database = work_dir / "load-tickets.db"
    bare_arguments = ["--address", server.address, "--task-queue", bare_queue]
    bare_worker = await start_python(
        "bare-worker", ["-m", "bench.bare_worker", *bare_arguments], work_dir
    )
    ticket_worker = await start_ticket_worker(
        "load-worker",
        worker_settings(server.address, ticket_queue, database, smtp_port),
        work_dir,
    )
    store = Store(f"sqlite:///{database}")
    try:
        await wait_for_worker(server.client, bare_worker, bare_queue)
        await wait_for_worker(server.client, ticket_worker, ticket_queue)
        pids = {
            "server": server.child.pid,
            "bare worker": bare_worker.pid,
            "ticket worker": ticket_worker.pid,
            "driver": os.getpid(),
        }
        await _load_passes(
            plan, server.client, bare_queue, ticket_queue, store, pids, results
        )
        if results.tickets is not None:
            sample = results.tickets.ticket_ids[:REPLAY_SAMPLE]
            results.replay_cost = await measure_replay_cost(
                server.address,
                [f"ticket-{ticket_id}" for ticket_id in sample],
                work_dir,
            )
    finally:
        store.dispose()
        await stop_child(bare_worker)
        await stop_child(ticket_worker)


async def _load_passes(
    plan: Plan,
    client: Client,
    bare_queue: str,
    ticket_queue: str,
    store: Store,
    pids: dict[str, int],
    results: Results,
) -> None:
    meter = CpuMeter(pids)

    bare_lead = plan.min_lead_seconds + plan.load / ASSUMED_START_RATE
    print_line(f"Pass 1: {plan.load} bare workflows, timers due in {bare_lead:.0f} s")
    meter.start()
    bare = await measure_bare(
        client, bare_queue, plan.load, plan.concurrency, timedelta(seconds=bare_lead)
    )
    results.cpu_by_phase["bare starts and timers"] = PhaseCpu(
        meter.read(), plan.load, "workflow"
    )
    results.bare = bare
    print_line(f"  {bare.start_rate:.1f} starts/s")

    claim_lead = plan.min_lead_seconds + CLAIM_LEAD_FACTOR * plan.load / bare.start_rate
    print_line(f"Pass 2: {plan.load} tickets, first contact due in {claim_lead:.0f} s")
    meter.start()
    tickets = await measure_tickets(
        client,
        ticket_queue,
        store,
        plan.load,
        plan.concurrency,
        timedelta(seconds=claim_lead),
        print_line,
    )
    results.cpu_by_phase["claims, deadlines and mail"] = PhaseCpu(
        meter.read(), plan.load, "ticket"
    )
    results.tickets = tickets
    print_line(f"  {tickets.claim_rate:.1f} claims/s")

    events = max(int(plan.signal_rate * plan.signal_seconds), 1)
    print_line(f"Signals at {plan.signal_rate:g}/s for {plan.signal_seconds:g} s")
    meter.start()
    results.signal_latency, results.signal_timeouts = await measure_event_latency(
        client,
        ticket_queue,
        tickets.ticket_ids,
        plan.signal_rate,
        plan.signal_seconds,
        through_update=False,
    )
    results.cpu_by_phase["signals"] = PhaseCpu(meter.read(), events, "signal")

    print_line(f"Updates at {plan.signal_rate:g}/s for {plan.signal_seconds:g} s")
    meter.start()
    results.update_latency, results.update_timeouts = await measure_event_latency(
        client,
        ticket_queue,
        tickets.ticket_ids,
        plan.signal_rate,
        plan.signal_seconds,
        through_update=True,
    )
    results.cpu_by_phase["Updates"] = PhaseCpu(meter.read(), events, "Update")

    print_line(
        f"Rates: {plan.load} bare starts and {plan.load} claims dated now, "
        f"in {plan.rate_rounds} alternating rounds"
    )
    rates = await measure_rates(
        client,
        bare_queue,
        ticket_queue,
        plan.load,
        plan.concurrency,
        plan.rate_rounds,
        meter,
    )
    results.rates = rates
    results.cpu_by_phase["bare starts, alternating"] = PhaseCpu(
        rates.bare_cpu, plan.load, "workflow"
    )
    results.cpu_by_phase["claims dated now, alternating"] = PhaseCpu(
        rates.claim_cpu, plan.load, "ticket"
    )
    print_line(f"  {rates.start_rate:.1f} starts/s, {rates.claim_rate:.1f} claims/s")


async def measure_replay_cost(
    address: str, workflow_ids: list[str], work_dir: Path
) -> dict[str, float] | None:
    """Run bench.replay_cost in its own process; None if it printed no result.

    The profile goes without the figure rather than the run failing, and the
    program's log stays in the work folder.
    """
    child = await start_python(
        "replay-cost", ["-m", "bench.replay_cost", address, *workflow_ids], work_dir
    )
    await child.process.wait()
    for line in reversed(child.log_path.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            result: dict[str, float] = json.loads(line)
            return result
    print_line(f"  no replay measurement; see {child.log_path}")
    return None


async def measure_rest(
    plan: Plan, work_dir: Path, smtp_port: int, results: Results
) -> None:
    """Pass 3: open tickets at rest on a fresh dev server and worker."""
    print_line("Starting a fresh dev server for the tickets at rest")
    server_database = work_dir / "rest-temporal.db"
    server = await start_dev_server("rest-server", server_database, work_dir)
    task_queue = f"bench-rest-{uuid.uuid4().hex[:8]}"
    database = work_dir / "rest-tickets.db"
    try:
        worker = await start_ticket_worker(
            "rest-worker",
            worker_settings(server.address, task_queue, database, smtp_port),
            work_dir,
        )
        store = Store(f"sqlite:///{database}")
        try:
            await wait_for_worker(server.client, worker, task_queue)
            await asyncio.sleep(WORKER_SETTLE_SECONDS)
            results.worker_rss_at_start = resident_memory(worker.pid)
            results.rest = await measure_at_rest(
                TicketClient(server.client, task_queue),
                store,
                plan.rest_counts,
                plan.concurrency,
                {"ticket worker": worker.pid, "server": server.child.pid},
                server_database,
                plan.settle_seconds,
                plan.idle_seconds,
                print_line,
            )
        finally:
            store.dispose()
            await stop_child(worker)
    finally:
        await stop_child(server.child)


async def measure_time_skipped(plan: Plan, results: Results) -> None:
    """Passes 4 and 5 on the time-skipping test server."""
    print_line("Pass 4: the full unreachable ladder, time-skipped")
    results.ladder = await simulate(ladder_schedule(EXAMPLES_DIR))
    print_line(f"  {results.ladder.play_seconds:.2f} s")

    print_line("Pass 5: history events per ticket")
    results.typical = await simulate(typical_schedule())
    for path in plan.examples:
        results.examples.append(await simulate(read_schedule(path)))


async def run_benchmark(plan: Plan, work_dir: Path) -> Results:
    results = Results(plan)
    smtp_port = free_port()
    sink = await start_python(
        "mailsink",
        ["mailsink.py", "--host", LOOPBACK, "--port", str(smtp_port)],
        work_dir,
    )
    try:

        async def sink_ready() -> bool:
            return await smtp_responds(smtp_port)

        await wait_until(sink, "mail sink", sink_ready)
        await measure_load(plan, work_dir, smtp_port, results)
        await measure_rest(plan, work_dir, smtp_port, results)
    finally:
        await stop_child(sink)
    await measure_time_skipped(plan, results)
    return results
