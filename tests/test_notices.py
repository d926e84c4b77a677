"""Mail texts for techs and ops read well when names are missing."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from activities.notices import STAFF_WRITERS, write_notice
from workflows.model import NotificationInput

MAIL_DUE_AT = "2026-06-10T14:00:00+00:00"
OWED_DUE_AT = "2026-06-10T15:00:00+00:00"


def notification(kind: str, role: str, **overrides: Any) -> NotificationInput:
    fields: dict[str, Any] = {
        "ticket_id": "T-1001",
        "sequence": 3,
        "kind": kind,
        "role": role,
        "recipient": None,
        "due_at": MAIL_DUE_AT,
        "timezone": "America/New_York",
        "priority": "normal",
        "owed_kind": "first_contact",
        "owed_due_at": OWED_DUE_AT,
        "hours_used": 8.5,
        "hours_included": 10.0,
        "month": "2026-06",
    }
    fields.update(overrides)
    return NotificationInput(**fields)


def test_ops_breach_without_names_starts_with_capital() -> None:
    notice = write_notice(
        notification("first_contact_breach", "ops"), "America/New_York"
    )
    summary = " ".join(notice.body.split("\n\n")[0].split())

    assert notice.subject == "[T-1001] First contact missed"
    assert summary == (
        "The tech has not logged first contact with the customer on ticket "
        "T-1001, and it is past due."
    )
    assert "Customer:" not in notice.body
    assert "Tech:" not in notice.body


def test_ops_breach_names_tech_and_customer() -> None:
    notice = write_notice(
        notification(
            "first_contact_breach",
            "ops",
            customer_name="Dana Reyes",
            tech_name="Kim Park",
            customer_id="C-17",
            tech_id="K-4",
        ),
        "America/New_York",
    )
    lines = notice.body.splitlines()

    assert lines[0].startswith("Kim Park has not logged first contact with Dana")
    assert "Customer:   Dana Reyes (C-17)" in lines
    assert "Tech:       Kim Park (K-4)" in lines


def test_ops_breach_names_tech_by_id() -> None:
    notice = write_notice(
        notification("first_contact_breach", "ops", customer_id="C-17", tech_id="K-4"),
        "America/New_York",
    )
    summary = " ".join(notice.body.split("\n\n")[0].split())

    assert summary.startswith("Tech K-4 has not logged first contact with the")
    assert "Customer:   C-17" in notice.body.splitlines()
    assert "Tech:       K-4" in notice.body.splitlines()


def test_assigned_to_ops_names_tech_by_id() -> None:
    notice = write_notice(notification("assigned", "ops", tech_id="K-4"), "UTC")

    assert notice.subject == "[T-1001] Assigned to tech K-4"


@pytest.mark.parametrize(
    ("kind", "role"), list(itertools.product(STAFF_WRITERS, ["tech", "ops"]))
)
def test_staff_mail_without_names_reads_well(kind: str, role: str) -> None:
    notice = write_notice(notification(kind, role), "America/New_York")
    summary = notice.body.split("\n\n")[0]
    subject = notice.subject.removeprefix("[T-1001] ")

    assert subject[0].isupper(), subject
    assert summary[0].isupper(), summary
    assert "the customer:" not in notice.subject.lower()
    assert "the tech:" not in notice.subject.lower()
    assert "Customer:" not in notice.body
    assert ". the " not in " ".join(notice.body.split())
