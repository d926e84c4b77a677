"""Write a year of generated ticket records into a database, for the reports.

Usage, from the project root::

    python -m scripts.generate_records [--tickets 20000] [--techs 50]
        [--database-url URL] [--seed 7] [--start 2025-01-01] [--days 365]

Each ticket runs through the real ledger (``workflows.ledger.TicketLedger``)
with generated portal events, and ``TicketPlayer`` stores what the ledger
produces the way the ticket workflow's activities do: the record through
``Store.record``, hours through ``Store.log_hours`` and every mail as sent
through ``Store.record_mail``. So the rows have the shape of real ones:
obligations met and breached, unreachable ladders, hours warnings.

The same seed and options write the same records. Without ``--database-url``
the records go to a SQLite file in a new temporary folder, which is kept and
printed at the end. The database must hold no tickets yet.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import event, func
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session, select

from activities.mailer import message_id_for
from activities.store import Store, Ticket
from workflows.events import parse_event, parse_opening
from workflows.ledger import TicketLedger
from workflows.model import NotificationInput, NotificationResult
from workflows.policy import DEFAULT_POLICY, Policy, first_contact_clock_start

# The mail domain of the generated Message-IDs and the ops address, as the
# default settings have them.
MAIL_DOMAIN = "ticket-guard.localhost"
OPS_ADDRESS = "ops@ticket-guard.localhost"
# Zones of the generated customers, with their weights.
CUSTOMER_ZONES = (
    ("America/New_York", 8),
    ("America/Chicago", 4),
    ("America/Denver", 2),
    ("America/Los_Angeles", 4),
    ("Europe/London", 1),
    ("Europe/Berlin", 1),
)
INCLUDED_HOURS = (5.0, 10.0, 20.0, 40.0)
# Customers per ticket, and the share of them with a subscription.
CUSTOMERS_PER_TICKET = 0.1
SUBSCRIPTION_SHARE = 0.15
# How many times more tickets a subscription customer opens than another.
SUBSCRIPTION_TICKET_WEIGHT = 3
PROGRESS_EVERY = 1000


@dataclass(frozen=True)
class ScriptedEvent:
    """A portal event to send at ``at``: its signal and payload fields.

    The player adds ``event_id`` and ``occurred_at`` (``at``) to the fields.
    """

    at: datetime
    signal: str
    fields: dict[str, Any] = field(default_factory=dict)


class TicketPlayer:
    """Runs one ticket's ledger through scripted events and stores its output.

    Does what the ticket workflow does on each wake-up, with the events
    arriving at their own time: apply the events due, settle the deadlines
    due, log hours and apply the thresholds passed, send the pending mail
    and store the record. Mail is never sent: each one is recorded as sent
    at the moment it fell due, as a mail server that accepts everything would
    have it.
    """

    def __init__(
        self,
        store: Store,
        opening: dict[str, Any],
        events: Iterable[ScriptedEvent],
        *,
        default_timezone: str = "America/New_York",
        policy: Policy = DEFAULT_POLICY,
        flush_every_step: bool = True,
    ) -> None:
        parsed = parse_opening(opening)
        self.store = store
        self.ledger = TicketLedger(parsed, parsed.timezone or default_timezone, policy)
        # As in the workflow, a reminder settled after its due time is skipped.
        self.ledger.skip_late_reminders = True
        self.flush_every_step = flush_every_step
        self.events = deque(sorted(events, key=lambda scripted: scripted.at))
        # Events rejected by the ledger, and events left after the ticket closed.
        self.rejected = 0
        self.dropped = 0
        self._event_count = 0

    @property
    def ticket_id(self) -> str:
        return self.ledger.ticket_id

    @property
    def opened_at(self) -> datetime:
        return self.ledger.opening.opened_at

    @property
    def event_count(self) -> int:
        """Return how many events were sent to the ledger so far."""
        return self._event_count

    def next_time(self) -> datetime | None:
        """Return when the ticket next has work, or None when it has none left."""
        if self.ledger.state == "closed":
            self.dropped += len(self.events)
            self.events.clear()
            return None
        upcoming = self.ledger.next_due()
        times = [upcoming[0]] if upcoming is not None else []
        if self.events:
            times.append(self.events[0].at)
        return min(times, default=None)

    def step(self) -> datetime | None:
        """Do the work of the next moment that has some; return that moment."""
        now = self.next_time()
        if now is None:
            return None

        while self.events and self.events[0].at <= now:
            scripted = self.events.popleft()
            if self.ledger.state == "closed":
                self.dropped += 1
                continue
            self._event_count += 1
            payload = {
                "event_id": f"{self.ticket_id}-e{self._event_count}",
                "occurred_at": scripted.at.isoformat(),
                **scripted.fields,
            }
            rejection = self.ledger.receive(
                parse_event(scripted.signal, payload), scripted.at
            )
            if rejection is not None:
                self.rejected += 1

        self.ledger.advance(now)
        self._deliver(now)
        if self.flush_every_step:
            self.flush()
        return now

    def play(self) -> None:
        """Run every step until the ticket has no work left, then store the record."""
        while self.step() is not None:
            pass
        self.flush()

    def flush(self) -> None:
        """Store the record entries not stored yet, with the ticket's state."""
        record = self.ledger.take_record()
        if record is not None:
            self.store.record(record)

    def _deliver(self, now: datetime) -> None:
        for request in self.ledger.take_hours_requests():
            result = self.store.log_hours(request)
            # The warning is due when the hours were logged, as in the workflow.
            self.ledger.apply_hours_result(
                request,
                result.used_hours,
                result.crossed_thresholds,
                datetime.fromisoformat(request.logged_at),
            )

        for notification in self.ledger.pending_notifications():
            message_id = message_id_for(notification, MAIL_DOMAIN)
            self.store.record_mail(
                message_id=message_id,
                ticket_id=notification.ticket_id,
                kind=notification.kind,
                role=notification.role,
                recipient=_recipient_address(notification),
                status="sent",
                at=now,
            )
            self.ledger.mark_delivered(
                notification.sequence, NotificationResult("sent", message_id), now
            )


