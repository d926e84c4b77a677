"""Worker logs: JSON lines, the ticket id on every ticket line, no secret anywhere.

The unit tests pin the formatter and filters of ``logs.py``. The last test
runs the real worker (``python worker.py``) on a dev server with
LOG_FORMAT=json, SMTP login, a PostgreSQL URL with a password and payload
encryption, drives one ticket through its first-contact breach, and reads the
worker's whole output.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import secrets
import signal
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from codec import data_converter
from logs import (
    REDACTED,
    JsonFormatter,
    SecretRedactor,
    TextFormatter,
    TicketIdFilter,
    configure_logging,
    requested_log_format,
    secret_values,
)
from migrations import upgrade
from settings import load_settings
from tests.binaries import time_skipping_server_path
from tests.restarts import (
    LOOPBACK,
    POSTGRES_URL,
    WORKER_SCRIPT,
    LocalStack,
    ScenarioSkipped,
    opening,
    postgres_schema,
)

SMTP_PASSWORD = "smtp-pass-7Hq2"
DATABASE_PASSWORD = "db:pass/w0rd@9"
# The worker's first-contact deadline in the end-to-end test, shrunk from
# one hour so the breach falls due while the test waits.
FIRST_CONTACT = timedelta(seconds=3)
MAIL_WAIT_SECONDS = 30.0


def make_record(
    message: str = "Mail sent",
    *args: Any,
    level: int = logging.INFO,
    exc_info: Any = None,
    **extra: Any,
) -> logging.LogRecord:
    record = logging.LogRecord(
        "activities.mailer", level, __file__, 1, message, args or None, exc_info
    )
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def emit(record: logging.LogRecord, *filters: logging.Filter) -> dict[str, Any]:
    """Pass ``record`` through ``filters`` and return its JSON line, parsed."""
    for log_filter in filters:
        assert log_filter.filter(record)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root handlers and the SDK loggers' settings back after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    on_workflow_message = workflow.logger.workflow_info_on_message
    on_activity_message = activity.logger.activity_info_on_message
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    workflow.logger.workflow_info_on_message = on_workflow_message
    activity.logger.activity_info_on_message = on_activity_message


# JSON lines


def test_json_line_has_base_fields_and_extra() -> None:
    record = make_record(
        "Mail %s", "sent", ticket_id="T-1", kind="check_in", attempt=2, ok=True
    )

    line = emit(record)

    assert set(line) == {
        "time",
        "level",
        "logger",
        "message",
        "ticket_id",
        "kind",
        "attempt",
        "ok",
    }
    assert line["level"] == "INFO"
    assert line["logger"] == "activities.mailer"
    assert line["message"] == "Mail sent"
    assert line["ticket_id"] == "T-1"
    assert line["attempt"] == 2
    assert line["ok"] is True
    assert datetime.fromisoformat(line["time"]).utcoffset() == timedelta(0)


def test_json_line_keeps_exception_on_one_line() -> None:
    try:
        raise ValueError("bad value\non two lines")
    except ValueError:
        record = make_record("Failed", level=logging.ERROR, exc_info=sys.exc_info())

    line = emit(record)

    assert line["level"] == "ERROR"
    assert "Traceback" in line["exception"]
    assert "bad value\non two lines" in line["exception"]


def test_json_extra_named_like_base_field_renamed() -> None:
    record = make_record(time="noon", logger="other")

    line = emit(record)

    assert line["logger"] == "activities.mailer"
    assert line["time"] != "noon"
    assert line["extra_logger"] == "other"
    assert line["extra_time"] == "noon"


def test_json_value_without_json_form_is_str() -> None:
    line = emit(make_record(due=datetime(2026, 6, 10, 13, 0, tzinfo=UTC)))

    assert line["due"] == "2026-06-10 13:00:00+00:00"


def test_text_line_appends_extra_not_sdk_details() -> None:
    record = make_record(
        ticket_id="T-1", temporal_workflow={"workflow_id": "ticket-T-1"}
    )

    line = TextFormatter("%(levelname)s %(message)s").format(record)

    assert line == "INFO Mail sent ticket_id='T-1'"


# The ticket id


def test_ticket_id_from_workflow_details() -> None:
    record = make_record(
        "Ticket opened", temporal_workflow={"workflow_id": "ticket-T-7", "attempt": 1}
    )

    line = emit(record, TicketIdFilter())

    assert line["ticket_id"] == "T-7"
    assert line["temporal_workflow"] == {"workflow_id": "ticket-T-7", "attempt": 1}


def test_ticket_id_from_activity_details() -> None:
    details = {"activity_type": "record_ticket_changes", "workflow_id": "ticket-A.1"}
    record = make_record("Completing activity as failed", temporal_activity=details)

    line = emit(record, TicketIdFilter())

    assert line["ticket_id"] == "A.1"


def test_ticket_id_from_caller_kept() -> None:
    record = make_record(
        ticket_id="T-1", temporal_activity={"workflow_id": "ticket-T-2"}
    )

    line = emit(record, TicketIdFilter())

    assert line["ticket_id"] == "T-1"


def test_no_ticket_id_for_other_workflow() -> None:
    record = make_record(temporal_workflow={"workflow_id": "nightly-report"})

    line = emit(record, TicketIdFilter())

    assert "ticket_id" not in line


# Secrets


def test_redactor_hides_secret_in_message_and_args() -> None:
    redactor = SecretRedactor(["hunter22"])
    record = make_record("Login as %s with %s failed", "ops", "hunter22")

    line = emit(record, redactor)

    assert line["message"] == f"Login as ops with {REDACTED} failed"


def test_redactor_hides_secret_in_nested_extra() -> None:
    redactor = SecretRedactor(["hunter22"])
    record = make_record(
        error="auth hunter22 refused",
        details={"tries": ["hunter22", 3], "password": "hunter22"},
    )

    line = emit(record, redactor)

    assert line["error"] == f"auth {REDACTED} refused"
    assert line["details"] == {"tries": [REDACTED, 3], "password": REDACTED}


def test_redactor_hides_secret_in_exception() -> None:
    redactor = SecretRedactor(["postgresql://app:hunter22@db/app", "hunter22"])
    try:
        raise ConnectionError("cannot reach postgresql://app:hunter22@db/app")
    except ConnectionError:
        record = make_record("Failed", level=logging.ERROR, exc_info=sys.exc_info())

    line = emit(record, redactor)

    assert "hunter22" not in line["exception"]
    assert f"cannot reach {REDACTED}" in line["exception"]


def test_redactor_hides_secret_in_text_line() -> None:
    redactor = SecretRedactor(["hunter22"])
    record = make_record("Password %s", "hunter22", reason="hunter22")
    assert redactor.filter(record)

    line = TextFormatter("%(message)s").format(record)

    assert line == f"Password {REDACTED} reason='{REDACTED}'"


def test_redactor_skips_values_too_short_to_hide() -> None:
    redactor = SecretRedactor(["", "ab"])

    assert redactor.secrets == []


def test_secret_values_lists_every_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(tmp_path / "none.toml"))
    monkeypatch.setenv("TEMPORAL_API_KEY", "api-key-8c1f")
    encryption_key = secrets.token_hex(32)
    old_key = secrets.token_hex(32)
    url = make_url("postgresql+psycopg://app@db.internal/tickets").set(
        password=DATABASE_PASSWORD
    )
    settings = load_settings(
        smtp_username="mailer",
        smtp_password=SMTP_PASSWORD,
        database_url=url.render_as_string(hide_password=False),
        payload_encryption_key=encryption_key,
        payload_decryption_keys=old_key,
    )

    values = secret_values(settings)

    assert SMTP_PASSWORD in values
    assert DATABASE_PASSWORD in values
    # As the URL writes it: percent-encoded.
    assert "db%3Apass%2Fw0rd%409" in values
    assert encryption_key in values
    assert old_key in values
    assert "api-key-8c1f" in values


def test_secret_values_empty_without_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(tmp_path / "none.toml"))
    monkeypatch.delenv("TEMPORAL_API_KEY", raising=False)
    settings = load_settings(
        database_url="sqlite:///tickets.db",
        smtp_username=None,
        smtp_password=None,
        payload_encryption_key=None,
        payload_decryption_keys="",
    )

    assert secret_values(settings) == []


# Configuration


def test_requested_log_format_reads_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOG_FORMAT", "JSON")

    assert requested_log_format() == "json"


def test_requested_log_format_invalid_is_text(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOG_FORMAT", "yaml")

    assert requested_log_format() == "text"


def test_log_format_invalid_rejected_by_settings() -> None:
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        load_settings(log_format="yaml")


@pytest.mark.usefixtures("restore_logging")
def test_configure_json_writes_sdk_details_as_fields() -> None:
    handler = configure_logging("json", ["hunter22"])
    assert isinstance(handler, logging.StreamHandler)
    output = io.StringIO()
    handler.setStream(output)

    logging.getLogger("activities.mailer").warning(
        "Retrying with %s", "hunter22", extra={"kind": "check_in"}
    )

    line = json.loads(output.getvalue())
    assert line["message"] == f"Retrying with {REDACTED}"
    assert line["kind"] == "check_in"
    assert workflow.logger.workflow_info_on_message is False
    assert activity.logger.activity_info_on_message is False


@pytest.mark.usefixtures("restore_logging")
def test_configure_text_keeps_sdk_details_on_message() -> None:
    configure_logging("json")
    configure_logging("text")

    assert workflow.logger.workflow_info_on_message is True
    assert activity.logger.activity_info_on_message is True


# The real worker


class JsonLogStack(LocalStack):
    """The local stack with a worker that logs JSON and has every kind of secret."""

    def __init__(self, workdir: Path, database_url: str, payload_key: str) -> None:
        super().__init__(workdir, database_url)
        self.payload_key = payload_key
        # The sink then requires AUTH, so the worker must log in.
        self.sink.credentials = ("ticket-guard", SMTP_PASSWORD)

    def worker_environment(self) -> dict[str, str]:
        environment = super().worker_environment()
        environment.update(
            {
                "LOG_FORMAT": "json",
                "SMTP_USERNAME": "ticket-guard",
                "SMTP_PASSWORD": SMTP_PASSWORD,
                "PAYLOAD_ENCRYPTION_KEY": self.payload_key,
                "POLICY_OVERRIDES": json.dumps(
                    {
                        "first_contact_within": f"{FIRST_CONTACT.seconds}s",
                        "first_contact_reminder_before": "1s",
                    }
                ),
            }
        )
        return environment


def is_core(line: dict[str, Any]) -> bool:
    """Return whether a log line comes from the SDK's Core, which has its own keys."""
    return {"timestamp", "level", "fields"} <= set(line)


