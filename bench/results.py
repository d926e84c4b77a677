"""The plan of a benchmark run and the results it measured."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import BareResult, RateResult, TicketResult
from bench.processes import CpuUsage
from bench.rest import RestResult
from bench.skipped import SimulationResult


@dataclass(frozen=True)
class Plan:
    """The counts and durations of one run."""

    load: int
    # Alternating rounds of bare starts and claims in the rates pass.
    rate_rounds: int
    rest_counts: tuple[int, ...]
    concurrency: int
    signal_rate: float
    signal_seconds: float
    settle_seconds: float
    idle_seconds: float
    min_lead_seconds: float
    examples: tuple[Path, ...]


@dataclass(frozen=True)
class PhaseCpu:
    """CPU use of each process over one phase, and how many items it handled."""

    usage: CpuUsage
    items: int
    # Singular noun of what the phase handled, such as "ticket".
    item: str


@dataclass
class Results:
    """Everything one run measured, for the table and the profile."""

    plan: Plan
    bare: BareResult | None = None
    tickets: TicketResult | None = None
    rates: RateResult | None = None
    signal_latency: list[float] = field(default_factory=list)
    signal_timeouts: int = 0
    update_latency: list[float] = field(default_factory=list)
    update_timeouts: int = 0
    # Output of bench.replay_cost for a sample of the load pass's tickets.
    replay_cost: dict[str, float] | None = None
    # What the load pass's ticket worker wrote when it stopped.
    worker_stats: dict[str, Any] = field(default_factory=dict)
    cpu_by_phase: dict[str, PhaseCpu] = field(default_factory=dict)
    worker_rss_at_start: int | None = None
    rest: list[RestResult] = field(default_factory=list)
    ladder: SimulationResult | None = None
    typical: SimulationResult | None = None
    examples: list[SimulationResult] = field(default_factory=list)
