"""The subject and plain-text body of each notification kind, for its reader.

Mails to techs and ops share one layout: a summary, the facts (ticket,
customer, what is owed and by when) and what to do. Mails to customers are
plain prose and leave out internal terms such as ops, breach or obligation.
Times are shown in the customer's zone, for example
``Tuesday 10 June 2026, 09:00 EDT (America/New_York)``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from workflows.model import NotificationInput

SIGNATURE = "-- \nticket-guard"

# Plain-text mail convention: lines short enough to quote in a reply.
LINE_WIDTH = 72

# The staff mails' wording for each obligation kind.
OWED_TEXT = {
    "claim": "a tech's claim of the ticket",
    "first_contact": "first contact with the customer",
    "check_in": "the check-in mail to the customer",
    "notes": "updated ticket notes after a contact attempt",
    "reply": "a reply to the customer's message",
    "try_other_method": "a contact attempt by a method not tried yet",
    "try_all_methods": "a contact attempt by every method on file",
    "close_unreachable": "closing the ticket as unreachable",
}


class InvalidNotification(ValueError):
    """A notification that no retry can send, such as an unknown kind."""


@dataclass(frozen=True)
class NoticeText:
    """The subject and plain-text body of one notification."""

    subject: str
    body: str


@dataclass(frozen=True)
class StaffText:
    """The parts of a mail to a tech or ops that differ by kind and role.

    ``write_notice`` puts the ticket id in front of the subject and lays out
    the body with the ticket's facts between the summary and what to do.
    """

    subject: str
    summary: str
    what_to_do: str


def write_notice(notification: NotificationInput, default_timezone: str) -> NoticeText:
    """Write the notification's subject and body for its reader.

    ``default_timezone`` applies when the notification names no zone.
    Raises InvalidNotification for an unknown kind or role, a kind that is
    never sent to customers, a malformed time or an unknown time zone.
    """
    facts = Facts.of(notification, default_timezone)

    if notification.role == "customer":
        customer_writer = CUSTOMER_WRITERS.get(notification.kind)
        if customer_writer is None:
            raise InvalidNotification(
                f"notification kind {notification.kind!r} is never sent to customers"
            )
        return customer_writer(facts)

    if notification.role not in ("tech", "ops"):
        raise InvalidNotification(
            f"unknown role {notification.role!r}, expected tech, customer or ops"
        )
    staff_writer = STAFF_WRITERS.get(notification.kind)
    if staff_writer is None:
        if notification.kind in CUSTOMER_WRITERS:
            raise InvalidNotification(
                f"notification kind {notification.kind!r} is only sent to customers"
            )
        raise InvalidNotification(f"unknown notification kind {notification.kind!r}")

    # Every staff subject starts with the ticket id, so mail clients sort and
    # filter the mails of one ticket together.
    text = staff_writer(facts)
    return NoticeText(
        f"[{facts.ticket}] {text.subject}",
        facts.staff_body(text.summary, text.what_to_do),
    )


def format_local_time(moment: datetime, zone: ZoneInfo) -> str:
    """Format a time in full, as in ``Tuesday 10 June 2026, 09:00 EDT
    (America/New_York)``."""
    local = moment.astimezone(zone)
    return f"{local:%A} {local.day} {local:%B %Y, %H:%M %Z} ({zone.key})"


def format_short_local_time(moment: datetime, zone: ZoneInfo) -> str:
    """Format a time for a subject line, as in ``Tue 10 Jun 09:00 EDT``."""
    local = moment.astimezone(zone)
    return f"{local:%a} {local.day} {local:%b %H:%M %Z}"


@dataclass(frozen=True)
class Facts:
    """The facts a notification's text can name, formatted for its reader."""

    notification: NotificationInput
    zone: ZoneInfo
    ticket: str
    # The names and ids as given, on one line, or None when unknown.
    customer_name: str | None
    tech_name: str | None
    customer_id: str | None
    tech_id: str | None
    # The names for the middle and the start of a sentence, with a stand-in
    # when unknown.
    customer: str
    customer_subject: str
    tech: str
    tech_subject: str
    priority: str
    # When the mail was due (the moment its event happened) and when what is
    # owed is due, as aware UTC times and in full local text.
    mail_due_at: datetime
    owed_due_at: datetime | None
    mail_due: str
    owed: str | None
    owed_by: str | None
    owed_by_short: str | None

    @classmethod
    def of(cls, notification: NotificationInput, default_timezone: str) -> Facts:
        """Gather and format the facts. Raises InvalidNotification like write_notice."""
        zone = _zone(notification.timezone or default_timezone)
        mail_due = _parse_time(notification.due_at, "due_at")

        owed_due = owed_by = owed_by_short = None
        if notification.owed_due_at:
            owed_due = _parse_time(notification.owed_due_at, "owed_due_at")
            owed_by = format_local_time(owed_due, zone)
            owed_by_short = format_short_local_time(owed_due, zone)

        owed_kind = notification.owed_kind
        customer_name = _one_line(notification.customer_name)
        tech_name = _one_line(notification.tech_name)
        tech_id = _one_line(notification.tech_id)
        # Without a name, a sentence names the tech by id.
        tech = tech_name or (f"tech {tech_id}" if tech_id else "the tech")
        return cls(
            notification=notification,
            zone=zone,
            ticket=notification.ticket_id,
            customer_name=customer_name,
            tech_name=tech_name,
            customer_id=_one_line(notification.customer_id),
            tech_id=tech_id,
            customer=customer_name or "the customer",
            customer_subject=customer_name or "The customer",
            tech=tech,
            tech_subject=tech[0].upper() + tech[1:],
            priority=notification.priority,
            mail_due_at=mail_due,
            owed_due_at=owed_due,
            mail_due=format_local_time(mail_due, zone),
            owed=OWED_TEXT.get(owed_kind, owed_kind) if owed_kind else None,
            owed_by=owed_by,
            owed_by_short=owed_by_short,
        )

    @property
    def to_ops(self) -> bool:
        return self.notification.role == "ops"

    def due_suffix(self) -> str:
        """Return " by <short time>" for a subject, or "" when nothing is due."""
        return f" by {self.owed_by_short}" if self.owed_by_short else ""

    def staff_body(self, summary: str, what_to_do: str) -> str:
        """Lay out a mail to a tech or ops: summary, facts, then the action."""
        lines = [
            textwrap.fill(summary, LINE_WIDTH),
            "",
            f"Ticket:     {self.ticket} ({self.priority} priority)",
        ]
        customer = _name_and_id(self.customer_name, self.customer_id)
        if customer:
            lines.append(f"Customer:   {customer}")
        tech = _name_and_id(self.tech_name, self.tech_id)
        if tech:
            lines.append(f"Tech:       {tech}")
        if self.owed:
            lines.append(f"Owed:       {self.owed}")
        if self.owed_by:
            lines.append(f"Due by:     {self.owed_by}")
        if self.notification.reason:
            lines.append(f"Reason:     {self.notification.reason}")
        action = textwrap.fill(f"What to do: {what_to_do}", LINE_WIDTH)
        lines += ["", action, "", SIGNATURE, ""]
        return "\n".join(lines)

    def customer_body(self, *paragraphs: str) -> str:
        """Lay out a mail to the customer: greeting, paragraphs, sign-off."""
        greeting = f"Hello {self.customer_name}," if self.customer_name else "Hello,"
        wrapped = [textwrap.fill(paragraph, LINE_WIDTH) for paragraph in paragraphs]
        sign_off = "Thank you,\nYour support team"
        return "\n\n".join([greeting, *wrapped, sign_off]) + "\n"


