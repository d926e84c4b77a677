"""Deadline arithmetic of the communication policy, pinned to exact UTC times.

Every expected value is worked out by hand from the written policy. The quiet
window is local 20:00 up to, not including, 08:00. A normal ticket claimed in
it starts its first-contact clock at the next local 08:00. All other arithmetic
is elapsed time. Comments give the customer's wall-clock time.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from workflows.policy import (
    DEFAULT_POLICY,
    Policy,
    check_in_due,
    customer_mail_time,
    first_contact_clock_start,
    first_contact_due,
    is_quiet,
    is_urgent,
    later,
    month_of,
    policy_with_overrides,
    quiet_window_end,
)

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def utc(text: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SS`` as a UTC time."""
    return datetime.fromisoformat(text + "+00:00")


# Defaults


def test_policy_defaults_match_written_durations() -> None:
    policy = Policy()

    assert policy.claim_within == timedelta(hours=8)
    assert policy.first_contact_within == timedelta(hours=1)
    assert policy.first_contact_reminder_before == timedelta(minutes=15)
    assert policy.check_in_after == timedelta(hours=3)
    assert policy.notes_within == timedelta(hours=12)
    assert policy.notes_reminder_before == timedelta(hours=2)
    assert policy.reply_within == timedelta(hours=24)
    assert policy.reply_reminder_before == timedelta(hours=4)
    assert policy.ladder_step == timedelta(hours=24)
    assert policy.quiet_starts == time(20, 0)
    assert policy.quiet_ends == time(8, 0)
    assert policy.first_contact_channels == frozenset({"phone", "email"})
    assert policy.hours_warning_thresholds == (0.8, 1.0)
    assert policy.max_future_skew == timedelta(minutes=5)


def test_policy_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_POLICY.claim_within = timedelta(hours=1)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("priority", "urgent"),
    [("normal", False), ("high", True), ("emergency", True), ("low", False)],
)
def test_is_urgent_only_high_and_emergency(priority: str, urgent: bool) -> None:
    assert is_urgent(priority) is urgent


# Quiet window edges (New York in June is UTC-4)


@pytest.mark.parametrize(
    ("moment", "quiet"),
    [
        ("2026-06-10T23:59:59", False),  # 19:59:59 local
        ("2026-06-11T00:00:00", True),  # 20:00:00
        ("2026-06-11T03:45:00", True),  # 23:45
        ("2026-06-11T04:00:00", True),  # 00:00
        ("2026-06-11T05:30:00", True),  # 01:30
        ("2026-06-11T11:59:59", True),  # 07:59:59
        ("2026-06-11T12:00:00", False),  # 08:00:00
        ("2026-06-11T16:00:00", False),  # 12:00
    ],
)
def test_is_quiet_window_edges(moment: str, quiet: bool) -> None:
    assert is_quiet(utc(moment), NEW_YORK) is quiet


@pytest.mark.parametrize(
    ("moment", "quiet"),
    [
        ("2026-06-10T17:59:59", False),  # 19:59:59 CEST
        ("2026-06-10T18:00:00", True),  # 20:00:00 CEST
        ("2026-06-11T05:59:59", True),  # 07:59:59 CEST
        ("2026-06-11T06:00:00", False),  # 08:00:00 CEST
    ],
)
def test_is_quiet_reads_berlin_wall_clock(moment: str, quiet: bool) -> None:
    assert is_quiet(utc(moment), BERLIN) is quiet


@pytest.mark.parametrize(
    ("moment", "quiet"),
    [
        # New York is on EST (UTC-5) until 02:00 on 2027-03-14, then EDT (UTC-4).
        ("2027-03-14T00:59:59", False),  # 19:59:59 EST on the 13th
        ("2027-03-14T01:00:00", True),  # 20:00:00 EST on the 13th
        ("2027-03-14T11:59:59", True),  # 07:59:59 EDT on the 14th
        ("2027-03-14T12:00:00", False),  # 08:00:00 EDT on the 14th
        ("2027-03-14T23:59:59", False),  # 19:59:59 EDT on the 14th
        ("2027-03-15T00:00:00", True),  # 20:00:00 EDT on the 14th
    ],
)
def test_is_quiet_on_spring_forward_day(moment: str, quiet: bool) -> None:
    assert is_quiet(utc(moment), NEW_YORK) is quiet


