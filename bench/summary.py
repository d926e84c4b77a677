"""Turn a run's results into the table's figures and the page's profile notes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from bench.measures import Distribution
from bench.passes import REPLAY_SAMPLE
from bench.report import Figure, at_least_ratio, at_most_ratio, below
from bench.results import PhaseCpu, Plan, Results
from bench.skipped import LADDER_TICKET
from worker import PASSTHROUGH_MODULES
from workflows.policy import DEFAULT_POLICY

CEILING = "Ceiling: bare workflow, one timer"
TICKETS = "Tickets"
REST = "Scale at rest"
SKIPPED = "Time skipped"
HISTORY = "History events per ticket"

MEBIBYTE = 2**20
# The targets of the at-rest figures hold from this many open tickets on.
REST_TARGET_COUNT = 10_000
PERCENTILES = (("p50", "p50"), ("p99", "p99"), ("max", "maximum"))


def milliseconds(seconds: Sequence[float]) -> Distribution | None:
    return Distribution.of([value * 1000 for value in seconds])


def build_figures(results: Results) -> list[Figure]:
    """Return every figure of the run, in table order."""
    return [
        *ceiling_figures(results),
        *ticket_figures(results),
        *rest_figures(results),
        *skipped_figures(results),
        *history_figures(results),
    ]


def ceiling_figures(results: Results) -> list[Figure]:
    bare = results.bare
    count = results.plan.load
    lateness = milliseconds(bare.lateness) if bare is not None else None
    rates = results.rates
    figures = [
        Figure(
            "bare.start_rate",
            CEILING,
            f"start rate ({count} workflows)",
            "/s",
            bare.start_rate if bare is not None else None,
        ),
        Figure(
            "bare.start_rate_alternating",
            CEILING,
            f"start rate, taking turns with claims ({count} workflows)",
            "/s",
            rates.start_rate if rates is not None else None,
        ),
    ]
    for label, attribute in PERCENTILES:
        figures.append(
            Figure(
                f"bare.timer_lateness_{label}",
                CEILING,
                f"timer lateness {label}",
                "ms",
                getattr(lateness, attribute) if lateness is not None else None,
            )
        )
    return figures


def ticket_figures(results: Results) -> list[Figure]:
    bare = results.bare
    tickets = results.tickets
    bare_lateness = milliseconds(bare.lateness) if bare is not None else None
    lateness = milliseconds(tickets.lateness) if tickets is not None else None
    mail_lateness = (
        milliseconds(tickets.breach_mail_lateness) if tickets is not None else None
    )
    rates = results.rates
    count = results.plan.load
    ratios = rates.round_ratios if rates is not None else []
    figures = [
        Figure(
            "tickets.claim_rate",
            TICKETS,
            f"claim rate, taking turns with bare starts ({count} tickets)",
            "/s",
            rates.claim_rate if rates is not None else None,
            ceiling=rates.start_rate if rates is not None else None,
            target=at_least_ratio(0.8),
        ),
        Figure(
            "tickets.claim_ratio_by_round",
            TICKETS,
            f"the same, claim rate over start rate in each of {len(ratios)} rounds",
            "",
            min(ratios) if ratios else None,
            text=", ".join(f"{ratio:.2f}" for ratio in ratios) or None,
        ),
        Figure(
            "tickets.claim_rate_reminder_due",
            TICKETS,
            f"claim rate with the reminder due at once ({count} tickets)",
            "/s",
            tickets.claim_rate if tickets is not None else None,
            ceiling=bare.start_rate if bare is not None else None,
        ),
    ]
    for label, attribute in PERCENTILES:
        figures.append(
            Figure(
                f"tickets.deadline_lateness_{label}",
                TICKETS,
                f"first-contact deadline lateness {label}",
                "ms",
                getattr(lateness, attribute) if lateness is not None else None,
                ceiling=(
                    getattr(bare_lateness, attribute)
                    if bare_lateness is not None
                    else None
                ),
                target=at_most_ratio(1.25) if label == "p99" else None,
            )
        )
    for label, attribute in PERCENTILES:
        figures.append(
            Figure(
                f"tickets.breach_mail_lateness_{label}",
                TICKETS,
                f"breach mail sent, after the deadline, {label}",
                "ms",
                getattr(mail_lateness, attribute)
                if mail_lateness is not None
                else None,
            )
        )

    rate = f"{results.plan.signal_rate:g}/s"
    signal = milliseconds(results.signal_latency)
    update = milliseconds(results.update_latency)
    for label, attribute in PERCENTILES[:2]:
        figures.append(
            Figure(
                f"tickets.signal_to_status_{label}",
                TICKETS,
                f"signal to status {label}, at {rate}",
                "ms",
                getattr(signal, attribute) if signal is not None else None,
                target=below(250, "ms") if label == "p99" else None,
            )
        )
    for label, attribute in PERCENTILES[:2]:
        figures.append(
            Figure(
                f"tickets.update_to_status_{label}",
                TICKETS,
                f"Update round trip {label}, at {rate}",
                "ms",
                getattr(update, attribute) if update is not None else None,
            )
        )
    figures.append(
        Figure(
            "tickets.mail_rate",
            TICKETS,
            "mails sent per second (breach burst)",
            "/s",
            tickets.mail_rate if tickets is not None else None,
        )
    )
    return figures


def rest_figures(results: Results) -> list[Figure]:
    start = results.worker_rss_at_start
    figures = [
        Figure(
            "rest.worker_rss_start",
            REST,
            "worker resident memory, no tickets",
            "MiB",
            start / MEBIBYTE if start is not None else None,
        )
    ]
    for rest in results.rest:
        count = f"{rest.count:,} tickets"
        targeted = rest.count >= REST_TARGET_COUNT
        figures += [
            Figure(
                f"rest.{rest.count}.store_rate",
                REST,
                f"tickets opened and stored per second, {count}",
                "/s",
                rest.store_rate,
            ),
            Figure(
                f"rest.{rest.count}.worker_rss",
                REST,
                f"worker resident memory, {count}",
                "MiB",
                rest.worker_rss / MEBIBYTE,
                target=below(1024, "MiB") if targeted else None,
            ),
            Figure(
                f"rest.{rest.count}.worker_idle_cpu",
                REST,
                f"worker idle CPU, {count}",
                "% of a core",
                rest.worker_idle_cpu,
                target=below(2, "%") if targeted else None,
            ),
            Figure(
                f"rest.{rest.count}.server_database",
                REST,
                f"server database size, {count}",
                "MiB",
                rest.server_database_bytes / MEBIBYTE,
            ),
        ]
    return figures


def skipped_figures(results: Results) -> list[Figure]:
    ladder = results.ladder
    return [
        Figure(
            "skipped.ladder",
            SKIPPED,
            f"full ladder ({LADDER_TICKET}), first event to closed",
            "s",
            ladder.play_seconds if ladder is not None else None,
            target=below(2, "s"),
        ),
        Figure(
            "skipped.ladder_with_server",
            SKIPPED,
            "the same, with the test server's start and stop",
            "s",
            ladder.total_seconds if ladder is not None else None,
        ),
    ]


def history_figures(results: Results) -> list[Figure]:
    typical = results.typical
    typical_events = (
        max(typical.history_events.values())
        if typical is not None and typical.history_events
        else None
    )
    figures = [
        Figure(
            "history.typical",
            HISTORY,
            "typical ticket (claim, contact, notes, close)",
            "events",
            typical_events,
            target=below(150, "events"),
        )
    ]
    for example in results.examples:
        name = Path(example.source).name
        counts = example.history_events
        if not counts:
            figures.append(Figure(f"history.{name}", HISTORY, name, "events", None))
            continue
        largest = max(counts, key=lambda ticket_id: counts[ticket_id])
        mean = sum(counts.values()) / len(counts)
        figures.append(
            Figure(
                f"history.{name}",
                HISTORY,
                f"{name}, {len(counts)} ticket{'s' if len(counts) > 1 else ''}",
                "events",
                counts[largest],
                text=f"mean {mean:.0f}, max {counts[largest]} ({largest})",
            )
        )
    return figures


def hours(duration: timedelta) -> str:
    count = duration.total_seconds() / 3600
    return f"{count:g} hour" if count == 1 else f"{count:g} hours"


def method_text(plan: Plan) -> str:
    """Describe how each figure is measured, with the run's counts."""
    first_contact = DEFAULT_POLICY.first_contact_within
    claim = DEFAULT_POLICY.claim_within
    return f"""\
Every process runs on this machine and talks over 127.0.0.1: a Temporal dev
server with its SQLite database in a temporary folder, the mail sink of
`mailsink.py`, one worker process per workflow type and the driver that sends
the load. The ticket worker is the one `worker.create_worker` builds, with a
SQLite database of its own.

- **Start rate and claim rate**: {plan.load} workflows each, at most
  {plan.concurrency} requests in flight. A bare start is update-with-start of
  a workflow whose Update returns at once, so it ends when the first workflow
  task is done. A claim is `TicketPortal.claim` with the opening, the same
  update-with-start, which ends when the ticket has applied and stored the
  claim. Rate is the count over the wall time of all requests. The claim rate
  with its target comes from a pass of its own, after the others. In it bare
  starts and claims take turns in {plan.rate_rounds} rounds, so both meet the
  same changes in the machine's speed. Each claim there is dated now, as a
  tech's claim is, so its first mail falls due an hour later. The load passes
  below give the other two rates: the bare pass's, and that of claims dated
  an hour back, which each send a reminder at once.
- **Timer and deadline lateness**: every timer of a pass falls due at one
  moment, after all starts or claims, so the timers fire as one burst. A claim
  is dated one first-contact period ({hours(first_contact)}) before that
  moment, so its reminder is already due and goes out at the claim. Lateness is
  the TimerFired event's time minus the due time, for the timer whose start
  time plus duration lies nearest the due time. Starts and claims that
  returned less than 1 s before it are left out.
- **Breach mail sent**: the `sent_at` of each `first_contact_breach` mail in
  the ticket database minus the deadline. Each breach sends two mails, to ops
  and to the tech. **Mails per second** counts these mails over the time from
  the first to the last.
- **Signal to status**: {plan.signal_rate:g} `contact_attempt` signals a second
  for {plan.signal_seconds:g} s, round robin over the claimed tickets. Each
  one's latency runs from just before the signal to the end of the first
  workflow task after which the `status` query counts it in
  `events_applied`. The driver long-polls the history for the end of each
  task and then sends one query, so the measuring adds little load.
  **Update round trip** sends the same events as `contact_attempt_update`
  through the portal client.
- **Scale at rest**: a fresh dev server and worker; tickets are opened
  unclaimed, so the next deadline is the claim {hours(claim)} on. Once the worker has
  stored each ticket, it waits {plan.settle_seconds:g} s, then measures the
  worker's CPU time over {plan.idle_seconds:g} s from `/proc/PID/stat` and its
  resident memory (VmRSS) from `/proc/PID/status`. The database size is the
  dev server's SQLite file with its WAL.
- **Time skipped**: `starter.py simulate` of {LADDER_TICKET} from
  `examples/unreachable-ladder.jsonl`, three days from the first failed call
  to the closure, timed from the first event to the moment nothing is owed.
- **History events**: events of every run of each ticket's workflow at the end
  of a simulation of the typical ticket and of each example file.
- **Profile**: the ticket worker counts its database statements and commits
  by activity type. `bench/replay_cost.py` replays {REPLAY_SAMPLE} ticket
  histories of the load pass in a process of its own, with and without the
  workflow sandbox, for the CPU time of the workflow code alone. Child
  processes cache bytecode in the work folder, as an installed package has
  it, even where `PYTHONDONTWRITEBYTECODE` is set.
"""