def _name_and_id(name: str | None, person_id: str | None) -> str | None:
    # "Kim Park (K-4)", or whichever of the two is known.
    if name and person_id:
        return f"{name} ({person_id})"
    return name or person_id


def _one_line(text: str | None) -> str | None:
    # Names reach the subject line, where a line break is invalid.
    joined = " ".join((text or "").split())
    return joined or None


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidNotification(f"unknown time zone {name!r}") from error


def _parse_time(value: str, field_name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError) as error:
        raise InvalidNotification(
            f"{field_name} {value!r} is not an ISO 8601 time"
        ) from error
    if parsed.utcoffset() is None:
        raise InvalidNotification(f"{field_name} {value!r} has no UTC offset")
    return parsed.astimezone(UTC)


# Mails to techs and ops


def _assigned(facts: Facts) -> StaffText:
    if facts.to_ops:
        return StaffText(
            f"Assigned to {facts.tech}",
            f"Ticket {facts.ticket} is now assigned to {facts.tech}.",
            "nothing, unless the tech misses the first contact.",
        )
    # The mail names the first-contact due time only when it was given.
    when = "before the due time" if facts.owed_by else "as soon as you can"
    return StaffText(
        "Ticket assigned to you",
        f"Ticket {facts.ticket} for {facts.customer} is now assigned to you.",
        f"call or email the customer {when} and log the attempt on the "
        "ticket. Leaving a message counts as contact.",
    )


