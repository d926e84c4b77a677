"""The ticket activities: record changes, send notifications, log hours.

A local activity also hands each ticket the service defaults it needs,
including whether the namespace has the ticket's search attributes.

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
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.mailer import Mailer
from activities.notices import InvalidNotification
from activities.store import InvalidInput, Store
from settings import Settings
from workflows.model import (
    DEFAULT_MAX_HISTORY_LENGTH,
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
from workflows.search import TICKET_SEARCH_ATTRIBUTES

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
        search_attributes: bool = True,
        max_history_length: int = DEFAULT_MAX_HISTORY_LENGTH,
    ) -> None:
        if max_history_length < 1:
            raise ValueError(
                f"invalid max_history_length {max_history_length}: use a number "
                "of history events of 1 or more"
            )
        self.store = store
        self.mailer = mailer
        self.default_timezone = default_timezone
        self.policy_overrides = dict(policy_overrides or {})
        self.search_attributes = search_attributes
        # Tests lower it to see tickets continue as new after a few events.
        self.max_history_length = max_history_length
        # Set once the namespace was seen with every attribute, because
        # registered attributes are not expected to go away.
        self._search_attributes_found = False
        # What was last logged, so each problem is logged once.
        self._reported_missing: list[str] = []
        self._listing_failure_logged = False

    @classmethod
    def from_settings(
        cls, settings: Settings, *, create_tables: bool = True
    ) -> TicketActivities:
        """Build the store and the mailer.

        With ``create_tables`` the store creates any missing table from the
        models, as tests and throwaway databases need. The worker passes False,
        because the migrations made its database and it checked their revision.
        """
        store = Store(settings.database_url)
        if create_tables:
            store.create_tables()
        return cls(
            store,
            Mailer(settings, store),
            settings.default_timezone,
            settings.policy_overrides,
            settings.ticket_search_attributes,
            settings.max_history_length,
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

        Run as a local activity at the start of every ticket, so the zone,
        policy, search attribute choice and history limit it got are kept in
        its history and replay the same after the settings or the namespace
        change. A ticket that continues as new hands them to its next run.
        """
        return TicketDefaults(
            timezone=self.default_timezone,
            policy_overrides=dict(self.policy_overrides),
            search_attributes=await self._search_attributes_usable(),
            max_history_length=self.max_history_length,
            first_record_local=True,
        )

    async def _search_attributes_usable(self) -> bool:
        """Return True if tickets may upsert their search attributes.

        An upsert of an attribute the namespace lacks fails every workflow
        task of the ticket, so the attributes are used only when
        TICKET_SEARCH_ATTRIBUTES is on and the namespace lists all of them.
        """
        if not self.search_attributes:
            return False
        if self._search_attributes_found:
            return True
        try:
            client = activity.client()
        except RuntimeError:
            # Run outside a worker, as in activity tests: trust the setting.
            return True
        try:
            missing = await missing_search_attributes(client, activity.info().namespace)
        except RPCError as error:
            if error.status == RPCStatusCode.UNIMPLEMENTED:
                # The time-skipping test server cannot list attributes, and it
                # rejects any that were not added to it.
                return False
            # NOTE: a server that refuses the listing (an API key without the
            # permission) is trusted to have the attributes registered.
            if not self._listing_failure_logged:
                self._listing_failure_logged = True
                activity.logger.warning(
                    "Could not list the namespace's search attributes; using "
                    "them as TICKET_SEARCH_ATTRIBUTES says",
                    extra={"error": str(error)},
                )
            return True
        if missing:
            if missing != self._reported_missing:
                self._reported_missing = missing
                activity.logger.warning(
                    "Search attributes not registered on the namespace; new "
                    "tickets run without them. Register them, or set "
                    "TICKET_SEARCH_ATTRIBUTES=false",
                    extra={"missing": missing},
                )
            return False
        self._search_attributes_found = True
        return True

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


async def missing_search_attributes(client: Client, namespace: str) -> list[str]:
    """Return the ticket search attributes that the namespace lacks.

    An attribute registered with another type counts as missing, because the
    server rejects its values too.

    Raises:
        RPCError: the server did not return the list.
    """
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    registered = response.custom_attributes
    return [
        f"{key.name} ({key.indexed_value_type.name.title()})"
        for key in TICKET_SEARCH_ATTRIBUTES
        if registered.get(key.name) != key.indexed_value_type.value
    ]