def _recipient_address(notification: NotificationInput) -> str | None:
    if notification.role == "ops":
        return OPS_ADDRESS
    if notification.recipient is None:
        return None
    return notification.recipient.email


def play_side_by_side(
    players: Iterable[TicketPlayer],
    *,
    finished: Callable[[TicketPlayer], None] | None = None,
) -> None:
    """Run the players' tickets side by side, earliest moment first, to their ends.

    ``players`` must come in order of opening time. Each is taken from the
    iterable only when its opening is due, so a generator of players keeps
    just the running tickets in memory. A ticket's record is stored when it
    has no work left, and then ``finished`` gets its player.

    Side by side, each customer's monthly hours add up in the order they
    were logged, so an hours warning goes to the ticket that passed its
    threshold.
    """
    # The next moment of each running ticket; the counter breaks ties in a
    # repeatable order.
    running: list[tuple[datetime, int, TicketPlayer]] = []
    order = itertools.count()
    upcoming = iter(players)
    opening = next(upcoming, None)

    def go_on(player: TicketPlayer) -> None:
        moment = player.next_time()
        if moment is not None:
            heapq.heappush(running, (moment, next(order), player))
            return
        player.flush()
        if finished is not None:
            finished(player)

    while opening is not None or running:
        if opening is not None and (not running or opening.opened_at <= running[0][0]):
            go_on(opening)
            opening = next(upcoming, None)
            continue
        _moment, _number, player = heapq.heappop(running)
        player.step()
        go_on(player)


# The generated company


@dataclass(frozen=True)
class GeneratedTech:
    """A tech and how often they keep each kind of deadline (0 to 1)."""

    id: str
    name: str
    email: str
    workload: float
    first_contact_on_time: float
    notes_on_time: float
    reply_on_time: float
    ladder_on_time: float

    def person(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "email": self.email}


