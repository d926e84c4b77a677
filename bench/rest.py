"""Scale at rest: many open tickets whose next deadline is hours away.

Tickets are opened and left unclaimed, so each owes its claim 8 hours after
opening. Once the worker has stored every ticket it should do nothing until
then, and this pass measures what that costs: the worker's memory and idle
CPU, and the server's database size.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from activities.store import Store, Ticket
from bench.load import bench_opening, count_rows
from bench.measures import run_bounded
from bench.processes import BenchError, CpuMeter, CpuUsage, resident_memory
from starter import TicketClient

PROGRESS_INTERVAL = 5.0
# Tickets the worker must store per second at least, on average, before the
# wait for them gives up.
SLOWEST_STORE_RATE = 2.0

PrintLine = Callable[[str], None]


@dataclass
class RestResult:
    """The cost of ``count`` open tickets, measured once the worker was idle."""

    count: int
    store_rate: float
    worker_rss: int
    worker_idle_cpu: float
    server_idle_cpu: float
    server_database_bytes: int
    # CPU of the worker and the server while the new tickets were opened.
    opening: CpuUsage
    opened: int


def database_size(path: Path) -> int:
    """Return the bytes of a SQLite database with its journal and WAL files."""
    total = 0
    for suffix in ("", "-wal", "-shm", "-journal"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            total += part.stat().st_size
    return total


async def measure_at_rest(
    tickets: TicketClient,
    store: Store,
    counts: Sequence[int],
    concurrency: int,
    processes: dict[str, int],
    server_database: Path,
    settle_seconds: float,
    idle_seconds: float,
    print_line: PrintLine,
) -> list[RestResult]:
    """Open tickets up to each count in turn and measure the idle worker at each.

    ``processes`` has the pids of the ``ticket worker`` and the ``server``.
    """
    tag = uuid.uuid4().hex[:8]
    results: list[RestResult] = []
    opened = 0
    for count in counts:
        new = count - opened
        print_line(f"Opening tickets {opened + 1} to {count}")
        meter = CpuMeter(dict(processes))
        meter.start()
        seconds = await open_tickets(
            tickets, store, tag, opened, new, concurrency, print_line
        )
        opening = meter.read()
        opened = count

        # The worker may still finish workflow tasks after the last record.
        await asyncio.sleep(settle_seconds)
        meter.start()
        await asyncio.sleep(idle_seconds)
        idle = meter.read()
        result = RestResult(
            count=count,
            store_rate=new / seconds,
            worker_rss=resident_memory(processes["ticket worker"]),
            worker_idle_cpu=idle.percent_of_core("ticket worker"),
            server_idle_cpu=idle.percent_of_core("server"),
            server_database_bytes=database_size(server_database),
            opening=opening,
            opened=new,
        )
        print_line(
            f"  {count} open tickets: worker {result.worker_rss / 2**20:.0f} MiB, "
            f"idle CPU {result.worker_idle_cpu:.2f}% of a core; server database "
            f"{result.server_database_bytes / 2**20:.1f} MiB"
        )
        results.append(result)
    return results


async def open_tickets(
    tickets: TicketClient,
    store: Store,
    tag: str,
    first: int,
    count: int,
    concurrency: int,
    print_line: PrintLine,
) -> float:
    """Open ``count`` tickets and wait until the worker stored them all.

    Returns the seconds from the first start to the last ticket stored.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    step = max(count // 10, 1)
    started = 0

    async def open_one(index: int) -> None:
        nonlocal started
        ticket_id = f"R{tag}-{first + index}"
        await tickets.open(bench_opening(ticket_id, datetime.now(UTC)))
        started += 1
        if started % step == 0 or started == count:
            stored = await asyncio.to_thread(count_rows, store, Ticket)
            rate = started / (loop.time() - began)
            print_line(f"  {first + started} started ({rate:.0f}/s), {stored} stored")

    await run_bounded(count, concurrency, open_one)

    expected = first + count
    deadline = began + 60 + count / SLOWEST_STORE_RATE
    last_report = loop.time()
    while True:
        stored = await asyncio.to_thread(count_rows, store, Ticket)
        now = loop.time()
        if stored >= expected:
            return now - began
        if now > deadline:
            raise BenchError(
                f"the worker stored {stored} of {expected} tickets in "
                f"{now - began:.0f} s; see the worker's log"
            )
        if now - last_report > PROGRESS_INTERVAL:
            rate = (stored - first) / (now - began)
            print_line(f"  {stored} of {expected} stored ({rate:.0f}/s)")
            last_report = now
        await asyncio.sleep(0.5)
