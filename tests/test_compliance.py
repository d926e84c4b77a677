"""The compliance report, from tickets run through the real ledger and store.

Eleven tickets of three techs are played by ``TicketPlayer``, which stores
what the ledger produces as the workflow does. Every expected figure below is
worked out by hand from the written policy. The customer is in New York, on
EDT (UTC-4) in June 2026, and the report covers June on the New York clock:
from 2026-06-01 04:00 UTC up to 2026-07-01 04:00 UTC. Comments give local
times where they matter.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import async_playwright

from activities.store import Store, open_store
from reports.compliance import (
    CSV_COLUMNS,
    ComplianceError,
    ComplianceReport,
    ReportRange,
    Tally,
    TechCompliance,
    load_compliance,
    median_delay,
    render_html,
    render_text,
    write_csv,
)
from scripts.generate_records import ScriptedEvent, TicketPlayer
from settings import Settings
from starter import parse_args, run_command
from tests.test_browser import CHROMIUM_FLAGS, chromium_path

NEW_YORK = ZoneInfo("America/New_York")
JUNE = ReportRange(date(2026, 6, 1), date(2026, 6, 30), NEW_YORK)
CUSTOMER = {
    "id": "C-1",
    "name": "Casey Customer",
    "email": "casey@customer.example",
    "phone": "+1 212 555 0100",
    "timezone": "America/New_York",
}
K1 = {"id": "K-1", "name": "Ann One", "email": "k1@techs.example"}
K2 = {"id": "K-2", "name": "Bo Two", "email": "k2@techs.example"}
K3 = {"id": "K-3", "name": "Cy Three", "email": "k3@techs.example"}
MEASURE_TITLES = (
    "tickets claimed",
    "first contact on time",
    "median first-contact delay",
    "notes on time",
    "replies on time",
    "breaches by kind",
    "tickets closed unreachable",
)


def utc(text: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM`` as a UTC time."""
    return datetime.fromisoformat(text + "+00:00")


def play(
    store: Store,
    ticket_id: str,
    opened_at: str,
    events: list[tuple[str, str, dict[str, Any]]],
    **opening: Any,
) -> None:
    """Run one ticket through the ledger to its end, storing its record."""
    raw = {
        "ticket_id": ticket_id,
        "opened_at": utc(opened_at).isoformat(),
        "priority": "normal",
        "source": "portal",
        "customer": CUSTOMER,
        **opening,
    }
    scripted = [ScriptedEvent(utc(at), signal, fields) for at, signal, fields in events]
    player = TicketPlayer(store, raw, scripted)
    player.play()
    assert player.rejected == 0, ticket_id
    assert player.dropped == 0, ticket_id


def phone(outcome: str = "reached") -> dict[str, Any]:
    return {"channel": "phone", "outcome": outcome}


def email(outcome: str) -> dict[str, Any]:
    return {"channel": "email", "outcome": outcome}


NONE: dict[str, Any] = {}


