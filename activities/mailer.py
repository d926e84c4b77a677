"""Send ticket notifications over SMTP, at most once each.

Every notification has a stable Message-ID, and sent_mail keeps its status, so
a retried activity or a restarted worker does not send a second copy:

- ``delayed``: a temporary failure before the server took the message; the
  next attempt sends it.
- ``sending``: the message data was being handed over when the attempt ended,
  for example because the worker stopped.
- ``unconfirmed``: the server never replied to the message data.
- ``sent``: the server accepted the message.
- ``failed``: the mail cannot be delivered (a 5xx reply, no valid address).

A mail in ``sending`` or ``unconfirmed`` may have been delivered, so it is not
sent again: a lost mail is preferred to a second copy.
"""

from __future__ import annotations

import asyncio
import email.policy
import logging
import re
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any

import aiosmtplib
from temporalio import activity

from activities.notices import (
    LINE_WIDTH,
    SIGNATURE,
    InvalidNotification,
    write_notice,
)
from activities.store import MailRecord, Store
from settings import Settings
from workflows.model import NotificationInput, NotificationResult

logger = logging.getLogger(__name__)

# 7-bit transfer encodings, so a name with accents survives a server that
# does not offer 8BITMIME.
MESSAGE_POLICY = email.policy.SMTP.clone(cte_type="7bit")

