"""The ticket's ledger: what is owed, by whom and by when, and what was sent.

A pure state machine with no Temporal or I/O imports. The workflow feeds it
validated events and the current time; the ledger opens, meets, breaches and
cancels obligations and queues the notifications that fall due. The workflow
then sends the queued mail and flushes the queued record entries through
activities. Every method is deterministic, so it runs unchanged on replay.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from workflows import policy as rules
from workflows.events import (
    Event,
    InvalidEvent,
    Opening,
    TicketClosed,
    check_event_time,
    signal_label,
)
from workflows.model import (
    HoursInput,
    NotificationInput,
    NotificationResult,
    Person,
    RecordEntry,
    RecordInput,
)
from workflows.policy import Policy

OPS = "ops"
SERVICE = "service"
STATES = ("unclaimed", "claimed", "closed")
# How many of the latest events the ledger keeps for display.
RECENT_EVENTS = 5
# Format of ``TicketLedger.to_snapshot``. Increase it when the format changes
# and teach ``from_snapshot`` to read the older one, because a running ticket
# may continue as new on a worker newer than the one that wrote its snapshot.
SNAPSHOT_VERSION = 1

# Reminder sent to the owner before the due time, per obligation kind.
REMINDER_KINDS = {
    "first_contact": "first_contact_reminder",
    "notes": "notes_reminder",
    "reply": "reply_reminder",
    "try_other_method": "try_other_method",
    "try_all_methods": "try_all_methods",
}
# Mail sent when an obligation falls due unmet, and who gets it.
BREACH_KINDS = {
    "claim": ("unclaimed_breach", ("ops",)),
    "first_contact": ("first_contact_breach", ("ops", "tech")),
    "notes": ("notes_breach", ("ops", "tech")),
    "reply": ("reply_breach", ("ops", "tech")),
    "try_other_method": ("ladder_incomplete", ("ops",)),
    "try_all_methods": ("ladder_incomplete", ("ops",)),
}


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


@dataclass
class Obligation:
    """Something owed by ``owner`` (a tech id, ``ops`` or ``service``) by ``due_at``.

    ``remind_at`` is when the owner gets ``REMINDER_KINDS[kind]`` if the
    obligation is still open. For the ladder steps the reminder is the prompt.
    """

    sequence: int
    kind: str
    owner: str
    opened_at: datetime
    due_at: datetime
    status: str = "open"
    ended_at: datetime | None = None
    remind_at: datetime | None = None
    reminded: bool = False

    @property
    def is_open(self) -> bool:
        return self.status == "open"

    def to_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "kind": self.kind,
            "owner": self.owner,
            "opened_at": iso(self.opened_at),
            "due_at": iso(self.due_at),
            "status": self.status,
            "ended_at": iso(self.ended_at),
        }


@dataclass
class Notification:
    """One mail the ticket owes: queued when due, then sent by an activity."""

    sequence: int
    kind: str
    role: str
    recipient: Person | None
    due_at: datetime
    owed_kind: str | None = None
    owed_due_at: datetime | None = None
    reason: str | None = None
    hours_used: float | None = None
    hours_included: float | None = None
    month: str | None = None
    status: str = "pending"
    message_id: str | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "kind": self.kind,
            "to": self.role,
            "at": iso(self.due_at),
            "status": self.status,
            "message_id": self.message_id,
        }


@dataclass
class Ladder:
    """The unreachable-customer ladder, started at a failed attempt (A0)."""

    started_at: datetime
    tried_channels: set[str]
    other_method: Obligation
    other_method_done_at: datetime | None = None
    all_methods: Obligation | None = None
    covered_methods: set[str] = field(default_factory=set)
    all_methods_done_at: datetime | None = None
    close: Obligation | None = None

    def obligations(self) -> list[Obligation]:
        steps = [self.other_method, self.all_methods, self.close]
        return [step for step in steps if step is not None]


class TicketLedger:
    """The obligations, notifications and record of one ticket."""

    def __init__(
        self,
        opening: Opening,
        zone_name: str,
        policy: Policy = rules.DEFAULT_POLICY,
    ) -> None:
        self.opening = opening
        self.ticket_id = opening.ticket_id
        self.priority = opening.priority
        self.customer = opening.customer
        self.zone_name = zone_name
        self.zone = ZoneInfo(zone_name)
        self.policy = policy
        self.state = "unclaimed"
        self.tech: Person | None = None
        self.techs: dict[str, Person] = {}
        self.obligations: list[Obligation] = []
        self.notifications: list[Notification] = []
        self.rejected: list[dict[str, Any]] = []
        self.seen_event_ids: set[str] = set()
        self.ladder: Ladder | None = None
        self.check_in: Obligation | None = None
        self.hours_by_month: dict[str, float] = {}
        self.attempts: list[tuple[datetime, str]] = []
        self.closed_at: datetime | None = None
        self.close_reason: str | None = None
        self.advanced_to = opening.opened_at
        # The opening and the latest applied events, oldest first, as the
        # time each counts at and its record details.
        self.recent_events: deque[tuple[datetime, dict[str, Any]]] = deque(
            maxlen=RECENT_EVENTS
        )
        # A reminder settled only once its due time has passed too (a worker
        # that was down, a backdated ticket, an event reported late) would
        # arrive together with the breach. The workflow skips those; tests
        # that jump ahead in one step keep them to see every reminder.
        self.skip_late_reminders = False
        self._record_sequence = 0
        self._unflushed: list[RecordEntry] = []
        self._hours_requests: list[HoursInput] = []
        self._open(opening)

    def local_time(self, moment: datetime) -> str:
        """Format ``moment`` on the customer's clock: ``Tue 2026-06-10 09:00 EDT``."""
        return moment.astimezone(self.zone).strftime("%a %Y-%m-%d %H:%M %Z")

    # Opening and events

    def _open(self, opening: Opening) -> None:
        at = opening.opened_at
        changed = {
            name: str(getattr(self.policy, name))
            for name in rules.DURATION_FIELDS
            if getattr(self.policy, name) != getattr(rules.DEFAULT_POLICY, name)
        }
        details = {"event": "opened", "source": opening.source}
        self._record("event", at, {**details, "policy_changes": changed})
        self.recent_events.append((at, details))
        if opening.tech is None:
            self._add_obligation("claim", OPS, at, at + self.policy.claim_within)
            return

        claimed_at = opening.claimed_at or at
        self._add_obligation("claim", OPS, at, at + self.policy.claim_within)
        if opening.source == "tech_created":
            # The customer came to the tech directly: that contact is the
            # first contact, so notes are owed 12 hours after the opening.
            self._claim_obligation_met(at)
            self._set_tech(opening.tech)
            first_contact = self._add_obligation(
                "first_contact", opening.tech.id, at, at
            )
            self._end(first_contact, "met", at)
            self._add_notes(opening.tech.id, at)
            return
        # A claim recorded later than the claim deadline breaches it first.
        self._settle_before(claimed_at)
        self._claim(opening.tech, claimed_at)

    def check(self, event: Event, received_at: datetime) -> None:
        """Raise ``InvalidEvent`` if ``receive`` would reject the event now.

        Changes nothing, so an Update validator can call it. The subclass
        ``TicketClosed`` means the ticket is closed, or the ladder closes it
        before the event's time. A repeated event_id of an applied event
        passes, because ``receive`` ignores it.
        """
        if event.event_id in self.seen_event_ids:
            return
        at = self._event_time(event, received_at)
        self._check_allowed(event, at)

    def receive(self, event: Event, received_at: datetime) -> InvalidEvent | None:
        """Apply one validated event, or record why it was rejected.

        Returns the rejection, or None when the event was applied or its
        event_id was already applied. Raises nothing for bad input: a
        rejection lands in ``rejected`` and in the record, and the event is
        not applied.
        """
        if event.event_id in self.seen_event_ids:
            return None
        try:
            at = self._event_time(event, received_at)
            # Checked before settling too, so that a rejected event settles
            # nothing that a backdated event behind it could still meet.
            self._check_allowed(event, at)
        except InvalidEvent as error:
            self.reject(event.signal, event.event_id, str(error), received_at)
            return error

        # An event reported late still counts at its own time, but deadlines
        # that passed before it are settled first, so it is checked against
        # the ticket as it was then. An action at the due time itself is on
        # time. Settling can close the ticket in a way _closes_before cannot
        # foresee (a ladder step done by its prompt), hence the second check.
        self._settle_before(at)
        try:
            self.check(event, received_at)
        except InvalidEvent as error:
            self.reject(event.signal, event.event_id, str(error), received_at)
            return error
        self.seen_event_ids.add(event.event_id)
        details = _event_details(event)
        self._record("event", at, details)
        self.recent_events.append((at, details))
        handlers = {
            "claim": self._on_claim,
            "reassign": self._on_reassign,
            "release": self._on_release,
            "contact_attempt": self._on_contact_attempt,
            "notes_updated": self._on_notes_updated,
            "customer_message": self._on_customer_message,
            "time_logged": self._on_time_logged,
            "close": self._on_close,
        }
        handlers[event.signal](event, at)
        return None

    def reject(
        self, signal: str, event_id: str | None, reason: str, received_at: datetime
    ) -> None:
        """Record a rejected event.

        Its event_id is not remembered, so the portal can send the event again
        once it is corrected.
        """
        entry = {
            "event_id": event_id,
            "signal": signal_label(signal),
            "reason": reason,
        }
        self.rejected.append({**entry, "at": iso(received_at)})
        self._record("rejected", received_at, entry)

    def _event_time(self, event: Event, received_at: datetime) -> datetime:
        """Return the time the event counts at, or raise ``InvalidEvent``.

        The portal's clock may run a little ahead of the server's, so an event
        without its own time never counts as before the opening. A time up to
        the allowed clock skew ahead counts as now, so no deadline fires early.
        """
        at = event.occurred_at or max(received_at, self.opening.opened_at)
        check_event_time(
            at, self.opening.opened_at, received_at, self.policy.max_future_skew
        )
        return min(at, max(received_at, self.opening.opened_at))

    def _check_allowed(self, event: Event, at: datetime) -> None:
        if self.state == "closed" or self._closes_before(at):
            raise TicketClosed(f"ticket {self.ticket_id} is closed")
        if event.signal == "claim" and self.tech is not None:
            raise InvalidEvent(
                f"ticket {self.ticket_id} is already claimed by {self.tech.id}; "
                "send reassign to move it"
            )
        if event.signal == "reassign" and self.tech is not None:
            assert event.tech is not None
            if event.tech.id == self.tech.id:
                raise InvalidEvent(f"ticket is already assigned to {self.tech.id}")
        if event.signal in ("release", "contact_attempt") and self.tech is None:
            raise InvalidEvent(
                f"ticket {self.ticket_id} is not claimed; claim it first"
            )

    def _closes_before(self, at: datetime) -> bool:
        """Return True if the ladder's closing falls due before ``at``.

        Only the closing ends a ticket without an event, so this predicts,
        without settling anything, whether settling up to ``at`` would close it.
        """
        closing = self.ladder.close if self.ladder is not None else None
        return closing is not None and closing.is_open and closing.due_at < at

    def _on_claim(self, event: Event, at: datetime) -> None:
        assert event.tech is not None
        self._claim(event.tech, at)

    def _on_reassign(self, event: Event, at: datetime) -> None:
        assert event.tech is not None
        if self.tech is None:
            self._claim(event.tech, at)
        else:
            # The old tech's first-contact reminders and breaches stop; the new
            # tech owes a first contact of their own, clocked from now.
            for obligation in self._open_obligations("first_contact"):
                self._end(obligation, "cancelled", at)
            self._set_tech(event.tech)
            self._add_first_contact(event.tech.id, at)
            for obligation in self._open_obligations("reply"):
                self._change_owner(obligation, event.tech.id, at)
            if self.ladder is not None:
                for obligation in self.ladder.obligations():
                    if obligation.is_open and obligation.owner != SERVICE:
                        self._change_owner(obligation, event.tech.id, at)
        first_contact = self._open_obligations("first_contact")[-1]
        self._notify("assigned", "tech", at, owed=first_contact, reason=event.reason)

    def _on_release(self, event: Event, at: datetime) -> None:
        for kind in ("first_contact", "reply"):
            for obligation in self._open_obligations(kind):
                self._end(obligation, "cancelled", at)
        if self.check_in is not None and self.check_in.is_open:
            self._end(self.check_in, "cancelled", at)
            self.check_in = None
        self._stop_ladder(at)
        self.tech = None
        self.state = "unclaimed"
        claim = self._add_obligation("claim", OPS, at, at + self.policy.claim_within)
        self._notify("released", "ops", at, owed=claim, reason=event.reason)

    def _on_contact_attempt(self, event: Event, at: datetime) -> None:
        assert self.tech is not None and event.channel is not None
        tech_id = self.tech.id
        self.attempts.append((at, tech_id))
        if event.channel in self.policy.first_contact_channels:
            for obligation in self._open_obligations("first_contact"):
                if obligation.opened_at <= at:
                    self._end(obligation, "met", at)
        for obligation in self._open_obligations("reply"):
            if obligation.opened_at <= at:
                self._end(obligation, "met", at)
        self._add_notes(tech_id, at)

        if event.outcome == "reached":
            self._stop_ladder(at)
        elif self.ladder is None:
            self._start_ladder(tech_id, event.channel, at)
        else:
            self._advance_ladder(event.channel, at)

    def _first_attempt_since(self, at: datetime) -> datetime | None:
        """Return the current tech's first contact attempt at or after ``at``."""
        if self.tech is None:
            return None
        times = [
            t for t, tech_id in self.attempts if tech_id == self.tech.id and t >= at
        ]
        return min(times, default=None)

    def _on_notes_updated(self, _event: Event, at: datetime) -> None:
        for obligation in self._open_obligations("notes"):
            if obligation.opened_at <= at:
                self._end(obligation, "met", at)

    def _on_customer_message(self, _event: Event, at: datetime) -> None:
        # A message reported late does not stop a ladder that began after it.
        if self.ladder is not None and self.ladder.started_at <= at:
            self._stop_ladder(at)
        owner = self.tech.id if self.tech is not None else OPS
        if not self._open_obligations("reply"):
            due = at + self.policy.reply_within
            obligation = self._add_obligation("reply", owner, at, due)
            obligation.remind_at = due - self.policy.reply_reminder_before
            answered_at = self._first_attempt_since(at)
            if answered_at is not None:
                self._end(obligation, "met", answered_at)
        if self.opening.included_hours_per_month is not None:
            self._add_notes(owner, at)

    def _on_time_logged(self, event: Event, at: datetime) -> None:
        assert event.hours is not None
        month = rules.month_of(at, self.zone)
        self.hours_by_month[month] = self.hours_by_month.get(month, 0.0) + event.hours
        included = self.opening.included_hours_per_month
        if included is None:
            return
        self._hours_requests.append(
            HoursInput(
                ticket_id=self.ticket_id,
                event_id=event.event_id,
                customer_id=self.customer.id,
                month=month,
                hours=event.hours,
                included_hours=included,
                logged_at=iso(at) or "",
                warning_thresholds=list(self.policy.hours_warning_thresholds),
            )
        )

    def _on_close(self, event: Event, at: datetime) -> None:
        assert event.reason is not None
        self.close(event.reason, at)

    # Claims and obligations

    def _claim(self, tech: Person, at: datetime) -> None:
        self._claim_obligation_met(at)
        self._set_tech(tech)
        self._add_first_contact(tech.id, at)
        for obligation in self._open_obligations("reply"):
            self._change_owner(obligation, tech.id, at)

        # One check-in per ticket: a new claim schedules it only when none was
        # sent, since a release before it was due cancels it.
        sent = any(n.kind == "check_in" for n in self.notifications)
        tech_created = self.opening.source == "tech_created"
        if self.check_in is None and not sent and not tech_created:
            due = rules.check_in_due(at, self.priority, self.zone, self.policy)
            self.check_in = self._add_obligation("check_in", SERVICE, at, due)

    def _claim_obligation_met(self, at: datetime) -> None:
        for obligation in self._open_obligations("claim"):
            self._end(obligation, "met", at)

    def _set_tech(self, tech: Person) -> None:
        self.tech = tech
        self.techs[tech.id] = tech
        self.state = "claimed"

    def _add_first_contact(self, tech_id: str, at: datetime) -> None:
        due = rules.first_contact_due(at, self.priority, self.zone, self.policy)
        obligation = self._add_obligation("first_contact", tech_id, at, due)
        obligation.remind_at = due - self.policy.first_contact_reminder_before

    def _add_notes(self, owner: str, at: datetime) -> None:
        due = at + self.policy.notes_within
        obligation = self._add_obligation("notes", owner, at, due)
        obligation.remind_at = due - self.policy.notes_reminder_before

    def _add_obligation(
        self, kind: str, owner: str, opened_at: datetime, due_at: datetime
    ) -> Obligation:
        obligation = Obligation(
            sequence=len(self.obligations) + 1,
            kind=kind,
            owner=owner,
            opened_at=opened_at,
            due_at=due_at,
        )
        self.obligations.append(obligation)
        self._record_obligation(obligation, "opened", opened_at)
        return obligation

    def _end(self, obligation: Obligation, status: str, at: datetime) -> None:
        obligation.status = status
        obligation.ended_at = at
        self._record_obligation(obligation, status, at)

    def _change_owner(self, obligation: Obligation, owner: str, at: datetime) -> None:
        obligation.owner = owner
        self._record_obligation(obligation, "owner_changed", at)

    def _open_obligations(self, kind: str) -> list[Obligation]:
        return [o for o in self.obligations if o.kind == kind and o.is_open]

    # The unreachable ladder

    def _start_ladder(self, tech_id: str, channel: str, at: datetime) -> None:
        step = self.policy.ladder_step
        other_method = self._add_obligation(
            "try_other_method", tech_id, at, at + 2 * step
        )
        other_method.remind_at = at + step
        self.ladder = Ladder(
            started_at=at, tried_channels={channel}, other_method=other_method
        )

    def _advance_ladder(self, channel: str, at: datetime) -> None:
        ladder = self.ladder
        assert ladder is not None and self.tech is not None
        step = self.policy.ladder_step
        if ladder.other_method_done_at is None:
            if channel not in ladder.tried_channels:
                ladder.other_method_done_at = at
                if ladder.other_method.is_open:
                    self._end(ladder.other_method, "met", at)
                prompt_at = rules.later(ladder.started_at + 2 * step, at + step)
                all_methods = self._add_obligation(
                    "try_all_methods", self.tech.id, at, prompt_at + step
                )
                all_methods.remind_at = prompt_at
                ladder.all_methods = all_methods
        elif ladder.all_methods_done_at is None:
            assert ladder.all_methods is not None
            prompted_at = ladder.all_methods.remind_at
            if prompted_at is not None and at >= prompted_at:
                ladder.covered_methods |= self._methods_covered_by(channel)
                self._finish_all_methods_if_covered(at)
        ladder.tried_channels.add(channel)

    def _methods_on_file(self) -> set[str]:
        on_file = {"phone": self.customer.phone, "email": self.customer.email}
        return {method for method, value in on_file.items() if value}

    def _methods_covered_by(self, channel: str) -> set[str]:
        return {
            method
            for method, channels in self.policy.method_channels.items()
            if channel in channels
        }

    def _finish_all_methods_if_covered(self, at: datetime) -> None:
        ladder = self.ladder
        assert ladder is not None and ladder.all_methods is not None
        if not self._methods_on_file() <= ladder.covered_methods:
            return
        ladder.all_methods_done_at = at
        if ladder.all_methods.is_open:
            self._end(ladder.all_methods, "met", at)
        step = self.policy.ladder_step
        close_at = rules.later(ladder.started_at + 3 * step, at + step)
        # The closing mail goes to the customer too, so a normal ticket closes
        # when the quiet window ends rather than in the night.
        close_at = rules.customer_mail_time(
            close_at, self.priority, self.zone, self.policy
        )
        ladder.close = self._add_obligation("close_unreachable", SERVICE, at, close_at)

    def _stop_ladder(self, at: datetime) -> None:
        if self.ladder is None:
            return
        for obligation in self.ladder.obligations():
            if obligation.is_open:
                self._end(obligation, "cancelled", at)
        self.ladder = None

    # Time

    def advance(self, now: datetime) -> None:
        """Settle every reminder and due time at or before ``now``, in time order."""
        self._settle(now, include_now=True)

    def _settle_before(self, moment: datetime) -> None:
        self._settle(moment, include_now=False)

    def _settle(self, until: datetime, include_now: bool) -> None:
        while self.state != "closed":
            item = self._earliest_item()
            if (
                item is None
                or item[0] > until
                or (item[0] == until and not include_now)
            ):
                break
            when, obligation, is_reminder = item
            if not is_reminder:
                self._fall_due(obligation, when)
                continue
            obligation.reminded = True
            late = obligation.due_at <= until and obligation.kind != "try_all_methods"
            if late and self.skip_late_reminders:
                continue
            self._remind(obligation, when)
        self.advanced_to = max(self.advanced_to, until)

    def next_due(self) -> tuple[datetime, Obligation, bool] | None:
        """Return the next time the ledger has work: its time, obligation and kind."""
        if self.state == "closed":
            return None
        return self._earliest_item()

    def _earliest_item(self) -> tuple[datetime, Obligation, bool] | None:
        earliest: tuple[datetime, Obligation, bool] | None = None
        for obligation in self.obligations:
            if not obligation.is_open:
                continue
            items = [(obligation.due_at, obligation, False)]
            if obligation.remind_at is not None and not obligation.reminded:
                items.append((obligation.remind_at, obligation, True))
            for item in items:
                if earliest is None or item[0] < earliest[0]:
                    earliest = item
        return earliest

    def _remind(self, obligation: Obligation, at: datetime) -> None:
        kind = REMINDER_KINDS[obligation.kind]
        if obligation.kind == "try_all_methods":
            # The prompt opens the last step; with no method on file there is
            # nothing left to try, so the step is done at once.
            self._notify_owner(kind, obligation, at)
            self._finish_all_methods_if_covered(at)
            return
        self._notify_owner(kind, obligation, at)

    def _fall_due(self, obligation: Obligation, at: datetime) -> None:
        if obligation.kind == "check_in":
            self._end(obligation, "met", at)
            # The mail gives the customer the tech's first-contact due time,
            # whether or not the tech met it.
            first_contacts = [o for o in self.obligations if o.kind == "first_contact"]
            self._notify(
                "check_in",
                "customer",
                at,
                owed_kind="first_contact",
                owed_due_at=first_contacts[-1].due_at if first_contacts else None,
            )
            return
        if obligation.kind == "close_unreachable":
            self._end(obligation, "met", at)
            for role in ("customer", "tech", "ops"):
                self._notify("closed_unreachable", role, at)
            self.close("unreachable", at)
            return

        self._end(obligation, "breached", at)
        kind, roles = BREACH_KINDS[obligation.kind]
        for role in roles:
            if role == "ops":
                self._notify(kind, "ops", at, owed=obligation)
            elif obligation.owner in self.techs:
                self._notify(
                    kind, "tech", at, owed=obligation, tech_id=obligation.owner
                )

    def close(self, reason: str, at: datetime) -> None:
        """Close the ticket: cancel every open obligation; nothing more falls due."""
        for obligation in self.obligations:
            if obligation.is_open:
                self._end(obligation, "cancelled", at)
        self.ladder = None
        self.state = "closed"
        self.closed_at = at
        self.close_reason = reason
        self._record("event", at, {"event": "closed", "reason": reason})

    # Notifications

    def _notify_owner(self, kind: str, obligation: Obligation, at: datetime) -> None:
        """Notify the obligation's owner: its tech, or ops when no tech owns it."""
        if obligation.owner in self.techs:
            self._notify(kind, "tech", at, owed=obligation, tech_id=obligation.owner)
        else:
            self._notify(kind, "ops", at, owed=obligation)

    def _notify(
        self,
        kind: str,
        role: str,
        at: datetime,
        *,
        owed: Obligation | None = None,
        owed_kind: str | None = None,
        owed_due_at: datetime | None = None,
        tech_id: str | None = None,
        reason: str | None = None,
        hours: tuple[float, float, str] | None = None,
    ) -> Notification:
        recipient: Person | None = None
        if role == "tech":
            recipient = self.techs.get(tech_id) if tech_id else self.tech
        elif role == "customer":
            recipient = self.customer
        notification = Notification(
            sequence=len(self.notifications) + 1,
            kind=kind,
            role=role,
            recipient=recipient,
            due_at=at,
            owed_kind=owed.kind if owed else owed_kind,
            owed_due_at=owed.due_at if owed else owed_due_at,
            reason=reason,
        )
        if hours is not None:
            notification.hours_used, notification.hours_included = hours[:2]
            notification.month = hours[2]
        self.notifications.append(notification)
        return notification

    def pending_notifications(self) -> list[NotificationInput]:
        """Return the queued mails, oldest first, as activity inputs."""
        return [
            self._notification_input(n)
            for n in self.notifications
            if n.status == "pending"
        ]

    def _notification_input(self, notification: Notification) -> NotificationInput:
        # A mail to a tech is about that tech, who may no longer hold the ticket.
        tech = self.tech
        if notification.recipient is not None and notification.role == "tech":
            tech = notification.recipient
        return NotificationInput(
            ticket_id=self.ticket_id,
            sequence=notification.sequence,
            kind=notification.kind,
            role=notification.role,
            recipient=notification.recipient,
            due_at=iso(notification.due_at) or "",
            timezone=self.zone_name,
            priority=self.priority,
            customer_name=self.customer.name,
            tech_name=tech.name if tech is not None else None,
            customer_id=self.customer.id,
            tech_id=tech.id if tech is not None else None,
            owed_kind=notification.owed_kind,
            owed_due_at=iso(notification.owed_due_at),
            hours_used=notification.hours_used,
            hours_included=notification.hours_included,
            month=notification.month,
            reason=notification.reason,
        )

    def mark_delivered(
        self, sequence: int, result: NotificationResult, at: datetime
    ) -> None:
        """Store what the mailer did with notification ``sequence``."""
        notification = self.notifications[sequence - 1]
        notification.status = result.status
        notification.message_id = result.message_id
        notification.detail = result.detail
        details = notification.to_json()
        if result.detail:
            details["detail"] = result.detail
        self._record("notification", at, details)

    # Subscription hours

    def take_hours_requests(self) -> list[HoursInput]:
        requests, self._hours_requests = self._hours_requests, []
        return requests

    def apply_hours_result(
        self, request: HoursInput, used: float, crossed: list[float], at: datetime
    ) -> None:
        """Queue an ``hours_warning`` to ops and tech for each threshold passed."""
        for _threshold in crossed:
            hours = (used, request.included_hours, request.month)
            self._notify("hours_warning", "ops", at, hours=hours)
            if self.tech is not None:
                self._notify("hours_warning", "tech", at, hours=hours)

    # Record and status

    def _record(self, entry_type: str, at: datetime, details: dict[str, Any]) -> None:
        self._record_sequence += 1
        self._unflushed.append(
            RecordEntry(
                sequence=self._record_sequence,
                entry_type=entry_type,
                at=iso(at) or "",
                details=details,
            )
        )

    def _record_obligation(
        self, obligation: Obligation, change: str, at: datetime
    ) -> None:
        self._record("obligation", at, {"change": change, **obligation.to_json()})

    def take_record(self) -> RecordInput | None:
        """Return the record entries not yet stored, with the ticket's state."""
        if not self._unflushed:
            return None
        entries, self._unflushed = self._unflushed, []
        return RecordInput(
            ticket_id=self.ticket_id,
            state=self.state,
            priority=self.priority,
            source=self.opening.source,
            opened_at=iso(self.opening.opened_at) or "",
            timezone=self.zone_name,
            customer=self.customer,
            tech=self.tech,
            included_hours_per_month=self.opening.included_hours_per_month,
            closed_at=iso(self.closed_at),
            close_reason=self.close_reason,
            entries=entries,
        )

    def status(self) -> dict[str, Any]:
        """Return the ``status`` query's JSON object."""
        return {
            "ticket_id": self.ticket_id,
            "state": self.state,
            "tech_id": self.tech.id if self.tech is not None else None,
            "priority": self.priority,
            "source": self.opening.source,
            "timezone": self.zone_name,
            "opened_at": iso(self.opening.opened_at),
            "closed_at": iso(self.closed_at),
            "close_reason": self.close_reason,
            "obligations": [o.to_json() for o in self.obligations],
            "notifications": [n.to_json() for n in self.notifications],
            "rejected": list(self.rejected),
            "ladder": self._ladder_json(),
            "hours_by_month": dict(self.hours_by_month),
            # The number of distinct event ids applied. A repeated id counts once.
            "events_applied": len(self.seen_event_ids),
        }

    def _ladder_json(self) -> dict[str, Any] | None:
        if self.ladder is None:
            return None
        return {
            "started_at": iso(self.ladder.started_at),
            "other_method_done_at": iso(self.ladder.other_method_done_at),
            "all_methods_done_at": iso(self.ladder.all_methods_done_at),
            "tried_channels": sorted(self.ladder.tried_channels),
        }

    # Snapshot, for continue-as-new

    def to_snapshot(self) -> dict[str, Any]:
        """Return the whole ledger as JSON values, which ``from_snapshot`` reads back.

        The workflow hands it to its next run when it continues as new, so it
        contains everything: the policy and zone the ticket started with, mail
        not yet sent, record entries not yet stored and every event id seen.
        Sets are written sorted, so the same ledger gives the same snapshot.

        NOTE: the snapshot grows with every obligation, mail and event id. As
        measured with the ledger alone, 5,000 logged-hours events make about
        80 KB, but 1,000 unanswered contact attempts make about 1.4 MB, close
        to the 2 MB that Temporal's documentation gives as the maximum
        payload of one request.
        """
        ladder = self.ladder
        return {
            "version": SNAPSHOT_VERSION,
            "opening": _opening_to_json(self.opening),
            "zone_name": self.zone_name,
            "policy": _policy_to_json(self.policy),
            "state": self.state,
            "tech": _person_to_json(self.tech),
            "techs": {
                tech_id: _person_to_json(tech) for tech_id, tech in self.techs.items()
            },
            "obligations": [_obligation_to_json(o) for o in self.obligations],
            "notifications": [_notification_to_json(n) for n in self.notifications],
            "rejected": [dict(rejection) for rejection in self.rejected],
            "seen_event_ids": sorted(self.seen_event_ids),
            "ladder": _ladder_to_json(ladder) if ladder is not None else None,
            "check_in": _sequence_of(self.check_in),
            "hours_by_month": dict(self.hours_by_month),
            "attempts": [[_time_to_json(at), tech_id] for at, tech_id in self.attempts],
            "closed_at": _time_to_json(self.closed_at),
            "close_reason": self.close_reason,
            "advanced_to": _time_to_json(self.advanced_to),
            "recent_events": [
                [_time_to_json(at), _copy_json(details)]
                for at, details in self.recent_events
            ],
            "skip_late_reminders": self.skip_late_reminders,
            "record_sequence": self._record_sequence,
            "unflushed_record": [asdict(entry) for entry in self._unflushed],
            "hours_requests": [asdict(request) for request in self._hours_requests],
        }

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any]) -> TicketLedger:
        """Rebuild the ledger that ``to_snapshot`` returned ``snapshot`` for.

        The rebuilt ledger returns the same ``status()`` and reacts to the next
        events, times and mail results exactly as the original would.

        Raises:
            ValueError: the snapshot has another version or is malformed.
        """
        if not isinstance(snapshot, dict):
            raise ValueError(
                f"invalid ledger snapshot: expected a JSON object, got "
                f"{type(snapshot).__name__}"
            )
        version = snapshot.get("version")
        if version != SNAPSHOT_VERSION:
            raise ValueError(
                f"unsupported ledger snapshot version {version!r}; this worker "
                f"reads version {SNAPSHOT_VERSION}"
            )
        try:
            return cls._restore(snapshot)
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise ValueError(f"invalid ledger snapshot: {error!r}") from error

    @classmethod
    def _restore(cls, snapshot: dict[str, Any]) -> TicketLedger:
        # Built without __init__, which would record the opening a second time.
        ledger = cls.__new__(cls)
        opening = _opening_from_json(snapshot["opening"])
        ledger.opening = opening
        ledger.ticket_id = opening.ticket_id
        ledger.priority = opening.priority
        ledger.customer = opening.customer
        ledger.zone_name = snapshot["zone_name"]
        ledger.zone = ZoneInfo(ledger.zone_name)
        ledger.policy = _policy_from_json(snapshot["policy"])

        ledger.state = snapshot["state"]
        if ledger.state not in STATES:
            raise ValueError(f"invalid state {ledger.state!r}")
        ledger.tech = _person_from_json(snapshot["tech"])
        ledger.techs = {
            tech_id: Person(**tech) for tech_id, tech in snapshot["techs"].items()
        }

        ledger.obligations = [_obligation_from_json(o) for o in snapshot["obligations"]]
        ledger.notifications = [
            _notification_from_json(n) for n in snapshot["notifications"]
        ]
        ledger.rejected = [dict(rejection) for rejection in snapshot["rejected"]]
        ledger.seen_event_ids = set(snapshot["seen_event_ids"])

        ledger.ladder = _ladder_from_json(snapshot["ladder"], ledger.obligations)
        ledger.check_in = _optional_obligation_at(
            snapshot["check_in"], ledger.obligations
        )
        ledger.hours_by_month = dict(snapshot["hours_by_month"])
        ledger.attempts = [
            (_require_time(at), tech_id) for at, tech_id in snapshot["attempts"]
        ]
        ledger.closed_at = _time_from_json(snapshot["closed_at"])
        ledger.close_reason = snapshot["close_reason"]
        ledger.advanced_to = _require_time(snapshot["advanced_to"])
        ledger.recent_events = deque(
            (
                (_require_time(at), _copy_json(details))
                for at, details in snapshot["recent_events"]
            ),
            maxlen=RECENT_EVENTS,
        )
        ledger.skip_late_reminders = bool(snapshot["skip_late_reminders"])

        ledger._record_sequence = int(snapshot["record_sequence"])
        ledger._unflushed = [
            RecordEntry(**entry) for entry in snapshot["unflushed_record"]
        ]
        ledger._hours_requests = [
            HoursInput(**request) for request in snapshot["hours_requests"]
        ]
        return ledger


