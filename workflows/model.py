"""Types passed between the ticket workflow and its activities.

Plain dataclasses with no Temporal or I/O imports, so the workflow sandbox can
load them and the activities can share them. Times are ISO 8601 strings in UTC
because they cross the Temporal payload boundary as JSON.
"""

# Annotations stay objects, not strings: the SDK's converter resolves a
# dataclass's field types on every payload it decodes, and resolving strings
# compiles each of them again.
from dataclasses import dataclass, field
from typing import Any

RECORD_ACTIVITY = "record_ticket_changes"
SEND_ACTIVITY = "send_notification"
HOURS_ACTIVITY = "log_hours"
DEFAULTS_ACTIVITY = "ticket_defaults"
# Start-to-close timeout of the workflow's activities. The SMTP timeout must
# stay below it, so a hung mail server fails an attempt before Temporal does.
ACTIVITY_TIMEOUT_SECONDS = 60
# History length, in events, at which a ticket continues as new unless the
# server suggests it earlier. A shorter history also replays faster when a
# worker has to rebuild the ticket from it.
DEFAULT_MAX_HISTORY_LENGTH = 10_000


@dataclass
class Person:
    """A customer or tech, as stored on the ticket."""

    id: str
    name: str | None = None
    email: str | None = None
    phone: str | None = None


@dataclass
class RecordEntry:
    """One line of a ticket's record.

    ``sequence`` numbers the entries of one ticket from 1 upwards, so the store
    can insert a batch twice (a retried activity) and keep one copy.
    ``entry_type`` is ``event``, ``rejected``, ``obligation`` or
    ``notification``; ``details`` is the JSON object of that entry.
    """

    sequence: int
    entry_type: str
    at: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecordInput:
    """A batch of new record entries and the ticket's current state."""

    ticket_id: str
    state: str
    priority: str
    source: str
    opened_at: str
    timezone: str
    customer: Person
    tech: Person | None
    included_hours_per_month: float | None
    closed_at: str | None
    close_reason: str | None
    entries: list[RecordEntry] = field(default_factory=list)


@dataclass
class NotificationInput:
    """One mail to send: who gets it, what it is about and what is owed by when.

    ``sequence`` is the notification's index in the ticket; with the ticket id,
    kind and role it makes the mail's stable Message-ID. ``customer_id`` and
    ``tech_id`` let a mail name the customer and the tech when their names are
    unknown; they are None in inputs scheduled before the fields existed.
    """

    ticket_id: str
    sequence: int
    kind: str
    role: str
    recipient: Person | None
    due_at: str
    timezone: str
    priority: str
    customer_name: str | None = None
    tech_name: str | None = None
    customer_id: str | None = None
    tech_id: str | None = None
    owed_kind: str | None = None
    owed_due_at: str | None = None
    hours_used: float | None = None
    hours_included: float | None = None
    month: str | None = None
    reason: str | None = None


@dataclass
class NotificationResult:
    """The outcome of one mail: ``sent``, ``already_sent`` or ``failed``."""

    status: str
    message_id: str
    detail: str | None = None


@dataclass
class HoursInput:
    """Hours a tech logged on a subscription customer's ticket."""

    ticket_id: str
    event_id: str
    customer_id: str
    month: str
    hours: float
    included_hours: float
    logged_at: str
    warning_thresholds: list[float] = field(default_factory=lambda: [0.8, 1.0])


@dataclass
class HoursResult:
    """The customer's hours used in the month and the thresholds newly passed.

    A threshold (0.8, 1.0) is returned once per customer and month, to the
    first ticket whose hours pass it.
    """

    used_hours: float
    crossed_thresholds: list[float] = field(default_factory=list)


@dataclass
class TicketDefaults:
    """The service settings a ticket needs and cannot carry itself.

    ``policy_overrides`` maps Policy durations to strings such as ``"6h"``.
    ``search_attributes`` turns on the upserts of the ticket's search
    attributes. It defaults to False because tickets started before the field
    existed must replay without the upserts their history lacks.

    ``max_history_length`` is the history length, in events, at which the
    ticket continues as new, or earlier when the server suggests it. None
    turns continue-as-new off. It is the default for the same reason: a ticket
    started before the field existed must replay without the continuation.

    ``first_record_local`` makes a new ticket store its first record with a
    local activity. It defaults to False, so a ticket started before the field
    existed replays the activity that its history contains.
    """

    timezone: str
    policy_overrides: dict[str, str] = field(default_factory=dict)
    search_attributes: bool = False
    max_history_length: int | None = None
    first_record_local: bool = False


@dataclass
class CarriedTicket:
    """The state that one run of a ticket hands to the next when it continues as new.

    ``ledger`` is ``TicketLedger.to_snapshot()``. ``defaults`` are the ones
    the ticket's first run got, so the whole ticket keeps one policy, zone and
    history limit. ``continued_runs`` counts the runs before the one that gets
    it.
    """

    ledger: dict[str, Any]
    defaults: TicketDefaults
    continued_runs: int = 1