@dataclass(frozen=True)
class GeneratedCustomer:
    id: str
    name: str
    email: str
    phone: str | None
    timezone: str
    included_hours_per_month: float | None

    def opening_fields(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "phone": self.phone,
            "timezone": self.timezone,
            "included_hours_per_month": self.included_hours_per_month,
        }


def generate_techs(rng: random.Random, count: int) -> list[GeneratedTech]:
    techs = []
    for number in range(1, count + 1):
        # About one tech in eight misses first contact often.
        careless = rng.random() < 0.125
        techs.append(
            GeneratedTech(
                id=f"K-{number:02d}",
                name=f"Tech {number}",
                email=f"tech{number}@techs.example",
                workload=rng.uniform(0.5, 1.5),
                first_contact_on_time=rng.uniform(0.45, 0.7)
                if careless
                else rng.uniform(0.8, 0.99),
                notes_on_time=rng.uniform(0.75, 0.99),
                reply_on_time=rng.uniform(0.7, 0.99),
                ladder_on_time=rng.uniform(0.7, 0.95),
            )
        )
    return techs


def generate_customers(rng: random.Random, count: int) -> list[GeneratedCustomer]:
    zones = [zone for zone, _weight in CUSTOMER_ZONES]
    weights = [weight for _zone, weight in CUSTOMER_ZONES]
    customers = []
    for number in range(1, count + 1):
        subscribed = rng.random() < SUBSCRIPTION_SHARE
        customers.append(
            GeneratedCustomer(
                id=f"C-{number:04d}",
                name=f"Customer {number}",
                email=f"customer{number}@customers.example",
                # One customer in ten has no phone on file.
                phone=f"+1 555 {number:07d}" if rng.random() < 0.9 else None,
                timezone=rng.choices(zones, weights)[0],
                included_hours_per_month=rng.choice(INCLUDED_HOURS)
                if subscribed
                else None,
            )
        )
    return customers


def opening_time(
    rng: random.Random, start: date, days: int, zone: ZoneInfo
) -> datetime:
    """Pick when a ticket opens: mostly on weekdays in local office hours."""
    while True:
        day = start + timedelta(days=rng.randrange(days))
        # Weekend days get a third of a weekday's tickets.
        if day.weekday() < 5 or rng.random() < 0.33:
            break
    hour = rng.uniform(8, 18) if rng.random() < 0.75 else rng.uniform(0, 24)
    local = datetime(day.year, day.month, day.day, tzinfo=zone) + timedelta(hours=hour)
    return local.astimezone(UTC).replace(microsecond=0)


# The events of one ticket


def minutes(rng: random.Random, low: float, high: float) -> timedelta:
    """Return a random whole number of minutes between ``low`` and ``high``."""
    return timedelta(minutes=round(rng.uniform(low, high)))


def hours(rng: random.Random, low: float, high: float) -> timedelta:
    return minutes(rng, low * 60, high * 60)


