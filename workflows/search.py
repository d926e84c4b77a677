"""The ticket's custom search attributes, for list queries in the CLI and web UI.

The workflow keeps them current, so ops can find tickets with queries such as
``TechId = "K-4" AND TicketState = "claimed"`` or ``BreachCount > 0``. They
hold ids, states, kinds, times and counts only, never a customer's name, mail
address or phone, because anyone who can list workflows can read them.

Each attribute must be registered on the namespace before a workflow can set
it: the local stack passes them to the dev server at start, and on other
servers ``temporal operator search-attribute create --name NAME --type TYPE``
adds them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from temporalio.common import SearchAttributeKey, SearchAttributeUpdate

from workflows.ledger import TicketLedger

TECH_ID = SearchAttributeKey.for_keyword("TechId")
TICKET_STATE = SearchAttributeKey.for_keyword("TicketState")
TICKET_PRIORITY = SearchAttributeKey.for_keyword("TicketPriority")
# The earliest due time of an open obligation, and its kind. Unset when
# nothing is open, for example after the close.
NEXT_DUE_AT = SearchAttributeKey.for_datetime("NextDueAt")
NEXT_DUE_KIND = SearchAttributeKey.for_keyword("NextDueKind")
BREACH_COUNT = SearchAttributeKey.for_int("BreachCount")
# When the latest deadline was missed, so "breached this week" is one query.
LAST_BREACH_AT = SearchAttributeKey.for_datetime("LastBreachAt")
CUSTOMER_TIMEZONE = SearchAttributeKey.for_keyword("CustomerTimezone")

TICKET_SEARCH_ATTRIBUTES: tuple[SearchAttributeKey[Any], ...] = (
    TECH_ID,
    TICKET_STATE,
    TICKET_PRIORITY,
    NEXT_DUE_AT,
    NEXT_DUE_KIND,
    BREACH_COUNT,
    LAST_BREACH_AT,
    CUSTOMER_TIMEZONE,
)


def ticket_search_values(ledger: TicketLedger) -> dict[str, Any]:
    """Return each attribute's value for the ledger as it is, None for unset."""
    open_obligations = [o for o in ledger.obligations if o.is_open]
    next_due = min(open_obligations, key=lambda o: o.due_at, default=None)
    next_due_at: datetime | None = next_due.due_at if next_due is not None else None
    breached = [o for o in ledger.obligations if o.status == "breached"]
    breach_times = [o.ended_at for o in breached if o.ended_at is not None]
    return {
        TECH_ID.name: ledger.tech.id if ledger.tech is not None else None,
        TICKET_STATE.name: ledger.state,
        TICKET_PRIORITY.name: ledger.priority,
        NEXT_DUE_AT.name: next_due_at,
        NEXT_DUE_KIND.name: next_due.kind if next_due is not None else None,
        BREACH_COUNT.name: len(breached),
        LAST_BREACH_AT.name: max(breach_times, default=None),
        CUSTOMER_TIMEZONE.name: ledger.zone_name,
    }


def search_attribute_updates(
    previous: dict[str, Any], current: dict[str, Any]
) -> list[SearchAttributeUpdate[Any]]:
    """Return the updates that turn the ``previous`` values into ``current``.

    Both map attribute names to values, None meaning unset. Attributes whose
    value did not change get no update, so an empty list means nothing to
    upsert.
    """
    updates: list[SearchAttributeUpdate[Any]] = []
    for key in TICKET_SEARCH_ATTRIBUTES:
        value = current.get(key.name)
        if value == previous.get(key.name):
            continue
        updates.append(key.value_unset() if value is None else key.value_set(value))
    return updates
