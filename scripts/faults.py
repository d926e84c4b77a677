"""Run the fault scenarios against local stacks and print one table of the results.

Usage, from the project root: ``.venv/bin/python scripts/faults.py [NAME ...]``

Runs every ``run_<name>(workdir)`` coroutine of the scenario modules
(``tests/restarts.py``, and ``tests/mail_faults.py`` when it exists) one after
another, each in a temporary folder, printing a line as each starts and ends.
Then it prints one row per scenario: tickets, mails expected, delivered,
duplicates, lost and the worst deadline error. NAME picks scenarios by
function name without ``run_``, such as ``worker_killed``; ``--list`` prints
them.

Exits with 1 if any scenario lost or duplicated mail or failed with an error,
and with 2 for an unknown NAME. The folder of a failed scenario is kept, with
its server and worker logs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

PROJECT_DIR = Path(__file__).resolve().parent.parent
# The scenario modules live in the tests package, which is not installed.
sys.path.insert(0, str(PROJECT_DIR))

from worker import ExtraFieldsFormatter  # noqa: E402 - after the path is set

if TYPE_CHECKING:
    from tests.faultresult import ScenarioResult

SCENARIO_MODULES = ("tests.restarts", "tests.mail_faults")
# The class name of the exception that a scenario raises when a service it
# needs, such as PostgreSQL, is not running.
SKIPPED_EXCEPTION = "ScenarioSkipped"

Scenario = Callable[[Path], Awaitable["ScenarioResult"]]


@dataclass(frozen=True)
class ScenarioFunction:
    """A ``run_<name>`` coroutine found in a scenario module."""

    name: str
    module: str
    run: Scenario


@dataclass
class Outcome:
    """The result of one scenario, or the reason it has none."""

    name: str
    result: ScenarioResult | None = None
    error: str | None = None
    skipped: str | None = None

    @property
    def failed(self) -> bool:
        if self.error is not None:
            return True
        result = self.result
        return result is not None and (result.lost > 0 or result.duplicates > 0)


def say(line: str) -> None:
    print(line, flush=True)


def discover_scenarios() -> list[ScenarioFunction]:
    """Return the scenario coroutines of every module that exists, in file order.

    A scenario is a coroutine function named ``run_<name>`` defined in the
    module itself, taking one argument, the folder to work in.
    """
    scenarios = []
    for module_name in SCENARIO_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        for name, value in vars(module).items():
            if not name.startswith("run_") or not inspect.iscoroutinefunction(value):
                continue
            if value.__module__ != module_name:
                continue
            if len(inspect.signature(value).parameters) != 1:
                continue
            scenarios.append(
                ScenarioFunction(name.removeprefix("run_"), module_name, value)
            )
    return scenarios


async def run_scenario(scenario: ScenarioFunction) -> Outcome:
    """Run one scenario in a fresh folder, which is removed unless it failed."""
    workdir = Path(tempfile.mkdtemp(prefix=f"faults-{scenario.name}-"))
    say(f"{scenario.name}: started ({scenario.module})")
    started = time.monotonic()
    try:
        result = await scenario.run(workdir)
    except Exception as error:
        seconds = time.monotonic() - started
        if type(error).__name__ == SKIPPED_EXCEPTION:
            shutil.rmtree(workdir, ignore_errors=True)
            say(f"{scenario.name}: skipped after {seconds:.1f} s: {error}")
            return Outcome(scenario.name, skipped=str(error))
        say(f"{scenario.name}: failed after {seconds:.1f} s, logs in {workdir}")
        return Outcome(scenario.name, error=f"{type(error).__name__}: {error}")

    seconds = time.monotonic() - started
    outcome = Outcome(scenario.name, result=result)
    if outcome.failed:
        say(f"{scenario.name}: lost or duplicated mail, logs in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"{scenario.name}: finished in {seconds:.1f} s")
    return outcome


def format_table(outcomes: Sequence[Outcome]) -> str:
    """Return the results as an aligned plain-text table."""
    header = (
        "scenario",
        "tickets",
        "mails expected",
        "delivered",
        "duplicates",
        "lost",
        "deadline error",
    )
    rows = [header]
    for outcome in outcomes:
        result = outcome.result
        if result is None:
            state = "skipped" if outcome.skipped is not None else "error"
            rows.append((outcome.name, state, "-", "-", "-", "-", "-"))
            continue
        error = result.deadline_error_seconds
        rows.append(
            (
                result.scenario,
                str(result.tickets),
                str(result.expected),
                str(result.delivered),
                str(result.duplicates),
                str(result.lost),
                "-" if error is None else f"{error:.2f} s",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for number, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])]
        cells += [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Run the fault scenarios (killed worker, restarted server, store "
            "outages, mail faults) against local stacks and print a table."
        )
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="scenarios to run, as --list prints them (default: all)",
    )
    parser.add_argument(
        "--list", action="store_true", help="print the scenario names and exit"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help=(
            "also print the scenarios' log messages, such as when a fault starts "
            "and each retried activity"
        ),
    )
    return parser.parse_args(argv)


async def run_all(scenarios: Sequence[ScenarioFunction]) -> list[Outcome]:
    return [await run_scenario(scenario) for scenario in scenarios]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(
        ExtraFieldsFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    # Workers inside the scenarios log every retried activity with its
    # traceback, which would bury the progress lines.
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL, handlers=[handler]
    )
    # aiosmtpd logs every SMTP command at INFO.
    logging.getLogger("mail.log").setLevel(logging.WARNING)

    scenarios = discover_scenarios()
    if args.list:
        for scenario in scenarios:
            say(f"{scenario.name}  ({scenario.module})")
        return 0
    if args.names:
        known = {scenario.name for scenario in scenarios}
        unknown = sorted(set(args.names) - known)
        if unknown:
            say(f"error: unknown scenario {', '.join(unknown)}; see --list")
            return 2
        scenarios = [s for s in scenarios if s.name in args.names]

    outcomes = asyncio.run(run_all(scenarios))
    say("")
    say(format_table(outcomes))
    for outcome in outcomes:
        if outcome.error is not None:
            say(f"{outcome.name} failed: {outcome.error}")
        if outcome.skipped is not None:
            say(f"{outcome.name} skipped: {outcome.skipped}")
    return 1 if any(outcome.failed for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
