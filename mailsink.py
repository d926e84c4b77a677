"""A local SMTP server that keeps every mail, for tests and the local stack.

Run it on its own with ``python mailsink.py --port 1025 --maildir var/mail``.
It logs the Message-ID and subject of each mail and stores the mail in the
Maildir, which a mail client such as mutt opens (``mutt -f var/mail``).

In tests, start it on a free loopback port and read ``messages``. Its fault
methods make it reply to the sender, a recipient or the message data with a
chosen code (421, 550, ...), or hold back the reply to the DATA command or to
the message data until released. ``fault_replies`` lists every reply that a
fault sent, so a test can check that its fault was hit.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import logging
import mailbox
import signal
import warnings
from collections import deque
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.smtp import (
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    syntax,
)

logger = logging.getLogger("mailsink")

ACCEPTED = "250 2.0.0 OK: message accepted"


def message_id_of(message: EmailMessage) -> str:
    """Return the Message-ID of ``message`` without surrounding whitespace.

    A sender may fold a long Message-ID header onto a second line, and the
    parsed value then keeps the space that starts that line.
    """
    return str(message["Message-ID"] or "").strip()


class MailSink:
    """An SMTP server on ``host`` that accepts mail into memory and a Maildir.

    ``port`` 0 picks a free port; read the bound one from ``port`` after
    ``start()``. With ``credentials`` (user name, password) the server requires
    AUTH PLAIN or LOGIN, allowed without TLS because the sink only serves tests
    and local runs.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        maildir: str | Path | None = None,
        *,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.maildir_path = Path(maildir) if maildir else None
        self.maildir = mailbox.Maildir(maildir, create=True) if maildir else None
        self.credentials = credentials
        self.messages: list[EmailMessage] = []
        # Each reply that a fault sent instead of accepting, in order.
        self.fault_replies: list[str] = []
        # DATA commands whose 354 reply is held right now.
        self.data_commands_waiting = 0

        self._server: asyncio.Server | None = None
        self._connections: set[SMTP] = set()
        self._sender_reply: str | None = None
        self._rejected_recipients: dict[str, str] = {}
        self._data_replies: deque[str] = deque()
        self._data_reply_until_cleared: str | None = None
        self._replies_released = asyncio.Event()
        self._replies_released.set()
        # None holds every reply until released; a number holds that many more.
        self._replies_to_hold: int | None = None
        self._data_commands_released = asyncio.Event()
        self._data_commands_released.set()

    # Running

    async def start(self) -> None:
        """Listen on the host and port; afterwards ``port`` is the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self._new_connection(loop), self.host, self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info(
            "Mail sink listening on %s:%d, Maildir %s",
            self.host,
            self.port,
            self.maildir_path or "(none)",
        )

    async def stop(self) -> None:
        """Stop listening, release held replies and close open connections.

        ``start()`` listens again on the same port, so a test can refuse
        connections for a while and keep the mail received so far.
        """
        self.release_replies()
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.close()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> MailSink:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _new_connection(self, loop: asyncio.AbstractEventLoop) -> SMTP:
        with warnings.catch_warnings():
            # aiosmtpd warns about AUTH without TLS, which this sink allows on
            # purpose because it only serves tests and local runs.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            return _TrackedSMTP(
                self,
                hostname="mailsink.localhost",
                ident="ticket-guard mail sink",
                authenticator=self._authenticate if self.credentials else None,
                auth_required=self.credentials is not None,
                auth_require_tls=False,
                loop=loop,
            )

    def smtp_settings(self) -> dict[str, Any]:
        """Return the SMTP settings, by Settings field name, that reach this sink.

        Plain SMTP without TLS, with the sink's credentials if it has any.
        """
        username, password = self.credentials or (None, None)
        return {
            "smtp_host": self.host,
            "smtp_port": self.port,
            "smtp_username": username,
            "smtp_password": password,
            "smtp_tls": None,
        }

    # Faults

    def reply_to_sender(self, reply: str = "421 4.3.2 Service not available") -> None:
        """Reply to every MAIL FROM with ``reply`` until faults are cleared."""
        self._sender_reply = reply

    def reject_recipient(
        self, address: str, reply: str = "550 5.1.1 Mailbox unavailable"
    ) -> None:
        """Reply to RCPT TO for ``address`` with ``reply`` until faults are cleared."""
        self._rejected_recipients[address.lower()] = reply

    def reply_to_data(self, reply: str, times: int | None = 1) -> None:
        """Reply to the next ``times`` messages with ``reply`` and drop them.

        ``times=None`` replies so to every message until faults are cleared.
        """
        if times is None:
            self._data_reply_until_cleared = reply
        else:
            self._data_replies.extend([reply] * times)

    def hold_replies(self, count: int | None = None) -> None:
        """Keep each accepted message but hold its 250 reply until released.

        The sink then acts like a server that accepted the mail but whose reply
        never arrived. With ``count``, only the replies to the next ``count``
        messages are held.
        """
        self._replies_to_hold = count
        self._replies_released.clear()

    def hold_data_commands(self) -> None:
        """Hold the 354 reply to each DATA command until released.

        The client then waits before it sends any message data, so the sink
        has none of the message when the client gives up.
        """
        self._data_commands_released.clear()

    def release_replies(self) -> None:
        """Send the held replies, 354 replies included, and stop holding new ones."""
        self._replies_released.set()
        self._replies_to_hold = None
        self._data_commands_released.set()

    def clear_faults(self) -> None:
        """Accept every sender, recipient and message again; release held replies."""
        self._sender_reply = None
        self._rejected_recipients.clear()
        self._data_replies.clear()
        self._data_reply_until_cleared = None
        self.release_replies()

    # Reading

    def messages_with_id(self, message_id: str) -> list[EmailMessage]:
        """Return the received messages whose Message-ID header is ``message_id``."""
        return [m for m in self.messages if message_id_of(m) == message_id]

    # SMTP handler hooks, called by aiosmtpd

    # aiosmtpd passes every hook argument by position; the unused ones start
    # with an underscore.

    async def handle_MAIL(
        self,
        _server: SMTP,
        _session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self._sender_reply is not None:
            self.fault_replies.append(self._sender_reply)
            return self._sender_reply
        # With this hook defined, aiosmtpd leaves the envelope to it.
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        _server: SMTP,
        _session: Session,
        envelope: Envelope,
        address: str,
        _rcpt_options: list[str],
    ) -> str:
        rejection = self._rejected_recipients.get(address.lower())
        if rejection is not None:
            self.fault_replies.append(rejection)
            return rejection
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, _server: SMTP, _session: Session, envelope: Envelope
    ) -> str:
        fault_reply = self._next_data_reply()
        if fault_reply is not None:
            self.fault_replies.append(fault_reply)
            return fault_reply

        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        if self.maildir is not None:
            self.maildir.add(message)
        logger.info("Received mail %s: %s", message["Message-ID"], message["Subject"])

        if self._holds_next_reply():
            await self._replies_released.wait()
        return ACCEPTED

    def _next_data_reply(self) -> str | None:
        if self._data_replies:
            return self._data_replies.popleft()
        return self._data_reply_until_cleared

    def _holds_next_reply(self) -> bool:
        if self._replies_released.is_set():
            return False
        if self._replies_to_hold is None:
            return True
        if self._replies_to_hold == 0:
            return False
        self._replies_to_hold -= 1
        return True

    async def _wait_before_data(self) -> None:
        """Wait while DATA commands are held; called before the 354 reply."""
        if self._data_commands_released.is_set():
            return
        self.data_commands_waiting += 1
        try:
            await self._data_commands_released.wait()
        finally:
            self.data_commands_waiting -= 1

    # aiosmtpd calls the authenticator without awaiting it, so it must be sync.
    def _authenticate(
        self,
        _server: SMTP,
        _session: Session,
        _envelope: Envelope,
        _mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        expected = self.credentials
        if isinstance(auth_data, LoginPassword) and expected is not None:
            given = (auth_data.login.decode(), auth_data.password.decode())
            if given == expected:
                return AuthResult(success=True)
        # handled=False makes aiosmtpd send its 535 reply itself.
        return AuthResult(success=False, handled=False)


class _TrackedSMTP(SMTP):
    """aiosmtpd's SMTP protocol, registered with its sink while connected."""

    def __init__(self, sink: MailSink, **options: Any) -> None:
        super().__init__(sink, **options)
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sink._connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._sink._connections.discard(self)
        super().connection_lost(error)

    # aiosmtpd has no hook before its 354 reply, so the sink's hold on DATA
    # commands wraps the command itself.
    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        await self._sink._wait_before_data()
        await super().smtp_DATA(arg)


def main() -> None:
    """Run the mail sink until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=1025, help="TCP port")
    parser.add_argument("--maildir", type=Path, help="Maildir that keeps every mail")
    arguments = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # aiosmtpd logs every SMTP command at INFO; one line per mail is enough.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    asyncio.run(_serve(arguments.host, arguments.port, arguments.maildir))


async def _serve(host: str, port: int, maildir: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(stop_signal, stop.set)

    async with MailSink(host, port, maildir):
        await stop.wait()
    logger.info("Mail sink stopped")


if __name__ == "__main__":
    main()