def play_june(store: Store) -> None:
    # K-1 claims at 10:00 and phones at 10:20: first contact met after 20 min.
    play(
        store,
        "T-1",
        "2026-06-10T13:00",
        [
            ("2026-06-10T14:00", "claim", {"tech": K1}),
            ("2026-06-10T14:20", "contact_attempt", phone()),
            ("2026-06-10T16:00", "notes_updated", NONE),
            ("2026-06-11T14:00", "close", {"reason": "resolved"}),
        ],
    )

    # K-1 phones 1 h 40 min after the claim: first contact breached. Notes
    # due 12 h after the call (03:10 UTC) come at 04:00: breached.
    play(
        store,
        "T-2",
        "2026-06-10T13:00",
        [
            ("2026-06-10T13:30", "claim", {"tech": K1}),
            ("2026-06-10T15:10", "contact_attempt", phone()),
            ("2026-06-11T04:00", "notes_updated", NONE),
            ("2026-06-11T10:00", "close", {"reason": "resolved"}),
        ],
    )

    # K-2 claims at 22:00, in the quiet window: the clock starts at 08:00
    # (12:00 UTC). A message left at 08:45 meets first contact after 45 min
    # and starts a ladder, which the customer's message stops. The reply due
    # 24 h after the message comes an hour late: breached.
    play(
        store,
        "T-3",
        "2026-06-12T01:00",
        [
            ("2026-06-12T02:00", "claim", {"tech": K2}),
            ("2026-06-12T12:45", "contact_attempt", email("message_left")),
            ("2026-06-12T15:00", "customer_message", {"channel": "email"}),
            ("2026-06-12T20:00", "notes_updated", NONE),
            ("2026-06-13T16:00", "contact_attempt", phone()),
            ("2026-06-13T17:00", "notes_updated", NONE),
            ("2026-06-14T12:00", "close", {"reason": "resolved"}),
        ],
    )

    # An urgent ticket claimed at night starts its clock at the claim. The
    # SMS at 02:30 UTC is no first contact. The call at 03:40 is, 1 h 30 min
    # after the claim and 30 min after the due time.
    play(
        store,
        "T-4",
        "2026-06-14T02:00",
        [
            ("2026-06-14T02:10", "claim", {"tech": K2}),
            (
                "2026-06-14T02:30",
                "contact_attempt",
                {"channel": "sms", "outcome": "reached"},
            ),
            ("2026-06-14T03:40", "contact_attempt", phone()),
            ("2026-06-14T05:00", "notes_updated", NONE),
            ("2026-06-14T10:00", "close", {"reason": "resolved"}),
        ],
        priority="high",
    )

    # K-3 never reaches out: first contact breached at 15:00 UTC and never
    # made, since the ticket moves to K-1, who calls 30 min after taking it.
    play(
        store,
        "T-5",
        "2026-06-15T13:00",
        [
            ("2026-06-15T14:00", "claim", {"tech": K3}),
            ("2026-06-15T18:00", "reassign", {"tech": K1, "reason": "workload"}),
            ("2026-06-15T18:30", "contact_attempt", phone()),
            ("2026-06-15T20:00", "notes_updated", NONE),
            ("2026-06-16T12:00", "close", {"reason": "resolved"}),
        ],
    )

    # Created by K-3: claimed, no first contact owed. Notes due 12 h after
    # the opening come an hour late.
    play(
        store,
        "T-6",
        "2026-06-16T13:00",
        [
            ("2026-06-17T02:00", "notes_updated", NONE),
            ("2026-06-17T12:00", "close", {"reason": "resolved"}),
        ],
        source="tech_created",
        tech=K3,
    )

    # K-3 runs the whole ladder on time, and the ledger closes the ticket as
    # unreachable a day after the last step (06-23 14:05 UTC).
    play(
        store,
        "T-7",
        "2026-06-20T13:00",
        [
            ("2026-06-20T13:10", "claim", {"tech": K3}),
            ("2026-06-20T13:30", "contact_attempt", phone("no_answer")),
            ("2026-06-20T14:00", "notes_updated", NONE),
            ("2026-06-20T20:00", "contact_attempt", email("no_answer")),
            ("2026-06-20T21:00", "notes_updated", NONE),
            ("2026-06-22T14:00", "contact_attempt", phone("no_answer")),
            ("2026-06-22T14:05", "contact_attempt", email("no_answer")),
            ("2026-06-22T15:00", "notes_updated", NONE),
        ],
    )

    # K-2 never tries another method: that ladder step is breached 48 h after
    # the first attempt, and K-2 closes the ticket as unreachable.
    play(
        store,
        "T-8",
        "2026-06-24T13:00",
        [
            ("2026-06-24T13:20", "claim", {"tech": K2}),
            ("2026-06-24T13:50", "contact_attempt", email("no_answer")),
            ("2026-06-24T14:30", "notes_updated", NONE),
            ("2026-06-27T12:00", "close", {"reason": "unreachable"}),
        ],
    )

    # Claimed on May 31 (19:30 local) with first contact due before June; the
    # notes due 2026-06-01 13:00 UTC are June's.
    play(
        store,
        "T-9",
        "2026-05-31T20:00",
        [
            ("2026-05-31T23:30", "claim", {"tech": K1}),
            ("2026-06-01T01:00", "contact_attempt", phone()),
            ("2026-06-01T02:00", "notes_updated", NONE),
            ("2026-06-01T12:00", "close", {"reason": "resolved"}),
        ],
    )

    # The reply K-1 owes moves to K-3 with the ticket. K-3 takes it at 05:00,
    # in the quiet window, so the clock starts at 08:00 (12:00 UTC). The call
    # at 12:30 UTC meets first contact after 30 min, and the reply.
    play(
        store,
        "T-10",
        "2026-06-25T13:00",
        [
            ("2026-06-25T13:05", "claim", {"tech": K1}),
            ("2026-06-25T13:30", "contact_attempt", phone()),
            ("2026-06-25T14:00", "notes_updated", NONE),
            ("2026-06-25T18:00", "customer_message", {"channel": "email"}),
            ("2026-06-26T09:00", "reassign", {"tech": K3}),
            ("2026-06-26T12:30", "contact_attempt", phone()),
            ("2026-06-26T13:00", "notes_updated", NONE),
            ("2026-06-27T12:00", "close", {"reason": "resolved"}),
        ],
    )

    # Claimed at 23:30 on June 30: a June claim whose first contact is due
    # at 09:00 on July 1.
    play(
        store,
        "T-11",
        "2026-07-01T03:00",
        [
            ("2026-07-01T03:30", "claim", {"tech": K2}),
            ("2026-07-01T12:10", "contact_attempt", phone()),
            ("2026-07-01T12:30", "notes_updated", NONE),
            ("2026-07-01T18:00", "close", {"reason": "resolved"}),
        ],
    )