def test_quiet_window_end_next_eight() -> None:
    # 23:45 local on June 10 wakes at 08:00 local on June 11.
    assert quiet_window_end(utc("2026-06-11T03:45:00"), NEW_YORK) == utc(
        "2026-06-11T12:00:00"
    )
    # 01:30 local wakes at 08:00 the same morning.
    assert quiet_window_end(utc("2026-06-11T05:30:00"), NEW_YORK) == utc(
        "2026-06-11T12:00:00"
    )
    # 08:00:00 itself is the end.
    assert quiet_window_end(utc("2026-06-11T12:00:00"), NEW_YORK) == utc(
        "2026-06-11T12:00:00"
    )


# First contact: the clock start and due time of rule 2


@pytest.mark.parametrize(
    ("claimed_at", "clock_start", "due"),
    [
        # 19:59:59 local is not quiet: one hour from the claim.
        ("2026-06-10T23:59:59", "2026-06-10T23:59:59", "2026-06-11T00:59:59"),
        # 20:00:00 local is quiet: clock starts 08:00 next day, due 09:00.
        ("2026-06-11T00:00:00", "2026-06-11T12:00:00", "2026-06-11T13:00:00"),
        # 07:59:59 local is quiet: clock starts 08:00 the same morning.
        ("2026-06-11T11:59:59", "2026-06-11T12:00:00", "2026-06-11T13:00:00"),
        # 08:00:00 local is not quiet: one hour from the claim.
        ("2026-06-11T12:00:00", "2026-06-11T12:00:00", "2026-06-11T13:00:00"),
        # 23:45 local: due 09:00 the next day.
        ("2026-06-11T03:45:00", "2026-06-11T12:00:00", "2026-06-11T13:00:00"),
        # 01:30 local: due 09:00 the same morning.
        ("2026-06-11T05:30:00", "2026-06-11T12:00:00", "2026-06-11T13:00:00"),
        # 14:20 local, daytime.
        ("2026-06-10T18:20:00", "2026-06-10T18:20:00", "2026-06-10T19:20:00"),
    ],
)
def test_first_contact_normal_claim_quiet_rule(
    claimed_at: str, clock_start: str, due: str
) -> None:
    claim = utc(claimed_at)

    assert first_contact_clock_start(claim, "normal", NEW_YORK) == utc(clock_start)
    assert first_contact_due(claim, "normal", NEW_YORK) == utc(due)


@pytest.mark.parametrize("priority", ["high", "emergency"])
@pytest.mark.parametrize(
    ("claimed_at", "due"),
    [
        ("2026-06-11T00:00:00", "2026-06-11T01:00:00"),  # 20:00 local
        ("2026-06-11T03:45:00", "2026-06-11T04:45:00"),  # 23:45 local
        ("2026-06-11T05:30:00", "2026-06-11T06:30:00"),  # 01:30 local
        ("2026-06-11T11:59:59", "2026-06-11T12:59:59"),  # 07:59:59 local
    ],
)
def test_first_contact_urgent_night_claim(
    priority: str, claimed_at: str, due: str
) -> None:
    claim = utc(claimed_at)

    assert first_contact_clock_start(claim, priority, NEW_YORK) == claim
    assert first_contact_due(claim, priority, NEW_YORK) == utc(due)


def test_first_contact_result_is_utc() -> None:
    # A claim given with the customer's own offset gives the same instant.
    claim = datetime.fromisoformat("2026-06-10T23:45:00-04:00")

    due = first_contact_due(claim, "normal", NEW_YORK)

    assert due == utc("2026-06-11T13:00:00")
    assert due.utcoffset() == timedelta(0)


# Check-in: 3 hours after the clock start, customer mail held in the quiet window