def profile_text(results: Results) -> str:
    """Describe where the time and memory go, from the run's own counts."""
    sections = [
        activities_section(results),
        statements_section(results),
        worker_section(results),
        cpu_section(results),
        left_out_section(results),
    ]
    return "\n\n".join(section for section in sections if section)


def activities_section(results: Results) -> str:
    tickets = results.tickets
    if tickets is None or not tickets.activities:
        return ""
    count = tickets.count
    per_ticket = ", ".join(
        f"{name} {total / count:.2f}"
        for name, total in sorted(tickets.activities.items())
    )
    mails = tickets.activities.get("send_notification", 0)
    total = sum(tickets.activities.values())
    lines = [
        "### Activities per mail",
        "",
        f"Each ticket of the load pass ran, on average: {per_ticket}.",
    ]
    if mails:
        lines.append(
            f"That is {total / mails:.2f} activities per mail sent "
            f"({total} activities, {mails} mails)."
        )
    if tickets.history_events:
        events = tickets.history_events
        lines.append(
            f"Their histories hold {sum(events) / len(events):.0f} events on "
            f"average, {max(events)} at most."
        )
    return "\n".join(lines)


def statements_section(results: Results) -> str:
    database = results.worker_stats.get("database")
    if not database:
        return ""
    lines = [
        "### Database statements per activity (load pass)",
        "",
        "| activity | executions | statements | commits | statements each |",
        "|---|---|---|---|---|",
    ]
    for name, counts in sorted(database.items()):
        executions = counts["executions"]
        each = f"{counts['statements'] / executions:.1f}" if executions else ""
        lines.append(
            f"| {name} | {executions} | {counts['statements']} | "
            f"{counts['commits']} | {each} |"
        )
    return "\n".join(lines)


