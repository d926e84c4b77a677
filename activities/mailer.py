"""Send ticket notifications over SMTP, at most once each.

Every notification has a stable Message-ID, and sent_mail keeps its status, so
a retried activity or a restarted worker does not send a second copy:

- ``delayed``: a temporary failure, such as a refused connection or a 4xx
  reply, before the server accepted the message. The next attempt sends it.
- ``sending``: an attempt is between RCPT and the end of the message data.
  The line with a lone dot that ends the data is what commits a mail
  transaction (RFC 5321, section 3.3), so the server has nothing to deliver.
  Once SMTP_TIMEOUT_SECONDS have passed since the row was written, that
  attempt has ended, and a later one sends the mail again.
- ``unconfirmed``: the final dot went out, or was about to, and no reply was
  read. The server may have accepted the message, so it is not sent again.
  The attempt that hit this fails, and the next attempt reports the mail to
  OPS_EMAIL once and returns ``already_sent``.
- ``sent``: the server accepted the message.
- ``failed``: the mail cannot be delivered (a 5xx reply, no valid address).

The ambiguous window is the time between writing the final dot and reading
the server's reply: a lost connection, a timeout or a killed worker there
leaves the mail ``unconfirmed``. A 4xx or 5xx reply to the data, and a
connection lost before the dot was written, mean the server did not accept
the message. ``unconfirmed`` is written just before the dot, so an attempt
that stops between the two leaves a mail the server never got marked
``unconfirmed``: it is lost, and ops hear of it. A lost mail is preferred to
a second copy.
"""

from __future__ import annotations

import asyncio
import email.policy
import logging
import re
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any

import aiosmtplib
from sqlalchemy.exc import SQLAlchemyError
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

# How long an attempt keeps trying to record a mail the server accepted:
# short next to the activity's 60-second timeout. A longer database outage
# fails the attempt, and the next one reports the mail as unconfirmed.
SENT_RECORD_RETRY_SECONDS = 20.0
SENT_RECORD_RETRY_INTERVAL_SECONDS = 1.0

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
# Any line ending, and a dot at the start of a line, in the message data.
_LINE_END = re.compile(rb"\r\n|\r|\n")
_LINE_START_DOT = re.compile(rb"(?m)^\.")

# The detail of a mail whose final dot is about to go out.
_NO_REPLY_YET = "the attempt ended before the reply to the message data was read"

# Counter of mails by outcome, on the worker's metrics endpoint, labelled
# with the mail's kind and role and a status of sent, failed or unconfirmed.
MAILS_SENT_METRIC = "ticket_guard_mails_sent"


class MailDeliveryDelayed(Exception):
    """A temporary SMTP failure: the activity should retry later."""


class MailDeliveryUnconfirmed(Exception):
    """The server got the whole message but its reply never arrived.

    The activity should retry: the next attempt finds the mail
    ``unconfirmed``, reports it to OPS_EMAIL and does not send it again.
    """


class _PermanentFailure(Exception):
    """The server rejected this mail for good (a 5xx reply)."""


class _Unconfirmed(Exception):
    """The final dot of the message data went out but no reply was read."""


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
    return _report_id(message_id, "failure-report")


def unconfirmed_report_id(message_id: str) -> str:
    """Return the Message-ID of the ops report about the unconfirmed ``message_id``."""
    return _report_id(message_id, "unconfirmed-report")


def _report_id(message_id: str, suffix: str) -> str:
    local_part, _at, domain = message_id.strip("<>").rpartition("@")
    return f"<{local_part}.{suffix}@{domain}>"


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


