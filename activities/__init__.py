"""The ticket activities: record changes, send notifications, log hours.

A local activity also hands each ticket the service defaults it needs.

Build one ``TicketActivities`` per worker with ``from_settings`` and register
``all()``. Input that no retry can fix fails with a non-retryable
``ApplicationError`` whose ``type`` names the problem. Every other error, such
as an unreachable database or mail server or a 4xx reply, is raised as it is,
so Temporal retries the activity by its retry policy. Retrying is safe because
the writes are idempotent and the mailer sends each Message-ID at most once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.mailer import Mailer
from activities.notices import InvalidNotification
from activities.store import InvalidInput, Store
from settings import Settings
from workflows.model import (
    DEFAULTS_ACTIVITY,
    HOURS_ACTIVITY,
    RECORD_ACTIVITY,
    SEND_ACTIVITY,
    HoursInput,
    HoursResult,
    NotificationInput,
    NotificationResult,
    RecordInput,
    TicketDefaults,
)

# ApplicationError types, for the workflow and for searching the history.
INVALID_RECORD = "InvalidRecord"
INVALID_NOTIFICATION = "InvalidNotification"
INVALID_HOURS = "InvalidHours"


class TicketActivities:
    """The activities of the ticket workflow, sharing one store and one mailer."""

    def __init__(
        self,
        store: Store,
        mailer: Mailer,
        default_timezone: str,
        policy_overrides: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.mailer = mailer
        self.default_timezone = default_timezone
        self.policy_overrides = dict(policy_overrides or {})

    @classmethod
    def from_settings(cls, settings: Settings) -> TicketActivities:
        """Build the store, with any missing tables created, and the mailer."""
        store = Store(settings.database_url)
        store.create_tables()
        return cls(
            store,
            Mailer(settings, store),
            settings.default_timezone,
            settings.policy_overrides,
        )

    def close(self) -> None:
        """Close the database connections; call after the worker has stopped."""
        self.store.dispose()

    def all(self) -> Sequence[Callable[..., Any]]:
        """Return the bound activity methods, for ``Worker(activities=...)``."""
        return [
            self.record_ticket_changes,
            self.send_notification,
            self.log_hours,
            self.ticket_defaults,
        ]

    @activity.defn(name=DEFAULTS_ACTIVITY)
    async def ticket_defaults(self) -> TicketDefaults:
        """Return the settings a ticket needs and cannot carry itself.

        Run as a local activity at the start of every ticket, so the zone and
        policy it got are kept in its history and replay the same after
        DEFAULT_TIMEZONE or POLICY_OVERRIDES change.
        """
        return TicketDefaults(
            timezone=self.default_timezone,
            policy_overrides=dict(self.policy_overrides),
        )

    @activity.defn(name=RECORD_ACTIVITY)
    async def record_ticket_changes(self, changes: RecordInput) -> None:
        """Store the ticket's new record entries and its current state."""
        try:
            await asyncio.to_thread(self.store.record, changes)
        except InvalidInput as error:
            raise ApplicationError(
                str(error), type=INVALID_RECORD, non_retryable=True
            ) from error

    @activity.defn(name=SEND_ACTIVITY)
    async def send_notification(
        self, notification: NotificationInput
    ) -> NotificationResult:
        """Send one notification mail unless an earlier attempt sent it."""
        try:
            return await self.mailer.send(notification)
        except InvalidNotification as error:
            raise ApplicationError(
                str(error), type=INVALID_NOTIFICATION, non_retryable=True
            ) from error

    @activity.defn(name=HOURS_ACTIVITY)
    async def log_hours(self, logged: HoursInput) -> HoursResult:
        """Add logged hours to the customer's month and return the thresholds passed."""
        try:
            return await asyncio.to_thread(self.store.log_hours, logged)
        except InvalidInput as error:
            raise ApplicationError(
                str(error), type=INVALID_HOURS, non_retryable=True
            ) from error