def log_lines(path: Path) -> list[dict[str, Any]]:
    """Parse each line of a worker log, failing on any line that is not JSON."""
    lines: list[dict[str, Any]] = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            pytest.fail(f"line {number} of the worker log is not JSON: {text!r}")
        assert isinstance(line, dict), f"line {number} is not an object: {text!r}"
        lines.append(line)
    return lines


async def test_worker_json_logs_name_ticket_hide_secrets(tmp_path: Path) -> None:
    payload_key = secrets.token_hex(32)
    try:
        with postgres_schema() as (schema, port):
            url = make_url(POSTGRES_URL).set(
                host=LOOPBACK,
                port=port,
                password=DATABASE_PASSWORD,
                query={"options": f"-csearch_path={schema}"},
            )
            database_url = url.render_as_string(hide_password=False)
            async with JsonLogStack(tmp_path, database_url, payload_key) as stack:
                ticket_id = await run_breaching_ticket(stack, payload_key)
                await stack.worker.stop()
    except ScenarioSkipped as skipped:
        pytest.skip(str(skipped))

    raw = stack.worker.log_path.read_text()
    for secret in (SMTP_PASSWORD, DATABASE_PASSWORD, payload_key):
        assert secret not in raw
    # The database password as the URL writes it, percent-encoded.
    assert "db%3Apass%2Fw0rd%409" not in raw

    lines = [line for line in log_lines(stack.worker.log_path) if not is_core(line)]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
    messages = [line["message"] for line in lines]
    for expected in ("Starting worker", "Connected to Temporal", "Worker stopped"):
        assert expected in messages

    about_ticket = [line for line in lines if ticket_id in json.dumps(line)]
    for line in about_ticket:
        assert line.get("ticket_id") == ticket_id, line
    ticket_messages = sorted(line["message"] for line in about_ticket)
    assert ticket_messages.count("Mail sent") == 3
    assert "Ticket opened" in ticket_messages
    assert "Ticket closed" in ticket_messages
    assert "Mail delivery delayed, will retry" in ticket_messages
    failed = [
        line
        for line in about_ticket
        if line["message"] == "Completing activity as failed"
    ]
    assert len(failed) == 1
    assert failed[0]["ticket_id"] == ticket_id
    assert "MailDeliveryDelayed" in failed[0]["exception"]