@pytest.fixture
def june_store(store: Store) -> Store:
    """The test's database, on SQLite and on PostgreSQL, with June's tickets."""
    play_june(store)
    return store


@pytest.fixture
def sqlite_june_store(tmp_path: Path) -> Iterator[Store]:
    """A SQLite database with June's tickets, for the tests of the output."""
    with open_store(f"sqlite:///{tmp_path / 'june.db'}") as opened:
        play_june(opened)
        yield opened


def by_tech(report: ComplianceReport) -> dict[str, TechCompliance]:
    return {tech.tech_id: tech for tech in report.techs}


def test_compliance_figures_match_hand_count(june_store: Store) -> None:
    report = load_compliance(june_store.engine, JUNE)
    techs = by_tech(report)

    # K-2 and K-3 kept 2 of 3 first contacts and breached one; the tech id
    # decides between them. K-1 kept 3 of 4.
    assert [tech.tech_id for tech in report.techs] == ["K-2", "K-3", "K-1"]

    k1 = techs["K-1"]
    assert k1.tech_name == "Ann One"
    assert k1.tickets_claimed == 4
    assert k1.tally("first_contact") == Tally(met=3, breached=1)
    assert k1.tally("first_contact").on_time_share == Fraction(3, 4)
    assert sorted(d for d in k1.first_contact_delays if d is not None) == [
        timedelta(minutes=20),
        timedelta(minutes=25),
        timedelta(minutes=30),
        timedelta(hours=1, minutes=40),
    ]
    assert k1.median_first_contact_delay == timedelta(minutes=27, seconds=30)
    assert k1.tally("notes") == Tally(met=4, breached=1)
    assert k1.tally("reply") == Tally()
    assert k1.tally("reply").on_time_share is None
    assert {kind: k1.breaches(kind) for kind in k1.tallies} == {
        "first_contact": 1,
        "notes": 1,
    }
    assert k1.closed_unreachable == 0

    k2 = techs["K-2"]
    assert k2.tickets_claimed == 4
    assert k2.tally("first_contact") == Tally(met=2, breached=1)
    assert k2.median_first_contact_delay == timedelta(minutes=45)
    assert k2.first_contact_never_made == 0
    assert k2.tally("notes") == Tally(met=5, breached=0)
    assert k2.tally("reply") == Tally(met=0, breached=1)
    assert k2.tally("reply").on_time_share == Fraction(0)
    assert k2.tally("try_other_method") == Tally(met=0, breached=1)
    assert k2.breaches("try_all_methods") == 0
    assert k2.closed_unreachable == 1

    k3 = techs["K-3"]
    assert k3.tickets_claimed == 4
    assert k3.tally("first_contact") == Tally(met=2, breached=1)
    assert k3.first_contact_delays.count(None) == 1
    assert k3.median_first_contact_delay == timedelta(minutes=30)
    assert k3.tally("notes") == Tally(met=5, breached=1)
    assert k3.tally("notes").on_time_share == Fraction(5, 6)
    assert k3.tally("reply") == Tally(met=1, breached=0)
    assert k3.tally("try_other_method") == Tally(met=1, breached=0)
    assert k3.tally("try_all_methods") == Tally(met=1, breached=0)
    assert k3.closed_unreachable == 1


def test_compliance_for_one_tech(june_store: Store) -> None:
    report = load_compliance(june_store.engine, JUNE, tech_id="K-3")

    assert [tech.tech_id for tech in report.techs] == ["K-3"]
    assert report.techs[0].tally("notes") == Tally(met=5, breached=1)
    assert report.techs[0].closed_unreachable == 1


def test_compliance_range_of_one_day(june_store: Store) -> None:
    # June 1 on the New York clock: T-9's notes only.
    day = ReportRange(date(2026, 6, 1), date(2026, 6, 1), NEW_YORK)
    report = load_compliance(june_store.engine, day)

    assert [tech.tech_id for tech in report.techs] == ["K-1"]
    assert report.techs[0].tickets_claimed == 0
    assert report.techs[0].tally("notes") == Tally(met=1, breached=0)
    assert report.techs[0].tally("first_contact") == Tally()


