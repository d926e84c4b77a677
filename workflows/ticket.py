"""The ticket workflow: one per ticket, id ``ticket-<ticket_id>``.

It keeps the ticket's ledger, sleeps on one durable timer until the earliest
reminder or due time, and wakes early when a portal event arrives. Signal
handlers only queue the raw payload. The main loop validates and applies
events in arrival order, sends the mail that fell due and stores the record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.events import InvalidEvent, event_id_of, parse_event, parse_opening
    from workflows.ledger import TicketLedger
    from workflows.model import (
        ACTIVITY_TIMEOUT_SECONDS,
        DEFAULTS_ACTIVITY,
        HOURS_ACTIVITY,
        RECORD_ACTIVITY,
        SEND_ACTIVITY,
        HoursResult,
        NotificationInput,
        NotificationResult,
        TicketDefaults,
    )
    from workflows.policy import policy_with_overrides

# Mail and database outages delay work, they must not lose it, so activities
# retry without a limit; the backoff keeps a long outage cheap.
UNLIMITED_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
)
ACTIVITY_TIMEOUT = timedelta(seconds=ACTIVITY_TIMEOUT_SECONDS)


@workflow.defn(name="TicketWorkflow")
class TicketWorkflow:
    @workflow.init
    def __init__(self, opening: Any = None) -> None:
        # Queued here rather than in run, so a signal sent with signal-with-start
        # finds the queue ready before run begins.
        self._raw_opening = opening
        self._inbox: list[tuple[str, Any, datetime]] = []
        self._ledger: TicketLedger | None = None
        self._timer: asyncio.Task[None] | None = None
        # Mail being sent, by notification sequence. Each send runs on its
        # own, so a mail server that keeps failing one mail holds back no
        # other mail and no event.
        self._sending: dict[int, asyncio.Task[None]] = {}
        self._woken = False
        self._timer_due: datetime | None = None

    @workflow.run
    async def run(self, opening: Any = None) -> dict[str, Any]:
        try:
            parsed = parse_opening(opening)
        except InvalidEvent as error:
            raise ApplicationError(
                f"invalid ticket input: {error}", type="InvalidTicketInput"
            ) from None
        # The id names the ticket for callers, and the record is kept by
        # ticket_id, so two workflows must never share one ticket_id.
        expected_id = f"ticket-{parsed.ticket_id}"
        if workflow.info().workflow_id != expected_id:
            raise ApplicationError(
                f"invalid workflow id {workflow.info().workflow_id!r}: the ticket "
                f"{parsed.ticket_id} must run as {expected_id!r}",
                type="InvalidTicketInput",
            )

        defaults = await workflow.execute_local_activity(
            DEFAULTS_ACTIVITY,
            result_type=TicketDefaults,
            start_to_close_timeout=timedelta(seconds=10),
        )
        try:
            policy = policy_with_overrides(defaults.policy_overrides)
        except ValueError as error:
            raise ApplicationError(
                f"invalid POLICY_OVERRIDES: {error}", type="InvalidPolicy"
            ) from None
        zone_name = parsed.timezone or defaults.timezone
        self._ledger = TicketLedger(parsed, zone_name, policy)
        self._ledger.skip_late_reminders = True
        workflow.logger.info("Ticket opened", extra={"ticket_id": parsed.ticket_id})

        while True:
            self._woken = False
            self._apply_inbox()
            self._ledger.advance(workflow.now())
            await self._deliver()
            # A closed ticket still delivers the mail that fell due before the
            # close; nothing falls due after it.
            closed = self._ledger.state == "closed"
            if closed and not self._inbox and not self._sending:
                break
            await self._sleep_until_next_due()

        if self._timer is not None:
            self._timer.cancel()
        # Sends that finished during the last record flush left entries behind.
        await self._store_record()
        workflow.logger.info(
            "Ticket closed",
            extra={"ticket_id": parsed.ticket_id, "reason": self._ledger.close_reason},
        )
        return self._ledger.status()

    async def _sleep_until_next_due(self) -> None:
        """Wait for the ledger's next due time or the next event, whichever is first.

        The timer outlives a wake-up by an event that leaves the next due time
        as it was, so most events cost no timer cancellation in the history.
        """
        assert self._ledger is not None
        self._show_details()
        upcoming = self._ledger.next_due()
        when = upcoming[0] if upcoming is not None else None
        if self._timer is not None and (self._timer_due != when or self._timer.done()):
            self._timer.cancel()
            self._timer = None
        if upcoming is not None and self._timer is None:
            when, obligation, is_reminder = upcoming
            prefix = "reminder for " if is_reminder else ""
            local_due = self._ledger.local_time(obligation.due_at)
            summary = (
                f"{prefix}{obligation.kind} of {obligation.owner}, due {local_due}"
            )
            duration = max(when - workflow.now(), timedelta(milliseconds=1))
            self._timer = asyncio.create_task(workflow.sleep(duration, summary=summary))
            self._timer_due = when

        timer = self._timer
        await workflow.wait_condition(
            lambda: (
                self._woken or bool(self._inbox) or (timer is not None and timer.done())
            )
        )

    def _apply_inbox(self) -> None:
        assert self._ledger is not None
        inbox, self._inbox = self._inbox, []
        for signal, raw, received_at in inbox:
            try:
                event = parse_event(signal, raw)
            except InvalidEvent as error:
                event_id = event_id_of(raw)
                if event_id is not None and event_id in self._ledger.seen_event_ids:
                    continue
                self._ledger.reject(signal, event_id, str(error), received_at)
                self._log_rejection()
                continue
            rejected_before = len(self._ledger.rejected)
            self._ledger.receive(event, received_at)
            if len(self._ledger.rejected) > rejected_before:
                self._log_rejection()

    def _log_rejection(self) -> None:
        assert self._ledger is not None
        rejection = self._ledger.rejected[-1]
        workflow.logger.warning(
            "Event rejected",
            extra={
                "ticket_id": self._ledger.ticket_id,
                "signal": rejection["signal"],
                "event_id": rejection["event_id"],
                "reason": rejection["reason"],
            },
        )

    async def _deliver(self) -> None:
        """Log hours, send the mail that fell due and store the new record."""
        assert self._ledger is not None
        for request in self._ledger.take_hours_requests():
            result = await workflow.execute_activity(
                HOURS_ACTIVITY,
                request,
                result_type=HoursResult,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=UNLIMITED_RETRY,
            )
            # The warning is due when the hours were logged, not when the
            # activity returned.
            logged_at = datetime.fromisoformat(request.logged_at)
            self._ledger.apply_hours_result(
                request, result.used_hours, result.crossed_thresholds, logged_at
            )

        for notification in self._ledger.pending_notifications():
            if notification.sequence not in self._sending:
                task = asyncio.create_task(self._send(notification))
                self._sending[notification.sequence] = task

        await self._store_record()

    async def _store_record(self) -> None:
        assert self._ledger is not None
        record = self._ledger.take_record()
        if record is not None:
            await workflow.execute_activity(
                RECORD_ACTIVITY,
                record,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=UNLIMITED_RETRY,
            )

    async def _send(self, notification: NotificationInput) -> None:
        assert self._ledger is not None
        try:
            result = await workflow.execute_activity(
                SEND_ACTIVITY,
                notification,
                result_type=NotificationResult,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=UNLIMITED_RETRY,
                summary=f"{notification.kind} to {notification.role}",
            )
            self._ledger.mark_delivered(notification.sequence, result, workflow.now())
        finally:
            del self._sending[notification.sequence]
            # Wake the main loop to store the result in the record.
            self._woken = True

    def _show_details(self) -> None:
        """Show the open obligations in the UI's current details."""
        assert self._ledger is not None
        ledger = self._ledger
        rows = [
            f"| {o.kind} | {o.owner} | {ledger.local_time(o.due_at)} |"
            for o in ledger.obligations
            if o.is_open
        ]
        tech = ledger.tech.id if ledger.tech is not None else "no tech"
        header = (
            f"**{ledger.ticket_id}**: {ledger.state}, {ledger.priority}, {tech}; "
            f"times in {ledger.zone_name}\n\n"
        )
        table = "| obligation | owner | due |\n|---|---|---|\n" + "\n".join(rows)
        workflow.set_current_details(header + (table if rows else "Nothing open."))

    def _queue(self, signal: str, payload: Any) -> None:
        self._inbox.append((signal, payload, workflow.now()))

    @workflow.signal(name="claim")
    def claim(self, payload: Any = None) -> None:
        self._queue("claim", payload)

    @workflow.signal(name="reassign")
    def reassign(self, payload: Any = None) -> None:
        self._queue("reassign", payload)

    @workflow.signal(name="release")
    def release(self, payload: Any = None) -> None:
        self._queue("release", payload)

    @workflow.signal(name="contact_attempt")
    def contact_attempt(self, payload: Any = None) -> None:
        self._queue("contact_attempt", payload)

    @workflow.signal(name="notes_updated")
    def notes_updated(self, payload: Any = None) -> None:
        self._queue("notes_updated", payload)

    @workflow.signal(name="customer_message")
    def customer_message(self, payload: Any = None) -> None:
        self._queue("customer_message", payload)

    @workflow.signal(name="time_logged")
    def time_logged(self, payload: Any = None) -> None:
        self._queue("time_logged", payload)

    @workflow.signal(name="close")
    def close(self, payload: Any = None) -> None:
        self._queue("close", payload)

    @workflow.signal(dynamic=True)
    def unknown_signal(self, name: str, args: Sequence[RawValue]) -> None:
        # Queued like a known event, so a misspelt name ends up in ``rejected``
        # instead of waiting unseen in the signal buffer.
        payload: Any = None
        if args:
            try:
                payload = workflow.payload_converter().from_payload(args[0].payload)
            except Exception:
                payload = None
        self._queue(name, payload)

    @workflow.query(name="status")
    def status(self) -> dict[str, Any]:
        if self._ledger is None:
            return {"ticket_id": None, "state": "starting", "obligations": []}
        return self._ledger.status()