def worker_section(results: Results) -> str:
    stats = results.worker_stats
    lines = ["### Worker", ""]
    cache = stats.get("max_cached_workflows")
    if cache is not None:
        lines.append(f"- Workflow cache: {cache} runs (max_cached_workflows).")
    start = results.worker_rss_at_start
    if start is not None and results.rest:
        first = results.rest[0]
        cached = min(first.count, cache) if isinstance(cache, int) else first.count
        growth = (first.worker_rss - start) / cached / 1024
        lines.append(
            f"- Resident memory grows from {start / MEBIBYTE:.0f} MiB with no "
            f"tickets to {first.worker_rss / MEBIBYTE:.0f} MiB with "
            f"{first.count:,}: about {growth:.0f} KiB per cached ticket."
        )
    replay = results.replay_cost
    if replay is not None:
        lines.append(
            f"- Workflow code alone, replaying {replay['events']:.0f}-event "
            f"ticket histories ({replay['workflow_tasks']:.1f} workflow tasks "
            f"each): {replay['sandboxed_ms']:.1f} ms of CPU per ticket in the "
            f"sandbox, {replay['unsandboxed_ms']:.1f} ms without it."
        )
    ticket_modules = [
        name for name in PASSTHROUGH_MODULES if name.startswith("workflows.")
    ]
    policy = "is" if "workflows.policy" in PASSTHROUGH_MODULES else "is not"
    lines.append(
        f"- Sandbox pass-through, for the replays in the sandbox (the worker "
        f"runs the workflow outside it): {', '.join(ticket_modules) or 'none'}. "
        f"The pure policy module {policy} passed through."
    )
    for key in ("max_concurrent_workflow_tasks", "max_concurrent_activities"):
        if stats.get(key) is not None:
            lines.append(f"- {key}: {stats[key]}.")
    return "\n".join(lines)


