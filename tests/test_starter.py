"""The command line: argument parsing, event files, the status table and replay.

Parsing and rendering are tested without a server. The replay and error tests
run the real worker on the time-skipping test server, whose clock follows the
wall clock until a test skips it, which replay needs because it sends events
on real time.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from activities import TicketActivities
from mailsink import MailSink
from settings import Settings
from starter import (
    Schedule,
    ScheduleError,
    StarterError,
    TicketClient,
    event_payload,
    find_test_server,
    format_duration,
    opening_from_args,
    parse_args,
    parse_schedule,
    read_schedule,
    render_status,
    replay,
    signal_fields,
)
from worker import create_worker
from workflows.policy import parse_duration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NEW_YORK = ZoneInfo("America/New_York")

HEADER = (
    '{"start": "2027-03-13T18:00", "timezone": "America/New_York", '
    '"techs": {"K-4": {"name": "Kim Park", "email": "kim@techs.example"}}}'
)
OPEN_LINE = (
    '{"after": "0", "ticket": "T-1", "event": "open", '
    '"customer": {"id": "C-1", "email": "c@customer.example", '
    '"timezone": "America/New_York"}}'
)


def schedule_of(*lines: str) -> Schedule:
    return parse_schedule(lines, source="day.jsonl")


def schedule_error(*lines: str) -> str:
    with pytest.raises(ScheduleError) as raised:
        parse_schedule(lines, source="day.jsonl")
    return str(raised.value)


# Arguments


def test_open_sends_contract_input() -> None:
    args = parse_args(
        [
            "open",
            "T-1001",
            "--customer-id",
            "C-17",
            "--customer-name",
            "Dana Reyes",
            "--customer-email",
            "dana@customer.example",
            "--customer-phone",
            "+1 212 555 0100",
            "--timezone",
            "America/New_York",
            "--priority",
            "high",
            "--included-hours",
            "10",
            "--opened-at",
            "2027-03-13T23:45:00-05:00",
        ]
    )

    assert opening_from_args(args, with_tech=True) == {
        "ticket_id": "T-1001",
        "opened_at": "2027-03-14T04:45:00+00:00",
        "priority": "high",
        "source": "portal",
        "customer": {
            "id": "C-17",
            "name": "Dana Reyes",
            "email": "dana@customer.example",
            "phone": "+1 212 555 0100",
            "timezone": "America/New_York",
            "included_hours_per_month": 10.0,
        },
        "tech": None,
        "claimed_at": None,
    }


def test_open_tech_created_starts_claimed() -> None:
    args = parse_args(
        [
            "open",
            "T-7",
            "--customer-id",
            "C-1",
            "--tech-id",
            "K-4",
            "--tech-email",
            "kim@techs.example",
            "--tech-name",
            "Kim Park",
            "--tech-created",
            "--opened-at",
            "2027-03-15T11:00:00Z",
        ]
    )

    opening = opening_from_args(args, with_tech=True)
    assert opening["source"] == "tech_created"
    assert opening["tech"] == {
        "id": "K-4",
        "name": "Kim Park",
        "email": "kim@techs.example",
    }


def test_contact_payload_has_contract_fields() -> None:
    args = parse_args(
        [
            "contact",
            "T-1",
            "--channel",
            "phone",
            "--outcome",
            "no_answer",
            "--event-id",
            "e-1",
            "--at",
            "2027-03-14T09:00:00-04:00",
        ]
    )

    payload = event_payload(
        "contact_attempt",
        event_id=args.event_id,
        occurred_at=args.at,
        fields=signal_fields(args),
    )
    assert payload == {
        "event_id": "e-1",
        "occurred_at": "2027-03-14T09:00:00-04:00",
        "channel": "phone",
        "outcome": "no_answer",
    }


@pytest.mark.parametrize(
    ("argv", "fields"),
    [
        (
            ["claim", "T-1", "--tech-id", "K-4", "--tech-email", "k@techs.example"],
            {"tech": {"id": "K-4", "name": None, "email": "k@techs.example"}},
        ),
        (
            [
                "reassign",
                "T-1",
                "--tech-id",
                "K-7",
                "--tech-email",
                "l@techs.example",
                "--reason",
                "sick",
            ],
            {
                "tech": {"id": "K-7", "name": None, "email": "l@techs.example"},
                "reason": "sick",
            },
        ),
        (["release", "T-1"], {"reason": None}),
        (["message", "T-1", "--channel", "email"], {"channel": "email"}),
        (["notes", "T-1"], {}),
        (["time", "T-1", "2.5"], {"hours": 2.5}),
        (["close", "T-1", "--reason", "duplicate"], {"reason": "duplicate"}),
    ],
)
def test_signal_fields_per_command(argv: list[str], fields: dict[str, Any]) -> None:
    assert signal_fields(parse_args(argv)) == fields


def test_at_without_offset_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        parse_args(["notes", "T-1", "--at", "2027-03-14T09:00"])

    assert raised.value.code == 2
    assert "add an offset such as -05:00 or Z" in capsys.readouterr().err


def test_claim_opening_options_need_customer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_args(
            [
                "claim",
                "T-1",
                "--tech-id",
                "K-4",
                "--tech-email",
                "k@techs.example",
                "--timezone",
                "Europe/Berlin",
            ]
        )

    err = capsys.readouterr().err
    assert "usage: starter.py claim" in err
    assert "--timezone opens the ticket, so it needs --customer-id too" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["close", "T-1", "--reason", "fixed"], "invalid choice: 'fixed'"),
        (["time", "T-1", "0"], "0 must be a number more than 0"),
        (["time", "T-1", "inf"], "inf must be a number more than 0"),
        (["status", "T 1"], "invalid ticket id 'T 1'"),
        (["replay", "day.jsonl", "--speed", "-2"], "-2 must be a number more than 0"),
        (
            ["replay", "day.jsonl", "--ticket-suffix", "a b"],
            "invalid --ticket-suffix 'a b'",
        ),
        (["simulate", "day.jsonl", "--horizon", "3 days"], "invalid duration"),
    ],
)
def test_invalid_arguments_exit_with_usage(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        parse_args(argv)

    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_invalid_event_fails_before_sending() -> None:
    with pytest.raises(StarterError) as raised:
        event_payload(
            "time_logged", event_id="e-1", occurred_at=None, fields={"hours": 30.0}
        )

    assert str(raised.value) == (
        "invalid time_logged event: invalid hours 30.0: must be more than 0 and "
        "at most 24"
    )


# Durations


@pytest.mark.parametrize(
    ("text", "duration"),
    [
        ("0", timedelta(0)),
        ("45m", timedelta(minutes=45)),
        ("2h30m", timedelta(hours=2, minutes=30)),
        ("1d6h", timedelta(days=1, hours=6)),
        ("3d", timedelta(days=3)),
        ("90s", timedelta(seconds=90)),
    ],
)
def test_parse_duration_reads_units(text: str, duration: timedelta) -> None:
    assert parse_duration(text) == duration


@pytest.mark.parametrize("text", ["", "2", "30m2h", "1.5h", "h", "-1h", "2 h"])
def test_parse_duration_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    duration = timedelta(days=2, hours=4, minutes=10, seconds=5)

    assert format_duration(duration) == "2d4h10m5s"
    assert parse_duration(format_duration(duration)) == duration


# Event files


def test_schedule_reads_header_and_events() -> None:
    schedule = schedule_of(
        "# a comment line",
        HEADER,
        "",
        OPEN_LINE,
        '{"after": "5h45m", "ticket": "T-1", "event": "claim", "tech": "K-4"}',
        '{"at": "2027-03-14T03:30", "ticket": "T-1", "event": "contact_attempt", '
        '"channel": "phone", "outcome": "reached", "event_id": "call-1"}',
    )

    assert schedule.start == datetime(2027, 3, 13, 23, 0, tzinfo=UTC)
    assert schedule.timezone == NEW_YORK
    assert [event.line_number for event in schedule.events] == [4, 5, 6]
    assert [event.event for event in schedule.events] == [
        "open",
        "claim",
        "contact_attempt",
    ]
    claim = schedule.events[1]
    assert claim.fields == {
        "tech": {"id": "K-4", "name": "Kim Park", "email": "kim@techs.example"}
    }
    assert claim.event_id == "line-5"
    # 18:00 EST to 03:30 EDT is 8h30m of real time: the clocks skip 02:00-03:00.
    assert schedule.events[2].offset == timedelta(hours=8, minutes=30)
    assert schedule.events[2].event_id == "call-1"
    assert schedule.span == timedelta(hours=8, minutes=30)


def test_schedule_without_header_uses_after() -> None:
    schedule = schedule_of(
        OPEN_LINE,
        '{"after": "1h", "ticket": "T-1", "event": "notes_updated"}',
    )

    assert schedule.start is None
    assert schedule.events[1].offset == timedelta(hours=1)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            [HEADER, OPEN_LINE, "{not json"],
            "day.jsonl line 3: not valid JSON (Expecting property name enclosed "
            "in double quotes at column 2)",
        ),
        ([OPEN_LINE, "[1, 2]"], "day.jsonl line 2: expected a JSON object"),
        (
            [OPEN_LINE, '{"after": "1h", "ticket": "T-1", "event": "reopen"}'],
            "day.jsonl line 2: unknown event 'reopen'",
        ),
        (
            [
                OPEN_LINE,
                '{"after": "1h", "ticket": "T-1", "event": "notes_updated", '
                '"channel": "phone"}',
            ],
            "day.jsonl line 2: unknown key 'channel' for notes_updated; "
            "its own keys are none",
        ),
        (
            [OPEN_LINE, '{"ticket": "T-1", "event": "notes_updated"}'],
            "day.jsonl line 2: give exactly one of 'after' (a duration) and 'at'",
        ),
        (
            [OPEN_LINE, '{"after": "soon", "ticket": "T-1", "event": "notes_updated"}'],
            "day.jsonl line 2: invalid duration 'soon'",
        ),
        (
            [
                OPEN_LINE,
                '{"after": "2h", "ticket": "T-1", "event": "notes_updated"}',
                '{"after": "1h", "ticket": "T-1", "event": "notes_updated"}',
            ],
            "day.jsonl line 3: this event at +1h comes before the one on line 2 "
            "at +2h; keep lines in time order",
        ),
        (
            [
                HEADER,
                OPEN_LINE,
                '{"at": "2027-03-14T02:30", "ticket": "T-1", "event": "notes_updated"}',
            ],
            "day.jsonl line 3: local time 2027-03-14T02:30:00 does not exist in "
            "America/New_York: the clocks skip it",
        ),
        (
            [
                OPEN_LINE,
                '{"at": "2027-03-14T09:00", "ticket": "T-1", "event": "close"}',
            ],
            "day.jsonl line 2: 'at' needs a header line with 'start' and 'timezone'",
        ),
        (
            ['{"after": "0", "ticket": "T-2", "event": "notes_updated"}'],
            "day.jsonl line 1: ticket T-2 has no 'open' line before this one",
        ),
        (
            [OPEN_LINE, OPEN_LINE],
            "day.jsonl line 2: ticket T-1 is opened twice",
        ),
        (
            [
                OPEN_LINE,
                '{"after": "1h", "ticket": "T-1", "event": "contact_attempt", '
                '"channel": "fax", "outcome": "reached"}',
            ],
            "day.jsonl line 2: invalid channel 'fax'",
        ),
        (
            [
                OPEN_LINE,
                '{"after": "1h", "ticket": "T-1", "event": "claim", "tech": "K-9"}',
            ],
            "day.jsonl line 2: tech 'K-9' is not in the header's techs",
        ),
        (
            [OPEN_LINE, HEADER],
            "day.jsonl line 2: missing key 'event'; only the first line may be a "
            "header without one",
        ),
        (
            ['{"start": "2027-03-13T18:00"}', OPEN_LINE],
            "day.jsonl line 1: start '2027-03-13T18:00' is a local time, so the "
            "header needs a 'timezone'",
        ),
        (
            ['{"start": "2027-03-13T18:00", "timezone": "Mars/Base"}'],
            "day.jsonl line 1: invalid timezone 'Mars/Base'",
        ),
        (
            [
                '{"after": "0", "ticket": "T-1", "event": "open", '
                '"customer": {"id": "C-1", "timezone": "America/Nowhere"}}'
            ],
            "day.jsonl line 1: invalid ticket T-1: invalid customer.timezone",
        ),
        (["# only a comment"], "day.jsonl: no events found"),
    ],
)
def test_schedule_error_names_line(lines: list[str], message: str) -> None:
    assert schedule_error(*lines).startswith(message)


def test_read_schedule_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match="cannot read .*missing.jsonl"):
        read_schedule(tmp_path / "missing.jsonl")


def test_examples_parse_and_cover_a_dozen_tickets() -> None:
    files = sorted(EXAMPLES.glob("*.jsonl"))
    tickets: set[str] = set()
    for path in files:
        first_line = path.read_text(encoding="utf-8").splitlines()[0]
        assert first_line.startswith("# "), f"{path.name} has no comment header"
        tickets.update(read_schedule(path).ticket_ids)

    assert (EXAMPLES / "unreachable-ladder.jsonl") in files
    assert len(tickets) >= 12


# The status table


STATUS: dict[str, Any] = {
    "ticket_id": "T-1001",
    "state": "claimed",
    "tech_id": "K-4",
    "priority": "normal",
    "timezone": "America/New_York",
    "opened_at": "2027-03-14T03:30:00+00:00",
    "closed_at": None,
    "close_reason": None,
    "obligations": [
        {
            "kind": "claim",
            "owner": "ops",
            "due_at": "2027-03-14T11:30:00+00:00",
            "status": "met",
            "ended_at": "2027-03-14T04:45:00+00:00",
        },
        {
            "kind": "first_contact",
            "owner": "K-4",
            "due_at": "2027-03-14T13:00:00+00:00",
            "status": "open",
            "ended_at": None,
        },
    ],
    "notifications": [
        {
            "kind": "first_contact_reminder",
            "to": "tech",
            "at": "2027-03-14T12:45:00+00:00",
            "status": "sent",
        }
    ],
    "rejected": [
        {
            "event_id": "e-9",
            "signal": "claim",
            "reason": "ticket T-1001 is already claimed by K-4",
            "at": "2027-03-14T05:00:30+00:00",
        }
    ],
}


def test_status_table_uses_local_time() -> None:
    lines = render_status(STATUS, "UTC").splitlines()

    assert lines[:3] == [
        "Ticket T-1001: claimed, priority normal, tech K-4",
        "Times are the customer's local time (America/New_York).",
        "Opened Sat 2027-03-13 22:30 EST",
    ]
    obligations = lines[lines.index("Obligations") + 1 :]
    assert obligations[0].split() == ["kind", "owner", "due", "status", "ended"]
    # Claimed before the clocks change, first contact due after: EST, then EDT.
    assert obligations[1].split() == (
        "claim ops Sun 2027-03-14 07:30 EDT met Sat 2027-03-13 23:45 EST".split()
    )
    assert obligations[2].split() == (
        "first_contact K-4 Sun 2027-03-14 09:00 EDT open -".split()
    )
    notifications = lines[lines.index("Notifications") + 1 :]
    assert notifications[1].split() == (
        "first_contact_reminder tech Sun 2027-03-14 08:45 EDT sent".split()
    )
    rejected = lines[lines.index("Rejected events") + 1 :]
    assert rejected[1].split()[:6] == [
        "e-9",
        "claim",
        "Sun",
        "2027-03-14",
        "00:00:30",
        "EST",
    ]
    assert rejected[1].endswith("ticket T-1001 is already claimed by K-4")


def test_status_table_closed_ticket() -> None:
    closed = {
        **STATUS,
        "state": "closed",
        "close_reason": "unreachable",
        "closed_at": "2027-03-17T12:00:00+00:00",
        "rejected": [],
    }

    text = render_status(closed, "UTC")

    assert text.startswith("Ticket T-1001: closed (unreachable), priority normal")
    assert "Closed Wed 2027-03-17 08:00 EDT" in text
    assert "Rejected events" not in text


def test_status_table_without_zone_uses_default() -> None:
    text = render_status({**STATUS, "timezone": None}, "Europe/Berlin")

    assert "Times are the customer's local time (Europe/Berlin)." in text
    assert "Opened Sun 2027-03-14 04:30 CET" in text


# Against the time-skipping server


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=find_test_server()
    )
    async with environment:
        yield environment


@pytest.fixture
async def tickets(
    env: WorkflowEnvironment, tmp_path: Path
) -> AsyncIterator[TicketClient]:
    async with MailSink("127.0.0.1", 0) as sink:
        settings = Settings(
            _env_file=None,
            temporal_task_queue=f"starter-{uuid.uuid4().hex}",
            database_url=f"sqlite:///{tmp_path / 'tickets.db'}",
            **sink.smtp_settings(),
            default_timezone="America/New_York",
        )
        activities = TicketActivities.from_settings(settings)
        try:
            async with create_worker(env.client, settings, activities):
                yield TicketClient(env.client, settings.temporal_task_queue)
        finally:
            activities.close()


def unique_ticket() -> str:
    return f"T-{uuid.uuid4().hex[:8]}"


def replay_file(ticket_id: str) -> Schedule:
    customer = {"id": "C-1", "email": "c@customer.example", "timezone": "Europe/Berlin"}
    lines = [
        {"techs": {"K-4": {"name": "Kim Park", "email": "kim@techs.example"}}},
        {"after": "0", "ticket": ticket_id, "event": "open", "customer": customer},
        {"after": "30m", "ticket": ticket_id, "event": "claim", "tech": "K-4"},
        {
            "after": "1h",
            "ticket": ticket_id,
            "event": "contact_attempt",
            "channel": "phone",
            "outcome": "reached",
        },
        {"after": "1h", "ticket": ticket_id, "event": "claim", "tech": "K-4"},
    ]
    return schedule_of(*(json.dumps(line) for line in lines))


async def test_replay_sends_events_in_order(tickets: TicketClient) -> None:
    ticket_id = unique_ticket()
    out = io.StringIO()

    failures = await replay(
        tickets, replay_file(ticket_id), speed=3600, ticket_suffix="-a", out=out
    )

    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "Replaying day.jsonl: 4 events for 1 ticket over 1h of ticket time, 1s of "
        "real time at speed 3600."
    )
    assert lines[2].endswith(f"+0        {ticket_id}-a  open normal: sent")
    assert lines[3].endswith(f"+30m      {ticket_id}-a  claim tech K-4: sent")
    assert lines[4].endswith(
        f"+1h       {ticket_id}-a  contact_attempt phone reached: sent"
    )
    # The second claim is a rejected event, so replay reports it and counts it.
    assert lines[5].endswith(
        f"claim tech K-4: rejected: ticket {ticket_id}-a is already claimed by "
        "K-4; send reassign to move it"
    )
    assert lines[6] == "Replay done: 3 sent, 1 failed."
    assert failures == 1

    current = await tickets.status(f"{ticket_id}-a")
    assert current["state"] == "claimed"
    assert [(o["kind"], o["status"]) for o in current["obligations"]] == [
        ("claim", "met"),
        ("first_contact", "met"),
        ("check_in", "open"),
        ("notes", "open"),
    ]


async def test_unknown_ticket_not_found(tickets: TicketClient) -> None:
    with pytest.raises(StarterError, match=r"^ticket T-9x not found$"):
        await tickets.send("T-9x", "notes_updated", {"event_id": "e-1"})
    with pytest.raises(StarterError, match=r"^ticket T-9x not found$"):
        await tickets.status("T-9x")


async def test_closed_ticket_rejects_events(tickets: TicketClient) -> None:
    ticket_id = unique_ticket()
    schedule = replay_file(ticket_id)
    opening = schedule.events[0]
    await replay(
        tickets,
        Schedule("day.jsonl", None, None, (opening,)),
        speed=1,
        ticket_suffix="",
        out=io.StringIO(),
    )
    await tickets.send(ticket_id, "close", {"event_id": "e-1", "reason": "duplicate"})
    await tickets.handle(ticket_id).result()
    description = await tickets.handle(ticket_id).describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED

    with pytest.raises(StarterError, match=rf"^ticket {ticket_id} is closed$"):
        await tickets.send(ticket_id, "notes_updated", {"event_id": "e-2"})
    with pytest.raises(StarterError, match=rf"^ticket {ticket_id} is closed\. "):
        await tickets.open(
            {
                "ticket_id": ticket_id,
                "opened_at": datetime.now(UTC).isoformat(),
                "customer": {"id": "C-1"},
            }
        )


async def test_failed_workflow_names_its_status(tickets: TicketClient) -> None:
    ticket_id = unique_ticket()
    # An opening without opened_at fails the workflow at its first step.
    handle = await tickets.client.start_workflow(
        "TicketWorkflow",
        {"ticket_id": ticket_id},
        id=f"ticket-{ticket_id}",
        task_queue=tickets.task_queue,
    )
    with pytest.raises(WorkflowFailureError):
        await handle.result()

    with pytest.raises(StarterError) as raised:
        await tickets.send(ticket_id, "notes_updated", {"event_id": "e-1"})
    assert str(raised.value) == (
        f"ticket {ticket_id} is not open: its workflow ended as FAILED "
        "(its history is in the Temporal web UI)"
    )