def _first_contact_reminder(facts: Facts) -> StaffText:
    return StaffText(
        f"First contact due{facts.due_suffix()}",
        f"First contact with {facts.customer} on ticket {facts.ticket} is due "
        "soon, and no contact attempt is logged yet.",
        "call or email the customer before the due time and log the attempt. "
        "Leaving a message counts as contact.",
    )


def _first_contact_breach(facts: Facts) -> StaffText:
    if facts.to_ops:
        return StaffText(
            "First contact missed",
            f"{facts.tech_subject} has not logged first contact with {facts.customer} "
            f"on ticket {facts.ticket}, and it is past due.",
            "check with the tech, or reassign the ticket.",
        )
    return StaffText(
        "First contact is overdue",
        f"First contact with {facts.customer} on ticket {facts.ticket} is past "
        "due, and no contact attempt is logged.",
        "call or email the customer now and log the attempt.",
    )


def _notes_reminder(facts: Facts) -> StaffText:
    return StaffText(
        f"Ticket notes due{facts.due_suffix()}",
        f"The notes for the contact with {facts.customer} on ticket "
        f"{facts.ticket} are due soon.",
        "update the ticket notes before the due time, even if nobody reached "
        "the customer.",
    )


def _notes_breach(facts: Facts) -> StaffText:
    if facts.to_ops:
        return StaffText(
            "Ticket notes missed",
            f"The notes on ticket {facts.ticket} were not updated after a "
            f"contact with {facts.customer}, and they are past due.",
            "ask the tech to update the notes.",
        )
    return StaffText(
        "Ticket notes are overdue",
        f"The notes for your contact with {facts.customer} on ticket "
        f"{facts.ticket} are past due.",
        "update the ticket notes now.",
    )


def _reply_reminder(facts: Facts) -> StaffText:
    if facts.to_ops:
        return StaffText(
            f"Customer needs a reply{facts.due_suffix()}",
            f"{facts.customer_subject} sent a message on ticket {facts.ticket}, "
            "which has no tech, and nobody has replied yet.",
            "reply to the customer, or assign a tech who can.",
        )
    return StaffText(
        f"Reply to the customer due{facts.due_suffix()}",
        f"{facts.customer_subject} sent a message on ticket {facts.ticket} and is "
        "waiting for your reply.",
        "call or email the customer before the due time and log the attempt.",
    )


def _reply_breach(facts: Facts) -> StaffText:
    if facts.to_ops:
        return StaffText(
            "Customer reply missed",
            f"Nobody has replied to the message {facts.customer} sent on "
            f"ticket {facts.ticket}, and the reply is past due.",
            "check with the tech, or reassign the ticket.",
        )
    return StaffText(
        "Reply to the customer is overdue",
        f"{facts.customer_subject} is still waiting for a reply on ticket "
        f"{facts.ticket}, and it is past due.",
        "call or email the customer now and log the attempt.",
    )


def _try_other_method(facts: Facts) -> StaffText:
    return StaffText(
        "Try another way to reach the customer",
        f"{facts.customer_subject} has not responded on ticket {facts.ticket} since "
        "the last contact attempt.",
        "contact the customer by a method not tried yet, for example phone "
        "instead of email, before the due time, and log the attempt.",
    )


def _try_all_methods(facts: Facts) -> StaffText:
    return StaffText(
        "Try every way to reach the customer",
        f"{facts.customer_subject} still has not responded on ticket {facts.ticket}.",
        "try every contact method on file for the customer once more before "
        "the due time, and log each attempt. If the customer does not "
        "answer, the ticket closes as unreachable.",
    )


def _ladder_incomplete(facts: Facts) -> StaffText:
    return StaffText(
        "Unreachable-customer steps not done",
        f"A step for reaching {facts.customer} on ticket {facts.ticket} is "
        "past due and not done, so the ticket stays open.",
        "ask the tech to make the missing contact attempts, or close the ticket.",
    )