async def run_breaching_ticket(stack: LocalStack, payload_key: str) -> str:
    """Open a ticket that misses first contact, wait for its mails and close it."""
    settings = load_settings(payload_encryption_key=payload_key)
    client = await Client.connect(
        stack.server.address, data_converter=data_converter(settings)
    )
    ticket_id = f"T-{uuid.uuid4().hex[:10]}"
    opened_at = datetime.now(UTC)
    # The first mail fails once, so the SDK logs the failed activity, with
    # nothing about the ticket in its extra fields but the workflow id.
    stack.sink.reply_to_data("451 4.3.0 Try again later", times=1)
    handle = await client.start_workflow(
        "TicketWorkflow",
        opening(ticket_id, opened_at),
        id=f"ticket-{ticket_id}",
        task_queue=stack.task_queue,
    )

    # The first-contact reminder, sent again after a 5-second retry
    # interval, and the breach to ops and to the tech.
    until = opened_at + FIRST_CONTACT + timedelta(seconds=MAIL_WAIT_SECONDS)
    while len(stack.sink.messages) < 3:
        assert datetime.now(UTC) < until, "the breach mails did not arrive"
        await asyncio.sleep(0.1)

    await handle.execute_update(
        "close_update",
        {
            "event_id": f"e-{uuid.uuid4().hex[:10]}",
            "occurred_at": datetime.now(UTC).isoformat(),
            "reason": "resolved",
        },
    )
    await handle.result()
    return ticket_id


