"""Time the reports over a year of generated records, for ``bench.run``.

A full run writes 20,000 tickets of 50 techs, opened over 2025, with
``scripts.generate_records`` into a SQLite file under ``var/bench/`` once.
Later runs reuse the file while it contains every ticket. Writing it took
224 s on a shared two-core machine. A quick run writes 300 tickets of 5
techs into a temporary folder.

Each figure is the median of REPEATS runs of the report's functions in this
process, from reading the database to the finished text or page. Starting
Python and importing matplotlib, which a ``starter.py`` command adds, are
left out.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import col

from activities.store import HoursEntry, Store
from bench.passes import print_line
from bench.processes import PROJECT_DIR, BenchError
from bench.report import Figure, below
from reports.compliance import ReportRange, load_compliance, render_html, write_csv
from reports.compliance import render_text as render_compliance
from reports.hours import (
    load_all_customers_month,
    load_customer_month,
    render_all_customers,
    render_customer,
)
from reports.story import open_database
from scripts.generate_records import count_tickets, generate, speed_up_sqlite

SECTION = "Reports over a year of records"
CACHE_DIR = PROJECT_DIR / "var" / "bench"
# The company's zone in the generated records and the reports.
ZONE = "America/New_York"
REPEATS = 3
TARGET_SECONDS = 5.0


@dataclass(frozen=True)
class RecordSet:
    """The options of one generated set of records."""

    tickets: int
    techs: int
    seed: int = 7
    start: date = date(2025, 1, 1)
    days: int = 365

    @property
    def file_name(self) -> str:
        return f"records-{self.tickets}-{self.techs}-seed{self.seed}.db"

    @property
    def last_day(self) -> date:
        return self.start + timedelta(days=self.days - 1)


FULL = RecordSet(tickets=20_000, techs=50)
QUICK = RecordSet(tickets=300, techs=5)


def reports_method_text(*, quick: bool) -> str:
    """Describe how the report figures are measured, for the benchmark page."""
    records = QUICK if quick else FULL
    return f"""\
- **Reports**: {records.tickets} tickets of {records.techs} techs opened over
  {records.days} days from {records.start}, written by
  `scripts/generate_records.py` (seed {records.seed}) into a SQLite file:
  each ticket runs through the real ledger and is stored as the workflow
  stores it. Each figure is the median of {REPEATS} runs of the report's
  functions in the benchmark's process, from reading the database to the
  finished text, CSV or HTML; starting Python and importing matplotlib are
  left out. The compliance figures cover the whole year; the hours figures
  cover the customer and month with the most logged hours entries."""


def report_figures(*, quick: bool) -> list[Figure]:
    """Generate or reuse the records, time each report and return the figures."""
    records = QUICK if quick else FULL
    if quick:
        with tempfile.TemporaryDirectory(prefix="ticket-guard-reports-") as folder:
            return _measure(_records_database(records, Path(folder)), records)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return _measure(_records_database(records, CACHE_DIR), records)


def _records_database(records: RecordSet, folder: Path) -> str:
    """Return the URL of a database with the records, writing them if needed."""
    path = folder / records.file_name
    url = f"sqlite:///{path}"
    if path.exists():
        store = Store(url)
        try:
            stored = count_tickets(store)
        finally:
            store.dispose()
        if stored == records.tickets:
            print_line(f"Reports: reusing {records.tickets} tickets in {path}")
            return url
        # Left by a run that stopped before storing every ticket.
        path.unlink()

    print_line(
        f"Reports: generating {records.tickets} tickets of {records.techs} techs"
    )
    began = time.monotonic()
    store = Store(url)
    speed_up_sqlite(store)
    try:
        store.create_tables()
        generate(
            store,
            tickets=records.tickets,
            techs=records.techs,
            seed=records.seed,
            start=records.start,
            days=records.days,
            progress=lambda line: print_line(f"  {line}"),
        )
    finally:
        store.dispose()
    print_line(f"  generated in {time.monotonic() - began:.0f} s")
    return url


def _measure(url: str, records: RecordSet) -> list[Figure]:
    engine = open_database(url)
    try:
        return _time_reports(engine, records)
    finally:
        engine.dispose()


def _time_reports(engine: Engine, records: RecordSet) -> list[Figure]:
    year = ReportRange(records.start, records.last_day, ZoneInfo(ZONE))
    month, customer_id = _busiest_customer_month(engine)

    def compliance_table() -> None:
        render_compliance(load_compliance(engine, year))

    def compliance_files() -> None:
        report = load_compliance(engine, year)
        write_csv(report, io.StringIO(newline=""))
        render_html(report)

    def hours_of_everyone() -> None:
        entries = load_all_customers_month(engine, month=month, default_timezone=ZONE)
        render_all_customers(entries, month)

    def hours_of_one() -> None:
        render_customer(
            load_customer_month(engine, customer_id, month=month, default_timezone=ZONE)
        )

    techs = f"{records.techs} techs, {records.tickets} tickets"
    timed = [
        ("compliance_year", f"compliance table, a year of {techs}", compliance_table),
        (
            "compliance_year_files",
            "compliance CSV and HTML page, a year",
            compliance_files,
        ),
        ("hours_all_customers", f"hours of every customer, {month}", hours_of_everyone),
        ("hours_customer", f"hours of one customer, {month}", hours_of_one),
    ]
    figures = []
    for key, name, report in timed:
        seconds = _median_seconds(report)
        print_line(f"  {name}: {seconds:.2f} s")
        figures.append(
            Figure(
                f"reports.{key}",
                SECTION,
                name,
                "s",
                seconds,
                target=below(TARGET_SECONDS, "s"),
            )
        )
    return figures


def _busiest_customer_month(engine: Engine) -> tuple[str, str]:
    """Return the month and customer with the most logged hours entries."""
    entries = func.count().label("entries")
    query = (
        select(col(HoursEntry.month), col(HoursEntry.customer_id), entries)
        .group_by(col(HoursEntry.month), col(HoursEntry.customer_id))
        .order_by(entries.desc(), col(HoursEntry.month), col(HoursEntry.customer_id))
        .limit(1)
    )
    with engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        raise BenchError("the generated records log no subscription hours")
    return row[0], row[1]


def _median_seconds(report: Callable[[], None]) -> float:
    durations = []
    for _run in range(REPEATS):
        began = time.perf_counter()
        report()
        durations.append(time.perf_counter() - began)
    return statistics.median(durations)