# Characters kept as they are in one dot-separated part of a Message-ID: RFC
# 5322 atext without "=", which escapes every other character.
_MESSAGE_ID_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/?^_`{|}~-]")
# An address in a server reply, with its angle brackets if it has them.
_ADDRESS_IN_TEXT = re.compile(r"<?[^@\s<>]+@[^@\s<>]+>?")
# A bare address with no spaces, control characters or list separators. The
# server has the final word; this only keeps header and command injection out.
_MAIL_ADDRESS = re.compile(r"[^@\s\x00-\x1f\x7f<>,;\"]+@[^@\s\x00-\x1f\x7f<>,;\"]+")


class MailDeliveryDelayed(Exception):
    """A temporary SMTP failure: the activity should retry later."""


class _PermanentFailure(Exception):
    """The server rejected this mail for good (a 5xx reply)."""


class _Unconfirmed(Exception):
    """The message data was handed over but the server never replied."""


def message_id_for(notification: NotificationInput, domain: str) -> str:
    """Build the stable Message-ID of a notification.

    The parts are the ticket id, sequence, kind and role, each escaped so that
    any ticket id gives a valid and distinct msg-id, for example
    ``<T-1001.3.check_in.customer@ticket-guard.localhost>``.
    """
    parts = [
        notification.ticket_id,
        str(notification.sequence),
        notification.kind,
        notification.role,
    ]
    local_part = ".".join(_escape_message_id_part(part) for part in parts)
    return f"<{local_part}@{domain}>"


def failure_report_id(message_id: str) -> str:
    """Return the Message-ID of the ops report about the failed ``message_id``."""
    local_part, _at, domain = message_id.strip("<>").rpartition("@")
    return f"<{local_part}.failure-report@{domain}>"


def _escape_message_id_part(value: str) -> str:
    # "=" followed by two hex digits per UTF-8 byte, as in quoted-printable.
    escaped = []
    for character in value:
        if _MESSAGE_ID_PART.fullmatch(character):
            escaped.append(character)
        else:
            escaped.extend(f"={byte:02X}" for byte in character.encode("utf-8"))
    return "".join(escaped) or "="


def redact_addresses(text: str) -> str:
    """Replace every mail address in ``text`` so that the text can be logged."""
    return _ADDRESS_IN_TEXT.sub("<address>", text)


def _logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    # Inside an activity the SDK logger adds the workflow and activity ids.
    if activity.in_activity():
        return activity.logger
    return logger


@dataclass(frozen=True)
class _Mail:
    """One mail as sent_mail stores it."""

    message_id: str
    ticket_id: str
    kind: str
    role: str
    recipient: str | None

    def log_fields(self) -> dict[str, Any]:
        # No recipient: it may be a customer's address.
        return {
            "ticket_id": self.ticket_id,
            "kind": self.kind,
            "role": self.role,
            "message_id": self.message_id,
        }


class Mailer:
    """Composes notifications and sends them through the configured SMTP server."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    def message_id(self, notification: NotificationInput) -> str:
        """Return the notification's stable Message-ID."""
        return message_id_for(notification, self.settings.mail_domain)

    def recipient_address(self, notification: NotificationInput) -> str | None:
        """Return where the notification goes, or None when there is no address.

        Role ``ops`` goes to OPS_EMAIL, ``tech`` and ``customer`` to the
        recipient's own address.
        """
        if notification.role == "ops":
            return self.settings.ops_address
        if notification.recipient is None or not notification.recipient.email:
            return None
        return notification.recipient.email

    def compose(self, notification: NotificationInput) -> EmailMessage:
        """Build the notification's mail with its headers and plain-text body.

        The To header is left out when the recipient has no valid address.
        Raises InvalidNotification (from activities.notices) for an unknown
        kind or role, a kind never sent to customers, a malformed time, an
        unknown time zone or a line break in the ticket id.
        """
        text = write_notice(notification, self.settings.default_timezone)

        try:
            message = self._new_message(self._mail(notification), text.subject)
        except ValueError as error:
            # The email package rejects line breaks in header values.
            raise InvalidNotification(f"invalid mail header: {error}") from error

        to_header = self._to_header(notification)
        if to_header is not None:
            message["To"] = to_header
        message.set_content(text.body)
        return message

    def _to_header(self, notification: NotificationInput) -> str | None:
        if notification.role == "ops":
            return self.settings.ops_email
        address = self.recipient_address(notification)
        if address is None or not _is_mail_address(address):
            return None
        assert notification.recipient is not None
        # A display name must stay on one line.
        name = " ".join((notification.recipient.name or "").split())
        return formataddr((name, address)) if name else address

    async def send(self, notification: NotificationInput) -> NotificationResult:
        """Send the notification unless an earlier attempt already did.

        Returns ``already_sent`` without sending when an earlier attempt sent
        the Message-ID or may have sent it. Returns ``failed`` with the reason
        when the mail cannot be delivered, and reports a failed mail to a tech
        or customer once to OPS_EMAIL. Otherwise returns ``sent``.
        Raises MailDeliveryDelayed on a temporary failure, so that the caller
        retries, and InvalidNotification when the notification cannot be
        composed.
        """
        message_id = self.message_id(notification)
        # NOTE: two attempts running at once (Temporal starts a retry after
        # the start-to-close timeout) could both pass this check and both send.
        earlier = await asyncio.to_thread(self.store.mail, message_id)
        if earlier is not None and earlier.status != "delayed":
            return await self._result_of_earlier_attempt(earlier)

        message = self.compose(notification)
        mail = self._mail(notification)
        if mail.recipient is None:
            return await self._fail(mail, f"the {mail.role} has no mail address")
        if not _is_mail_address(mail.recipient):
            return await self._fail(mail, f"the {mail.role}'s mail address is invalid")
        return await self._send_and_record(mail, message)

    def _mail(self, notification: NotificationInput) -> _Mail:
        return _Mail(
            message_id=self.message_id(notification),
            ticket_id=notification.ticket_id,
            kind=notification.kind,
            role=notification.role,
            recipient=self.recipient_address(notification),
        )

    async def _result_of_earlier_attempt(
        self, earlier: MailRecord
    ) -> NotificationResult:
        mail = _Mail(
            message_id=earlier.message_id,
            ticket_id=earlier.ticket_id,
            kind=earlier.kind,
            role=earlier.role,
            recipient=earlier.recipient,
        )
        if earlier.status == "sent":
            _logger().info(
                "Mail already sent, not sending again", extra=mail.log_fields()
            )
            return NotificationResult("already_sent", mail.message_id)

        if earlier.status in ("sending", "unconfirmed"):
            detail = (
                "unconfirmed: an earlier attempt handed over the message data but "
                "got no reply, so the mail is not sent again"
            )
            if earlier.status == "sending":
                await self._record(mail, "unconfirmed", detail)
            _log_unconfirmed(mail, detail)
            return NotificationResult("already_sent", mail.message_id, detail)

        # A failed mail: the attempt that recorded it may have stopped before
        # its report to ops went out.
        await self._report_failure(mail, earlier.detail or "unknown")
        return NotificationResult("failed", mail.message_id, earlier.detail)

    async def _send_and_record(
        self, mail: _Mail, message: EmailMessage
    ) -> NotificationResult:
        """Hand the message to the server and record what became of it.

        A permanent failure is reported to OPS_EMAIL unless the mail went there.
        Raises MailDeliveryDelayed on a temporary failure.
        """
        try:
            await self._deliver(mail, message)
        except _PermanentFailure as failure:
            return await self._fail(mail, str(failure))
        except _Unconfirmed as unconfirmed:
            detail = f"unconfirmed: {unconfirmed}"
            await self._record(mail, "unconfirmed", detail)
            _log_unconfirmed(mail, detail)
            return NotificationResult("sent", mail.message_id, detail)

        await self._record(mail, "sent", None)
        _logger().info("Mail sent", extra=mail.log_fields())
        return NotificationResult("sent", mail.message_id)

    async def _fail(self, mail: _Mail, reason: str) -> NotificationResult:
        await self._record(mail, "failed", reason)
        extra = {**mail.log_fields(), "reason": redact_addresses(reason)}
        if mail.role == "ops":
            # A failed mail to ops is only logged, at error level, because a report
            # would go to the same address.
            _logger().error("Mail to ops failed permanently", extra=extra)
            return NotificationResult("failed", mail.message_id, reason)

        _logger().warning("Mail delivery failed permanently", extra=extra)
        await self._report_failure(mail, reason)
        return NotificationResult("failed", mail.message_id, reason)

    async def _report_failure(self, failed: _Mail, reason: str) -> None:
        if failed.role == "ops":
            return

        report = _Mail(
            message_id=failure_report_id(failed.message_id),
            ticket_id=failed.ticket_id,
            kind="delivery_failure",
            role="ops",
            recipient=self.settings.ops_address,
        )
        earlier = await asyncio.to_thread(self.store.mail, report.message_id)
        if earlier is not None and earlier.status != "delayed":
            return

        message = self._new_message(
            report,
            f"[{failed.ticket_id}] Mail to the {failed.role} could not be delivered",
        )
        message["To"] = self.settings.ops_email
        summary = (
            f"The {failed.kind} mail to the {failed.role} of ticket "
            f"{failed.ticket_id} could not be delivered and will not be retried."
        )
        action = (
            f"What to do: check the {failed.role}'s mail address on the ticket "
            "and reach them another way."
        )
        message.set_content(
            "\n".join(
                [
                    textwrap.fill(summary, LINE_WIDTH),
                    "",
                    f"Reason:     {reason}",
                    f"Message-ID: {failed.message_id}",
                    "",
                    textwrap.fill(action, LINE_WIDTH),
                    "",
                    SIGNATURE,
                    "",
                ]
            )
        )
        await self._send_and_record(report, message)

    def _new_message(self, mail: _Mail, subject: str) -> EmailMessage:
        # Raises ValueError when a header value contains a line break.
        message = EmailMessage(policy=MESSAGE_POLICY)
        message["From"] = self.settings.mail_from
        message["Subject"] = subject
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = mail.message_id
        # Asks auto-responders not to reply (RFC 3834).
        message["Auto-Submitted"] = "auto-generated"
        # For mail filters and tests; most mail clients hide X- headers.
        message["X-Ticket-Id"] = mail.ticket_id
        message["X-Notification-Kind"] = mail.kind
        message["X-Notification-Role"] = mail.role
        return message

    async def _record(self, mail: _Mail, status: str, detail: str | None) -> None:
        await asyncio.to_thread(
            self.store.record_mail,
            message_id=mail.message_id,
            ticket_id=mail.ticket_id,
            kind=mail.kind,
            role=mail.role,
            recipient=mail.recipient,
            status=status,
            detail=detail,
        )

    # SMTP

    async def _deliver(self, mail: _Mail, message: EmailMessage) -> None:
        """Hand one message to the SMTP server within SMTP_TIMEOUT_SECONDS.

        Raises _PermanentFailure on a 5xx reply to the recipient or the data,
        _Unconfirmed when the data got no reply, and MailDeliveryDelayed on
        any other failure, after recording the mail as ``delayed``.
        """
        try:
            await self._smtp_exchange(mail, message)
        except MailDeliveryDelayed as delayed:
            await self._record(mail, "delayed", str(delayed))
            _logger().warning(
                "Mail delivery delayed, will retry",
                extra={**mail.log_fields(), "reason": redact_addresses(str(delayed))},
            )
            raise

    async def _smtp_exchange(self, mail: _Mail, message: EmailMessage) -> None:
        assert mail.recipient is not None
        client = self._smtp_client()
        data_started = False
        try:
            # aiosmtplib's timeout applies to each command. This one bounds the
            # whole exchange, so it ends before the activity's own timeout.
            async with asyncio.timeout(self.settings.smtp_timeout_seconds):
                await client.connect()
                await client.mail(self.settings.mail_from_address)
                await client.rcpt(mail.recipient)

                # From here on the server may accept the message without our
                # knowing, so a stopped attempt must not be repeated.
                await self._record(mail, "sending", None)
                data_started = True
                await client.data(message.as_bytes(policy=MESSAGE_POLICY))
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            client.close()
            raise _delivery_error(error, data_started=data_started) from error
        except BaseException:
            client.close()
            raise

        # The server has accepted the message, so a failed QUIT changes nothing.
        try:
            async with asyncio.timeout(self.settings.smtp_timeout_seconds):
                await client.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()

    def _smtp_client(self) -> aiosmtplib.SMTP:
        settings = self.settings
        password = None
        if settings.smtp_password is not None:
            password = settings.smtp_password.get_secret_value()
        return aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=password,
            # The mail domain, so that EHLO needs no lookup of this host's name.
            local_hostname=settings.mail_domain,
            timeout=settings.smtp_timeout_seconds,
            use_tls=settings.smtp_tls == "tls",
            # False, not None: unset SMTP_TLS means no STARTTLS even if offered.
            start_tls=settings.smtp_tls == "starttls",
        )


def _delivery_error(error: BaseException, *, data_started: bool) -> Exception:
    """Classify an SMTP failure as permanent, unconfirmed or delayed."""
    # A reply to RCPT or to the message data is about this mail alone.
    if isinstance(error, aiosmtplib.SMTPRecipientRefused | aiosmtplib.SMTPDataError):
        if isinstance(error, aiosmtplib.SMTPRecipientRefused):
            reason = f"recipient rejected: {error.code} {error.message}"
        else:
            reason = f"message rejected: {error.code} {error.message}"
        if 500 <= error.code < 600:
            return _PermanentFailure(reason)
        return MailDeliveryDelayed(reason)

    if isinstance(error, aiosmtplib.SMTPResponseException):
        # A rejected greeting, sender or login: the server or the settings are
        # at fault, not this mail, so the mail waits for a fix.
        return MailDeliveryDelayed(f"{error.code} {error.message}")

    if data_started:
        return _Unconfirmed(_describe(error))
    return MailDeliveryDelayed(_describe(error))


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError) and not str(error):
        return "timed out"
    return f"{type(error).__name__}: {error}"


def _is_mail_address(address: str) -> bool:
    return _MAIL_ADDRESS.fullmatch(address) is not None


def _log_unconfirmed(mail: _Mail, detail: str) -> None:
    _logger().warning(
        "Mail delivery unconfirmed, not sending again",
        extra={**mail.log_fields(), "reason": redact_addresses(detail)},
    )
