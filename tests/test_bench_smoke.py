"""The benchmark's quick mode runs end to end and reports every figure.

It starts its own dev servers, workers, mail sink and time-skipping servers,
so it took 30 to 60 seconds on a shared two-core machine. Speed is not
checked: the figures of a quick run mean little.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent

# Quick mode keeps 30 and then 60 tickets at rest and counts the history of
# the ladder example alone.
EXPECTED_KEYS = {
    "bare.start_rate",
    "bare.start_rate_alternating",
    "bare.timer_lateness_p50",
    "bare.timer_lateness_p99",
    "bare.timer_lateness_max",
    "tickets.claim_rate",
    "tickets.claim_ratio_by_round",
    "tickets.claim_rate_reminder_due",
    "tickets.deadline_lateness_p50",
    "tickets.deadline_lateness_p99",
    "tickets.deadline_lateness_max",
    "tickets.breach_mail_lateness_p50",
    "tickets.breach_mail_lateness_p99",
    "tickets.breach_mail_lateness_max",
    "tickets.signal_to_status_p50",
    "tickets.signal_to_status_p99",
    "tickets.update_to_status_p50",
    "tickets.update_to_status_p99",
    "tickets.mail_rate",
    "rest.worker_rss_start",
    "rest.30.store_rate",
    "rest.30.worker_rss",
    "rest.30.worker_idle_cpu",
    "rest.30.server_database",
    "rest.60.store_rate",
    "rest.60.worker_rss",
    "rest.60.worker_idle_cpu",
    "rest.60.server_database",
    "skipped.ladder",
    "skipped.ladder_with_server",
    "history.typical",
    "history.unreachable-ladder.jsonl",
    "reports.compliance_year",
    "reports.compliance_year_files",
    "reports.hours_all_customers",
    "reports.hours_customer",
}
# Figures compared with the bare workflow's.
RATIO_KEYS = {
    "tickets.claim_rate",
    "tickets.claim_rate_reminder_due",
    "tickets.deadline_lateness_p50",
    "tickets.deadline_lateness_p99",
    "tickets.deadline_lateness_max",
}


def run_quick_benchmark(folder: Path) -> tuple[str, list[dict[str, Any]], str]:
    """Run ``python -m bench.run --quick``; return its output, figures and page."""
    page = folder / "benchmarks.md"
    figures_file = folder / "figures.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--output",
            str(page),
            "--json",
            str(figures_file),
            "--work-dir",
            str(folder / "work"),
        ],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert completed.returncode == 0, (
        completed.stdout[-4000:] + completed.stderr[-4000:]
    )
    figures: list[dict[str, Any]] = json.loads(figures_file.read_text())["figures"]
    return completed.stdout, figures, page.read_text()


def test_quick_benchmark_reports_every_figure(tmp_path: Path) -> None:
    output, figures, page = run_quick_benchmark(tmp_path)
    by_key = {figure["key"]: figure for figure in figures}

    assert set(by_key) == EXPECTED_KEYS
    for key, figure in by_key.items():
        assert figure["value"] is not None, key
        assert figure["value"] >= 0, key
        if figure["target"] is not None:
            assert figure["met"] in (True, False), key
    for key in RATIO_KEYS:
        assert by_key[key]["ceiling"] is not None, key
        assert by_key[key]["ratio"] is not None, key

    columns = ["figure", "value", "ceiling", "ratio", "target", "met"]
    assert any(line.split() == columns for line in output.splitlines())
    for figure in figures:
        assert figure["name"] in output, figure["key"]
        assert f"| {figure['name']} |" in page, figure["key"]
    for heading in ("## Machine", "## Versions", "## Command", "## Results"):
        assert heading in page
    assert "python -m bench.run --quick" in page