def test_compliance_unknown_tech_fails(sqlite_june_store: Store) -> None:
    with pytest.raises(ComplianceError, match="tech K-9 not found"):
        load_compliance(sqlite_june_store.engine, JUNE, tech_id="K-9")


@pytest.mark.parametrize(
    ("delays", "median"),
    [
        ([], None),
        ([timedelta(minutes=5)], timedelta(minutes=5)),
        ([timedelta(minutes=5), None], None),
        ([timedelta(minutes=5), timedelta(minutes=9), None], timedelta(minutes=9)),
        (
            [None, timedelta(minutes=2), timedelta(minutes=4), timedelta(minutes=1)],
            timedelta(minutes=3),
        ),
    ],
)
def test_median_delay_puts_never_last(
    delays: list[timedelta | None], median: timedelta | None
) -> None:
    assert median_delay(delays) == median


def test_compliance_table_lists_worst_first(sqlite_june_store: Store) -> None:
    text = render_text(load_compliance(sqlite_june_store.engine, JUNE))
    rows = [line.split() for line in text.splitlines() if line.startswith("  K-")]

    assert [row[0] for row in rows] == ["K-2", "K-3", "K-1"]
    assert "2/3 (67%)" in text
    assert "3/4 (75%)" in text
    assert "27m 30s" in text


def test_compliance_csv_reads_back(sqlite_june_store: Store) -> None:
    buffer = io.StringIO(newline="")
    count = write_csv(load_compliance(sqlite_june_store.engine, JUNE), buffer)
    buffer.seek(0)
    reader = csv.DictReader(buffer)
    rows = {row["tech_id"]: row for row in reader}

    assert count == 3
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    k1 = rows["K-1"]
    assert k1["tech_name"] == "Ann One"
    assert k1["tickets_claimed"] == "4"
    assert k1["first_contact_on_time_share"] == "0.7500"
    assert k1["first_contact_median_delay_minutes"] == "27.50"
    assert k1["replies_on_time_share"] == ""
    k3 = rows["K-3"]
    assert k3["first_contact_never_made"] == "1"
    assert k3["notes_on_time_share"] == f"{5 / 6:.4f}"
    assert k3["breaches_first_contact"] == "1"
    assert k3["breaches_notes"] == "1"
    assert k3["closed_unreachable"] == "1"
    k2 = rows["K-2"]
    assert k2["breaches_try_other_method"] == "1"
    assert k2["replies_on_time_share"] == "0.0000"


async def test_compliance_command_writes_files(
    sqlite_june_store: Store, tmp_path: Path
) -> None:
    settings = Settings(
        _env_file=None,
        database_url=str(sqlite_june_store.engine.url),
        default_timezone="America/New_York",
    )
    args = parse_args(
        [
            "compliance",
            "--from",
            "2026-06-01",
            "--to",
            "2026-06-30",
            "--csv",
            str(tmp_path / "june.csv"),
            "--html",
            str(tmp_path / "june.html"),
        ]
    )
    out = io.StringIO()

    assert await run_command(args, settings, out) == 0
    assert "first contact on time" in out.getvalue()
    assert "Wrote" in out.getvalue()
    with (tmp_path / "june.csv").open(newline="", encoding="utf-8") as file:
        assert [row["tech_id"] for row in csv.DictReader(file)] == ["K-2", "K-3", "K-1"]
    assert (
        (tmp_path / "june.html")
        .read_text(encoding="utf-8")
        .startswith("<!DOCTYPE html>")
    )


async def test_compliance_html_shows_labels_offline(
    sqlite_june_store: Store, tmp_path: Path
) -> None:
    chromium = chromium_path()
    page_path = tmp_path / "compliance.html"
    page_path.write_text(
        render_html(load_compliance(sqlite_june_store.engine, JUNE)), encoding="utf-8"
    )

    requested: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_FLAGS
        )
        try:
            page = await browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            await page.goto(page_path.as_uri())
            body_text = await page.inner_text("body")
            chart_texts: list[str] = await page.eval_on_selector_all(
                "figure svg", "charts => charts.map(chart => chart.textContent)"
            )
        finally:
            await browser.close()

    assert requested == [page_path.as_uri()]
    assert len(chart_texts) == len(MEASURE_TITLES)
    for title, chart_text in zip(MEASURE_TITLES, chart_texts, strict=True):
        assert title in chart_text
        for tech_id in ("K-1", "K-2", "K-3"):
            assert tech_id in chart_text, (title, tech_id)
    for header in ("claimed", "first contact on time", "breaches by kind"):
        assert header in body_text
    assert "Ann One" in body_text
