"""The events that the ticket workflow's handlers queue, and its Update errors.

Kept apart from ``workflows/ticket.py``, which the SDK's sandbox imports again
for every ticket that the tests replay in it. The sandbox passes this module
through, so its classes are built once per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from temporalio.exceptions import ApplicationError

from workflows.events import InvalidEvent, TicketClosed

# ApplicationError types of a rejected or failed Update, for callers to match.
INVALID_EVENT = "InvalidEvent"
TICKET_CLOSED = "TicketClosed"
TICKET_STARTING = "TicketStarting"
INVALID_TICKET_INPUT = "InvalidTicketInput"
INVALID_CARRIED_TICKET = "InvalidCarriedTicket"


@dataclass
class QueuedEvent:
    """An event payload as a signal or Update handler received it."""

    sequence: int
    signal: str
    payload: Any
    received_at: datetime
    # Set for an Update, whose handler waits for the outcome.
    from_update: bool = False


@dataclass(frozen=True)
class SeveralInputs:
    """The input of a signal or Update sent with more than one value."""

    count: int

    def rejection(self) -> InvalidEvent:
        return InvalidEvent(
            f"expected one JSON object as the input, got {self.count} values"
        )


def one_input(payloads: tuple[Any, ...]) -> Any:
    """Return a handler's single input, None for none, ``SeveralInputs`` for more.

    Handlers take any number of values, because a call with two (say, the CLI
    given ``--input`` twice) would otherwise fail every workflow task.
    """
    if len(payloads) > 1:
        return SeveralInputs(len(payloads))
    return payloads[0] if payloads else None


# The signal that reports an Update rejected by its validator.
RECORD_REJECTION = "record_rejection"


def rejection_error(error: InvalidEvent, *, recorded: bool) -> ApplicationError:
    """Return the ApplicationError that fails an Update with the rejection's reason.

    ``recorded`` is True when the ticket's record already contains the
    rejection. When it is False, the caller reports it with ``record_rejection``.
    """
    error_type = TICKET_CLOSED if isinstance(error, TicketClosed) else INVALID_EVENT
    # Sending the same event again gives the same result, so callers should
    # not retry it.
    return ApplicationError(
        str(error), {"recorded": recorded}, type=error_type, non_retryable=True
    )