class TicketScript:
    """The generated opening and portal events of one ticket.

    ``write`` adds every event, one part of the ticket's life per method.
    Whether a tech keeps a deadline is drawn from the tech's rates, so late
    claims, first contacts, notes and replies and slow ladder steps occur in
    realistic shares.
    """

    def __init__(
        self,
        rng: random.Random,
        ticket_id: str,
        opened_at: datetime,
        customer: GeneratedCustomer,
        pick_tech: Callable[[], GeneratedTech],
    ) -> None:
        self.rng = rng
        self.customer = customer
        self.zone = ZoneInfo(customer.timezone)
        self.pick_tech = pick_tech
        self.priority = rng.choices(("normal", "high", "emergency"), (80, 15, 5))[0]
        self.opening: dict[str, Any] = {
            "ticket_id": ticket_id,
            "opened_at": opened_at.isoformat(),
            "priority": self.priority,
            "source": "portal",
            "customer": customer.opening_fields(),
        }
        self.opened_at = opened_at
        self.events: list[ScriptedEvent] = []

    def add(self, at: datetime, signal: str, **fields: Any) -> None:
        self.events.append(ScriptedEvent(at, signal, fields))

    def write(self) -> None:
        """Add the ticket's events: the claim, the first contact and what follows."""
        rng = self.rng
        tech = self.pick_tech()
        if rng.random() < 0.08:
            # The customer came to the tech directly: that was the first contact.
            self.opening["source"] = "tech_created"
            self.opening["tech"] = tech.person()
            self.notes_after(tech, self.opened_at)
            end = self.work(tech, self.opened_at)
            self.close(end, "resolved")
            return

        late_claim = rng.random() < 0.07
        claimed_at = self.opened_at + (
            hours(rng, 8.2, 20) if late_claim else minutes(rng, 5, 7 * 60)
        )
        self.add(claimed_at, "claim", tech=tech.person())
        if rng.random() < 0.02:
            # Handed back before any contact, then claimed by someone else.
            released_at = claimed_at + minutes(rng, 5, 40)
            self.add(released_at, "release", reason="not my area")
            tech = self.other_tech(tech)
            claimed_at = released_at + minutes(rng, 10, 5 * 60)
            self.add(claimed_at, "claim", tech=tech.person())

        if rng.random() < 0.02:
            # No contact attempt at all: the ticket turns out a duplicate.
            self.close(claimed_at + hours(rng, 2, 30), "duplicate")
            return
        contact_at = self.first_contact(tech, claimed_at)
        outcome = (
            "reached"
            if rng.random() < 0.78
            else rng.choice(("no_answer", "message_left"))
        )
        channel = rng.choice(("phone", "phone", "email"))
        self.add(contact_at, "contact_attempt", channel=channel, outcome=outcome)
        self.notes_after(tech, contact_at)
        if outcome == "reached":
            self.close(self.work(tech, contact_at), "resolved")
        else:
            self.ladder(tech, contact_at, channel)

    def other_tech(self, tech: GeneratedTech) -> GeneratedTech:
        while True:
            other = self.pick_tech()
            if other.id != tech.id:
                return other

    def first_contact(self, tech: GeneratedTech, claimed_at: datetime) -> datetime:
        """Return when the tech first reaches out after a claim."""
        start = first_contact_clock_start(claimed_at, self.priority, self.zone)
        due = start + DEFAULT_POLICY.first_contact_within
        if self.rng.random() < tech.first_contact_on_time:
            return start + minutes(self.rng, 1, 59)
        return due + minutes(self.rng, 5, 6 * 60)

    def notes_after(self, tech: GeneratedTech, at: datetime) -> None:
        if self.rng.random() < tech.notes_on_time:
            self.add(at + minutes(self.rng, 5, 11 * 60 + 50), "notes_updated")
        else:
            self.add(at + hours(self.rng, 12.2, 26), "notes_updated")

    def work(self, tech: GeneratedTech, reached_at: datetime) -> datetime:
        """Add the work after the customer was reached; return its last moment."""
        rng = self.rng
        now = reached_at
        if rng.random() < 0.04:
            # Reassigned: the new tech owes a first contact of their own.
            reassigned_at = now + hours(rng, 1, 10)
            tech = self.other_tech(tech)
            self.add(reassigned_at, "reassign", tech=tech.person(), reason="workload")
            now = self.first_contact(tech, reassigned_at)
            self.add(now, "contact_attempt", channel="phone", outcome="reached")
            self.notes_after(tech, now)

        subscribed = self.customer.included_hours_per_month is not None
        for _message in range(rng.choice((0, 0, 1, 1, 2))):
            message_at = now + hours(rng, 2, 40)
            self.add(message_at, "customer_message", channel="email")
            if subscribed:
                # A subscription customer's message is a contact that needs notes.
                self.notes_after(tech, message_at)
            if rng.random() < tech.reply_on_time:
                now = message_at + minutes(rng, 20, 22 * 60)
            else:
                now = message_at + hours(rng, 24.5, 44)
            self.add(now, "contact_attempt", channel="phone", outcome="reached")
            self.notes_after(tech, now)

        if subscribed:
            for _logged in range(rng.randint(1, 3)):
                now += hours(rng, 0.5, 30)
                worked = round(rng.uniform(0.25, 4.0) * 4) / 4
                self.add(now, "time_logged", hours=worked)
        return now

    def ladder(self, tech: GeneratedTech, attempted_at: datetime, channel: str) -> None:
        """Add what follows a first attempt that did not reach the customer."""
        rng = self.rng
        other_channel = "email" if channel == "phone" else "phone"
        path = rng.random()
        if path < 0.45:
            reached_at = attempted_at + hours(rng, 2, 20)
            self.add(
                reached_at, "contact_attempt", channel=other_channel, outcome="reached"
            )
            self.notes_after(tech, reached_at)
            self.close(self.work(tech, reached_at), "resolved")
            return
        if path < 0.55:
            message_at = attempted_at + hours(rng, 1, 30)
            self.add(message_at, "customer_message", channel="phone")
            replied_at = message_at + minutes(rng, 20, 20 * 60)
            self.add(replied_at, "contact_attempt", channel="phone", outcome="reached")
            self.notes_after(tech, replied_at)
            self.close(self.work(tech, replied_at), "resolved")
            return
        if path < 0.65:
            closed_at = attempted_at + hours(rng, 24, 60)
            self.add(closed_at, "close", reason="unreachable")
            return

        # The whole ladder: another method, then every method; the ledger
        # closes the ticket as unreachable a day after the last step.
        step = DEFAULT_POLICY.ladder_step
        if rng.random() < tech.ladder_on_time:
            other_at = attempted_at + hours(rng, 2, 23)
        else:
            other_at = attempted_at + 2 * step + hours(rng, 1, 20)
        self.add(
            other_at, "contact_attempt", channel=other_channel, outcome="no_answer"
        )
        self.notes_after(tech, other_at)
        prompted_at = max(attempted_at + 2 * step, other_at + step)
        if rng.random() < tech.ladder_on_time:
            every_at = prompted_at + hours(rng, 0.2, 20)
        else:
            every_at = prompted_at + step + hours(rng, 1, 20)
        self.add(every_at, "contact_attempt", channel="phone", outcome="no_answer")
        last_at = every_at + minutes(rng, 2, 30)
        self.add(last_at, "contact_attempt", channel="email", outcome="no_answer")
        self.notes_after(tech, last_at)

    def close(self, after: datetime, reason: str) -> None:
        last = max([after, *(scripted.at for scripted in self.events)])
        self.add(last + hours(self.rng, 1, 36), "close", reason=reason)


