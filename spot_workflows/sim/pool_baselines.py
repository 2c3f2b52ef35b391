"""Pool baselines and the pool grid: ``rr_up``, ``up_or`` and our policy on the same scenarios.

Both baselines are the single-placement ``uniform_progress`` strategy driven through
``core.planner.decide`` with an :class:`~spot_workflows.core.deadline.Outlook` that gives spot
availability straight from the traces (as ``sim/engine.py`` does for one trace):

* ``rr_up``: looks at one placement at a time; whenever the one it looks at has no spot at a tick,
  it looks at the next one (round-robin) from the next tick. Its SPOT attempts run, and wait, in
  the placement it looks at.
* ``up_or``: sees spot wherever any placement has it; a SPOT attempt starts in the first
  placement (in the given order) that has spot and is reclaimed when that placement loses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from spot_workflows.core.deadline import Outlook
from spot_workflows.core.planner import decide
from spot_workflows.errors import ConfigError
from spot_workflows.sim.grid import HOUR, Cell
from spot_workflows.sim.pool import (
    DEFAULT_RACE_COST_S,
    Driver,
    check_pool,
    pool_placements,
    simulate_pool,
)
from spot_workflows.sim.traces import Trace

OURS, RR_UP, UP_OR = "ours", "rr_up", "up_or"
BASELINE_STRATEGY = "uniform_progress"


def _decide_single(attempts, policy, placements, *, now, spent_usd, outlook):
    return decide(attempts, policy, now=now, spent_usd=spent_usd, outlook=outlook)


@dataclass
class UpOrDriver(Driver):
    """Uniform Progress that sees spot wherever any placement has it."""

    def __post_init__(self) -> None:
        self.decider = _decide_single
        self.knows_availability = True
        self.ask_again_after_submit = False

    def where(self, avail: Sequence[bool]) -> int | None:
        return next((i for i, has in enumerate(avail) if has), None)


@dataclass
class RrUpDriver(Driver):
    """Uniform Progress that looks at one placement at a time, round-robin."""

    current: int = 0

    def __post_init__(self) -> None:
        self.decider = _decide_single
        self.ask_again_after_submit = False

    def outlook(self, base: Outlook, avail: Sequence[bool], t: float) -> Outlook:
        has = avail[self.current]
        if has is not self._prev:
            self._since, self._prev = t, has
        return Outlook(
            progress=base.progress,
            work_s=base.work_s,
            restart_overhead_s=base.restart_overhead_s,
            spot_available=has,
            spot_state_since=self._since,
            tick_s=base.tick_s,
        )

    def where(self, avail: Sequence[bool]) -> int | None:
        return self.current if avail[self.current] else None

    def end_tick(self, avail: Sequence[bool]) -> None:
        if not avail[self.current]:
            self.current = (self.current + 1) % len(avail)
            self._prev = None  # a new placement: its state starts now


def _driver(name: str, traces: Sequence[Trace]) -> Driver:
    places = pool_placements(traces)
    if name == OURS:
        return Driver(places)
    if name == RR_UP:
        return RrUpDriver(places)
    if name == UP_OR:
        return UpOrDriver(places)
    raise ConfigError(f"unknown pool policy {name!r}; choose one of: {OURS}, {RR_UP}, {UP_OR}")


def run_policy(
    traces: Sequence[Trace], cell: Cell, name: str, *, race_cost_s: float = DEFAULT_RACE_COST_S
) -> dict:
    """Every scenario of the pool under one policy (ours: the cell's default policy)."""
    check_pool(traces)
    policy = cell.policy("auto" if name == OURS else BASELINE_STRATEGY)
    starts = traces[0].starts(cell.deadline_hours, cell.starts)
    results = [
        simulate_pool(
            traces,
            s,
            policy,
            work_s=cell.work_hours * HOUR,
            restart_overhead_s=cell.restart_hours * HOUR,
            race_cost_s=race_cost_s,
            driver=_driver(name, traces),
        )
        for s in starts
    ]
    fractions = [r.cost_usd / cell.on_demand_cost for r in results]
    return {
        "mean_cost_fraction": round(sum(fractions) / len(fractions), 4),
        "deadline_misses": sum(r.missed for r in results),
        "scenarios": len(results),
        "max_attempts": max(r.attempts for r in results),
    }


def _job(job: tuple) -> dict:
    traces, cell, name, race_cost_s = job
    return run_policy(traces, cell, name, race_cost_s=race_cost_s)


def run_pool(
    traces: Sequence[Trace],
    cell: Cell,
    *,
    race_cost_s: float = DEFAULT_RACE_COST_S,
    workers: int = 1,
) -> dict:
    """Our policy and both baselines on the same scenarios of one pool."""
    check_pool(traces)
    if len(traces) < 2:
        raise ConfigError(f"a pool needs at least 2 traces (one per placement), got {len(traces)}")
    traces[0].starts(cell.deadline_hours, cell.starts)  # clear error before any work
    names = (OURS, RR_UP, UP_OR)
    jobs = [(tuple(traces), cell, n, race_cost_s) for n in names]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            out = dict(zip(names, pool.map(_job, jobs), strict=True))
    else:
        out = {n: _job(j) for n, j in zip(names, jobs, strict=True)}
    ours = out[OURS]
    return {
        "pool": [t.name for t in traces],
        "work_hours": cell.work_hours,
        "deadline_hours": cell.deadline_hours,
        "restart_hours": cell.restart_hours,
        "race_cost_s": race_cost_s,
        "scenarios": ours["scenarios"],
        "mean_cost_fraction": ours["mean_cost_fraction"],
        "deadline_misses": ours["deadline_misses"],
        RR_UP: {k: out[RR_UP][k] for k in ("mean_cost_fraction", "deadline_misses")},
        UP_OR: {k: out[UP_OR][k] for k in ("mean_cost_fraction", "deadline_misses")},
    }
