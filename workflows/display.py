"""Texts the Temporal web UI and CLI show for a ticket, in Temporal markdown.

``ticket_summary`` builds the static summary and details that the caller
starting a ticket passes to ``start_workflow``. ``current_details`` renders the
ledger for ``workflow.set_current_details``. Like the search attributes, the
texts carry ids, not the customer's name, mail address or phone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from workflows.events import parse_opening
from workflows.ledger import Ladder, Obligation, TicketLedger

TIME_FORMAT = "%a %Y-%m-%d %H:%M %Z"


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
    summary = f"Ticket {parsed.ticket_id}: {parsed.priority}, opened {opened}"

    lines = [
        f"**Ticket {parsed.ticket_id}**",
        "",
        f"- priority: {parsed.priority}",
        f"- source: {parsed.source}",
        f"- opened: {opened} ({parsed.opened_at.isoformat()})",
        f"- customer: {parsed.customer.id}",
        f"- time zone: {parsed.timezone or 'the service default'}",
    ]
    if parsed.included_hours_per_month is not None:
        lines.append(
            f"- subscription: {parsed.included_hours_per_month:g} hours a month"
        )
    if parsed.tech is not None:
        claimed_at = parsed.claimed_at or parsed.opened_at
        lines.append(
            f"- claimed at start by {parsed.tech.id} at "
            f"{_format_time(claimed_at, zone)}"
        )
    return summary, "\n".join(lines)


def current_details(ledger: TicketLedger) -> str:
    """Render the ticket's state, open obligations, ladder step and latest events."""
    tech = ledger.tech.id if ledger.tech is not None else "no tech"
    state = ledger.state
    if ledger.close_reason is not None:
        state = f"closed as {ledger.close_reason}"
    sections = [
        f"**{ledger.ticket_id}**: {state}, {ledger.priority}, {tech}; "
        f"times in {ledger.zone_name}",
        _obligations_table(ledger),
    ]
    if ledger.ladder is not None:
        sections.append(
            f"**Unreachable ladder**: {_ladder_step(ledger, ledger.ladder)}"
        )
    sections.append(_recent_events(ledger))
    return "\n\n".join(sections)


def _obligations_table(ledger: TicketLedger) -> str:
    rows = [
        f"| {o.kind} | {o.owner} | {ledger.local_time(o.due_at)} |"
        for o in ledger.obligations
        if o.is_open
    ]
    if not rows:
        return "Nothing open."
    return "| obligation | owner | due |\n|---|---|---|\n" + "\n".join(rows)


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
        facts = [
            str(details[name])
            for name in ("tech_id", "channel", "outcome", "hours", "source")
            if name in details
        ]
        suffix = f" ({', '.join(facts)})" if facts else ""
        lines.append(f"- {ledger.local_time(at)}: {details['event']}{suffix}")
    return "\n".join(lines)


def _format_time(moment: datetime, zone: ZoneInfo | None) -> str:
    if zone is None:
        return moment.strftime(TIME_FORMAT)
    return moment.astimezone(zone).strftime(TIME_FORMAT)
