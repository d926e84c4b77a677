"""Texts the Temporal web UI and CLI show for a ticket, in Temporal markdown.

``ticket_summary`` builds the static summary and details that the caller
starting a ticket passes to ``start_workflow``. ``current_details`` renders the
ledger for ``workflow.set_current_details``, and ``timer_summary`` labels the
workflow's timer. Like the search attributes, the texts carry ids, not the
customer's name, mail address or phone.

The web UI renders these texts as Markdown and passes raw HTML through, so
every id and other free text goes through ``escape_markdown``. Values from a
fixed set (priority, state, source, channels, obligation kinds, time zone
names, which must name a zone of the tz database) and the times formatted
here are written as they are.

NOTE: the SDK defines timer summaries as single-line Temporal markdown, so
they are escaped too, but web UI 2.54 shows them as plain text: an id with
one of the special characters shows its backslashes in the Timeline there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from workflows.events import parse_opening
from workflows.ledger import Ladder, Obligation, TicketLedger

TIME_FORMAT = "%a %Y-%m-%d %H:%M %Z"

# The characters that start Markdown or HTML markup inside a line. They open
# escapes, code spans, emphasis, strikethrough, links, images, HTML tags,
# autolinks, entities and table cells, bare URLs by the colon of "http://" or
# "mailto:", and the inline math of the UI's renderer. CommonMark and
# gomarkdown, the renderer of the Temporal web UI, both read a backslash
# before each of them as the literal character.
MARKDOWN_SPECIAL = frozenset("\\`*_~[]<>&|:$")

# The web UI (2.54) draws tables without cell padding, so each cell but the
# last ends in an em space, which Markdown keeps, to keep the columns apart.
COLUMN_GAP = "\u2003"


def escape_markdown(text: str) -> str:
    """Return ``text`` as Markdown that renders as exactly this text on one line.

    Line breaks and runs of whitespace become one space, because a line break
    would end a table row or list item and could start a new block.
    """
    one_line = " ".join(text.split())
    return "".join(
        f"\\{character}" if character in MARKDOWN_SPECIAL else character
        for character in one_line
    )


def ticket_summary(opening: Any) -> tuple[str, str]:
    """Return the ``(static_summary, static_details)`` for a ticket's workflow.

    ``opening`` is the workflow input, the JSON object of the ticket opening.
    Pass the result to ``start_workflow(..., static_summary=...,
    static_details=...)``, or to the start operation of update-with-start.

    Raises:
        InvalidEvent: the opening is invalid; the workflow would fail with the
            same reason as an ``InvalidTicketInput`` error.
    """
    parsed = parse_opening(opening)
    zone = ZoneInfo(parsed.timezone) if parsed.timezone is not None else None
    opened = _format_time(parsed.opened_at, zone)
    ticket_id = escape_markdown(parsed.ticket_id)
    summary = f"Ticket {ticket_id}: {parsed.priority}, opened {opened}"

    lines = [
        f"**Ticket {ticket_id}**",
        "",
        f"- priority: {parsed.priority}",
        f"- source: {parsed.source}",
        f"- opened: {opened} ({parsed.opened_at.isoformat()})",
        f"- customer: {escape_markdown(parsed.customer.id)}",
        f"- time zone: {parsed.timezone or 'the service default'}",
    ]
    if parsed.included_hours_per_month is not None:
        lines.append(
            f"- subscription: {parsed.included_hours_per_month:g} hours a month"
        )
    if parsed.tech is not None:
        claimed_at = parsed.claimed_at or parsed.opened_at
        lines.append(
            f"- claimed at start by {escape_markdown(parsed.tech.id)} at "
            f"{_format_time(claimed_at, zone)}"
        )
    return summary, "\n".join(lines)


def current_details(ledger: TicketLedger) -> str:
    """Render the ticket's state, open obligations, ladder step and latest events."""
    ticket_id = escape_markdown(ledger.ticket_id)
    tech = escape_markdown(ledger.tech.id) if ledger.tech is not None else "no tech"
    state = ledger.state
    if ledger.close_reason is not None:
        state = f"closed as {ledger.close_reason}"
    sections = [
        f"**{ticket_id}**: {state}, {ledger.priority}, {tech}; "
        f"times in {ledger.zone_name}",
        _obligations_table(ledger),
    ]
    if ledger.ladder is not None:
        sections.append(
            f"**Unreachable ladder**: {_ladder_step(ledger, ledger.ladder)}"
        )
    sections.append(_recent_events(ledger))
    return "\n\n".join(sections)


