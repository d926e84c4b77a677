"""The ticket workflow: one per ticket, id ``ticket-<ticket_id>``.

It keeps the ticket's ledger, sleeps on one durable timer until the earliest
reminder or due time, and wakes early when a portal event arrives. Signal
handlers only queue the raw payload. The main loop validates and applies
events in arrival order, sends the mail that fell due and stores the record.

Every signal has an Update twin, ``<signal>_update``, with the same payload.
Its validator rejects an event that the ledger would reject, before anything
reaches the history. An accepted Update is queued like the signal and returns
the ``status`` object once the main loop has applied it.

A validator's rejection never reaches the history, so its caller reports it
with the ``record_rejection`` signal, which puts it in the ticket's record. The
error says whether that is needed: its details hold ``{"recorded": false}``.
The portal client in this project does so by itself.

A long ticket continues as new when the server suggests it or its history
reaches ``TicketDefaults.max_history_length`` events. It waits until no mail
is being sent, stores the record, applies every queued event and lets the
Updates among them return. Then it hands its next run the opening, a snapshot
of the ledger and its defaults. The server copies the memo and search
attributes to the next run, which upserts only the values that change. The
static summary and details given at the start are not copied.
"""

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.converter import value_to_type
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.display import current_details, timer_summary
    from workflows.events import (
        InvalidEvent,
        Opening,
        event_id_of,
        parse_event,
        parse_opening,
        parse_rejection_report,
    )
    from workflows.inbox import (
        INVALID_CARRIED_TICKET,
        INVALID_TICKET_INPUT,
        RECORD_REJECTION,
        TICKET_CLOSED,
        TICKET_STARTING,
        QueuedEvent,
        SeveralInputs,
        one_input,
        rejection_error,
    )
    from workflows.ledger import TicketLedger
    from workflows.model import (
        ACTIVITY_TIMEOUT_SECONDS,
        DEFAULTS_ACTIVITY,
        HOURS_ACTIVITY,
        RECORD_ACTIVITY,
        SEND_ACTIVITY,
        CarriedTicket,
        HoursResult,
        NotificationInput,
        NotificationResult,
        TicketDefaults,
    )
    from workflows.policy import policy_with_overrides
    from workflows.search import (
        TICKET_SEARCH_ATTRIBUTES,
        search_attribute_updates,
        ticket_search_values,
    )

# Mail and database outages delay work, they must not lose it, so activities
# retry without a limit; the backoff keeps a long outage cheap.
UNLIMITED_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
)
ACTIVITY_TIMEOUT = timedelta(seconds=ACTIVITY_TIMEOUT_SECONDS)

# Counter of breached obligations on the worker's metrics endpoint, labelled
# with the obligation's kind (claim, first_contact, notes, reply,
# try_other_method, try_all_methods).
BREACHES_METRIC = "ticket_guard_breaches"