# Writing the records


@dataclass
class Generation:
    """Counts of one run, for its closing lines."""

    tickets: int = 0
    finished: int = 0
    # Events sent to the ledger; the dropped ones came after the ticket closed.
    events: int = 0
    rejected: int = 0
    dropped: int = 0


def generate(
    store: Store,
    *,
    tickets: int,
    techs: int,
    seed: int,
    start: date,
    days: int,
    progress: Callable[[str], None] | None = None,
) -> Generation:
    """Play ``tickets`` generated tickets, opening over ``days`` days, into ``store``.

    The tickets run side by side in time order (``play_side_by_side``), and
    ``progress`` gets a line every PROGRESS_EVERY tickets stored.
    """
    rng = random.Random(seed)
    staff = generate_techs(rng, techs)
    customers = generate_customers(rng, max(int(tickets * CUSTOMERS_PER_TICKET), 1))
    customer_weights = [
        SUBSCRIPTION_TICKET_WEIGHT if customer.included_hours_per_month else 1
        for customer in customers
    ]
    tech_weights = [tech.workload for tech in staff]

    def pick_tech() -> GeneratedTech:
        return rng.choices(staff, tech_weights)[0]

    scripts = []
    for number in range(1, tickets + 1):
        customer = rng.choices(customers, customer_weights)[0]
        opened_at = opening_time(rng, start, days, ZoneInfo(customer.timezone))
        script = TicketScript(rng, f"T-{number:05d}", opened_at, customer, pick_tech)
        script.write()
        scripts.append(script)
    scripts.sort(key=lambda script: script.opened_at)

    done = Generation(tickets=len(scripts))
    began = time.monotonic()

    def count_finished(player: TicketPlayer) -> None:
        done.finished += 1
        done.events += player.event_count
        done.rejected += player.rejected
        done.dropped += player.dropped
        if progress is not None and done.finished % PROGRESS_EVERY == 0:
            progress(
                f"{done.finished} of {tickets} tickets stored "
                f"({time.monotonic() - began:.0f} s)"
            )

    # One record batch per ticket instead of one per step: the stored rows
    # are the same, and building the upserts is most of the time.
    players = (
        TicketPlayer(store, script.opening, script.events, flush_every_step=False)
        for script in scripts
    )
    play_side_by_side(players, finished=count_finished)
    return done