def timer_summary(
    ledger: TicketLedger, obligation: Obligation, *, is_reminder: bool
) -> str:
    """Label the timer that waits for ``obligation``'s due time or its reminder.

    For example ``reminder for first_contact of K-4, due Wed 2026-06-10 09:00 EDT``.
    """
    prefix = "reminder for " if is_reminder else ""
    owner = escape_markdown(obligation.owner)
    due = ledger.local_time(obligation.due_at)
    return f"{prefix}{obligation.kind} of {owner}, due {due}"


def _obligations_table(ledger: TicketLedger) -> str:
    rows = [
        _table_row(o.kind, escape_markdown(o.owner), ledger.local_time(o.due_at))
        for o in ledger.obligations
        if o.is_open
    ]
    if not rows:
        return "Nothing open."
    header = _table_row("obligation", "owner", "due")
    return "\n".join([header, "|---|---|---|", *rows])


def _table_row(*cells: str) -> str:
    padded = [f"{cell}{COLUMN_GAP}" for cell in cells[:-1]] + [cells[-1]]
    return "| " + " | ".join(padded) + " |"


def _ladder_step(ledger: TicketLedger, ladder: Ladder) -> str:
    """Describe the ladder step the tech is on and when it is prompted and due."""
    started = f"started {ledger.local_time(ladder.started_at)}"
    if ladder.other_method_done_at is None:
        times = _step_times(ledger, ladder.other_method)
        step = f"step 1 of 3, try another method; {times}"
    elif ladder.all_methods_done_at is None:
        assert ladder.all_methods is not None
        times = _step_times(ledger, ladder.all_methods)
        step = f"step 2 of 3, try every method on file; {times}"
    else:
        assert ladder.close is not None
        closes_at = ledger.local_time(ladder.close.due_at)
        step = f"step 3 of 3, the ticket closes as unreachable at {closes_at}"
    tried = ", ".join(sorted(ladder.tried_channels))
    return f"{step} ({started}; tried {tried})"


def _step_times(ledger: TicketLedger, step: Obligation) -> str:
    prompt = ""
    if step.remind_at is not None:
        prompt = f"prompt {ledger.local_time(step.remind_at)}, "
    if step.status == "breached":
        return f"{prompt}overdue since {ledger.local_time(step.due_at)}"
    return f"{prompt}due {ledger.local_time(step.due_at)}"


def _recent_events(ledger: TicketLedger) -> str:
    lines = ["**Latest events**", ""]
    for at, details in reversed(ledger.recent_events):
        facts = _event_facts(details)
        suffix = f" ({', '.join(facts)})" if facts else ""
        lines.append(f"- {ledger.local_time(at)}: {details['event']}{suffix}")
    return "\n".join(lines)


def _event_facts(details: dict[str, Any]) -> list[str]:
    """List what the UI shows of an event besides its name: the tech id first."""
    facts = []
    if "tech_id" in details:
        facts.append(escape_markdown(str(details["tech_id"])))
    # Channels, outcomes and sources come from fixed sets, and hours are numbers.
    for name in ("channel", "outcome", "hours", "source"):
        if name in details:
            facts.append(str(details[name]))
    return facts


def _format_time(moment: datetime, zone: ZoneInfo | None) -> str:
    if zone is None:
        return moment.strftime(TIME_FORMAT)
    return moment.astimezone(zone).strftime(TIME_FORMAT)