@pytest.mark.parametrize(
    ("claimed_at", "due"),
    [
        # 10:00 local claim: 13:00 local.
        ("2026-06-10T14:00:00", "2026-06-10T17:00:00"),
        # 23:45 local claim: clock 08:00, check-in 11:00 local.
        ("2026-06-11T03:45:00", "2026-06-11T15:00:00"),
        # 07:59:59 local claim: clock 08:00, check-in 11:00 local.
        ("2026-06-11T11:59:59", "2026-06-11T15:00:00"),
        # 18:30 local claim: 21:30 local is quiet, so 08:00 next day.
        ("2026-06-10T22:30:00", "2026-06-11T12:00:00"),
        # 16:59:59 local claim: 19:59:59 local is not quiet yet.
        ("2026-06-10T20:59:59", "2026-06-10T23:59:59"),
        # 17:00:00 local claim: 20:00:00 local is quiet, so 08:00 next day.
        ("2026-06-10T21:00:00", "2026-06-11T12:00:00"),
        # 19:59:59 local claim (not quiet): 22:59:59 local, held to 08:00.
        ("2026-06-10T23:59:59", "2026-06-11T12:00:00"),
    ],
)
def test_check_in_due_normal_ticket(claimed_at: str, due: str) -> None:
    assert check_in_due(utc(claimed_at), "normal", NEW_YORK) == utc(due)


@pytest.mark.parametrize("priority", ["high", "emergency"])
@pytest.mark.parametrize(
    ("claimed_at", "due"),
    [
        # 23:45 local: 02:45 local, urgent mail is not held.
        ("2026-06-11T03:45:00", "2026-06-11T06:45:00"),
        # 18:30 local: 21:30 local.
        ("2026-06-10T22:30:00", "2026-06-11T01:30:00"),
    ],
)
def test_check_in_due_urgent_not_held(priority: str, claimed_at: str, due: str) -> None:
    assert check_in_due(utc(claimed_at), priority, NEW_YORK) == utc(due)


@pytest.mark.parametrize(
    ("priority", "due_at", "sent_at"),
    [
        ("normal", "2026-06-11T02:00:00", "2026-06-11T12:00:00"),  # 22:00 local
        ("normal", "2026-06-11T00:00:00", "2026-06-11T12:00:00"),  # 20:00:00
        ("normal", "2026-06-10T23:59:59", "2026-06-10T23:59:59"),  # 19:59:59
        ("normal", "2026-06-11T12:00:00", "2026-06-11T12:00:00"),  # 08:00:00
        ("high", "2026-06-11T02:00:00", "2026-06-11T02:00:00"),
        ("emergency", "2026-06-11T02:00:00", "2026-06-11T02:00:00"),
    ],
)
def test_customer_mail_time_quiet_window(
    priority: str, due_at: str, sent_at: str
) -> None:
    assert customer_mail_time(utc(due_at), priority, NEW_YORK) == utc(sent_at)


# Daylight saving nights: 08:00 and 09:00 are read on the wall clock


