"""Log setup of the worker: text or JSON lines, a ticket id on ticket lines, no secrets.

``configure_logging`` installs one handler on the root logger. With
``LOG_FORMAT=json`` each record becomes one JSON object on one line, with
``time``, ``level``, ``logger`` and ``message`` and then every field the
caller passed in ``extra``. The SDK's workflow and activity loggers put their
details in ``extra`` as ``temporal_workflow`` and ``temporal_activity``. A
record that carries no ``ticket_id`` gets one from the workflow id
``ticket-<ticket_id>`` in those details, so every line that the ticket
workflow, its activities or the SDK write about a ticket names it.

Every line passes through ``SecretRedactor`` first, which replaces the
values of SMTP_PASSWORD, the password in DATABASE_URL, the payload keys and
the Temporal API key wherever they appear, tracebacks included.

NOTE: the SDK's Core (its Rust part) writes its own warnings and errors to
standard error, past Python logging, so neither the format nor the
redaction here applies to them. ``worker.create_runtime`` sets them to JSON
when LOG_FORMAT is json.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, quote_plus

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from temporalio import activity, workflow

from settings import Settings

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
REDACTED = "[redacted]"
# Shorter values are left alone: replacing every "ab" would garble each line,
# and a value that short keeps nothing secret anyway.
MIN_REDACTED_LENGTH = 4

# Every ticket runs as the workflow "ticket-<ticket_id>" (workflows/ticket.py).
TICKET_WORKFLOW_PREFIX = "ticket-"
# The extra keys under which the SDK's loggers put the workflow id.
_SDK_DETAIL_KEYS = ("temporal_workflow", "temporal_activity")

# Attributes that every LogRecord has, so whatever else a record carries came
# from a caller's ``extra``.
_STANDARD_RECORD_FIELDS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


class _LogFormatSetting(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    log_format: LogFormat = "text"

    @field_validator("log_format", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        # As Settings reads it, so that both agree on "JSON".
        if isinstance(value, str):
            return value.strip().lower()
        return value


def requested_log_format() -> LogFormat:
    """Return LOG_FORMAT from the environment or ``.env``, or "text" if invalid.

    Read on its own before the other settings, so that an error in any other
    setting is logged in the requested format. The full settings report an
    invalid LOG_FORMAT.
    """
    try:
        return _LogFormatSetting().log_format
    except ValidationError:
        return "text"


def secret_values(settings: Settings) -> list[str]:
    """Return the secret values in ``settings`` that no log line may contain.

    These are SMTP_PASSWORD, the password in DATABASE_URL (as written and
    decoded), each payload key and the API key of the Temporal client profile.
    """
    secrets = []
    if settings.smtp_password is not None:
        secrets.append(settings.smtp_password.get_secret_value())

    password = make_url(settings.database_url).password
    if password:
        secrets += [str(password), quote(str(password), safe=""), quote_plus(password)]

    keys = [settings.payload_encryption_key, *settings.payload_decryption_keys]
    secrets += [key.get_secret_value().strip() for key in keys if key is not None]

    try:
        api_key = settings.temporal_connect_config().get("api_key")
    except (OSError, ValueError, RuntimeError):
        # An unreadable client profile stops the worker when it connects.
        api_key = None
    if api_key:
        secrets.append(api_key)
    return secrets


class SecretRedactor(logging.Filter):
    """Log filter that replaces secret values in a record's text and extra fields.

    It renders the message, its arguments and any traceback into text first,
    so a secret inside an exception or an argument is replaced too.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted(
            {s for s in secrets if len(s) >= MIN_REDACTED_LENGTH},
            key=len,
            reverse=True,
        )

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_RECORD_FIELDS:
                record.__dict__[key] = self._redact_value(value)
        return True

    def _redact_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            return {key: self._redact_value(item) for key, item in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._redact_value(item) for item in value]
        return value


class TicketIdFilter(logging.Filter):
    """Log filter that adds ``ticket_id`` from the SDK's workflow or activity details.

    A ``ticket_id`` the caller passed in ``extra`` is kept as it is.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "ticket_id", None) is None:
            ticket_id = ticket_id_of(record)
            if ticket_id is not None:
                record.ticket_id = ticket_id
        return True


def ticket_id_of(record: logging.LogRecord) -> str | None:
    """Return the ticket id in the record's workflow id, or None if it has none."""
    for key in _SDK_DETAIL_KEYS:
        details = getattr(record, key, None)
        if not isinstance(details, Mapping):
            continue
        workflow_id = details.get("workflow_id")
        if isinstance(workflow_id, str) and workflow_id.startswith(
            TICKET_WORKFLOW_PREFIX
        ):
            return workflow_id.removeprefix(TICKET_WORKFLOW_PREFIX)
    return None


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """Return the fields that the caller's ``extra`` added to ``record``."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD_RECORD_FIELDS
    }


class JsonFormatter(logging.Formatter):
    """Log formatter that writes each record as one JSON object on one line.

    The object has ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, then each extra field, and ``exception`` or ``stack`` when the
    record has them. An extra field named like one of those first four keeps
    its value under ``extra_<name>``. Values that JSON cannot hold are written
    as their ``str()``.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            line[f"extra_{key}" if key in line else key] = value

        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Log formatter that appends a record's ``extra`` fields as key=value.

    Fields named ``temporal_*`` are left out because the SDK's workflow and
    activity loggers already append the same details to the message.
    """

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{key}={value!r}"
            for key, value in extra_fields(record).items()
            if not key.startswith("temporal_")
        ]
        if not fields:
            return line
        return line + " " + " ".join(fields)


def configure_logging(
    log_format: LogFormat,
    secrets: Iterable[str] = (),
    level: int = logging.INFO,
) -> logging.Handler:
    """Send every log record and warning to standard error in ``log_format``.

    Replaces the root logger's handlers, so calling it again switches the
    format. In JSON the SDK's workflow and activity loggers stop appending
    their details to the message, because the line carries them as fields.
    Returns the installed handler.
    """
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    handler.addFilter(TicketIdFilter())
    handler.addFilter(SecretRedactor(secrets))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Python's warnings, such as deprecations, then take the format too.
    logging.captureWarnings(True)

    details_on_message = log_format != "json"
    workflow.logger.workflow_info_on_message = details_on_message
    activity.logger.activity_info_on_message = details_on_message
    return handler
