"""The store on SQLite and PostgreSQL: idempotent writes, aware times, hours."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, text

from activities.store import DueObligation, InvalidInput, Store
from workflows.model import HoursInput, Person, RecordEntry, RecordInput

CUSTOMER = Person(
    id="C-17", name="Dana Reyes", email="dana@customer.test", phone="+1 555 0100"
)
TECH = Person(id="K-4", name="Kim Park", email="kim@techs.test")


def ticket_changes(
    entries: list[RecordEntry], *, ticket_id: str = "T-1001", **state: Any
) -> RecordInput:
    fields: dict[str, Any] = {
        "ticket_id": ticket_id,
        "state": "claimed",
        "priority": "normal",
        "source": "portal",
        "opened_at": "2026-06-10T10:00:00-04:00",
        "timezone": "America/New_York",
        "customer": CUSTOMER,
        "tech": TECH,
        "included_hours_per_month": None,
        "closed_at": None,
        "close_reason": None,
        "entries": entries,
    }
    fields.update(state)
    return RecordInput(**fields)


def entry(
    sequence: int, at: str = "2026-06-10T14:00:00+00:00", **details: Any
) -> RecordEntry:
    return RecordEntry(
        sequence=sequence, entry_type="event", at=at, details={"n": sequence, **details}
    )


def obligation(
    sequence: int,
    number: int,
    kind: str,
    due_at: str,
    *,
    status: str = "open",
    change: str = "opened",
    owner: str = "K-4",
) -> RecordEntry:
    """A record entry about obligation ``number``, shaped as the ledger writes it."""
    return RecordEntry(
        sequence=sequence,
        entry_type="obligation",
        at="2026-06-10T12:00:00+00:00",
        details={
            "change": change,
            "sequence": number,
            "kind": kind,
            "owner": owner,
            "opened_at": "2026-06-10T12:00:00+00:00",
            "due_at": due_at,
            "status": status,
            "ended_at": None if status == "open" else "2026-06-10T13:00:00+00:00",
        },
    )


def hours(
    ticket_id: str, event_id: str, logged: float, *, month: str = "2026-06"
) -> HoursInput:
    return HoursInput(
        ticket_id=ticket_id,
        event_id=event_id,
        customer_id="C-17",
        month=month,
        hours=logged,
        included_hours=10.0,
        logged_at="2026-06-15T18:00:00+00:00",
    )


def test_record_same_batch_twice_keeps_one_copy(store: Store) -> None:
    batch = ticket_changes([entry(1), entry(2), entry(3)])

    store.record(batch)
    store.record(batch)

    lines = store.ticket_record("T-1001")
    assert [line.sequence for line in lines] == [1, 2, 3]
    assert [line.details for line in lines] == [{"n": 1}, {"n": 2}, {"n": 3}]
    ticket = store.ticket("T-1001")
    assert ticket is not None
    assert ticket.state == "claimed"
    assert ticket.customer_id == "C-17"
    assert ticket.tech_id == "K-4"


def test_record_keeps_nested_details(store: Store) -> None:
    details = {
        "event": "contact_attempt",
        "channel": "phone",
        "tags": ["a", "b"],
        "hours": 1.5,
    }
    store.record(
        ticket_changes([RecordEntry(1, "event", "2026-06-10T14:00:00+00:00", details)])
    )

    assert store.ticket_record("T-1001")[0].details == details


def test_record_updates_ticket_state(store: Store) -> None:
    store.record(ticket_changes([entry(1)]))
    store.record(
        ticket_changes(
            [entry(2)],
            state="closed",
            closed_at="2026-06-11T09:30:00-04:00",
            close_reason="resolved",
            tech=Person(id="K-7", name="Lee Moss", email="lee@techs.test"),
        )
    )

    ticket = store.ticket("T-1001")
    assert ticket is not None
    assert ticket.state == "closed"
    assert ticket.close_reason == "resolved"
    assert ticket.closed_at == datetime(2026, 6, 11, 13, 30, tzinfo=UTC)
    assert ticket.tech_id == "K-7"
    assert ticket.last_sequence == 2


def test_record_older_batch_keeps_newer_state(store: Store) -> None:
    store.record(
        ticket_changes([entry(3), entry(4)], state="closed", close_reason="resolved")
    )
    store.record(ticket_changes([entry(1), entry(2)], state="unclaimed", tech=None))

    ticket = store.ticket("T-1001")
    assert ticket is not None
    assert ticket.state == "closed"
    assert ticket.tech_id == "K-4"
    assert ticket.last_sequence == 4


def test_ticket_record_is_in_sequence_order(store: Store) -> None:
    # Batches may land out of order when an activity is retried late.
    store.record(ticket_changes([entry(4), entry(3)]))
    store.record(ticket_changes([entry(2), entry(1)]))
    store.record(ticket_changes([entry(5)]))

    assert [line.sequence for line in store.ticket_record("T-1001")] == [1, 2, 3, 4, 5]


def test_record_keeps_tickets_apart(store: Store) -> None:
    store.record(ticket_changes([entry(1)], ticket_id="T-1"))
    store.record(ticket_changes([entry(1), entry(2)], ticket_id="T-2"))

    assert len(store.ticket_record("T-1")) == 1
    assert len(store.ticket_record("T-2")) == 2
    assert store.ticket_record("T-3") == []
    assert store.ticket("T-3") is None


def test_record_upserts_customer_details(store: Store) -> None:
    store.record(ticket_changes([entry(1)]))
    moved = Person(id="C-17", name="Dana Reyes", email="dana@new.test", phone=None)
    store.record(ticket_changes([entry(2)], customer=moved))

    with store.engine.connect() as connection:
        row = connection.execute(
            text("SELECT email, phone FROM customers WHERE id = 'C-17'")
        ).one()
    assert tuple(row) == ("dana@new.test", None)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2026-06-10T10:00:00-04:00", datetime(2026, 6, 10, 14, 0, 0, tzinfo=UTC)),
        ("2026-03-08T01:59:59-05:00", datetime(2026, 3, 8, 6, 59, 59, tzinfo=UTC)),
        ("2026-03-08T03:00:01-04:00", datetime(2026, 3, 8, 7, 0, 1, tzinfo=UTC)),
        ("2026-11-01T01:30:00-04:00", datetime(2026, 11, 1, 5, 30, tzinfo=UTC)),
        ("2026-11-01T01:30:00-05:00", datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),
        ("2026-12-31T23:59:59+14:00", datetime(2026, 12, 31, 9, 59, 59, tzinfo=UTC)),
    ],
)
def test_aware_times_round_trip_as_utc(
    store: Store, written: str, expected: datetime
) -> None:
    store.record(
        ticket_changes([entry(1, at=written)], opened_at=written, closed_at=written)
    )

    ticket = store.ticket("T-1001")
    assert ticket is not None
    for value in (
        ticket.opened_at,
        ticket.closed_at,
        store.ticket_record("T-1001")[0].at,
    ):
        assert value == expected
        assert value is not None and value.utcoffset() is not None
        assert value.tzinfo == UTC


def test_mail_time_round_trips_as_utc(store: Store) -> None:
    at = datetime(2026, 6, 10, 9, 0, 5, tzinfo=UTC)
    store.record_mail(
        message_id="<a@b>",
        ticket_id="T-1001",
        kind="check_in",
        role="customer",
        recipient="dana@customer.test",
        status="sent",
        at=at,
    )

    mail = store.mail("<a@b>")
    assert mail is not None
    assert mail.sent_at == at
    assert mail.sent_at.tzinfo == UTC


@pytest.mark.parametrize("bad_time", ["2026-06-10T10:00:00", "tomorrow", ""])
def test_record_rejects_time_without_offset(store: Store, bad_time: str) -> None:
    with pytest.raises(InvalidInput, match="opened_at"):
        store.record(ticket_changes([entry(1)], opened_at=bad_time))
    with pytest.raises(InvalidInput, match="entry 1 at"):
        store.record(ticket_changes([entry(1, at=bad_time)]))

    assert store.ticket_record("T-1001") == []


def test_record_mail_updates_status(store: Store) -> None:
    fields: dict[str, Any] = {
        "message_id": "<T-1.1.assigned.tech@x>",
        "ticket_id": "T-1",
        "kind": "assigned",
        "role": "tech",
        "recipient": "kim@techs.test",
    }
    assert store.mail_status("<T-1.1.assigned.tech@x>") is None

    store.record_mail(**fields, status="sending")
    store.record_mail(**fields, status="sent")

    assert store.mail_status("<T-1.1.assigned.tech@x>") == "sent"
    assert [mail.status for mail in store.sent_mail("T-1")] == ["sent"]


def test_record_mail_rejects_unknown_status(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown mail status 'queued'"):
        store.record_mail(
            message_id="<x@y>",
            ticket_id="T-1",
            kind="assigned",
            role="tech",
            recipient=None,
            status="queued",
        )


def test_sent_mail_lists_oldest_first(store: Store) -> None:
    for minute, kind in [(30, "reply_reminder"), (10, "assigned"), (20, "check_in")]:
        store.record_mail(
            message_id=f"<{kind}@x>",
            ticket_id="T-1",
            kind=kind,
            role="tech",
            recipient=None,
            status="sent",
            at=datetime(2026, 6, 10, 14, minute, tzinfo=UTC),
        )

    assert [mail.kind for mail in store.sent_mail("T-1")] == [
        "assigned",
        "check_in",
        "reply_reminder",
    ]


def test_log_hours_same_event_twice_counts_once(store: Store) -> None:
    first = store.log_hours(hours("T-1", "e-1", 2.5))
    again = store.log_hours(hours("T-1", "e-1", 2.5))

    assert first.used_hours == 2.5
    assert again.used_hours == 2.5


def test_log_hours_thresholds_across_two_tickets(store: Store) -> None:
    # 10 included hours: 80% is passed at 8 hours, 100% at 10.
    assert store.log_hours(hours("T-1", "e-1", 5)).crossed_thresholds == []

    passing_eighty = store.log_hours(hours("T-2", "e-1", 3.5))
    assert passing_eighty.used_hours == 8.5
    assert passing_eighty.crossed_thresholds == [0.8]

    after_eighty = store.log_hours(hours("T-1", "e-2", 1))
    assert after_eighty.used_hours == 9.5
    assert after_eighty.crossed_thresholds == []

    passing_hundred = store.log_hours(hours("T-1", "e-3", 0.5))
    assert passing_hundred.used_hours == 10.0
    assert passing_hundred.crossed_thresholds == [1.0]

    assert store.log_hours(hours("T-2", "e-2", 4)).crossed_thresholds == []


def test_log_hours_retry_returns_same_thresholds(store: Store) -> None:
    store.log_hours(hours("T-1", "e-1", 7))
    crossing = hours("T-2", "e-9", 4)

    first = store.log_hours(crossing)
    retried = store.log_hours(crossing)

    # A retried activity whose first result was lost still learns its warnings.
    assert first.crossed_thresholds == [0.8, 1.0]
    assert retried.crossed_thresholds == [0.8, 1.0]
    assert retried.used_hours == 11.0


def test_log_hours_exact_threshold_despite_rounding(store: Store) -> None:
    # 0.8 * 3 is 2.4000000000000004 in floating point, and 0.7 + 0.1 sums to
    # 0.7999999999999999, yet both months reach exactly 80%.
    three_included = replace(hours("T-1", "e-1", 2.4), included_hours=3.0)
    one_included = [
        replace(hours("T-2", f"e-{n}", logged, month="2026-07"), included_hours=1.0)
        for n, logged in enumerate([0.7, 0.1])
    ]

    june = store.log_hours(three_included)
    store.log_hours(one_included[0])
    july = store.log_hours(one_included[1])

    assert june.crossed_thresholds == [0.8]
    assert july.crossed_thresholds == [0.8]


def test_log_hours_just_below_threshold_passes_none(store: Store) -> None:
    below = replace(hours("T-1", "e-1", 2.39), included_hours=3.0)

    assert store.log_hours(below).crossed_thresholds == []


def test_log_hours_months_are_separate(store: Store) -> None:
    store.log_hours(hours("T-1", "e-1", 7, month="2026-06"))

    july = store.log_hours(hours("T-1", "e-2", 7, month="2026-07"))

    assert july.used_hours == 7
    assert july.crossed_thresholds == []


def test_log_hours_rejects_non_positive_hours(store: Store) -> None:
    with pytest.raises(InvalidInput, match="hours must be positive"):
        store.log_hours(hours("T-1", "e-1", 0))


def test_log_hours_concurrent_tickets_claim_once(database_url: str) -> None:
    # Neither ticket's hours reach 80% alone, but together they do. Each thread
    # has its own store, as two workers would. After its insert, each waits up
    # to 0.5 s for the other's insert. Without the store's lock both would then
    # sum only their own hours, and neither would claim the warning.
    stores = [Store(database_url), Store(database_url)]
    stores[0].create_tables()
    inserted = [threading.Event(), threading.Event()]

    def wait_for_other_insert(index: int) -> Any:
        def after_execute(*args: Any) -> None:
            statement = str(args[2])
            if statement.lstrip().upper().startswith("INSERT INTO HOURS_ENTRIES"):
                inserted[index].set()
                inserted[1 - index].wait(timeout=0.5)

        return after_execute

    for index, opened in enumerate(stores):
        event.listen(
            opened.engine, "after_cursor_execute", wait_for_other_insert(index)
        )

    def log(index: int) -> list[float]:
        result = stores[index].log_hours(hours(f"T-{index}", "e-1", 4.5))
        return result.crossed_thresholds

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(log, [0, 1]))
    finally:
        for opened in stores:
            opened.dispose()

    assert sorted(results) == [[], [0.8]]


def test_due_obligations_before_now(store: Store) -> None:
    # Due times a microsecond apart around "now" (15:00:00.25 UTC, given in
    # New York time), entries that supersede others, and a batch whose newer
    # entry was stored first.
    store.record(
        ticket_changes(
            [
                obligation(1, 1, "claim", "2026-06-10T14:00:00+00:00"),
                obligation(2, 1, "claim", "2026-06-10T14:00:00+00:00", status="met"),
                obligation(3, 2, "first_contact", "2026-06-10T15:00:00+00:00"),
            ],
            ticket_id="T-1",
        )
    )
    store.record(
        ticket_changes(
            [
                obligation(1, 1, "notes", "2026-06-10T14:59:59.500000+00:00"),
                obligation(
                    2,
                    1,
                    "notes",
                    "2026-06-10T14:59:59.500000+00:00",
                    change="owner_changed",
                    owner="K-7",
                ),
                obligation(3, 2, "reply", "2026-06-10T15:00:00.250000+00:00"),
                obligation(4, 3, "reply", "2026-06-10T15:00:00.249999+00:00"),
            ],
            ticket_id="T-2",
        )
    )
    store.record(
        ticket_changes(
            [
                obligation(1, 1, "check_in", "2026-06-10T15:00:01+00:00"),
                obligation(
                    2, 2, "notes", "2026-06-10T13:00:00+00:00", status="breached"
                ),
            ],
            ticket_id="T-3",
        )
    )
    store.record(
        ticket_changes(
            [obligation(2, 1, "claim", "2026-06-10T09:00:00+00:00", status="met")],
            ticket_id="T-4",
        )
    )
    store.record(
        ticket_changes(
            [obligation(1, 1, "claim", "2026-06-10T09:00:00+00:00")], ticket_id="T-4"
        )
    )

    now = datetime.fromisoformat("2026-06-10T11:00:00.250000-04:00")
    due = store.open_obligations_due_before(now)

    assert due == [
        DueObligation(
            ticket_id="T-2",
            sequence=1,
            kind="notes",
            owner="K-7",
            due_at=datetime(2026, 6, 10, 14, 59, 59, 500000, tzinfo=UTC),
        ),
        DueObligation(
            ticket_id="T-1",
            sequence=2,
            kind="first_contact",
            owner="K-4",
            due_at=datetime(2026, 6, 10, 15, 0, tzinfo=UTC),
        ),
        DueObligation(
            ticket_id="T-2",
            sequence=3,
            kind="reply",
            owner="K-4",
            due_at=datetime(2026, 6, 10, 15, 0, 0, 249999, tzinfo=UTC),
        ),
    ]
    assert all(item.due_at.tzinfo == UTC for item in due)


def test_due_obligations_bound_is_exclusive(store: Store) -> None:
    store.record(
        ticket_changes(
            [obligation(1, 1, "claim", "2026-06-10T14:00:00+00:00")], ticket_id="T-1"
        )
    )

    assert (
        store.open_obligations_due_before(datetime(2026, 6, 10, 14, 0, tzinfo=UTC))
        == []
    )
    assert [
        item.ticket_id
        for item in store.open_obligations_due_before(
            datetime(2026, 6, 10, 14, 0, 0, 1, tzinfo=UTC)
        )
    ] == ["T-1"]


def test_due_obligations_reject_naive_time(store: Store) -> None:
    with pytest.raises(InvalidInput, match="has no UTC offset"):
        store.open_obligations_due_before(datetime(2026, 6, 10, 15, 0))
