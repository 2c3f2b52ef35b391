"""Many scenarios: every trace x the scenario rule, one policy, summarised as cost fractions.

``cost fraction`` = scenario cost / (on-demand price x W), the paper's normalisation.
``omniscient`` is not a strategy: it is the zero-overhead lower bound that knows the whole trace
(use every available spot tick before the deadline, on-demand for the rest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from spot_workflows.config import SpotPolicy
from spot_workflows.core.strategies import AUTO, get_strategy, resolve, strategy_names
from spot_workflows.errors import ConfigError
from spot_workflows.sim.engine import ScenarioResult, simulate
from spot_workflows.sim.traces import Trace

OMNISCIENT = "omniscient"
HOUR = 3600.0


@dataclass(frozen=True)
class Cell:
    """One simulation setting (hours)."""

    work_hours: float
    deadline_hours: float
    restart_hours: float
    starts: int
    spot_usd_per_hour: float = 0.9731
    on_demand_usd_per_hour: float = 3.06

    def __post_init__(self) -> None:
        for name, low in (
            ("work_hours", "> 0"),
            ("deadline_hours", "> 0"),
            ("restart_hours", ">= 0"),
            ("spot_usd_per_hour", "> 0"),
            ("on_demand_usd_per_hour", "> 0"),
        ):
            value = getattr(self, name)
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and (value > 0 if low == "> 0" else value >= 0)
            )
            if not ok:
                raise ConfigError(f"Cell.{name} must be a finite number {low}, got {value!r}")
        if isinstance(self.starts, bool) or not isinstance(self.starts, int) or self.starts < 1:
            raise ConfigError(f"Cell.starts must be an integer >= 1, got {self.starts!r}")

    def policy(self, name: str) -> SpotPolicy:
        return SpotPolicy(
            strategy=name,
            deadline_s=self.deadline_hours * HOUR,
            work_s=self.work_hours * HOUR,
            restart_overhead_s=self.restart_hours * HOUR,
            spot_usd_per_hour=self.spot_usd_per_hour,
            on_demand_usd_per_hour=self.on_demand_usd_per_hour,
            max_attempts=200,
        )

    @property
    def on_demand_cost(self) -> float:
        return self.on_demand_usd_per_hour * self.work_hours


def policy_names() -> list[str]:
    """What ``--policy`` accepts: the registered strategies, ``auto`` and the bound."""
    return [AUTO, *strategy_names(), OMNISCIENT]


def check_policy(name: str) -> None:
    if name != OMNISCIENT:
        get_strategy(name if name != AUTO else resolve(SpotPolicy(deadline_s=1.0)))


def run_trace(trace: Trace, cell: Cell, name: str) -> dict:
    """All scenarios of one trace under one policy."""
    starts = trace.starts(cell.deadline_hours, cell.starts)
    if name == OMNISCIENT:
        costs = [omniscient_cost(trace, s, cell) for s in starts]
        misses, attempts = 0, 0
    else:
        policy = cell.policy(name)
        results: list[ScenarioResult] = [
            simulate(
                trace,
                s,
                policy,
                work_s=cell.work_hours * HOUR,
                restart_overhead_s=cell.restart_hours * HOUR,
            )
            for s in starts
        ]
        costs = [r.cost_usd for r in results]
        misses = sum(r.missed for r in results)
        attempts = max(r.attempts for r in results)
    fractions = [c / cell.on_demand_cost for c in costs]
    return {
        "trace": trace.name,
        "scenarios": len(starts),
        "deadline_misses": misses,
        "mean_cost_fraction": round(sum(fractions) / len(fractions), 4),
        "max_attempts": attempts,
        "_fraction_sum": sum(fractions),
    }


def omniscient_cost(trace: Trace, start: int, cell: Cell) -> float:
    """Zero-overhead lower bound: spot on every available tick before the deadline."""
    ticks = int(cell.deadline_hours * HOUR // trace.gap_s)
    spot_h = min(sum(trace.available[start : start + ticks]) * trace.gap_s / HOUR, cell.work_hours)
    return cell.spot_usd_per_hour * spot_h + cell.on_demand_usd_per_hour * (
        cell.work_hours - spot_h
    )


def run(traces: Sequence[Trace], cell: Cell, name: str, *, workers: int = 1) -> dict:
    """Every trace under one policy; ``workers`` > 1 spreads traces over processes."""
    check_policy(name)
    if not traces:
        raise ConfigError("give at least one trace")
    jobs = [(t, cell, name) for t in traces]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            per_trace = list(pool.map(_run_job, jobs))
    else:
        per_trace = [_run_job(j) for j in jobs]
    return summarise(name, cell, per_trace)


def _run_job(job: tuple[Trace, Cell, str]) -> dict:
    return run_trace(*job)


def summarise(name: str, cell: Cell, per_trace: list[dict]) -> dict:
    scenarios = sum(t["scenarios"] for t in per_trace)
    mean = sum(t.pop("_fraction_sum") for t in per_trace) / scenarios
    return {
        "policy": name,
        "strategy": name if name == OMNISCIENT else resolve(cell.policy(name)),
        "work_hours": cell.work_hours,
        "deadline_hours": cell.deadline_hours,
        "restart_hours": cell.restart_hours,
        "scenarios": scenarios,
        "deadline_misses": sum(t["deadline_misses"] for t in per_trace),
        "mean_cost_fraction": round(mean, 4),
        "traces": per_trace,
    }


def ratio(ours: float, baseline: float) -> float:
    return round(ours / baseline, 4) if baseline > 0 else math.nan
