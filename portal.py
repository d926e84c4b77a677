"""A typed client for the web portal: one method per ticket event.

Each event goes to the ticket's workflow as an Update (``<event>_update``),
whose validator rejects a bad event before it is written to history, so the
caller learns at once whether the event was taken. Every method returns the
ticket's new ``status`` object, and raises:

- ``TicketNotFound``: no ticket with this id exists.
- ``TicketClosed``: the ticket is closed, or its workflow ended otherwise.
- ``EventRejected``: the event is invalid for this ticket; ``reason`` gives the cause.

A rejected event is kept in the ticket's record too, with its reason: the
client reports each rejection that the workflow did not record itself.

``claim`` can also open the ticket in the same call (update-with-start), so
the portal need not know whether the ticket's workflow exists yet.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from workflows.display import ticket_summary
from workflows.events import InvalidEvent, event_id_of
from workflows.inbox import INVALID_EVENT, TICKET_CLOSED

logger = logging.getLogger(__name__)

WORKFLOW_TYPE = "TicketWorkflow"


class PortalError(Exception):
    """A ticket event the service did not take."""


class TicketNotFound(PortalError):
    """No workflow exists for the ticket id."""


class TicketClosed(PortalError):
    """The ticket is closed, or its workflow ended without closing it."""


class EventRejected(PortalError):
    """The service rejected the event; ``reason`` is the validator's message."""

    def __init__(self, ticket_id: str, event: str, reason: str) -> None:
        super().__init__(f"{event} rejected for ticket {ticket_id}: {reason}")
        self.ticket_id = ticket_id
        self.event = event
        self.reason = reason


@dataclass(frozen=True)
class Tech:
    """The tech who claims or takes over a ticket."""

    id: str
    email: str
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"id": self.id, "email": self.email}
        if self.name is not None:
            fields["name"] = self.name
        return fields


def workflow_id(ticket_id: str) -> str:
    return f"ticket-{ticket_id}"