def count_tickets(store: Store) -> int:
    with Session(store.engine) as session:
        return session.exec(select(func.count()).select_from(Ticket)).one()


def speed_up_sqlite(store: Store) -> None:
    """Let SQLite skip waiting for the disk on each commit.

    A crash can then lose the newest rows, which a generated database can
    afford; it makes the many small transactions of ``generate`` several
    times faster. Call it before the store's first connection.
    """
    if store.engine.dialect.name != "sqlite":
        return

    def configure(connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.close()

    event.listen(store.engine, "connect", configure)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.generate_records",
        description=(
            "Write generated ticket records into a database by running each "
            "ticket through the real ledger and store."
        ),
    )
    parser.add_argument(
        "--tickets",
        type=int,
        default=20_000,
        help="tickets to generate (default %(default)s)",
    )
    parser.add_argument(
        "--techs",
        type=int,
        default=50,
        help="techs who claim them (default %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=7,
        help="random seed; the same seed writes the same records (default %(default)s)",
    )
    parser.add_argument(
        "--start",
        type=date.fromisoformat,
        default=date(2025, 1, 1),
        help="first day tickets open on, YYYY-MM-DD (default %(default)s)",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=365,
        help="days over which tickets open (default %(default)s)",
    )
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL of an empty database, such as "
        "postgresql+psycopg://user@host/db (default: a SQLite file in a new "
        "temporary folder)",
    )
    args = parser.parse_args(argv)
    for name in ("tickets", "techs", "days"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be 1 or more, not {getattr(args, name)}")
    if args.techs < 2:
        parser.error("--techs must be 2 or more, because reassignments need two")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    database_url = args.database_url
    if database_url is None:
        folder = Path(tempfile.mkdtemp(prefix="ticket-guard-records-"))
        database_url = f"sqlite:///{folder / 'records.db'}"

    store = Store(database_url)
    speed_up_sqlite(store)
    try:
        store.create_tables()
        existing = count_tickets(store)
        if existing:
            print(
                f"error: the database already holds {existing} tickets; "
                "give an empty database with --database-url",
                file=sys.stderr,
            )
            return 1

        print(f"Writing {args.tickets} tickets of {args.techs} techs to {database_url}")
        began = time.monotonic()
        done = generate(
            store,
            tickets=args.tickets,
            techs=args.techs,
            seed=args.seed,
            start=args.start,
            days=args.days,
            progress=lambda line: print(line, flush=True),
        )
    finally:
        store.dispose()

    print(
        f"Stored {done.tickets} tickets and {done.events} events in "
        f"{time.monotonic() - began:.0f} s; {done.rejected} events were "
        f"rejected and {done.dropped} came after their ticket closed."
    )
    print(f"DATABASE_URL={database_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