def _closed_unreachable(facts: Facts) -> StaffText:
    return StaffText(
        "Closed: customer unreachable",
        f"Ticket {facts.ticket} was closed as unreachable on {facts.mail_due}, "
        f"because {facts.customer} did not respond to repeated contact attempts.",
        "nothing. If the customer gets in touch later, open a new ticket.",
    )


def _unclaimed_breach(facts: Facts) -> StaffText:
    return StaffText(
        "Ticket not claimed",
        f"No tech has claimed ticket {facts.ticket} for {facts.customer}, and "
        "the claim is past due.",
        "assign a tech, or ask one to claim the ticket.",
    )


def _released(facts: Facts) -> StaffText:
    return StaffText(
        "Ticket released, needs a tech",
        f"Ticket {facts.ticket} for {facts.customer} was released on "
        f"{facts.mail_due} and has no tech now.",
        "find a tech to claim the ticket.",
    )


def _hours_warning(facts: Facts) -> StaffText:
    notification = facts.notification
    used = notification.hours_used or 0.0
    included = notification.hours_included
    if included:
        usage = f"{used:g} of {included:g} included hours ({used / included:.0%})"
    else:
        usage = f"{used:g} included hours"

    month = _month_name(notification.month)
    summary = (
        f"{facts.customer_subject} has used {usage} for {month or 'this month'}, "
        f"counting ticket {facts.ticket}."
    )
    if month:
        summary += f" The hours count until the end of {month} ({facts.zone.key})."

    if facts.to_ops:
        action = "check with the customer how further work this month is handled."
    else:
        action = (
            "tell the customer how many included hours are left before you do "
            "more work this month."
        )
    if facts.customer_name:
        subject = f"{facts.customer_name}: {usage} used"
    else:
        subject = f"Customer used {usage}"
    return StaffText(subject, summary, action)


def _month_name(month: str | None) -> str | None:
    # "2026-06" becomes "June 2026"; anything else is left out of the text.
    if not month:
        return None
    try:
        first_day = datetime.strptime(month, "%Y-%m")
    except ValueError:
        return None
    return f"{first_day:%B %Y}"


# Mails to customers


def _customer_check_in(facts: Facts) -> NoticeText:
    tech = facts.tech_name or "your technician"
    # The same name, to start a sentence.
    tech_subject = facts.tech_name or "Your technician"
    if facts.owed_due_at is None:
        expected = f"{tech_subject} should have been in touch with you by now."
    elif facts.owed_due_at <= facts.mail_due_at:
        expected = f"{tech_subject} was due to contact you by {facts.owed_by}."
    else:
        # A reassigned ticket: the new tech's first contact is still ahead.
        expected = f"{tech_subject} is due to contact you by {facts.owed_by}."
    return NoticeText(
        f"Ticket {facts.ticket}: has your technician been in touch?",
        facts.customer_body(
            f"Your support ticket {facts.ticket} has been taken on by {tech}. "
            + expected,
            "We want to make sure you have heard from them. If nobody has "
            "contacted you yet, please let us know through the support portal "
            f"and mention ticket {facts.ticket}, and we will follow up right away.",
            "If you have already spoken with your technician, you do not need to "
            "do anything.",
        ),
    )


def _customer_closed_unreachable(facts: Facts) -> NoticeText:
    return NoticeText(
        f"Your support ticket {facts.ticket} is closed",
        facts.customer_body(
            "We tried several times to reach you about your support ticket "
            f"{facts.ticket} but did not hear back, so we closed the ticket on "
            f"{facts.mail_due}.",
            "If you still need help, please open a new request through the "
            f"support portal and mention ticket {facts.ticket}.",
        ),
    )


STAFF_WRITERS: dict[str, Callable[[Facts], StaffText]] = {
    "assigned": _assigned,
    "first_contact_reminder": _first_contact_reminder,
    "first_contact_breach": _first_contact_breach,
    "notes_reminder": _notes_reminder,
    "notes_breach": _notes_breach,
    "reply_reminder": _reply_reminder,
    "reply_breach": _reply_breach,
    "try_other_method": _try_other_method,
    "try_all_methods": _try_all_methods,
    "ladder_incomplete": _ladder_incomplete,
    "closed_unreachable": _closed_unreachable,
    "unclaimed_breach": _unclaimed_breach,
    "released": _released,
    "hours_warning": _hours_warning,
}

CUSTOMER_WRITERS: dict[str, Callable[[Facts], NoticeText]] = {
    "check_in": _customer_check_in,
    "closed_unreachable": _customer_closed_unreachable,
}