# JSON forms of the ledger's parts, for the snapshot

_OBLIGATION_TIMES = ("opened_at", "due_at", "ended_at", "remind_at")
_NOTIFICATION_TIMES = ("due_at", "owed_due_at")


def _time_to_json(moment: datetime | None) -> str | None:
    # isoformat keeps the offset, so the restored time is the same instant and
    # prints the same.
    return None if moment is None else moment.isoformat()


def _time_from_json(text: str | None) -> datetime | None:
    return None if text is None else _require_time(text)


def _require_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset")
    return moment


def _copy_json(value: Any) -> Any:
    """Return a deep copy of a value made of JSON objects, arrays and scalars."""
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_copy_json(item) for item in value]
    return value


def _person_to_json(person: Person | None) -> dict[str, Any] | None:
    return None if person is None else asdict(person)


def _person_from_json(values: dict[str, Any] | None) -> Person | None:
    return None if values is None else Person(**values)


def _opening_to_json(opening: Opening) -> dict[str, Any]:
    values = asdict(opening)
    values["opened_at"] = _time_to_json(opening.opened_at)
    values["claimed_at"] = _time_to_json(opening.claimed_at)
    return values


def _opening_from_json(values: dict[str, Any]) -> Opening:
    # Not parsed again: the opening was valid when the ticket started, and a
    # stricter check in a newer worker must not break a running ticket.
    return Opening(
        **{
            **values,
            "opened_at": _require_time(values["opened_at"]),
            "claimed_at": _time_from_json(values["claimed_at"]),
            "customer": Person(**values["customer"]),
            "tech": _person_from_json(values["tech"]),
        }
    )


