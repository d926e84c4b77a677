"""The UI texts of a ticket render hostile ids as plain text.

The Temporal web UI shows the summary, details, current details and timer
summaries in frames that load its ``/render?content=...`` page, which turns
Markdown into HTML and lets raw HTML through. The render tests send the
texts to that page of a local dev server and parse the HTML it returns.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.binaries import dev_server_path, free_port
from workflows.display import (
    current_details,
    escape_markdown,
    ticket_summary,
    timer_summary,
)
from workflows.events import parse_event, parse_opening
from workflows.ledger import Obligation, TicketLedger

NEW_YORK = "America/New_York"
OPENED_AT = datetime(2026, 6, 10, 13, 0, tzinfo=UTC)  # Wed 09:00 EDT
# Ends every table cell but the last, because the UI draws cells unpadded.
EM_SPACE = "\u2003"

HOSTILE_ID = "**K**|[link](http://127.0.0.1:9/x)|<img src=x>"
# Ids that each try one kind of markup; none contains a line break, because
# event validation rejects line breaks in ids.
HOSTILE_IDS = [
    HOSTILE_ID,
    "K|4",
    "K`4` ``x``",
    "![pic](http://127.0.0.1:9/y.png)",
    "<script>alert(1)</script>",
    # No quotes: the UI's renderer turns straight quotes into curly ones.
    "<a href=http://127.0.0.1:9/z>z</a>",
    "&lt;img src=x&gt; &#60;b&#62;",
    "see http://127.0.0.1:9/x or mailto:ops@example.com",
    "<http://127.0.0.1:9/x>",
    "[ref]: http://127.0.0.1:9/r",
    "$x$ ~~gone~~ _i_ \\*",
    "| x | y | z |",
]

# An id that tries to end the table row and start new blocks.
LINE_BREAK_ID = "K-4\n\n<img src=x>\n| a | b | c |\n==="

# What the UI's renderer may produce from the texts' own Markdown.
ALLOWED_TAGS = {"p", "strong", "ul", "li", "table", "thead", "tbody", "tr", "th", "td"}


@dataclass
class RenderedHtml:
    """The tags, attributes, text and table rows of the rendered HTML."""

    tags: list[str] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)
    text: str = ""
    rows: list[list[str]] = field(default_factory=list)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.result = RenderedHtml()
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.result.tags.append(tag)
        self.result.attributes += [name for name, _ in attrs]
        if tag == "tr":
            self.result.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.result.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.result.text += data
        if self._cell is not None:
            self._cell.append(data)


def parse_html(html: str) -> RenderedHtml:
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return collector.result


@pytest.fixture(scope="module")
async def ui_port() -> AsyncIterator[int]:
    port = free_port()
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=dev_server_path(), ui=True, ui_port=port
    )
    async with environment:
        yield port


async def render(ui_port: int, markdown: str) -> RenderedHtml:
    """Render ``markdown`` as the web UI does and parse the page's content."""
    query = urllib.parse.urlencode({"content": markdown})
    url = f"http://127.0.0.1:{ui_port}/render?{query}"

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            page: str = response.read().decode()
            return page

    page = await asyncio.to_thread(fetch)
    start = page.index("<main>") + len("<main>")
    return parse_html(page[start : page.index("</main>")].strip())


def opening(customer_id: str, tech_id: str) -> dict[str, Any]:
    return {
        "ticket_id": "T-1001",
        "opened_at": OPENED_AT.isoformat(),
        "priority": "high",
        "customer": {"id": customer_id, "timezone": NEW_YORK},
        "tech": {"id": tech_id, "email": "tech@techs.example"},
    }


def claimed_ledger(tech_id: str) -> TicketLedger:
    """A high-priority ticket claimed at the start by K-0 and reassigned to
    ``tech_id``, so the latest events name ``tech_id`` too."""
    ledger = TicketLedger(parse_opening(opening("C-17", "K-0")), NEW_YORK)
    reassign = parse_event(
        "reassign",
        {
            "event_id": "e-1",
            "occurred_at": OPENED_AT.isoformat(),
            "tech": {"id": tech_id, "email": "tech@techs.example"},
        },
    )
    ledger.receive(reassign, OPENED_AT)
    return ledger


def assert_plain_text(rendered: RenderedHtml) -> None:
    assert set(rendered.tags) <= ALLOWED_TAGS, rendered.tags
    assert rendered.attributes == []


# Escaping, without a server


def test_escape_keeps_plain_ids() -> None:
    for plain in ("K-4", "C-17", "T-1001", "Kim Park", "ops", "service", "a.b@c-d"):
        assert escape_markdown(plain) == plain