def cpu_section(results: Results) -> str:
    """Tabulate each process's CPU by phase: share of a core and ms per item."""
    rows: list[tuple[str, PhaseCpu]] = list(results.cpu_by_phase.items())
    for rest in results.rest:
        rows.append(
            (
                f"opening tickets at rest, up to {rest.count:,}",
                PhaseCpu(rest.opening, rest.opened, "ticket"),
            )
        )
    if not rows:
        return ""
    names = list(
        dict.fromkeys(name for _, phase in rows for name in phase.usage.seconds)
    )
    lines = [
        "### CPU by phase",
        "",
        "Each cell is the percent of one core the process used during the phase, "
        "then its CPU time per item the phase handled.",
        "",
        "| phase | items | wall time | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for title, phase in rows:
        cells = []
        for name in names:
            if name not in phase.usage.seconds:
                cells.append("")
                continue
            milliseconds_per_item = (
                1000 * phase.usage.seconds[name] / max(phase.items, 1)
            )
            percent = phase.usage.percent_of_core(name)
            cells.append(f"{percent:.0f}% ({milliseconds_per_item:.1f} ms)")
        lines.append(
            f"| {title} | {phase.items} {phase.item}s | "
            f"{phase.usage.elapsed:.0f} s | " + " | ".join(cells) + " |"
        )
    for rest in results.rest:
        lines.append(
            f"\nAt rest with {rest.count:,} tickets the server used "
            f"{rest.server_idle_cpu:.1f}% of a core."
        )
    return "\n".join(lines)


def left_out_section(results: Results) -> str:
    notes = []
    if results.bare is not None and results.bare.late_starts:
        notes.append(
            f"- {results.bare.late_starts} bare starts returned too close to "
            "their timer and are not in its lateness."
        )
    if results.tickets is not None and results.tickets.late_claims:
        notes.append(
            f"- {results.tickets.late_claims} claims returned too close to "
            "their deadline and are not in its lateness."
        )
    if results.signal_timeouts:
        notes.append(f"- {results.signal_timeouts} signals never showed in the status.")
    if results.update_timeouts:
        notes.append(f"- {results.update_timeouts} Updates did not return.")
    if not notes:
        return ""
    return "\n".join(["### Left out of the figures", "", *notes])