def _policy_to_json(policy: Policy) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for policy_field in fields(Policy):
        value = getattr(policy, policy_field.name)
        if isinstance(value, timedelta):
            values[policy_field.name] = value.total_seconds()
        elif isinstance(value, time):
            values[policy_field.name] = value.isoformat()
        elif isinstance(value, frozenset):
            values[policy_field.name] = sorted(value)
        elif isinstance(value, tuple):
            values[policy_field.name] = list(value)
        elif isinstance(value, dict):
            values[policy_field.name] = {
                key: sorted(item) for key, item in value.items()
            }
        else:
            raise TypeError(
                f"Policy.{policy_field.name} has no JSON form: {type(value).__name__}"
            )
    return values


def _policy_from_json(values: dict[str, Any]) -> Policy:
    """Rebuild a policy. A field that the snapshot lacks keeps its default value."""
    if not isinstance(values, dict):
        raise TypeError(f"policy must be a JSON object, got {type(values).__name__}")
    changes: dict[str, Any] = {}
    for policy_field in fields(Policy):
        if policy_field.name not in values:
            continue
        value = values[policy_field.name]
        default = getattr(rules.DEFAULT_POLICY, policy_field.name)
        if isinstance(default, timedelta):
            changes[policy_field.name] = timedelta(seconds=value)
        elif isinstance(default, time):
            changes[policy_field.name] = time.fromisoformat(value)
        elif isinstance(default, frozenset):
            changes[policy_field.name] = frozenset(value)
        elif isinstance(default, tuple):
            changes[policy_field.name] = tuple(value)
        elif isinstance(default, dict):
            changes[policy_field.name] = {
                key: frozenset(item) for key, item in value.items()
            }
        else:
            raise TypeError(
                f"Policy.{policy_field.name} has no JSON form: {type(default).__name__}"
            )
    return replace(rules.DEFAULT_POLICY, **changes)