def test_escape_backslashes_markup() -> None:
    assert escape_markdown(HOSTILE_ID) == (
        r"\*\*K\*\*\|\[link\](http\://127.0.0.1\:9/x)\|\<img src=x\>"
    )
    assert escape_markdown("a\\b `c` ~d~ $e$ &f;") == r"a\\b \`c\` \~d\~ \$e\$ \&f;"


def test_escape_joins_lines() -> None:
    assert escape_markdown("K-4\n| x | y |\r\n\t<b>  ") == r"K-4 \| x \| y \| \<b\>"


def test_timer_summary_names_owner_and_due() -> None:
    ledger = TicketLedger(parse_opening(opening("C-17", "K-4")), NEW_YORK)
    first_contact = next(o for o in ledger.obligations if o.kind == "first_contact")

    assert timer_summary(ledger, first_contact, is_reminder=True) == (
        "reminder for first_contact of K-4, due Wed 2026-06-10 10:00 EDT"
    )
    assert timer_summary(ledger, first_contact, is_reminder=False) == (
        "first_contact of K-4, due Wed 2026-06-10 10:00 EDT"
    )


def test_details_table_gaps_columns() -> None:
    ledger = TicketLedger(parse_opening(opening("C-17", "K-4")), NEW_YORK)

    table = current_details(ledger).split("\n\n")[1].splitlines()

    assert table[0] == f"| obligation{EM_SPACE} | owner{EM_SPACE} | due |"
    assert table[1] == "|---|---|---|"
    assert table[2] == (
        f"| first_contact{EM_SPACE} | K-4{EM_SPACE} | Wed 2026-06-10 10:00 EDT |"
    )


# Rendering by the web UI's own renderer


@pytest.mark.parametrize("hostile_id", HOSTILE_IDS)
async def test_summary_renders_ids_as_text(ui_port: int, hostile_id: str) -> None:
    summary, details = ticket_summary(opening(hostile_id, hostile_id))

    rendered_summary = await render(ui_port, summary)
    rendered_details = await render(ui_port, details)

    assert_plain_text(rendered_summary)
    assert_plain_text(rendered_details)
    assert rendered_summary.tags == ["p"]
    assert rendered_summary.text.startswith("Ticket T-1001: high, opened")
    assert f"customer: {hostile_id}\n" in rendered_details.text
    assert f"claimed at start by {hostile_id} at " in rendered_details.text


@pytest.mark.parametrize("hostile_id", HOSTILE_IDS)
async def test_details_table_keeps_columns(ui_port: int, hostile_id: str) -> None:
    ledger = claimed_ledger(hostile_id)

    rendered = await render(ui_port, current_details(ledger))

    assert_plain_text(rendered)
    assert rendered.rows == [
        [f"obligation{EM_SPACE}", f"owner{EM_SPACE}", "due"],
        [f"check_in{EM_SPACE}", f"service{EM_SPACE}", "Wed 2026-06-10 12:00 EDT"],
        [
            f"first_contact{EM_SPACE}",
            f"{hostile_id}{EM_SPACE}",
            "Wed 2026-06-10 10:00 EDT",
        ],
    ]
    assert f"T-1001: claimed, high, {hostile_id}; times in" in rendered.text
    assert f"reassign ({hostile_id})" in rendered.text


async def test_details_table_survives_line_breaks(ui_port: int) -> None:
    ledger = claimed_ledger("K-9")
    # Set directly, because event validation rejects line breaks in ids.
    ledger.obligations[-1].owner = LINE_BREAK_ID

    rendered = await render(ui_port, current_details(ledger))

    assert_plain_text(rendered)
    assert [len(row) for row in rendered.rows] == [3, 3, 3]
    assert rendered.rows[2][1] == f"{' '.join(LINE_BREAK_ID.split())}{EM_SPACE}"


@pytest.mark.parametrize("owner", [*HOSTILE_IDS, LINE_BREAK_ID])
async def test_timer_summary_renders_owner_as_text(ui_port: int, owner: str) -> None:
    ledger = TicketLedger(parse_opening(opening("C-17", "K-4")), NEW_YORK)
    obligation = Obligation(
        sequence=99,
        kind="reply",
        owner=owner,
        opened_at=OPENED_AT,
        due_at=OPENED_AT,
    )

    rendered = await render(
        ui_port, timer_summary(ledger, obligation, is_reminder=False)
    )

    assert rendered.tags == ["p"]
    assert rendered.attributes == []
    one_line = " ".join(owner.split())
    assert rendered.text == f"reply of {one_line}, due Wed 2026-06-10 09:00 EDT"
