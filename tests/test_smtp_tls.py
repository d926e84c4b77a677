"""The mailer over TLS: STARTTLS and implicit TLS with login, against aiosmtpd.

Each test generates a certificate authority and a server certificate for
127.0.0.1 with the ``cryptography`` package, and runs aiosmtpd with them on
a free loopback port. The mailer trusts the authority through SSL_CERT_FILE,
which the default TLS context of Python's ``ssl`` module reads, as a host
with a private authority would set it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from activities.mailer import MailDeliveryDelayed, Mailer
from activities.store import Store
from settings import load_settings
from tests.binaries import free_port
from workflows.model import NotificationInput

USERNAME = "ticket-guard"
PASSWORD = "tls-only-pass-51"
LOOPBACK = "127.0.0.1"


@dataclass
class TlsFiles:
    """PEM files of a test certificate authority and a server certificate."""

    authority: Path
    certificate: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certificate, self.key)
        return context


def write_tls_files(folder: Path) -> TlsFiles:
    """Create an authority and a certificate it signed for 127.0.0.1."""
    now = datetime.now(UTC)
    authority_key = ec.generate_private_key(ec.SECP256R1())
    authority_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    authority = (
        x509.CertificateBuilder()
        .subject_name(authority_name)
        .issuer_name(authority_name)
        .public_key(authority_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(authority_key.public_key()),
            critical=False,
        )
        .sign(authority_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)]))
        .issuer_name(authority_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                authority_key.public_key()
            ),
            critical=False,
        )
        .sign(authority_key, hashes.SHA256())
    )

    files = TlsFiles(
        authority=folder / "authority.pem",
        certificate=folder / "server.pem",
        key=folder / "server-key.pem",
    )
    files.authority.write_bytes(authority.public_bytes(serialization.Encoding.PEM))
    files.certificate.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@dataclass
class Received:
    """A mail the server accepted, and how its session was secured."""

    content: bytes
    over_tls: bool


@dataclass
class TlsMailServer:
    """aiosmtpd on loopback that requires TLS before AUTH, and AUTH before mail."""

    port: int
    received: list[Received] = field(default_factory=list)
    # User name, password and whether the connection was encrypted, per AUTH.
    logins: list[tuple[str, str, bool]] = field(default_factory=list)

    def authenticate(
        self,
        server: SMTP,
        _session: Session,
        _envelope: Envelope,
        _mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login = (auth_data.login.decode(), auth_data.password.decode())
        self.logins.append((*login, over_tls(server)))
        return AuthResult(success=login == (USERNAME, PASSWORD), handled=False)

    async def handle_DATA(
        self, server: SMTP, _session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or b""
        self.received.append(Received(content, over_tls(server)))
        return "250 2.0.0 OK"


def over_tls(server: SMTP) -> bool:
    """Return whether the server's connection is encrypted, by either mode."""
    assert server.transport is not None
    return server.transport.get_extra_info("ssl_object") is not None


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return write_tls_files(tmp_path)


@pytest.fixture
def trust_authority(tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.authority))


async def serve(
    tls_files: TlsFiles, *, implicit_tls: bool
) -> tuple[TlsMailServer, asyncio.Server]:
    """Start the server with STARTTLS, or with TLS from the first byte."""
    mail_server = TlsMailServer(free_port())
    context = tls_files.server_context()

    def connection() -> SMTP:
        with warnings.catch_warnings():
            # aiosmtpd counts only STARTTLS as TLS for auth_require_tls, and
            # warns when it is off. With implicit TLS the listener encrypts.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            return SMTP(
                mail_server,
                hostname="mail.test",
                tls_context=None if implicit_tls else context,
                require_starttls=not implicit_tls,
                authenticator=mail_server.authenticate,
                auth_required=True,
                auth_require_tls=not implicit_tls,
            )

    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        connection, LOOPBACK, mail_server.port, ssl=context if implicit_tls else None
    )
    return mail_server, listener


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = Store(f"sqlite:///{tmp_path / 'tickets.db'}")
    opened.create_tables()
    yield opened
    opened.dispose()


def mailer_for(port: int, store: Store, smtp_tls: str | None) -> Mailer:
    settings = load_settings(
        database_url="sqlite:///unused.db",
        smtp_host=LOOPBACK,
        smtp_port=port,
        smtp_username=USERNAME,
        smtp_password=PASSWORD,
        smtp_tls=smtp_tls,
        smtp_timeout_seconds=5,
        ops_email="ops@company.test",
    )
    return Mailer(settings, store)


def breach_to_ops() -> NotificationInput:
    return NotificationInput(
        ticket_id="T-2001",
        sequence=2,
        kind="first_contact_breach",
        role="ops",
        recipient=None,
        due_at="2026-06-10T13:00:00+00:00",
        timezone="America/New_York",
        priority="high",
        customer_name="Dana Reyes",
        tech_name="Kim Park",
        owed_kind="first_contact",
        owed_due_at="2026-06-10T13:00:00+00:00",
    )


@pytest.mark.usefixtures("trust_authority")
@pytest.mark.parametrize(
    ("smtp_tls", "implicit_tls"), [("starttls", False), ("tls", True)]
)
async def test_tls_login_sends_mail(
    tls_files: TlsFiles,
    store: Store,
    smtp_tls: str,
    implicit_tls: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    mail_server, listener = await serve(tls_files, implicit_tls=implicit_tls)
    try:
        result = await mailer_for(mail_server.port, store, smtp_tls).send(
            breach_to_ops()
        )
    finally:
        listener.close()
        await listener.wait_closed()

    assert result.status == "sent"
    assert mail_server.logins == [(USERNAME, PASSWORD, True)]
    assert len(mail_server.received) == 1
    assert mail_server.received[0].over_tls
    assert b"Message-ID: <T-2001.2.first_contact_breach.ops@" in (
        mail_server.received[0].content
    )
    assert PASSWORD not in caplog.text


async def test_untrusted_certificate_delays_mail(
    tls_files: TlsFiles,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # A trust store without the test authority.
    empty_bundle = tmp_path / "empty.pem"
    empty_bundle.write_text("")
    monkeypatch.setenv("SSL_CERT_FILE", str(empty_bundle))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    mail_server, listener = await serve(tls_files, implicit_tls=False)
    try:
        with pytest.raises(MailDeliveryDelayed, match="CERTIFICATE_VERIFY_FAILED"):
            await mailer_for(mail_server.port, store, "starttls").send(breach_to_ops())
    finally:
        listener.close()
        await listener.wait_closed()

    assert mail_server.logins == []
    assert mail_server.received == []


async def test_plain_client_sends_no_password_to_tls_server(
    tls_files: TlsFiles, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    mail_server, listener = await serve(tls_files, implicit_tls=False)
    try:
        with pytest.raises(MailDeliveryDelayed):
            await mailer_for(mail_server.port, store, None).send(breach_to_ops())
    finally:
        listener.close()
        await listener.wait_closed()

    assert mail_server.logins == []
    assert mail_server.received == []
    assert PASSWORD not in caplog.text
