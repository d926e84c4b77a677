"""Service settings, read once from the environment and an optional ``.env`` file.

Every field is read from the environment variable of the same name in upper
case, for example ``smtp_port`` from ``SMTP_PORT``. Build one object with
``load_settings()`` at start-up and pass it down.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from email.utils import parseaddr
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from temporalio.envconfig import ClientConfig, ClientConnectConfig

from workflows.model import ACTIVITY_TIMEOUT_SECONDS, DEFAULT_MAX_HISTORY_LENGTH
from workflows.policy import policy_with_overrides

# Mail is sent by an activity whose start-to-close timeout is 60 seconds. The
# whole SMTP exchange must end before that, or Temporal would retry a send that
# may still finish, and the customer could get two copies.

# Letters, digits and hyphens separated by dots: a domain name that a
# Message-ID can use unchanged.
_DOMAIN_PATTERN = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")


_VARIABLES_WITH_SECRETS = {
    "SMTP_PASSWORD",
    "DATABASE_URL",
    "PAYLOAD_ENCRYPTION_KEY",
    "PAYLOAD_DECRYPTION_KEYS",
}

# Payload keys are AES-256 keys.
PAYLOAD_KEY_BYTES = 32
_HEX_KEY_PATTERN = re.compile(r"^[0-9A-Fa-f]{64}$")


class SettingsError(ValueError):
    """Invalid settings. The message names each invalid variable and the reason."""


class Settings(BaseSettings):
    """Settings of the ticket-guard worker and its activities."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # A ValidationError's text would otherwise quote a rejected key or
        # password. load_settings() shows the values that are safe to show.
        hide_input_in_errors=True,
    )

    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "ticket-communications"

    # A relative SQLite path is relative to the current directory.
    database_url: str = "sqlite:///var/ticket-guard.db"

    smtp_host: str = "localhost"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # Unset means plain SMTP with no TLS, as the local mail sink expects.
    smtp_tls: Literal["starttls", "tls"] | None = None
    # Bounds the whole SMTP exchange of one mail. It must stay below the send
    # activity's start-to-close timeout (ACTIVITY_TIMEOUT_SECONDS).
    smtp_timeout_seconds: float = Field(default=20, gt=0, lt=ACTIVITY_TIMEOUT_SECONDS)

    mail_from: str = "ticket-guard <no-reply@ticket-guard.localhost>"
    ops_email: str = "ops@ticket-guard.localhost"

    default_timezone: str = "America/New_York"

    # JSON object of Policy durations to change for new tickets, such as
    # {"claim_within": "6h", "notes_reminder_before": "3h"}.
    policy_overrides: dict[str, str] = Field(default_factory=dict)

    # Whether new tickets keep their search attributes (TechId, TicketState
    # and the others in workflows/search.py) current. The worker still turns
    # them off for a ticket when the namespace lacks one of them.
    ticket_search_attributes: bool = True

    # History events after which a ticket continues as new, unless the server
    # suggests it first. Running tickets keep the value they started with.
    max_history_length: int = Field(default=DEFAULT_MAX_HISTORY_LENGTH, ge=100)

    # AES-256-GCM key that encrypts workflow payloads before they reach
    # Temporal: 32 random bytes as base64 or 64 hex digits. Unset means
    # payloads are stored as plain JSON. There is no default key.
    payload_encryption_key: SecretStr | None = None
    # Earlier keys, separated by commas, that still decrypt payloads written
    # before the last key change. They never encrypt.
    payload_decryption_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list
    )

    # Metrics and logs of the worker.
    # TCP port of the worker's Prometheus endpoint, /metrics. Unset means no
    # endpoint, so that several workers on one host need no port each.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # IP address the endpoint listens on. Use 0.0.0.0 in a container, so
    # that Prometheus can reach it from outside.
    metrics_address: str = "127.0.0.1"
    # "text" writes key=value lines for people. "json" writes one JSON object
    # per line for a log pipeline.
    log_format: Literal["text", "json"] = "text"

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_port_means_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() == "":
            return None
        return value

    @field_validator("metrics_address")
    @classmethod
    def _check_metrics_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                "not an IP address such as 127.0.0.1, or 0.0.0.0 for every interface"
            ) from None
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lowercase_log_format(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().lower()
        return value

    @property
    def metrics_bind_address(self) -> str | None:
        """The ``host:port`` the Prometheus endpoint binds, or None without a port."""
        if self.metrics_port is None:
            return None
        host = self.metrics_address
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
        return f"{host}:{self.metrics_port}"

    @field_validator(
        "smtp_username",
        "smtp_password",
        "smtp_tls",
        "payload_encryption_key",
        mode="before",
    )
    @classmethod
    def _empty_means_unset(cls, value: Any) -> Any:
        # An empty line such as "SMTP_TLS=" in a .env file means "not set".
        if isinstance(value, str) and value.strip() == "":
            return None
        return value

    @field_validator("smtp_tls", mode="before")
    @classmethod
    def _lowercase_tls_mode(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().lower()
        return value

    @field_validator("payload_decryption_keys", mode="before")
    @classmethod
    def _split_key_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("payload_encryption_key")
    @classmethod
    def _check_payload_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_payload_key(value.get_secret_value())
        return value

    @field_validator("payload_decryption_keys")
    @classmethod
    def _check_payload_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        for position, key in enumerate(value, start=1):
            try:
                decode_payload_key(key.get_secret_value())
            except ValueError as error:
                raise ValueError(f"key {position} of the list: {error}") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        try:
            make_url(value)
        except (ArgumentError, ValueError) as error:
            raise ValueError(
                "not a SQLAlchemy database URL, for example "
                "sqlite:///var/ticket-guard.db or "
                "postgresql+psycopg://user@host/dbname"
            ) from error
        return value

    @field_validator("mail_from", "ops_email")
    @classmethod
    def _check_mail_address(cls, value: str) -> str:
        _name, address = parseaddr(value)
        local_part, _at, domain = address.rpartition("@")
        if not local_part or not _DOMAIN_PATTERN.match(domain):
            raise ValueError(
                "not a mail address such as 'ticket-guard <no-reply@example.com>'"
            )
        return value

    @field_validator("default_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(
                "not an IANA time zone name such as America/New_York"
            ) from error
        return value

    @field_validator("policy_overrides")
    @classmethod
    def _check_policy_overrides(cls, value: dict[str, str]) -> dict[str, str]:
        policy_with_overrides(value)
        return value

    @model_validator(mode="after")
    def _check_smtp_credentials(self) -> Settings:
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ValueError(
                "SMTP_USERNAME and SMTP_PASSWORD must be set together or not at all"
            )
        return self

    @property
    def mail_from_address(self) -> str:
        """The bare address of MAIL_FROM, without the display name."""
        return parseaddr(self.mail_from)[1]

    @property
    def ops_address(self) -> str:
        """The bare address of OPS_EMAIL, without the display name."""
        return parseaddr(self.ops_email)[1]

    @property
    def mail_domain(self) -> str:
        """The domain of MAIL_FROM, used on the right of every Message-ID."""
        return self.mail_from_address.rpartition("@")[2]

    @property
    def has_payload_keys(self) -> bool:
        """Whether PAYLOAD_ENCRYPTION_KEY or PAYLOAD_DECRYPTION_KEYS is set."""
        return (
            self.payload_encryption_key is not None
            or len(self.payload_decryption_keys) > 0
        )

    def temporal_connect_config(self) -> ClientConnectConfig:
        """Return the keyword arguments of ``Client.connect``.

        TLS, an API key or gRPC metadata come from the Temporal CLI's client
        profile (its TOML file and ``TEMPORAL_*`` variables). The address and
        namespace always come from these settings.
        """
        config = ClientConfig.load_client_connect_config()
        config["target_host"] = self.temporal_address
        config["namespace"] = self.temporal_namespace
        return config

    def __repr_args__(self) -> Any:
        # DATABASE_URL may carry a password, so show it masked. SMTP_PASSWORD is
        # a SecretStr and masks itself.
        for name, value in super().__repr_args__():
            if name == "database_url" and isinstance(value, str):
                value = make_url(value).render_as_string(hide_password=True)
            yield name, value


def decode_payload_key(text: str) -> bytes:
    """Decode a payload key written as 64 hex digits or as base64 of 32 bytes.

    Base64 may be the standard or the URL-safe alphabet, with or without
    padding. Raises ValueError, whose message never contains the key.
    """
    text = text.strip()
    if _HEX_KEY_PATTERN.match(text):
        return bytes.fromhex(text)

    standard = text.replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except binascii.Error:
        raise ValueError(
            f"not a key: use {PAYLOAD_KEY_BYTES} random bytes as base64 or as "
            "64 hex digits, such as the output of 'python codec.py new-key'"
        ) from None
    if len(key) != PAYLOAD_KEY_BYTES:
        raise ValueError(
            f"the key must decode to {PAYLOAD_KEY_BYTES} bytes but decodes to "
            f"{len(key)}; make a new key with 'python codec.py new-key'"
        )
    return key


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment and ``.env``.

    Keyword arguments override both, by field name (``smtp_port=2525``).
    Raises SettingsError naming each invalid variable and why it is invalid.
    """
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(_describe_errors(error)) from None


def _describe_errors(error: ValidationError) -> str:
    lines = ["Invalid settings:"]
    for problem in error.errors():
        location = problem["loc"]
        variable = str(location[0]).upper() if location else "settings"
        line = f"  {variable}: {problem['msg']}"

        # Show the rejected value unless it may hold a password, so the
        # message is safe to log.
        if location and variable not in _VARIABLES_WITH_SECRETS:
            line += f" (got {problem['input']!r})"
        lines.append(line)
    return "\n".join(lines)