def _obligation_to_json(obligation: Obligation) -> dict[str, Any]:
    values = asdict(obligation)
    for name in _OBLIGATION_TIMES:
        values[name] = _time_to_json(values[name])
    return values


def _obligation_from_json(values: dict[str, Any]) -> Obligation:
    times = {name: _time_from_json(values[name]) for name in _OBLIGATION_TIMES}
    return Obligation(**{**values, **times})


def _notification_to_json(notification: Notification) -> dict[str, Any]:
    values = asdict(notification)
    for name in _NOTIFICATION_TIMES:
        values[name] = _time_to_json(values[name])
    return values


def _notification_from_json(values: dict[str, Any]) -> Notification:
    times = {name: _time_from_json(values[name]) for name in _NOTIFICATION_TIMES}
    recipient = _person_from_json(values["recipient"])
    return Notification(**{**values, **times, "recipient": recipient})


def _sequence_of(obligation: Obligation | None) -> int | None:
    return None if obligation is None else obligation.sequence


def _obligation_at(sequence: int, obligations: list[Obligation]) -> Obligation:
    """Return the obligation numbered ``sequence``, the same object as in the list."""
    if not 1 <= sequence <= len(obligations):
        raise ValueError(f"no obligation {sequence} among {len(obligations)}")
    obligation = obligations[sequence - 1]
    if obligation.sequence != sequence:
        raise ValueError(f"obligation {sequence} is out of order")
    return obligation


