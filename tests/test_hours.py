"""The subscription hours report, from tickets run through the real ledger and store.

Customer C-H in New York has 10 included hours a month. Two tickets log
hours in March and April 2026, side by side in time order as the workflows
would. New York is on EDT (UTC-4) from March 8, so 2026-04-01 02:30 UTC is
22:30 on March 31 and counts for March. Every expected figure is worked out
by hand.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from activities.store import Store, open_store
from reports.hours import (
    CustomerMonth,
    HoursError,
    TicketHours,
    WarningMail,
    format_left,
    load_all_customers_month,
    load_customer_month,
    render_all_customers,
    render_customer,
)
from scripts.generate_records import ScriptedEvent, TicketPlayer, play_side_by_side
from settings import Settings
from starter import parse_args, run_command

NEW_YORK = "America/New_York"
HOURS_CUSTOMER = {
    "id": "C-H",
    "name": "Hana Hours",
    "email": "hana@customer.example",
    "phone": "+1 212 555 0101",
    "timezone": NEW_YORK,
    "included_hours_per_month": 10,
}
BERLIN_CUSTOMER = {
    "id": "C-Z",
    "name": "Zora Berlin",
    "email": "zora@customer.example",
    "timezone": "Europe/Berlin",
    "included_hours_per_month": 5,
}
PLAIN_CUSTOMER = {
    "id": "C-N",
    "name": "Nils Plain",
    "email": "nils@customer.example",
    "timezone": NEW_YORK,
}
K1 = {"id": "K-1", "name": "Ann One", "email": "k1@techs.example"}
K2 = {"id": "K-2", "name": "Bo Two", "email": "k2@techs.example"}
PHONE = {"channel": "phone", "outcome": "reached"}


def utc(text: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM`` as a UTC time."""
    return datetime.fromisoformat(text + "+00:00")


def player(
    store: Store,
    ticket_id: str,
    customer: dict[str, Any],
    opened_at: str,
    events: list[tuple[str, str, dict[str, Any]]],
) -> TicketPlayer:
    opening = {
        "ticket_id": ticket_id,
        "opened_at": utc(opened_at).isoformat(),
        "customer": customer,
    }
    scripted = [ScriptedEvent(utc(at), signal, fields) for at, signal, fields in events]
    return TicketPlayer(store, opening, scripted)


def play_two_months(store: Store) -> None:
    players = [
        player(
            store,
            "T-H1",
            HOURS_CUSTOMER,
            "2026-03-02T14:00",
            [
                ("2026-03-02T14:30", "claim", {"tech": K1}),
                ("2026-03-02T14:45", "contact_attempt", PHONE),
                ("2026-03-02T15:00", "notes_updated", {}),
                ("2026-03-10T18:00", "time_logged", {"hours": 3}),
                # 22:30 on March 31 in New York: March's, and 8.5 of 10 hours
                # pass 80%.
                ("2026-04-01T02:30", "time_logged", {"hours": 1}),
                ("2026-04-02T12:00", "close", {"reason": "resolved"}),
            ],
        ),
        player(
            store,
            "T-Z1",
            BERLIN_CUSTOMER,
            "2026-03-05T09:00",
            [
                ("2026-03-05T09:10", "claim", {"tech": K1}),
                ("2026-03-05T09:20", "contact_attempt", PHONE),
                ("2026-03-05T10:00", "notes_updated", {}),
                ("2026-03-06T12:00", "close", {"reason": "resolved"}),
            ],
        ),
        # No subscription: the ledger sends its hours to no store table.
        player(
            store,
            "T-N1",
            PLAIN_CUSTOMER,
            "2026-03-12T13:00",
            [
                ("2026-03-12T13:10", "claim", {"tech": K2}),
                ("2026-03-12T13:20", "contact_attempt", PHONE),
                ("2026-03-12T15:00", "time_logged", {"hours": 2}),
                ("2026-03-12T16:00", "notes_updated", {}),
                ("2026-03-13T12:00", "close", {"reason": "resolved"}),
            ],
        ),
        player(
            store,
            "T-H2",
            HOURS_CUSTOMER,
            "2026-03-19T14:00",
            [
                ("2026-03-19T14:10", "claim", {"tech": K2}),
                ("2026-03-19T14:20", "contact_attempt", PHONE),
                ("2026-03-19T14:30", "notes_updated", {}),
                ("2026-03-20T18:00", "time_logged", {"hours": 4.5}),
                # 01:00 on April 1 in New York: April's first hours.
                ("2026-04-01T05:00", "time_logged", {"hours": 2}),
                # 10 of 10 April hours: 80% and 100% at once.
                ("2026-04-15T16:00", "time_logged", {"hours": 8}),
                ("2026-04-16T12:00", "close", {"reason": "resolved"}),
            ],
        ),
    ]
    play_side_by_side(players)
    for played in players:
        assert played.rejected == 0, played.ticket_id