@pytest.mark.parametrize(
    ("zone", "claimed_at", "due"),
    [
        # New York spring forward, 2027-03-14 02:00 EST -> 03:00 EDT.
        # Night before: 23:00 EST on the 12th, due 09:00 EST = 14:00 UTC.
        ("America/New_York", "2027-03-13T04:00:00", "2027-03-13T14:00:00"),
        # Night of the change: 23:00 EST on the 13th, due 09:00 EDT = 13:00 UTC.
        ("America/New_York", "2027-03-14T04:00:00", "2027-03-14T13:00:00"),
        # 01:30 EST, before the gap.
        ("America/New_York", "2027-03-14T06:30:00", "2027-03-14T13:00:00"),
        # 03:30 EDT, after the gap.
        ("America/New_York", "2027-03-14T07:30:00", "2027-03-14T13:00:00"),
        # New York fall back, 2026-11-01 02:00 EDT -> 01:00 EST.
        # Night before: 23:00 EDT on Oct 30, due 09:00 EDT = 13:00 UTC.
        ("America/New_York", "2026-10-31T03:00:00", "2026-10-31T13:00:00"),
        # Night of the change: 23:00 EDT on Oct 31, due 09:00 EST = 14:00 UTC.
        ("America/New_York", "2026-11-01T03:00:00", "2026-11-01T14:00:00"),
        # 01:30 twice: first EDT, then EST.
        ("America/New_York", "2026-11-01T05:30:00", "2026-11-01T14:00:00"),
        ("America/New_York", "2026-11-01T06:30:00", "2026-11-01T14:00:00"),
        # Berlin spring forward, 2027-03-28 02:00 CET -> 03:00 CEST.
        # Night before: 23:00 CET on the 26th, due 09:00 CET = 08:00 UTC.
        ("Europe/Berlin", "2027-03-26T22:00:00", "2027-03-27T08:00:00"),
        # Night of the change: 23:00 CET on the 27th, due 09:00 CEST = 07:00 UTC.
        ("Europe/Berlin", "2027-03-27T22:00:00", "2027-03-28T07:00:00"),
        # Berlin fall back, 2026-10-25 03:00 CEST -> 02:00 CET.
        # Night before: 23:00 CEST on the 23rd, due 09:00 CEST = 07:00 UTC.
        ("Europe/Berlin", "2026-10-23T21:00:00", "2026-10-24T07:00:00"),
        # Night of the change: 23:00 CEST on the 24th, due 09:00 CET = 08:00 UTC.
        ("Europe/Berlin", "2026-10-24T21:00:00", "2026-10-25T08:00:00"),
        # 02:30 twice: first CEST, then CET.
        ("Europe/Berlin", "2026-10-25T00:30:00", "2026-10-25T08:00:00"),
        ("Europe/Berlin", "2026-10-25T01:30:00", "2026-10-25T08:00:00"),
    ],
)
def test_first_contact_dst_nights(zone: str, claimed_at: str, due: str) -> None:
    assert first_contact_due(utc(claimed_at), "normal", ZoneInfo(zone)) == utc(due)


@pytest.mark.parametrize(
    ("zone", "claimed_at", "due"),
    [
        # 11:00 local the morning after each change.
        ("America/New_York", "2027-03-14T04:00:00", "2027-03-14T15:00:00"),  # EDT
        ("America/New_York", "2026-11-01T03:00:00", "2026-11-01T16:00:00"),  # EST
        ("Europe/Berlin", "2027-03-27T22:00:00", "2027-03-28T09:00:00"),  # CEST
        ("Europe/Berlin", "2026-10-24T21:00:00", "2026-10-25T10:00:00"),  # CET
    ],
)
def test_check_in_dst_nights(zone: str, claimed_at: str, due: str) -> None:
    assert check_in_due(utc(claimed_at), "normal", ZoneInfo(zone)) == utc(due)


@pytest.mark.parametrize(
    ("claimed_at", "due"),
    [
        # Emergency at 01:30 EST on the spring-forward night: 03:30 EDT is
        # one hour of elapsed time later, not two on the wall clock.
        ("2027-03-14T06:30:00", "2027-03-14T07:30:00"),
        # Emergency at 01:30 EDT on the fall-back night: 01:30 EST.
        ("2026-11-01T05:30:00", "2026-11-01T06:30:00"),
    ],
)
def test_first_contact_urgent_across_dst(claimed_at: str, due: str) -> None:
    assert first_contact_due(utc(claimed_at), "emergency", NEW_YORK) == utc(due)


def test_check_in_urgent_across_dst() -> None:
    # Emergency at 00:30 EST on 2027-03-14: three elapsed hours is 04:30 EDT.
    assert check_in_due(utc("2027-03-14T05:30:00"), "emergency", NEW_YORK) == utc(
        "2027-03-14T08:30:00"
    )


# Calendar months for subscription hours


