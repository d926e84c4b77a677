"""The Temporal web UI shows a ticket's summary and current details.

Runs headless Chromium from the system (Debian's ``chromium`` package, which
``.ci/run`` installs) through Playwright against a local dev server with its
UI. The screenshot goes to pytest's temporary folder, never into the repo.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright
from temporalio.testing import WorkflowEnvironment

from activities import TicketActivities
from mailsink import MailSink
from portal import Tech, TicketPortal
from settings import load_settings
from tests.binaries import dev_server_path, free_port
from worker import create_worker
from workflows.search import TICKET_SEARCH_ATTRIBUTES

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    found = shutil.which("chromium")
    if found is not None:
        return found
    message = "chromium not found; install Debian's chromium package"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def ui_env() -> AsyncIterator[tuple[WorkflowEnvironment, int]]:
    ui_port = free_port()
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=dev_server_path(),
        search_attributes=TICKET_SEARCH_ATTRIBUTES,
        ui=True,
        ui_port=ui_port,
    )
    async with environment:
        yield environment, ui_port


async def test_ui_shows_current_details(
    ui_env: tuple[WorkflowEnvironment, int], tmp_path: Path
) -> None:
    chromium = chromium_path()
    environment, ui_port = ui_env
    ticket_id = f"T-UI-{uuid.uuid4().hex[:8]}"
    opening: dict[str, Any] = {
        "ticket_id": ticket_id,
        "opened_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "priority": "high",
        "customer": {"id": "C-1", "timezone": "America/New_York"},
    }
    async with MailSink("127.0.0.1", 0) as sink:
        settings = load_settings(
            temporal_task_queue=f"tickets-{uuid.uuid4()}",
            database_url=f"sqlite:///{tmp_path / 'tickets.db'}",
            **sink.smtp_settings(),
        )
        activities = TicketActivities.from_settings(settings)
        async with create_worker(environment.client, settings, activities):
            portal = TicketPortal(environment.client, settings.temporal_task_queue)
            await portal.claim(
                ticket_id, Tech(id="K-4", email="kim@techs.test"), opening=opening
            )
            run_id = (await portal.handle(ticket_id).describe()).run_id
            page_text = await read_metadata_tab(
                chromium,
                f"http://127.0.0.1:{ui_port}/namespaces/default/workflows/"
                f"ticket-{ticket_id}/{run_id}/history",
                tmp_path / "ticket-page.png",
            )
        activities.close()

    assert f"Ticket {ticket_id}: high" in page_text
    assert f"{ticket_id}: claimed, high, K-4" in page_text
    assert "first_contact" in page_text
    assert "claim (K-4)" in page_text


async def read_metadata_tab(chromium: str, url: str, screenshot: Path) -> str:
    """Open the ticket's page, show its User Metadata tab and return all its text.

    The UI renders the summary and details in frames, so the text of every
    frame is joined.
    """
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_FLAGS
        )
        try:
            page = await browser.new_page()
            await page.goto(url)
            await page.get_by_text("User Metadata").first.click()
            await page.get_by_text("Current Details").first.wait_for()
            text = ""
            for _ in range(50):
                text = "\n".join(
                    [await frame.inner_text("body") for frame in page.frames]
                )
                if "first_contact" in text:
                    break
                await page.wait_for_timeout(200)
            await page.screenshot(path=str(screenshot))
            return text
        finally:
            await browser.close()
