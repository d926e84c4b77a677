"""The outcome of one fault scenario, shared by the scenario modules and the script."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ScenarioResult:
    """Mail counts and deadline timing of one fault scenario.

    ``expected``, ``delivered``, ``duplicates`` and ``lost`` count mails by
    Message-ID: ``delivered`` is the number of distinct Message-IDs received,
    ``duplicates`` the number of copies beyond the first, ``lost`` the number
    of expected mails never received. ``deadline_error_seconds`` is the
    largest ``|fired - due|`` of the deadlines the scenario checked, or None
    when it checked none.
    """

    scenario: str
    tickets: int
    expected: int
    delivered: int
    duplicates: int
    lost: int
    deadline_error_seconds: float | None