@pytest.mark.parametrize(
    ("zone", "moment", "month"),
    [
        # 22:30 EDT on March 31 is March, though UTC is already April 1.
        ("America/New_York", "2027-04-01T02:30:00", "2027-03"),
        # 23:59:59 EDT on March 31.
        ("America/New_York", "2027-04-01T03:59:59", "2027-03"),
        # 00:00 EDT on April 1.
        ("America/New_York", "2027-04-01T04:00:00", "2027-04"),
        # 00:30 CEST on April 1 is April, though UTC is still March 31.
        ("Europe/Berlin", "2027-03-31T22:30:00", "2027-04"),
        # 22:00 EST on December 31 is December of the old year.
        ("America/New_York", "2027-01-01T03:00:00", "2026-12"),
    ],
)
def test_month_of_reads_local_calendar(zone: str, moment: str, month: str) -> None:
    assert month_of(utc(moment), ZoneInfo(zone)) == month


# An operator's own policy


def test_custom_policy_quiet_window() -> None:
    policy = Policy(
        quiet_starts=time(22, 0),
        quiet_ends=time(7, 0),
        first_contact_within=timedelta(hours=2),
        check_in_after=timedelta(hours=4),
    )

    # 21:00 local is not quiet under 22:00-07:00: due 23:00 local.
    assert first_contact_due(
        utc("2026-06-11T01:00:00"), "normal", NEW_YORK, policy
    ) == utc("2026-06-11T03:00:00")
    # 22:00 local is quiet: clock starts 07:00, due 09:00 local.
    assert first_contact_due(
        utc("2026-06-11T02:00:00"), "normal", NEW_YORK, policy
    ) == utc("2026-06-11T13:00:00")
    # Check-in 4h after the 07:00 clock start: 11:00 local.
    assert check_in_due(utc("2026-06-11T02:00:00"), "normal", NEW_YORK, policy) == utc(
        "2026-06-11T15:00:00"
    )
    # 07:00:00 local is not quiet, 06:59:59 is.
    assert is_quiet(utc("2026-06-11T11:00:00"), NEW_YORK, policy) is False
    assert is_quiet(utc("2026-06-11T10:59:59"), NEW_YORK, policy) is True


def test_custom_policy_window_within_one_day() -> None:
    # A window that does not cross midnight: 01:00 up to 06:00.
    policy = Policy(quiet_starts=time(1, 0), quiet_ends=time(6, 0))

    assert is_quiet(utc("2026-06-11T04:59:59"), NEW_YORK, policy) is False  # 00:59:59
    assert is_quiet(utc("2026-06-11T05:00:00"), NEW_YORK, policy) is True  # 01:00
    assert is_quiet(utc("2026-06-11T09:59:59"), NEW_YORK, policy) is True  # 05:59:59
    assert is_quiet(utc("2026-06-11T10:00:00"), NEW_YORK, policy) is False  # 06:00
    # 03:00 local: clock starts 06:00, due 07:00 local.
    assert first_contact_due(
        utc("2026-06-11T07:00:00"), "normal", NEW_YORK, policy
    ) == utc("2026-06-11T11:00:00")


def test_later_returns_latest() -> None:
    early = utc("2026-06-10T10:00:00")
    late = utc("2026-06-12T10:00:00")

    assert later(early, late) == late
    assert later(late, early) == late


def test_policy_overrides_replace_durations() -> None:
    policy = policy_with_overrides({"claim_within": "6h", "notes_within": "1d"})
    assert policy.claim_within == timedelta(hours=6)
    assert policy.notes_within == timedelta(days=1)
    assert policy.reply_within == timedelta(hours=24)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"claim_in": "6h"}, "unknown policy duration 'claim_in'"),
        ({"claim_within": "six hours"}, "invalid duration 'six hours'"),
        ({"claim_within": "0"}, "must be longer than 0"),
        ({"claim_within": 6}, "must be a string"),
        ({"quiet_starts": "20h"}, "unknown policy duration 'quiet_starts'"),
    ],
)
def test_policy_overrides_reject_bad_input(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        policy_with_overrides(overrides)