def _optional_obligation_at(
    sequence: int | None, obligations: list[Obligation]
) -> Obligation | None:
    return None if sequence is None else _obligation_at(sequence, obligations)


def _ladder_to_json(ladder: Ladder) -> dict[str, Any]:
    # The steps are obligations of the ledger, so they are kept by sequence
    # number and share one object with the obligation list once restored.
    return {
        "started_at": _time_to_json(ladder.started_at),
        "tried_channels": sorted(ladder.tried_channels),
        "other_method": ladder.other_method.sequence,
        "other_method_done_at": _time_to_json(ladder.other_method_done_at),
        "all_methods": _sequence_of(ladder.all_methods),
        "covered_methods": sorted(ladder.covered_methods),
        "all_methods_done_at": _time_to_json(ladder.all_methods_done_at),
        "close": _sequence_of(ladder.close),
    }


def _ladder_from_json(
    values: dict[str, Any] | None, obligations: list[Obligation]
) -> Ladder | None:
    if values is None:
        return None
    return Ladder(
        started_at=_require_time(values["started_at"]),
        tried_channels=set(values["tried_channels"]),
        other_method=_obligation_at(values["other_method"], obligations),
        other_method_done_at=_time_from_json(values["other_method_done_at"]),
        all_methods=_optional_obligation_at(values["all_methods"], obligations),
        covered_methods=set(values["covered_methods"]),
        all_methods_done_at=_time_from_json(values["all_methods_done_at"]),
        close=_optional_obligation_at(values["close"], obligations),
    )


def _event_details(event: Event) -> dict[str, Any]:
    details: dict[str, Any] = {"event": event.signal, "event_id": event.event_id}
    if event.tech is not None:
        details["tech_id"] = event.tech.id
    for name in ("reason", "channel", "outcome", "hours"):
        value = getattr(event, name)
        if value is not None:
            details[name] = value
    return details