def fail_ops_mail_of_100_percent(store: Store) -> None:
    """Mark the ops mail of April's 100% warning failed, as a bounce would.

    April's warnings are T-H2's last four hours_warning mails: ops and tech
    for 80%, then ops and tech for 100%.
    """

    def sequence(message_id: str) -> int:
        match = re.match(r"<T-H2\.(\d+)\.", message_id)
        assert match is not None, message_id
        return int(match.group(1))

    warnings = sorted(
        (mail for mail in store.sent_mail("T-H2") if mail.kind == "hours_warning"),
        key=lambda mail: sequence(mail.message_id),
    )
    last_ops = [mail for mail in warnings if mail.role == "ops"][-1]
    store.record_mail(
        message_id=last_ops.message_id,
        ticket_id="T-H2",
        kind="hours_warning",
        role="ops",
        recipient=last_ops.recipient,
        status="failed",
        detail="550 mailbox unavailable",
        at=utc("2026-04-15T16:01"),
    )


@pytest.fixture
def hours_store(store: Store) -> Store:
    """The test's database, on SQLite and on PostgreSQL, with the two months."""
    play_two_months(store)
    fail_ops_mail_of_100_percent(store)
    return store


@pytest.fixture
def sqlite_hours_store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'hours.db'}") as opened:
        play_two_months(opened)
        yield opened


def test_hours_month_closing_late_local_time(hours_store: Store) -> None:
    march = load_customer_month(
        hours_store.engine, "C-H", month="2026-03", default_timezone=NEW_YORK
    )

    assert march.customer_name == "Hana Hours"
    assert march.zone == ZoneInfo(NEW_YORK)
    assert march.included_hours == 10
    assert march.used_hours == 8.5
    assert march.left_hours == 1.5
    assert march.tickets == [
        TicketHours("T-H1", 4.0, 2),
        TicketHours("T-H2", 4.5, 1),
    ]
    assert len(march.warnings) == 1
    warning = march.warnings[0]
    assert warning.threshold == 0.8
    assert warning.ticket_id == "T-H1"
    assert warning.passed_at == utc("2026-04-01T02:30")
    assert warning.mails == (
        WarningMail("ops", "sent", utc("2026-04-01T02:30")),
        WarningMail("tech", "sent", utc("2026-04-01T02:30")),
    )


def test_hours_two_thresholds_one_event(hours_store: Store) -> None:
    april = load_customer_month(
        hours_store.engine, "C-H", month="2026-04", default_timezone=NEW_YORK
    )
    passed_at = utc("2026-04-15T16:00")

    assert april.used_hours == 10
    assert april.left_hours == 0
    assert april.tickets == [TicketHours("T-H2", 10.0, 2)]
    assert [w.threshold for w in april.warnings] == [0.8, 1.0]
    assert [w.ticket_id for w in april.warnings] == ["T-H2", "T-H2"]
    assert [w.passed_at for w in april.warnings] == [passed_at, passed_at]
    assert april.warnings[0].mails == (
        WarningMail("ops", "sent", passed_at),
        WarningMail("tech", "sent", passed_at),
    )
    assert april.warnings[1].mails == (
        WarningMail("ops", "failed", utc("2026-04-15T16:01")),
        WarningMail("tech", "sent", passed_at),
    )


def test_hours_of_every_customer(hours_store: Store) -> None:
    march = load_all_customers_month(
        hours_store.engine, month="2026-03", default_timezone=NEW_YORK
    )

    # Fewest hours left first; C-N has no subscription.
    assert [entry.customer_id for entry in march] == ["C-H", "C-Z"]
    assert [entry.left_hours for entry in march] == [1.5, 5.0]
    assert march[1].used_hours == 0
    assert march[1].tickets == []
    assert march[1].warnings == []