class TicketPortal:
    """Send ticket events to the service and read tickets' status."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue

    def handle(self, ticket_id: str) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(workflow_id(ticket_id))

    async def status(self, ticket_id: str) -> dict[str, Any]:
        """Return the ticket's ``status`` object.

        Raises:
            TicketNotFound: no ticket with this id exists.
        """
        try:
            result: dict[str, Any] = await self.handle(ticket_id).query("status")
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise TicketNotFound(f"ticket {ticket_id} not found") from None
            raise
        return result

    async def claim(
        self,
        ticket_id: str,
        tech: Tech,
        *,
        opening: dict[str, Any] | None = None,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Claim the ticket for ``tech``.

        With ``opening`` (the workflow input of the contract), a ticket whose
        workflow does not exist yet is opened and claimed in one call, and an
        existing one is claimed. A closed ticket is never opened again.
        """
        payload = event_payload(event_id, occurred_at, tech=tech.to_json())
        return await self.send(ticket_id, "claim", payload, opening=opening)

    async def reassign(
        self,
        ticket_id: str,
        tech: Tech,
        *,
        reason: str | None = None,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Move the ticket to another tech."""
        payload = event_payload(
            event_id, occurred_at, tech=tech.to_json(), reason=reason
        )
        return await self._update(ticket_id, "reassign", payload)

    async def release(
        self,
        ticket_id: str,
        *,
        reason: str | None = None,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Hand the ticket back to the company."""
        payload = event_payload(event_id, occurred_at, reason=reason)
        return await self._update(ticket_id, "release", payload)

    async def contact_attempt(
        self,
        ticket_id: str,
        *,
        channel: str,
        outcome: str,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Record that the tech tried to reach the customer."""
        payload = event_payload(event_id, occurred_at, channel=channel, outcome=outcome)
        return await self._update(ticket_id, "contact_attempt", payload)

    async def notes_updated(
        self,
        ticket_id: str,
        *,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Record that the tech updated the ticket's notes."""
        payload = event_payload(event_id, occurred_at)
        return await self._update(ticket_id, "notes_updated", payload)

    async def customer_message(
        self,
        ticket_id: str,
        *,
        channel: str,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Record a message from the customer."""
        payload = event_payload(event_id, occurred_at, channel=channel)
        return await self._update(ticket_id, "customer_message", payload)

    async def time_logged(
        self,
        ticket_id: str,
        *,
        hours: float,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Record hours of work, counted against a subscription's month."""
        payload = event_payload(event_id, occurred_at, hours=hours)
        return await self._update(ticket_id, "time_logged", payload)

    async def close(
        self,
        ticket_id: str,
        *,
        reason: str,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Close the ticket; ``reason`` is one of the contract's close reasons."""
        payload = event_payload(event_id, occurred_at, reason=reason)
        return await self._update(ticket_id, "close", payload)

    async def send(
        self,
        ticket_id: str,
        event: str,
        payload: dict[str, Any],
        *,
        opening: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Send one event's JSON payload by its contract name; return the new status.

        ``opening`` is only for ``claim``: see ``claim``.
        """
        if opening is None:
            return await self._update(ticket_id, event, payload)
        if event != "claim":
            raise ValueError(f"only claim can open a ticket, not {event}")

        try:
            summary, details = ticket_summary(opening)
        except InvalidEvent as error:
            raise EventRejected(ticket_id, "open", str(error)) from None
        start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            WORKFLOW_TYPE,
            opening,
            id=workflow_id(ticket_id),
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary=summary,
            static_details=details,
        )
        try:
            result: dict[
                str, Any
            ] = await self.client.execute_update_with_start_workflow(
                "claim_update", payload, start_workflow_operation=start
            )
        except WorkflowUpdateFailedError as error:
            raise await self._rejection(ticket_id, "claim", payload, error) from None
        except WorkflowAlreadyStartedError:
            raise TicketClosed(f"ticket {ticket_id} is closed") from None
        finally:
            # The start's own outcome is not needed, but asyncio logs an
            # unread one as an exception that was never retrieved.
            with contextlib.suppress(Exception):
                await start.workflow_handle()
        return result

    async def _update(
        self, ticket_id: str, event: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        handle = self.handle(ticket_id)
        try:
            result: dict[str, Any] = await handle.execute_update(
                f"{event}_update", payload
            )
        except WorkflowUpdateFailedError as error:
            raise await self._rejection(ticket_id, event, payload, error) from None
        except RPCError as error:
            raise await self._ended_or_missing(ticket_id, error) from None
        return result

    async def _rejection(
        self,
        ticket_id: str,
        event: str,
        payload: Any,
        error: WorkflowUpdateFailedError,
    ) -> PortalError:
        """Turn a failed Update into a portal error, and record it if it is not yet."""
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.type == TICKET_CLOSED:
            return TicketClosed(f"ticket {ticket_id} is closed")
        if not isinstance(cause, ApplicationError):
            return EventRejected(ticket_id, event, str(cause))

        if cause.type == INVALID_EVENT and not _recorded(cause):
            # A validator's rejection is not in the history; this signal puts
            # it in the ticket's record. Losing it to an outage must not hide
            # the rejection from the caller, so its failure is only logged.
            report = {
                "event": event,
                "event_id": event_id_of(payload),
                "reason": cause.message,
            }
            try:
                await self.handle(ticket_id).signal("record_rejection", report)
            except RPCError as signal_error:
                logger.warning(
                    "Rejected event not recorded",
                    extra={"ticket_id": ticket_id, "error": str(signal_error)},
                )
        return EventRejected(ticket_id, event, cause.message)

    async def _ended_or_missing(self, ticket_id: str, error: RPCError) -> Exception:
        """Turn the server's error for an update into a portal error, if it is one."""
        try:
            description = await self.handle(ticket_id).describe()
        except RPCError as describe_error:
            if describe_error.status == RPCStatusCode.NOT_FOUND:
                return TicketNotFound(f"ticket {ticket_id} not found")
            return error
        if description.status == WorkflowExecutionStatus.COMPLETED:
            return TicketClosed(f"ticket {ticket_id} is closed")
        if description.status != WorkflowExecutionStatus.RUNNING:
            name = description.status.name if description.status else "unknown"
            return TicketClosed(
                f"ticket {ticket_id} is not open: its workflow ended as {name}"
            )
        return error


def _recorded(error: ApplicationError) -> bool:
    """Return whether the workflow's record already keeps the rejection."""
    details = error.details
    if details and isinstance(details[0], dict):
        return details[0].get("recorded") is not False
    # An older worker sends no details and records nothing for its validator.
    return False


def event_payload(
    event_id: str | None, occurred_at: datetime | None, **fields: Any
) -> dict[str, Any]:
    """Build an event's JSON payload; a missing event_id gets a new random one."""
    payload: dict[str, Any] = {"event_id": event_id or f"portal-{uuid.uuid4()}"}
    if occurred_at is not None:
        payload["occurred_at"] = occurred_at.isoformat()
    payload.update({name: value for name, value in fields.items() if value is not None})
    return payload