@workflow.defn(name="TicketWorkflow")
class TicketWorkflow:
    @workflow.init
    def __init__(self, opening: Any = None, carried: Any = None) -> None:
        # Queued here rather than in run, so a signal sent with signal-with-start
        # finds the queue ready before run begins.
        self._raw_opening = opening
        self._inbox: list[QueuedEvent] = []
        self._queued_count = 0
        # Outcome of each queued Update event, by sequence: None when applied,
        # else the error that its handler raises.
        self._outcomes: dict[int, ApplicationError | None] = {}
        self._run_started = False
        self._start_failure: ApplicationError | None = None
        self._ledger: TicketLedger | None = None
        self._search_attributes = False
        self._search_values: dict[str, Any] = {}
        self._timer: asyncio.Task[None] | None = None
        # Mail being sent, by notification sequence. Each send runs on its
        # own, so a mail server that keeps failing one mail holds back no
        # other mail and no event.
        self._sending: dict[int, asyncio.Task[None]] = {}
        self._woken = False
        self._timer_due: datetime | None = None
        self._defaults: TicketDefaults | None = None
        # Set once the history is long enough. The run then continues as new
        # at the next pass of its loop with no mail being sent.
        self._continuing = False
        # Whether the next record goes through a local activity: set for a new
        # ticket's first record only.
        self._first_record_local = False
        self._continued_runs = 0
        self._carried_failure: str | None = None
        # Sequences of the breached obligations already counted in
        # BREACHES_METRIC, so that each breach is counted once.
        self._counted_breaches: set[int] = set()
        if carried is not None:
            # Restored here rather than in run, so an Update validator that
            # runs before run begins already checks against the ledger.
            self._restore(carried)

    def _restore(self, carried: Any) -> None:
        """Take over the ledger and defaults of the previous run."""
        try:
            restored = value_to_type(CarriedTicket, carried)
            ledger = TicketLedger.from_snapshot(restored.ledger)
        except (TypeError, ValueError) as error:
            self._carried_failure = str(error)
            return
        self._ledger = ledger
        self._defaults = restored.defaults
        self._continued_runs = restored.continued_runs
        # The previous run counted these.
        self._counted_breaches = {
            o.sequence for o in ledger.obligations if o.status == "breached"
        }

    @workflow.run
    async def run(self, opening: Any = None, carried: Any = None) -> dict[str, Any]:
        self._run_started = True
        try:
            parsed = parse_opening(opening)
        except InvalidEvent as error:
            await self._fail_start(
                f"invalid ticket input: {error}", INVALID_TICKET_INPUT
            )
        # The id names the ticket for callers, and the record is kept by
        # ticket_id, so two workflows must never share one ticket_id.
        expected_id = f"ticket-{parsed.ticket_id}"
        if workflow.info().workflow_id != expected_id:
            await self._fail_start(
                f"invalid workflow id {workflow.info().workflow_id!r}: the ticket "
                f"{parsed.ticket_id} must run as {expected_id!r}",
                INVALID_TICKET_INPUT,
            )

        if carried is None:
            self._ledger = await self._open_ledger(parsed)
        else:
            await self._take_over_run(parsed.ticket_id)
        assert self._ledger is not None

        while True:
            self._woken = False
            self._apply_inbox()
            self._ledger.advance(workflow.now())
            self._count_new_breaches()
            # Before the first await, so the UI and list queries show an
            # applied event in the same workflow task that completes its Update.
            self._publish()
            closed = self._ledger.state == "closed"
            if self._continuing and not closed and not self._sending:
                await self._continue_as_new(opening)
            await self._deliver()
            # A closed ticket still delivers the mail that fell due before the
            # close; nothing falls due after it.
            closed = self._ledger.state == "closed"
            if closed and not self._inbox and not self._sending:
                break
            if not closed and not self._continuing:
                self._continuing = self._continue_as_new_due()
            await self._sleep_until_next_due()

        if self._timer is not None:
            self._timer.cancel()
        # Sends that finished during the last record flush left entries behind.
        await self._store_record()
        # An Update whose event closed the ticket returns its status first.
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.logger.info(
            "Ticket closed",
            extra={"ticket_id": parsed.ticket_id, "reason": self._ledger.close_reason},
        )
        return self._ledger.status()

    async def _open_ledger(self, parsed: Opening) -> TicketLedger:
        """Fetch the service defaults and open the ledger of a new ticket."""
        defaults = await workflow.execute_local_activity(
            DEFAULTS_ACTIVITY,
            result_type=TicketDefaults,
            start_to_close_timeout=timedelta(seconds=10),
        )
        try:
            policy = policy_with_overrides(defaults.policy_overrides)
        except ValueError as error:
            await self._fail_start(
                f"invalid POLICY_OVERRIDES: {error}", "InvalidPolicy"
            )
        self._defaults = defaults
        self._search_attributes = defaults.search_attributes
        # Only a new ticket's run stores its first record locally, because a
        # continued run stored its record before.
        self._first_record_local = defaults.first_record_local
        zone_name = parsed.timezone or defaults.timezone
        ledger = TicketLedger(parsed, zone_name, policy)
        ledger.skip_late_reminders = True
        workflow.logger.info("Ticket opened", extra={"ticket_id": parsed.ticket_id})
        return ledger

    async def _take_over_run(self, ticket_id: str) -> None:
        """Go on with the ledger that ``__init__`` restored from the previous run.

        The defaults come from the previous run, not from the worker's current
        settings, so a continued ticket keeps its policy and zone.
        """
        if self._carried_failure is not None:
            await self._fail_start(
                f"invalid input of the continued run: {self._carried_failure}",
                INVALID_CARRIED_TICKET,
            )
        assert self._ledger is not None and self._defaults is not None
        if self._ledger.ticket_id != ticket_id:
            await self._fail_start(
                f"the carried ledger is of ticket {self._ledger.ticket_id}, "
                f"not {ticket_id}",
                INVALID_CARRIED_TICKET,
            )
        self._search_attributes = self._defaults.search_attributes
        # The server copies the search attributes to the new run, so only
        # values that change from here on are upserted.
        attributes = workflow.info().typed_search_attributes
        self._search_values = {
            key.name: attributes.get(key) for key in TICKET_SEARCH_ATTRIBUTES
        }
        workflow.logger.info(
            "Ticket continued as new",
            extra={"ticket_id": ticket_id, "continued_runs": self._continued_runs},
        )

    def _continue_as_new_due(self) -> bool:
        assert self._defaults is not None
        limit = self._defaults.max_history_length
        if limit is None:
            return False
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= limit
        )

    async def _continue_as_new(self, opening: Any) -> None:
        """Store the record and continue as new, or return if this run must go on.

        The run goes on when an event is left unapplied or the ticket closed.

        The loop calls it right after applying the inbox, with no mail being
        sent, because a mail's result belongs to the run that sent it. Mail and
        hours that fell due in that pass go to the next run in the snapshot,
        which starts them.
        """
        assert self._ledger is not None and self._defaults is not None
        await self._store_record()
        # Events that arrived during the flush. From here to continue_as_new
        # nothing waits for the server, so no event can arrive in between. An
        # event that reaches the server before it completes this workflow task
        # makes it fail the task (cause UnhandledCommand). The worker then
        # runs the task again, and the signal handlers queue that event first.
        self._apply_inbox()
        self._ledger.advance(workflow.now())
        self._count_new_breaches()
        self._publish()
        # The Updates whose events were just applied return in this same
        # workflow task, so their callers get the status from this run.
        await workflow.wait_condition(
            lambda: workflow.all_handlers_finished() or bool(self._inbox)
        )
        # A close among those events ends the ticket in this run instead.
        if self._inbox or self._ledger.state == "closed":
            return

        # NOTE: continue_as_new in this SDK version takes no static summary or
        # details, so later runs show none in the UI. Current details remain.
        carried = CarriedTicket(
            ledger=self._ledger.to_snapshot(),
            defaults=self._defaults,
            continued_runs=self._continued_runs + 1,
        )
        workflow.logger.info(
            "Ticket continues as new",
            extra={
                "ticket_id": self._ledger.ticket_id,
                "history_length": workflow.info().get_current_history_length(),
                "continued_runs": carried.continued_runs,
            },
        )
        workflow.continue_as_new(args=[opening, carried])

    async def _fail_start(self, message: str, error_type: str) -> NoReturn:
        """Fail the workflow before it has a ledger, and any Update sent with it."""
        self._start_failure = ApplicationError(message, type=error_type)
        # An Update sent with update-with-start waits for the ledger. It fails
        # with the same reason before the workflow does, so its caller learns
        # why instead of getting a bare "workflow completed" error.
        await workflow.wait_condition(workflow.all_handlers_finished)
        raise ApplicationError(message, type=error_type)

    async def _sleep_until_next_due(self) -> None:
        """Wait for the ledger's next due time or the next event, whichever is first.

        The timer outlives a wake-up by an event that leaves the next due time
        as it was, so most events cost no timer cancellation in the history.
        """
        assert self._ledger is not None
        upcoming = self._ledger.next_due()
        when = upcoming[0] if upcoming is not None else None
        if self._timer is not None and (self._timer_due != when or self._timer.done()):
            self._timer.cancel()
            self._timer = None
        if upcoming is not None and self._timer is None:
            when, obligation, is_reminder = upcoming
            summary = timer_summary(self._ledger, obligation, is_reminder=is_reminder)
            duration = max(when - workflow.now(), timedelta(milliseconds=1))
            self._timer = asyncio.create_task(workflow.sleep(duration, summary=summary))
            self._timer_due = when

        timer = self._timer
        await workflow.wait_condition(
            lambda: (
                self._woken
                or bool(self._inbox)
                or (timer is not None and timer.done())
                or (self._continuing and not self._sending)
            )
        )

    def _count_new_breaches(self) -> None:
        """Add each newly breached obligation to BREACHES_METRIC.

        The SDK's workflow metric meter records nothing while the workflow
        replays, so a worker that replays a history counts no breach again.
        NOTE: a workflow task that fails or times out after counting, as on a
        worker killed mid-task, is run again as new work, so its breaches are
        counted a second time.
        """
        assert self._ledger is not None
        for obligation in self._ledger.obligations:
            if obligation.status != "breached":
                continue
            if obligation.sequence in self._counted_breaches:
                continue
            self._counted_breaches.add(obligation.sequence)
            counter = workflow.metric_meter().create_counter(
                BREACHES_METRIC, "Breached ticket obligations, by kind"
            )
            counter.add(1, {"kind": obligation.kind})

    def _apply_inbox(self) -> None:
        assert self._ledger is not None
        inbox, self._inbox = self._inbox, []
        for queued in inbox:
            rejection = self._apply_event(queued)
            if rejection is not None:
                self._log_rejection()
            if queued.from_update:
                self._outcomes[queued.sequence] = (
                    rejection_error(rejection, recorded=True)
                    if rejection is not None
                    else None
                )

    def _apply_event(self, queued: QueuedEvent) -> InvalidEvent | None:
        """Apply one queued event to the ledger and return its rejection, if any."""
        assert self._ledger is not None
        if isinstance(queued.payload, SeveralInputs):
            error = queued.payload.rejection()
            self._ledger.reject(queued.signal, None, str(error), queued.received_at)
            return error
        if queued.signal == RECORD_REJECTION:
            return self._record_reported_rejection(queued)
        try:
            event = parse_event(queued.signal, queued.payload)
        except InvalidEvent as error:
            event_id = event_id_of(queued.payload)
            if event_id is not None and event_id in self._ledger.seen_event_ids:
                return None
            self._ledger.reject(queued.signal, event_id, str(error), queued.received_at)
            return error
        return self._ledger.receive(event, queued.received_at)

    def _record_reported_rejection(self, queued: QueuedEvent) -> InvalidEvent | None:
        """Keep an Update rejection that its caller reported, or reject the report."""
        assert self._ledger is not None
        try:
            report = parse_rejection_report(queued.payload)
        except InvalidEvent as error:
            self._ledger.reject(
                RECORD_REJECTION,
                event_id_of(queued.payload),
                str(error),
                queued.received_at,
            )
            return error
        # A report sent twice, say by a retrying caller, is kept once.
        already_recorded = any(
            (entry["signal"], entry["event_id"], entry["reason"])
            == (report.signal, report.event_id, report.reason)
            for entry in self._ledger.rejected
        )
        if report.event_id is not None and already_recorded:
            return None
        self._ledger.reject(
            report.signal, report.event_id, report.reason, queued.received_at
        )
        self._log_rejection()
        return None

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
        """Store the ledger's new record entries.

        A new ticket stores its first record with a local activity, inside the
        workflow task that opened or claimed it. A claim sent with
        update-with-start then returns with the ticket stored, unless the
        write takes several seconds, and needs no second task. Tickets opened
        by an older worker, whose ``ticket_defaults`` result lacks
        ``first_record_local``, keep the activity that their histories contain.

        Later records, and a first record that contains the close, use an
        activity. The server rejects a task that ends the run (cause
        UnhandledCommand) when an event arrived while the task was open, and a
        local activity keeps the task open while it writes. The time-skipping
        test server also rejects a task that cancels a timer which fired while
        the task was open ("invalid history builder state for action") and
        never sends it again, which long tasks made frequent in the tests.
        """
        assert self._ledger is not None
        record = self._ledger.take_record()
        if record is None:
            return
        locally = self._first_record_local and self._ledger.state != "closed"
        self._first_record_local = False
        if locally:
            await workflow.execute_local_activity(
                RECORD_ACTIVITY,
                record,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=UNLIMITED_RETRY,
            )
            return
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

    def _publish(self) -> None:
        """Show the ledger in the UI's current details and in the search attributes.

        Attributes are upserted only when a value changed, and only when the
        worker found them registered on the namespace at the ticket's start.
        """
        assert self._ledger is not None
        workflow.set_current_details(current_details(self._ledger))
        if not self._search_attributes:
            return
        values = ticket_search_values(self._ledger)
        updates = search_attribute_updates(self._search_values, values)
        if updates:
            workflow.upsert_search_attributes(updates)
            self._search_values = values

    def _queue(self, signal: str, payload: Any, from_update: bool = False) -> int:
        """Queue an event for the main loop and return its sequence number."""
        self._queued_count += 1
        queued = QueuedEvent(
            self._queued_count, signal, payload, workflow.now(), from_update
        )
        self._inbox.append(queued)
        return queued.sequence

    def _validate_update(self, signal: str, payload: Any) -> None:
        """Raise the ApplicationError that rejects an Update before it is accepted.

        Runs read-only, so a rejected Update leaves no trace in the history or
        in the ticket's record.
        """
        if isinstance(payload, SeveralInputs):
            raise rejection_error(payload.rejection(), recorded=False)
        ledger = self._ledger
        if ledger is None:
            if self._start_failure is not None:
                raise ApplicationError(
                    self._start_failure.message, type=self._start_failure.type
                )
            if self._run_started:
                # Rare: the start's local activity is still running.
                raise ApplicationError(
                    f"{workflow.info().workflow_id} is starting; send the update "
                    "again in a second",
                    type=TICKET_STARTING,
                )
            # Update-with-start: the Update arrives together with the start,
            # before run has built the ledger. Only the payload is checked here.
            # The main loop checks the rest, and a rejection there fails the
            # Update after it was accepted, with the same error types.
            try:
                parse_event(signal, payload)
            except InvalidEvent as error:
                raise rejection_error(error, recorded=False) from None
            return

        if ledger.state == "closed":
            raise ApplicationError(
                f"ticket {ledger.ticket_id} is closed",
                type=TICKET_CLOSED,
                non_retryable=True,
            )
        # A repeated event_id of an applied event is accepted and changes
        # nothing, like a repeated signal.
        event_id = event_id_of(payload)
        if event_id is not None and event_id in ledger.seen_event_ids:
            return
        try:
            ledger.check(parse_event(signal, payload), workflow.now())
        except InvalidEvent as error:
            raise rejection_error(error, recorded=False) from None

    async def _run_update(self, signal: str, payload: Any) -> dict[str, Any]:
        """Queue an accepted Update's event and return the status once it is applied.

        The event can still be rejected when the main loop applies it: an
        Update sent with the start, or two Updates that each passed validation
        but conflict, such as two claims. The Update then fails with the
        rejection, which the ticket's record keeps too.
        """
        sequence = self._queue(signal, payload, from_update=True)
        await workflow.wait_condition(
            lambda: sequence in self._outcomes or self._start_failure is not None
        )
        if sequence not in self._outcomes:
            assert self._start_failure is not None
            raise ApplicationError(
                self._start_failure.message, type=self._start_failure.type
            )
        failure = self._outcomes.pop(sequence)
        if failure is not None:
            raise failure
        assert self._ledger is not None
        return self._ledger.status()

    @workflow.signal(name="claim")
    def claim(self, *payloads: Any) -> None:
        self._queue("claim", one_input(payloads))

    @workflow.signal(name="reassign")
    def reassign(self, *payloads: Any) -> None:
        self._queue("reassign", one_input(payloads))

    @workflow.signal(name="release")
    def release(self, *payloads: Any) -> None:
        self._queue("release", one_input(payloads))

    @workflow.signal(name="contact_attempt")
    def contact_attempt(self, *payloads: Any) -> None:
        self._queue("contact_attempt", one_input(payloads))

    @workflow.signal(name="notes_updated")
    def notes_updated(self, *payloads: Any) -> None:
        self._queue("notes_updated", one_input(payloads))

    @workflow.signal(name="customer_message")
    def customer_message(self, *payloads: Any) -> None:
        self._queue("customer_message", one_input(payloads))

    @workflow.signal(name="time_logged")
    def time_logged(self, *payloads: Any) -> None:
        self._queue("time_logged", one_input(payloads))

    @workflow.signal(name="close")
    def close(self, *payloads: Any) -> None:
        self._queue("close", one_input(payloads))

    @workflow.signal(name=RECORD_REJECTION)
    def record_rejection(self, *payloads: Any) -> None:
        self._queue(RECORD_REJECTION, one_input(payloads))

    @workflow.update(name="claim_update")
    async def claim_update(self, *payloads: Any) -> dict[str, Any]:
        return await self._run_update("claim", one_input(payloads))

    @claim_update.validator
    def validate_claim_update(self, *payloads: Any) -> None:
        self._validate_update("claim", one_input(payloads))

    @workflow.update(name="reassign_update")
    async def reassign_update(self, *payloads: Any) -> dict[str, Any]:
        return await self._run_update("reassign", one_input(payloads))

    @reassign_update.validator
    def validate_reassign_update(self, *payloads: Any) -> None:
        self._validate_update("reassign", one_input(payloads))

    @workflow.update(name="release_update")
    async def release_update(self, *payloads: Any) -> dict[str, Any]:
        return await self._run_update("release", one_input(payloads))

    @release_update.validator
    def validate_release_update(self, *payloads: Any) -> None:
        self._validate_update("release", one_input(payloads))

    @workflow.update(name="contact_attempt_update")
    async def contact_attempt_update(self, *payloads: Any) -> dict[str, Any]:
        return await self._run_update("contact_attempt", one_input(payloads))

    @contact_attempt_update.validator
    def validate_contact_attempt_update(self, *payloads: Any) -> None:
        self._validate_update("contact_attempt", one_input(payloads))

    @workflow.update(name="notes_updated_update")
    async def notes_updated_update(self, *payloads: Any) -> dict[str, Any]:
        return await self._run_update("notes_updated", one_input(payloads))

    @notes_updated_update.validator
    def validate_notes_updated_update(self, *payloads: Any) -> None:
        self._validate_update("notes_updated", one_input(payloads))

    @workflow.update(name="customer_message_update")
    async def customer_message_update(self, *payloads: Any) -> dict[str, Any]:
        return await self._run_update("customer_message", one_input(payloads))

    @customer_message_update.validator
    def validate_customer_message_update(self, *payloads: Any) -> None:
        self._validate_update("customer_message", one_input(payloads))

    @workflow.update(name="time_logged_update")
    async def time_logged_update(self, *payloads: Any) -> dict[str, Any]:
        return await self._run_update("time_logged", one_input(payloads))

    @time_logged_update.validator
    def validate_time_logged_update(self, *payloads: Any) -> None:
        self._validate_update("time_logged", one_input(payloads))

    @workflow.update(name="close_update")
    async def close_update(self, *payloads: Any) -> dict[str, Any]:
        return await self._run_update("close", one_input(payloads))

    @close_update.validator
    def validate_close_update(self, *payloads: Any) -> None:
        self._validate_update("close", one_input(payloads))

    @workflow.signal(dynamic=True)
    def unknown_signal(self, name: str, args: Sequence[RawValue]) -> None:
        # Queued like a known event, so a misspelt name ends up in ``rejected``
        # instead of waiting unseen in the signal buffer.
        payload: Any = None
        if len(args) > 1:
            payload = SeveralInputs(len(args))
        elif args:
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
