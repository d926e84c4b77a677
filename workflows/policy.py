"""Deadline arithmetic of the communication policy.

Pure functions on aware datetimes and IANA zones, with no Temporal or I/O
imports, so the workflow sandbox can pass this module through and tests can pin
exact times. All arithmetic is on elapsed time in UTC. Only the quiet window
(20:00 to 08:00) and calendar months are read on the customer's wall clock, so
a daylight saving change never moves a deadline by an hour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

URGENT_PRIORITIES = frozenset({"high", "emergency"})


@dataclass(frozen=True)
class Policy:
    """Every duration and lead time of the policy, with the company's defaults.

    An operator changes these without touching workflow code. A ticket keeps
    the policy it started with, so a change applies to new tickets only.
    """

    claim_within: timedelta = timedelta(hours=8)
    first_contact_within: timedelta = timedelta(hours=1)
    first_contact_reminder_before: timedelta = timedelta(minutes=15)
    check_in_after: timedelta = timedelta(hours=3)
    notes_within: timedelta = timedelta(hours=12)
    notes_reminder_before: timedelta = timedelta(hours=2)
    reply_within: timedelta = timedelta(hours=24)
    reply_reminder_before: timedelta = timedelta(hours=4)
    ladder_step: timedelta = timedelta(hours=24)
    quiet_starts: time = time(20, 0)
    quiet_ends: time = time(8, 0)
    first_contact_channels: frozenset[str] = frozenset({"phone", "email"})
    hours_warning_thresholds: tuple[float, ...] = (0.8, 1.0)
    max_future_skew: timedelta = timedelta(minutes=5)
    # Contact methods on file, keyed by the customer field, and the channels
    # whose attempts cover each method for the last step of the ladder.
    method_channels: dict[str, frozenset[str]] = field(
        default_factory=lambda: {
            "phone": frozenset({"phone", "sms"}),
            "email": frozenset({"email"}),
        }
    )


DEFAULT_POLICY = Policy()

DURATION_PATTERN = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
# The Policy fields an operator may override, all durations.
DURATION_FIELDS = tuple(
    f.name
    for f in fields(Policy)
    if isinstance(getattr(DEFAULT_POLICY, f.name), timedelta)
)


def parse_duration(text: str) -> timedelta:
    """Parse a duration such as ``2h30m``, ``1d6h``, ``45m``, ``90s`` or ``0``.

    Raises:
        ValueError: the text is not such a duration.
    """
    text = text.strip()
    if text == "0":
        return timedelta(0)
    match = DURATION_PATTERN.fullmatch(text)
    if match is None or not any(match.groups()):
        raise ValueError(
            f"invalid duration {text!r}: use days, hours, minutes and seconds "
            "in that order, such as 2h30m, 1d6h, 45m or 0"
        )
    days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def policy_with_overrides(overrides: dict[str, str]) -> Policy:
    """Return the default policy with some durations replaced.

    ``overrides`` maps a duration field of ``Policy`` to a duration such as
    ``"6h"``. Raises ValueError naming an unknown field or invalid duration.
    """
    changes: dict[str, Any] = {}
    for name, text in overrides.items():
        if name not in DURATION_FIELDS:
            raise ValueError(
                f"unknown policy duration {name!r}; "
                f"expected one of {list(DURATION_FIELDS)}"
            )
        if not isinstance(text, str):
            raise ValueError(f"policy duration {name!r} must be a string such as '8h'")
        duration = parse_duration(text)
        if duration <= timedelta(0):
            raise ValueError(f"policy duration {name!r} must be longer than 0")
        changes[name] = duration
    return replace(DEFAULT_POLICY, **changes)


def is_urgent(priority: str) -> bool:
    return priority in URGENT_PRIORITIES


def is_quiet(moment: datetime, zone: ZoneInfo, policy: Policy = DEFAULT_POLICY) -> bool:
    """Return whether ``moment`` falls in the quiet window on the local clock.

    The window starts at ``quiet_starts`` inclusive and ends at ``quiet_ends``
    exclusive, so 20:00:00 is quiet and 08:00:00 is not.
    """
    local = moment.astimezone(zone).time()
    if policy.quiet_starts > policy.quiet_ends:
        return local >= policy.quiet_starts or local < policy.quiet_ends
    return policy.quiet_starts <= local < policy.quiet_ends


def quiet_window_end(
    moment: datetime, zone: ZoneInfo, policy: Policy = DEFAULT_POLICY
) -> datetime:
    """Return the first local ``quiet_ends`` (08:00) at or after ``moment``, in UTC.

    Built from the local date, so on a daylight saving night the result is
    still 08:00 on the wall clock. A wall time that does not exist is read
    with the offset before the change (fold 0).
    """
    local = moment.astimezone(zone)
    wake = datetime.combine(local.date(), policy.quiet_ends, tzinfo=zone)
    if wake.astimezone(UTC) < moment:
        wake = datetime.combine(
            local.date() + timedelta(days=1), policy.quiet_ends, tzinfo=zone
        )
    return wake.astimezone(UTC)


def first_contact_clock_start(
    claimed_at: datetime,
    priority: str,
    zone: ZoneInfo,
    policy: Policy = DEFAULT_POLICY,
) -> datetime:
    """Return when the first-contact clock starts for a claim.

    Urgent tickets start at the claim, day or night. A normal ticket claimed in
    the quiet window starts at the next local 08:00.
    """
    if is_urgent(priority) or not is_quiet(claimed_at, zone, policy):
        return claimed_at.astimezone(UTC)
    return quiet_window_end(claimed_at, zone, policy)


def first_contact_due(
    claimed_at: datetime,
    priority: str,
    zone: ZoneInfo,
    policy: Policy = DEFAULT_POLICY,
) -> datetime:
    start = first_contact_clock_start(claimed_at, priority, zone, policy)
    return start + policy.first_contact_within


def check_in_due(
    claimed_at: datetime,
    priority: str,
    zone: ZoneInfo,
    policy: Policy = DEFAULT_POLICY,
) -> datetime:
    """Return when the customer's check-in mail goes out.

    It is due ``check_in_after`` past the first-contact clock start, moved to
    the next 08:00 when that falls in the quiet window of a normal ticket.
    """
    start = first_contact_clock_start(claimed_at, priority, zone, policy)
    return customer_mail_time(start + policy.check_in_after, priority, zone, policy)


def customer_mail_time(
    due_at: datetime,
    priority: str,
    zone: ZoneInfo,
    policy: Policy = DEFAULT_POLICY,
) -> datetime:
    """Return when a customer mail due at ``due_at`` may be sent.

    Mail to the customer of a normal ticket waits out the quiet window. Mail
    for urgent tickets, and all mail to techs and ops, goes when due.
    """
    if is_urgent(priority) or not is_quiet(due_at, zone, policy):
        return due_at.astimezone(UTC)
    return quiet_window_end(due_at, zone, policy)


def month_of(moment: datetime, zone: ZoneInfo) -> str:
    """Return the local calendar month (``YYYY-MM``) that ``moment`` falls in."""
    return moment.astimezone(zone).strftime("%Y-%m")


def later(*moments: datetime) -> datetime:
    return max(moments)