def _count_mail(mail: _Mail, status: str) -> None:
    """Count one mail in MAILS_SENT_METRIC, unless called outside an activity.

    The activity's metric meter adds the namespace, task queue and activity
    type as labels.
    """
    if not activity.in_activity():
        return
    counter = activity.metric_meter().create_counter(
        MAILS_SENT_METRIC,
        "Notification and report mails, by kind, role and outcome",
    )
    counter.add(1, {"kind": mail.kind, "role": mail.role, "status": status})


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
        the Message-ID or may have sent it, and reports an unconfirmed mail
        to a tech or customer once to OPS_EMAIL. Returns ``failed`` with the
        reason when the mail cannot be delivered, and reports a failed mail
        to a tech or customer once to OPS_EMAIL. Otherwise returns ``sent``.

        Raises MailDeliveryDelayed on a temporary failure and
        MailDeliveryUnconfirmed when the server never replied to the whole
        message, so that the caller retries, and InvalidNotification when the
        notification cannot be composed.
        """
        message_id = self.message_id(notification)
        earlier = await asyncio.to_thread(self.store.mail, message_id)
        if earlier is not None and not self._may_send_again(earlier):
            return await self._result_of_earlier_attempt(earlier)

        message = self.compose(notification)
        mail = self._mail(notification)
        if mail.recipient is None:
            return await self._fail(mail, f"the {mail.role} has no mail address")
        if not _is_mail_address(mail.recipient):
            return await self._fail(mail, f"the {mail.role}'s mail address is invalid")
        return await self._send_and_record(mail, message)

    def _may_send_again(self, earlier: MailRecord) -> bool:
        """Return True if the server cannot hold the mail that ``earlier`` recorded.

        Raises MailDeliveryDelayed while an attempt recorded as ``sending``
        may still be running, because it could still write the final dot.
        """
        if earlier.status == "delayed":
            return True
        if earlier.status != "sending":
            return False

        # The attempt that wrote the row ends its SMTP exchange within
        # SMTP_TIMEOUT_SECONDS, so an older row is left by an attempt that
        # ended without recording why, for example on a killed worker.
        # NOTE: this trusts the workers' clocks to agree, and a worker whose
        # event loop stalls for longer could still be sending.
        age = datetime.now(UTC) - earlier.sent_at
        limit = timedelta(seconds=self.settings.smtp_timeout_seconds)
        if age < limit:
            raise MailDeliveryDelayed(
                f"an attempt started handing over this mail {age.total_seconds():.1f}"
                " seconds ago and may still be running"
            )
        return True

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

        reason = earlier.detail or "unknown"
        if earlier.status == "unconfirmed":
            await self._settle_unconfirmed(mail, reason)
            detail = f"unconfirmed, so not sent again: {reason}"
            return NotificationResult("already_sent", mail.message_id, detail)

        # A failed mail: the attempt that recorded it may have stopped before
        # its report to ops went out.
        await self._report_failure(mail, reason)
        return NotificationResult("failed", mail.message_id, earlier.detail)

    async def _send_and_record(
        self, mail: _Mail, message: EmailMessage
    ) -> NotificationResult:
        """Hand the message to the server and record what became of it.

        A permanent failure is reported to OPS_EMAIL unless the mail went there.
        Raises MailDeliveryDelayed on a temporary failure and
        MailDeliveryUnconfirmed when no reply to the message data came.
        """
        try:
            await self._deliver(mail, message)
        except _PermanentFailure as failure:
            return await self._fail(mail, str(failure))
        except _Unconfirmed as unconfirmed:
            reason = f"no reply to the message data: {unconfirmed}"
            await self._record(mail, "unconfirmed", reason)
            _count_mail(mail, "unconfirmed")
            _logger().warning(
                "Mail delivery unconfirmed, will not send again",
                extra={**mail.log_fields(), "reason": redact_addresses(reason)},
            )
            # Failing the attempt leaves the report to ops to the next one,
            # which handles every unconfirmed mail the same way, including
            # one whose worker was killed while waiting for the reply.
            raise MailDeliveryUnconfirmed(f"unconfirmed: {reason}") from unconfirmed

        await self._record_sent(mail)
        _count_mail(mail, "sent")
        _logger().info("Mail sent", extra=mail.log_fields())
        return NotificationResult("sent", mail.message_id)

    async def _record_sent(self, mail: _Mail) -> None:
        """Record that the server took the mail, trying again through a short outage.

        Were the attempt to fail here, the next one would find the mail
        ``unconfirmed`` and tell ops it may not have arrived, though it did.
        """
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + SENT_RECORD_RETRY_SECONDS
        while True:
            try:
                await self._record(mail, "sent", None)
                return
            except SQLAlchemyError as error:
                if loop.time() >= give_up_at:
                    raise
                _logger().warning(
                    "Recording a sent mail failed, trying again",
                    extra={**mail.log_fields(), "error": type(error).__name__},
                )
                await asyncio.sleep(SENT_RECORD_RETRY_INTERVAL_SECONDS)

    async def _fail(self, mail: _Mail, reason: str) -> NotificationResult:
        await self._record(mail, "failed", reason)
        _count_mail(mail, "failed")
        extra = {**mail.log_fields(), "reason": redact_addresses(reason)}
        if mail.role == "ops":
            # A failed mail to ops is only logged, at error level, because a report
            # would go to the same address.
            _logger().error("Mail to ops failed permanently", extra=extra)
            return NotificationResult("failed", mail.message_id, reason)

        _logger().warning("Mail delivery failed permanently", extra=extra)
        await self._report_failure(mail, reason)
        return NotificationResult("failed", mail.message_id, reason)

    async def _settle_unconfirmed(self, mail: _Mail, reason: str) -> None:
        """Log a mail that may not have arrived and report it to ops once."""
        extra = {**mail.log_fields(), "reason": redact_addresses(reason)}
        if mail.role == "ops":
            # As for a failed mail to ops, a report would go to the same address.
            _logger().error("Mail to ops unconfirmed, not sending again", extra=extra)
            return

        _logger().warning("Mail delivery unconfirmed, not sending again", extra=extra)
        await self._report(
            mail,
            kind="delivery_unconfirmed",
            message_id=unconfirmed_report_id(mail.message_id),
            subject=f"[{mail.ticket_id}] Mail to the {mail.role} may not have arrived",
            summary=(
                f"The {mail.kind} mail to the {mail.role} of ticket "
                f"{mail.ticket_id} was handed to the mail server, but the server "
                "never confirmed it. It will not be sent again, so that nobody "
                "gets two copies."
            ),
            action=(
                "What to do: look for the Message-ID in the mail server's log. "
                f"If the mail is not there, reach the {mail.role} another way."
            ),
            reason=reason,
        )

    async def _report_failure(self, failed: _Mail, reason: str) -> None:
        if failed.role == "ops":
            return

        await self._report(
            failed,
            kind="delivery_failure",
            message_id=failure_report_id(failed.message_id),
            subject=(
                f"[{failed.ticket_id}] Mail to the {failed.role} could not be delivered"
            ),
            summary=(
                f"The {failed.kind} mail to the {failed.role} of ticket "
                f"{failed.ticket_id} could not be delivered and will not be retried."
            ),
            action=(
                f"What to do: check the {failed.role}'s mail address on the ticket "
                "and reach them another way."
            ),
            reason=reason,
        )

    async def _report(
        self,
        about: _Mail,
        *,
        kind: str,
        message_id: str,
        subject: str,
        summary: str,
        action: str,
        reason: str,
    ) -> None:
        """Send ops a report about the mail ``about``, once for its Message-ID."""
        report = _Mail(
            message_id=message_id,
            ticket_id=about.ticket_id,
            kind=kind,
            role="ops",
            recipient=self.settings.ops_address,
        )
        earlier = await asyncio.to_thread(self.store.mail, report.message_id)
        if earlier is not None and not self._may_send_again(earlier):
            return

        message = self._new_message(report, subject)
        message["To"] = self.settings.ops_email
        message.set_content(
            "\n".join(
                [
                    textwrap.fill(summary, LINE_WIDTH),
                    "",
                    f"Reason:     {reason}",
                    f"Message-ID: {about.message_id}",
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
        _Unconfirmed when the final dot went out and no reply was read, and
        MailDeliveryDelayed on any other failure, after recording the mail as
        ``delayed``.
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
        final_dot_sent = False
        try:
            # aiosmtplib's timeout applies to each command. This one bounds the
            # whole exchange, so it ends before the activity's own timeout.
            async with asyncio.timeout(self.settings.smtp_timeout_seconds):
                await client.connect()
                await client.mail(self.settings.mail_from_address)
                await client.rcpt(mail.recipient)
                await self._record(mail, "sending", None)

                # aiosmtplib's data() writes the message right after the 354
                # reply, with no point to record anything in between, so the
                # exchange runs the DATA command itself.
                await _start_data(client)
                # Recorded before the final dot goes out, because from then on
                # the server may accept the message without our knowing.
                await self._record(mail, "unconfirmed", _NO_REPLY_YET)
                _write_data(client, message)
                final_dot_sent = True
                await _read_data_reply(client, self.settings.smtp_timeout_seconds)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            client.close()
            raise _delivery_error(error, final_dot_sent=final_dot_sent) from error
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


async def _start_data(client: aiosmtplib.SMTP) -> None:
    """Send the DATA command; raise SMTPDataError unless the server replies 354."""
    reply = await client.execute_command(b"DATA")
    if reply.code != aiosmtplib.SMTPStatus.start_input:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)


def _write_data(client: aiosmtplib.SMTP, message: EmailMessage) -> None:
    """Write the message and the final dot in one write to the connection."""
    if client.protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    data = _LINE_END.sub(b"\r\n", message.as_bytes(policy=MESSAGE_POLICY))
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    # A line that starts with a dot gets a second one, so that only the final
    # line ends the data (RFC 5321, section 4.5.2).
    data = _LINE_START_DOT.sub(b"..", data)
    client.protocol.write(data + b".\r\n")


async def _read_data_reply(client: aiosmtplib.SMTP, timeout: float) -> None:
    """Read the reply to the message data; raise SMTPDataError unless it is 250."""
    if client.protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    reply = await client.protocol.read_response(timeout=timeout)
    if reply.code != aiosmtplib.SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)


def _delivery_error(error: BaseException, *, final_dot_sent: bool) -> Exception:
    """Classify an SMTP failure as permanent, unconfirmed or delayed."""
    # A reply to RCPT or to the message data is about this mail alone. A 4xx
    # or 5xx reply to the data means the server did not take the message.
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

    # A timeout or a lost connection: the server has the message only if the
    # final dot reached it.
    if final_dot_sent:
        return _Unconfirmed(_describe(error))
    return MailDeliveryDelayed(_describe(error))


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError) and not str(error):
        return "timed out"
    return f"{type(error).__name__}: {error}"


def _is_mail_address(address: str) -> bool:
    # aiosmtplib and formataddr encode addresses as ASCII, and this mailer
    # does not ask for SMTPUTF8, so a non-ASCII address cannot be delivered.
    return address.isascii() and _MAIL_ADDRESS.fullmatch(address) is not None