def test_hours_default_month_is_local(sqlite_hours_store: Store) -> None:
    # 2026-03-31 22:30 UTC is 18:30 in New York and 00:30 on April 1 in Berlin.
    now = utc("2026-03-31T22:30")
    engine = sqlite_hours_store.engine

    new_york = load_customer_month(engine, "C-H", default_timezone=NEW_YORK, now=now)
    berlin = load_customer_month(engine, "C-Z", default_timezone=NEW_YORK, now=now)
    everyone = load_all_customers_month(engine, default_timezone=NEW_YORK, now=now)

    assert new_york.month == "2026-03"
    assert berlin.month == "2026-04"
    assert {entry.month for entry in everyone} == {"2026-03"}


def test_hours_without_subscription(sqlite_hours_store: Store) -> None:
    plain = load_customer_month(
        sqlite_hours_store.engine, "C-N", month="2026-03", default_timezone=NEW_YORK
    )

    assert plain.included_hours is None
    assert plain.left_hours is None
    assert plain.used_hours == 0
    assert "no subscription" in render_customer(plain)


def test_hours_unknown_customer_fails(sqlite_hours_store: Store) -> None:
    with pytest.raises(HoursError, match="customer C-9 not found"):
        load_customer_month(
            sqlite_hours_store.engine, "C-9", month="2026-03", default_timezone=NEW_YORK
        )


def test_hours_malformed_month_fails(sqlite_hours_store: Store) -> None:
    engine = sqlite_hours_store.engine

    with pytest.raises(HoursError, match="invalid month '2026-3'"):
        load_customer_month(engine, "C-H", month="2026-3", default_timezone=NEW_YORK)
    with pytest.raises(HoursError, match="invalid month '03/2026'"):
        load_all_customers_month(engine, month="03/2026", default_timezone=NEW_YORK)


def test_hours_text_in_local_time(sqlite_hours_store: Store) -> None:
    march = load_customer_month(
        sqlite_hours_store.engine, "C-H", month="2026-03", default_timezone=NEW_YORK
    )
    text = render_customer(march)
    lines = text.splitlines()

    assert lines[0] == (
        "Hours of customer C-H (Hana Hours) in 2026-03, on the America/New_York clock"
    )
    assert ["10", "h", "8.5", "h", "1.5", "h"] in [line.split() for line in lines]
    warning_line = next(line for line in lines if line.strip().startswith("80%"))
    assert "Tue 2026-03-31 22:30 EDT" in warning_line
    assert "T-H1" in warning_line
    assert "sent Tue 2026-03-31 22:30 EDT" in warning_line

    overview = render_all_customers(
        load_all_customers_month(
            sqlite_hours_store.engine, month="2026-03", default_timezone=NEW_YORK
        ),
        "2026-03",
    )
    assert "80% sent" in overview


def test_hours_left_over_the_limit() -> None:
    over = CustomerMonth("C-1", None, "2026-03", ZoneInfo(NEW_YORK), 10.0, 11.25)

    assert format_left(over) == "-1.25 h (1.25 h over)"


async def test_hours_command_prints_customer_month(sqlite_hours_store: Store) -> None:
    settings = Settings(
        _env_file=None,
        database_url=str(sqlite_hours_store.engine.url),
        default_timezone=NEW_YORK,
    )
    out = io.StringIO()

    exit_code = await run_command(
        parse_args(["hours", "C-H", "--month", "2026-04"]), settings, out
    )

    assert exit_code == 0
    assert "in 2026-04" in out.getvalue()
    assert "100%" in out.getvalue()


async def test_hours_command_without_customer(sqlite_hours_store: Store) -> None:
    settings = Settings(
        _env_file=None,
        database_url=str(sqlite_hours_store.engine.url),
        default_timezone=NEW_YORK,
    )
    out = io.StringIO()

    exit_code = await run_command(
        parse_args(["hours", "--month", "2026-03"]), settings, out
    )

    lines = [line.split()[0] for line in out.getvalue().splitlines()[3:]]
    assert exit_code == 0
    assert lines == ["C-H", "C-Z"]