# Prefixes of the variables that the worker and the SDK's client read, which
# the test sets itself so that the developer's environment cannot change it.
_WORKER_VARIABLE_PREFIXES = (
    "TEMPORAL_",
    "SMTP_",
    "DATABASE_",
    "POLICY_",
    "PAYLOAD_",
    "TICKET_",
    "LOG_",
    "METRICS_",
)
# The SDK's Core warns of this when it meets the time-skipping server, which
# lacks a capability of newer servers.
CORE_WARNING = "Temporal Server 1.16.0 or newer is required"


async def test_worker_core_lines_are_json(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'tickets.db'}"
    await asyncio.to_thread(upgrade, database_url)
    log_path = tmp_path / "worker.log"

    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=time_skipping_server_path()
    ) as env:
        environment = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(_WORKER_VARIABLE_PREFIXES)
        }
        environment.update(
            {
                "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
                "TEMPORAL_CONFIG_FILE": str(tmp_path / "no-temporal.toml"),
                "DATABASE_URL": database_url,
                "LOG_FORMAT": "json",
                "PYTHONUNBUFFERED": "1",
            }
        )
        with log_path.open("wb") as log_file:
            worker = await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER_SCRIPT),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                cwd=tmp_path,
                env=environment,
            )
        try:
            until = datetime.now(UTC) + timedelta(seconds=MAIL_WAIT_SECONDS)
            while CORE_WARNING not in log_path.read_text():
                assert worker.returncode is None, log_path.read_text()
                assert datetime.now(UTC) < until, "the Core warning never came"
                await asyncio.sleep(0.1)
        finally:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
            returncode = await asyncio.wait_for(worker.wait(), MAIL_WAIT_SECONDS)

    lines = log_lines(log_path)
    core_lines = [line for line in lines if is_core(line)]
    assert len(core_lines) >= 1
    assert CORE_WARNING in core_lines[0]["fields"]["message"]
    assert core_lines[0]["level"] == "WARN"
    assert lines[-1]["message"] == "Worker stopped"
    assert returncode == 0
