"""The local stack as a user starts it: dev server, UI, mail sink and worker.

The stack keeps its state under ``var/`` next to ``stack.py``, so the test runs
a copy of the project in a temporary folder, on free loopback ports, and
drives it with ``starter.py`` the way the README does.
"""

from __future__ import annotations

import json
import mailbox
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.binaries import free_port

PROJECT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 120


def copy_project(target: Path) -> Path:
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for relative in tracked:
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT / relative, destination)
    return target


def clean_environment(temporal_port: int) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TEMPORAL_", "SMTP_", "DATABASE_", "POLICY_"))
    }
    environment["TEMPORAL_ADDRESS"] = f"127.0.0.1:{temporal_port}"
    return environment


def wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not printed; stack output:\n{log.read_text()}")


class Stack:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.temporal_port = free_port()
        self.ui_port = free_port()
        self.smtp_port = free_port()
        self.environment = clean_environment(self.temporal_port)
        self.log = folder / "stack-output.txt"

    def start(self, log: Path | None = None) -> subprocess.Popen[bytes]:
        output = (log or self.log).open("wb")
        return subprocess.Popen(
            [
                sys.executable,
                "stack.py",
                "--temporal-port",
                str(self.temporal_port),
                "--ui-port",
                str(self.ui_port),
                "--smtp-port",
                str(self.smtp_port),
            ],
            cwd=self.folder,
            env=self.environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )

    def starter(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "starter.py", *args],
            cwd=self.folder,
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, subprocess.Popen[bytes]]]:
    running = Stack(copy_project(tmp_path / "project"))
    process = running.start()
    try:
        wait_for_line(running.log, "local stack is up", process)
        yield running, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def released_mails(maildir: Path, ticket_id: str) -> list[str]:
    if not maildir.exists():
        return []
    return [
        str(message["X-Notification-Kind"])
        for message in mailbox.Maildir(maildir, create=False)
        if message["X-Ticket-Id"] == ticket_id
    ]


def test_stack_runs_a_ticket_and_stops(
    stack: tuple[Stack, subprocess.Popen[bytes]],
) -> None:
    running, process = stack

    with urllib.request.urlopen(f"http://127.0.0.1:{running.ui_port}/") as page:
        assert page.status == 200

    opened = running.starter(
        "open",
        "T-STACK-1",
        "--customer-id",
        "C-1",
        "--customer-email",
        "dana@customer.test",
        "--timezone",
        "America/New_York",
    )
    assert opened.returncode == 0, opened.stderr
    for command in (
        ["claim", "T-STACK-1", "--tech-id", "K-4", "--tech-email", "kim@techs.test"],
        ["release", "T-STACK-1", "--reason", "Needs a printer specialist"],
    ):
        sent = running.starter(*command)
        assert sent.returncode == 0, sent.stderr

    # A release mails ops at once, through the worker and the stack's sink.
    maildir = running.folder / "var" / "mail"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not released_mails(maildir, "T-STACK-1"):
        time.sleep(0.2)
    assert released_mails(maildir, "T-STACK-1") == ["released"]

    status = running.starter("status", "T-STACK-1", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "unclaimed"

    # A terminated ticket still returns its last state from the status
    # query, so the status command must say that the workflow ended.
    terminated = subprocess.run(
        [
            str(Path(sys.executable).parent / "temporal"),
            "workflow",
            "terminate",
            "--address",
            f"127.0.0.1:{running.temporal_port}",
            "--workflow-id",
            "ticket-T-STACK-1",
            "--reason",
            "test",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert terminated.returncode == 0, terminated.stderr
    status = running.starter("status", "T-STACK-1")
    assert status.returncode == 1
    assert "its workflow ended as TERMINATED" in status.stderr

    # A second stack on other ports in the same folder would share var/.
    second_log = running.folder / "second-output.txt"
    second = Stack(running.folder).start(second_log)
    assert second.wait(timeout=60) == 1
    assert "another local stack is running" in second_log.read_text()

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    assert "Local stack stopped." in running.log.read_text()
