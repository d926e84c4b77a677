"""``starter.py simulate`` end to end on the example files.

Each test runs the command's main function with ``--json`` on the
time-skipping test server, with the real workflow, activities, SQLite database
and mail sink, and checks the timeline read back from the stored record.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from starter import main, read_schedule

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NEW_YORK = ZoneInfo("America/New_York")


def simulate(path: Path, *options: str) -> dict[str, Any]:
    out = io.StringIO()
    exit_code = main(["simulate", str(path), "--json", *options], out=out)
    assert exit_code == 0
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


def ticket_of(result: dict[str, Any], ticket_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        ticket for ticket in result["tickets"] if ticket["ticket_id"] == ticket_id
    )
    return found


def future_start(path: Path) -> tuple[date, list[str]]:
    """Return the file's start date, moved by whole years of weeks if it is past.

    A run after the file's date would otherwise fail, so the same local times
    are replayed on the same weekday 52 weeks later. The command-line option
    to pass is returned with the date.
    """
    start = read_schedule(path).start
    assert start is not None
    local_start = start.astimezone(NEW_YORK)
    if start > datetime.now(UTC) + timedelta(days=1):
        return local_start.date(), []
    while local_start.astimezone(UTC) <= datetime.now(UTC) + timedelta(days=1):
        naive = local_start.replace(tzinfo=None) + timedelta(weeks=52)
        local_start = naive.replace(tzinfo=NEW_YORK)
    return local_start.date(), ["--start", local_start.replace(tzinfo=None).isoformat()]


def at(day: date, days_later: int, hour: int, minute: int) -> str:
    """Return the UTC ISO time of a New York wall-clock time ``days_later`` days on."""
    local = datetime.combine(
        day + timedelta(days=days_later), time(hour, minute), tzinfo=NEW_YORK
    )
    return local.astimezone(UTC).isoformat()


def test_unreachable_ladder_closes_on_time() -> None:
    path = EXAMPLES / "unreachable-ladder.jsonl"
    day, options = future_start(path)

    ticket = ticket_of(simulate(path, *options), "T-2001")

    # The ladder starts at the first failed attempt, A0 = Tuesday 16:45.
    attempts = [
        entry["at"]
        for entry in ticket["timeline"]
        if entry["type"] == "event" and entry["details"]["event"] == "contact_attempt"
    ]
    assert attempts[0] == at(day, 0, 16, 45)
    # A1, the first attempt on another channel, is Wednesday 17:30, and the
    # last step's attempts end with the email of Thursday 20:05 (A2).
    assert attempts[1:] == [at(day, 1, 17, 30), at(day, 2, 19, 40), at(day, 2, 20, 5)]

    mails = [(mail["kind"], mail["to"], mail["at"]) for mail in ticket["mails"]]
    assert mails == [
        # Claimed Tuesday 16:20, check-in three hours later.
        ("check_in", "customer", at(day, 0, 19, 20)),
        # A0 + 24h.
        ("try_other_method", "tech", at(day, 1, 16, 45)),
        # The later of A0 + 48h (Thursday 16:45) and A1 + 24h (Thursday 17:30).
        ("try_all_methods", "tech", at(day, 2, 17, 30)),
        # The later of A0 + 72h (Friday 16:45) and A2 + 24h (Friday 20:05),
        # which is in the customer's quiet window, so Saturday 08:00.
        ("closed_unreachable", "customer", at(day, 4, 8, 0)),
        ("closed_unreachable", "tech", at(day, 4, 8, 0)),
        ("closed_unreachable", "ops", at(day, 4, 8, 0)),
    ]
    assert ticket["mails"][3]["local"] == (
        f"Sat {(day + timedelta(days=4)).isoformat()} 08:00 EDT"
    )

    assert ticket["state"] == "closed"
    assert ticket["close_reason"] == "unreachable"
    closed = [
        entry
        for entry in ticket["timeline"]
        if entry["type"] == "event" and entry["details"]["event"] == "closed"
    ]
    assert [entry["at"] for entry in closed] == [at(day, 4, 8, 0)]


def test_textbook_ladder_closes_after_three_days() -> None:
    path = EXAMPLES / "unreachable-ladder.jsonl"
    day, options = future_start(path)

    ticket = ticket_of(simulate(path, *options), "T-2002")

    mails = [(mail["kind"], mail["to"], mail["at"]) for mail in ticket["mails"]]
    assert mails == [
        # Claimed Tuesday 08:40, check-in three hours later.
        ("check_in", "customer", at(day, 0, 11, 40)),
        # A1 (the email at 14:00) came before A0 + 24h, so no try-other prompt.
        # The later of A0 + 48h (Thursday 09:00) and A1 + 24h (Wednesday 14:00).
        ("try_all_methods", "tech", at(day, 2, 9, 0)),
        # The later of A0 + 72h (Friday 09:00) and A2 + 24h (Friday 09:10).
        ("closed_unreachable", "customer", at(day, 3, 9, 10)),
        ("closed_unreachable", "tech", at(day, 3, 9, 10)),
        ("closed_unreachable", "ops", at(day, 3, 9, 10)),
    ]
    assert ticket["close_reason"] == "unreachable"


def test_unreachable_ladder_sends_each_mail_once() -> None:
    path = EXAMPLES / "unreachable-ladder.jsonl"
    _day, options = future_start(path)

    ticket = ticket_of(simulate(path, *options), "T-2001")

    notifications = Counter((mail["kind"], mail["to"]) for mail in ticket["mails"])
    assert max(notifications.values()) == 1
    assert [mail["status"] for mail in ticket["mails"]] == ["sent"] * 6
    assert [mail["stored_status"] for mail in ticket["mails"]] == ["sent"] * 6
    assert "ladder_incomplete" not in {mail["kind"] for mail in ticket["mails"]}

    # The mail sink received exactly one message per notification.
    received = ticket["sink_message_ids"]
    assert len(received) == 6
    assert len(set(received)) == 6
    assert sorted(received) == sorted(mail["message_id"] for mail in ticket["mails"])


def next_spring_forward_eve() -> date:
    """Return the Saturday before the next US spring-forward night, a day ahead or more.

    US clocks go forward on the second Sunday of March.
    """
    year = datetime.now(UTC).year
    while True:
        march_first = date(year, 3, 1)
        first_sunday = march_first + timedelta(days=(6 - march_first.weekday()) % 7)
        eve = first_sunday + timedelta(days=6)
        evening = datetime.combine(eve, time(18, 0), tzinfo=NEW_YORK)
        if evening > datetime.now(UTC) + timedelta(days=1):
            return eve
        year += 1


def test_night_shift_deadlines_across_dst() -> None:
    # The file's times are wall-clock times of the night of 2027-03-14. Once
    # that night has passed, the test runs the file on the next such night.
    eve = next_spring_forward_eve()
    result = simulate(
        EXAMPLES / "night-shift.jsonl", "--start", f"{eve.isoformat()}T18:00"
    )

    def first_contact_due(ticket_id: str) -> str:
        ticket = ticket_of(result, ticket_id)
        return str(
            next(
                o["due_at"]
                for o in ticket["status"]["obligations"]
                if o["kind"] == "first_contact"
            )
        )

    # Claimed 23:45 EST and 20:00 sharp: both wait for 09:00 EDT, the first
    # only 8h15m of real time later.
    assert first_contact_due("T-1001") == at(eve, 1, 9, 0)
    assert datetime.fromisoformat(at(eve, 1, 9, 0)) - datetime.fromisoformat(
        at(eve, 0, 23, 45)
    ) == timedelta(hours=8, minutes=15)
    assert first_contact_due("T-1002") == at(eve, 1, 9, 0)
    # The emergency claimed at 01:40 EST is due one real hour later, 03:40 EDT.
    assert first_contact_due("T-1003") == at(eve, 1, 3, 40)

    sunday = (eve + timedelta(days=1)).isoformat()
    breaches = [
        (mail["kind"], mail["to"], mail["local"])
        for mail in ticket_of(result, "T-1002")["mails"]
        if mail["kind"] == "first_contact_breach"
    ]
    assert breaches == [
        ("first_contact_breach", "ops", f"Sun {sunday} 09:00 EDT"),
        ("first_contact_breach", "tech", f"Sun {sunday} 09:00 EDT"),
    ]


def test_simulate_rejects_start_in_past(
    capsys: pytest.CaptureFixture[str],
) -> None:
    exit_code = main(
        [
            "simulate",
            str(EXAMPLES / "berlin.jsonl"),
            "--start",
            "2020-01-01T09:00",
        ],
        out=io.StringIO(),
    )

    assert exit_code == 1
    err = capsys.readouterr().err
    assert (
        "berlin.jsonl starts at 2020-01-01T08:00:00+00:00, before the server's" in err
    )
    assert "give a later --start" in err


def test_event_after_closure_is_reported(tmp_path: Path) -> None:
    ladder = EXAMPLES / "unreachable-ladder.jsonl"
    late = tmp_path / "late.jsonl"
    late_line = (
        '{"at": "2027-04-10T09:00", "ticket": "T-2001", "event": "notes_updated"}'
    )
    late.write_text(ladder.read_text(encoding="utf-8") + late_line + "\n")
    _day, options = future_start(ladder)

    out = io.StringIO()
    exit_code = main(["simulate", str(late), "--json", *options], out=out)

    assert exit_code == 1
    result = json.loads(out.getvalue())
    line_number = len(late.read_text(encoding="utf-8").splitlines())
    assert result["failed_events"] == [
        {
            "line": line_number,
            "ticket_id": "T-2001",
            "event": "notes_updated",
            "error": "ticket T-2001 is closed",
        }
    ]
    assert ticket_of(result, "T-2001")["close_reason"] == "unreachable"
