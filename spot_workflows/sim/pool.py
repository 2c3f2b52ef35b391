"""The pool simulator: one availability trace per placement, the real pool planner tick by tick.

Semantics (issue #18), on traces aligned in time with the same gap:

* a pending SPOT attempt in a placement starts at the first tick that placement has availability;
* a start anywhere costs the restart overhead ``d`` (billed, no progress); ON_DEMAND is always
  available and starts at once;
* a running SPOT attempt is reclaimed (``PREEMPTED``) at the first tick its placement has none;
* a RACED attempt that had started (it started in the same tick as the winner, or it is a probe
  the policy did not switch to) costs ``race_cost_s`` at its placement's spot price; a pending
  one costs nothing;
* each tick an attempt runs is billed at its placement's price (``Placement.usd_per_hour`` or
  the policy's price for the capacity); a deadline miss is work left at the deadline.

Our policy is driven through :func:`~spot_workflows.core.pools.decide_pool` (the function the
runner uses) and learns spot availability only from its own attempts: pending attempts that
start, running ones that are reclaimed. The baselines (:mod:`spot_workflows.sim.pool_baselines`)
run through the same loop with a different driver.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from spot_workflows.config import SpotPolicy
from spot_workflows.core.deadline import HOUR, Outlook
from spot_workflows.core.outcomes import (
    Action,
    Attempt,
    AttemptState,
    Cancel,
    Capacity,
    Decision,
    Outcome,
    Submit,
)
from spot_workflows.core.placement_choice import price_per_hour
from spot_workflows.core.placements import Placement, by_name
from spot_workflows.core.pools import decide_pool
from spot_workflows.errors import ConfigError
from spot_workflows.sim.engine import ScenarioResult
from spot_workflows.sim.traces import Trace

_EPS = 1e-6
ON_DEMAND_NAME = "on-demand"
DEFAULT_RACE_COST_S = 300.0

PoolDecider = Callable[..., Decision]
"""``(attempts, policy, placements, *, now, spent_usd, outlook) -> Decision``."""


def check_pool(traces: Sequence[Trace]) -> None:
    """The traces of a pool must be aligned: same gap, same length."""
    if not traces:
        raise ConfigError("give at least one --pool trace")
    first = traces[0]
    for t in traces[1:]:
        if t.gap_s != first.gap_s:
            raise ConfigError(
                f"pool traces must share one gap: {first.name} has {first.gap_s:g} s between "
                f"points, {t.name} has {t.gap_s:g} s; give traces recorded with the same gap_seconds"
            )
        if t.ticks != first.ticks:
            raise ConfigError(
                f"pool traces must be aligned in time: {first.name} has {first.ticks} points, "
                f"{t.name} has {t.ticks}; give traces of the same period and length"
            )


def pool_placements(traces: Sequence[Trace]) -> tuple[Placement, ...]:
    """One SPOT placement per trace (named after it) and one ON_DEMAND placement."""
    names: list[str] = []
    for i, t in enumerate(traces):
        name = t.name if t.name not in names else f"{t.name}-{i + 1}"
        names.append(name)
    spot = [Placement(name=n, capacity=Capacity.SPOT) for n in names]
    return (*spot, Placement(name=ON_DEMAND_NAME, capacity=Capacity.ON_DEMAND))


@dataclass
class Driver:
    """Our policy: ``decide_pool`` with what production knows (no spot availability)."""

    placements: tuple[Placement, ...]
    decider: PoolDecider = decide_pool
    knows_availability: bool = False
    """Tell the planner whether any placement has spot now (the single-trace simulator's view;
    used to compare with ``decide``)."""
    ask_again_after_submit: bool = True
    """Ask the planner again in the tick after a Submit (racing top-ups need it); the baselines
    stop there, as the single-trace engine does."""
    _since: float = 0.0
    _prev: bool | None = None

    def outlook(self, base: Outlook, avail: Sequence[bool], t: float) -> Outlook:
        if not self.knows_availability:
            return base
        has = any(avail)
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

    def decide(self, attempts, policy, *, now, spent_usd, outlook) -> Decision:
        return self.decider(
            attempts, policy, self.placements, now=now, spent_usd=spent_usd, outlook=outlook
        )

    def where(self, avail: Sequence[bool]) -> int | None:
        """Placement index a placement-less pending SPOT attempt starts in now (None: none)."""
        return None

    def end_tick(self, avail: Sequence[bool]) -> None:
        return None


@dataclass
class _Run:
    attempts: list[Attempt] = field(default_factory=list)
    overhead: dict[int, float] = field(default_factory=dict)
    spent: float = 0.0
    done: float = 0.0


def simulate_pool(
    traces: Sequence[Trace],
    start_tick: int,
    policy: SpotPolicy,
    *,
    work_s: float,
    restart_overhead_s: float,
    race_cost_s: float = DEFAULT_RACE_COST_S,
    driver: Driver | None = None,
) -> ScenarioResult:
    """Run one scenario from ``start_tick`` until it finishes, fails or reaches the deadline."""
    check_pool(traces)
    if policy.deadline_s is None:
        raise ConfigError("the simulator needs a policy with deadline_s set")
    if not (math.isfinite(race_cost_s) and race_cost_s >= 0):
        raise ConfigError(f"race_cost_s must be a finite number >= 0, got {race_cost_s!r}")
    driver = driver or Driver(pool_placements(traces))
    places = driver.placements
    index = {p.name: i for i, p in enumerate(places) if p.capacity is Capacity.SPOT}
    gap = traces[0].gap_s
    deadline = policy.deadline_s
    if start_tick < 0 or start_tick + int(deadline // gap) + 1 >= traces[0].ticks:
        raise ConfigError(
            f"scenario at tick {start_tick} runs past the end of the pool's traces "
            f"({traces[0].ticks} ticks); see Trace.starts()"
        )
    run = _Run()

    def rate(a: Attempt) -> float:
        p = by_name(places, a.placement)
        return (price_per_hour(p, policy) if p is not None else _policy_price(policy, a)) / HOUR

    k = 0
    while True:
        t = k * gap
        avail = [tr.available[start_tick + k] for tr in traces]
        _events(run, avail, index, driver, t, work_s, restart_overhead_s)
        if run.done < work_s - _EPS and t >= deadline - _EPS:
            return _result(start_tick, run, work_s - run.done, None)
        base = Outlook(
            progress=run.done / work_s,
            work_s=work_s,
            restart_overhead_s=restart_overhead_s,
            tick_s=gap,
        )
        outlook = driver.outlook(base, avail, t)
        for _ in range(8 + 2 * len(places)):
            decision = driver.decide(
                run.attempts, policy, now=t, spent_usd=run.spent, outlook=outlook
            )
            if decision.action is Action.WAIT:
                break
            if isinstance(decision, Submit):
                _submit(run, decision, avail, index, driver, t, work_s, restart_overhead_s)
                if driver.ask_again_after_submit:
                    continue
                break
            if isinstance(decision, Cancel):
                a = _cancel(run, decision, t)
                if decision.outcome is Outcome.RACED and a.started_at is not None:
                    run.spent += race_cost_s * rate(a)
                continue
            if decision.action is Action.SUCCEED:
                return _result(start_tick, run, 0.0, None)
            return _result(start_tick, run, work_s - run.done, decision.reason)
        else:
            raise RuntimeError(f"the planner did not settle in one tick at t={t:g}s")
        running = [a for a in run.attempts if a.state is AttemptState.RUNNING]
        if len(running) > 1:
            numbers = ", ".join(str(a.number) for a in running)
            raise RuntimeError(f"attempts {numbers} both run the step at t={t:g}s")
        for a in running:
            run.spent += rate(a) * gap
            left = run.overhead.get(a.number, 0.0)
            progress = gap - left if left < gap else 0.0
            run.overhead[a.number] = left - gap if left > gap else 0.0
            run.done = min(work_s, run.done + progress)
        driver.end_tick(avail)
        k += 1


def _policy_price(policy: SpotPolicy, a: Attempt) -> float:
    return (
        policy.spot_usd_per_hour if a.capacity is Capacity.SPOT else policy.on_demand_usd_per_hour
    )


def _events(run, avail, index, driver, t, work_s, overhead_s) -> None:
    """What the clouds do at the start of a tick: finish, reclaim, start pending SPOT."""
    for i, a in enumerate(run.attempts):
        if not a.live:
            continue
        if a.state is AttemptState.RUNNING and run.done >= work_s - _EPS:
            run.attempts[i] = _ended(a, Outcome.SUCCEEDED, t)
        elif a.capacity is Capacity.SPOT:
            where = index.get(a.placement) if a.placement is not None else None
            if a.state is AttemptState.RUNNING and not avail[where]:
                run.attempts[i] = _ended(a, Outcome.PREEMPTED, t)
            elif a.state is AttemptState.PENDING:
                at = where if where is not None else driver.where(avail)
                if at is not None and avail[at]:
                    run.attempts[i] = _started(a, t, driver.placements[at].name)
                    run.overhead[a.number] = overhead_s


def _submit(run, decision: Submit, avail, index, driver, t, work_s, overhead_s) -> None:
    number = len(run.attempts) + 1
    name = decision.placement
    starts = decision.capacity is Capacity.ON_DEMAND
    if decision.capacity is Capacity.SPOT:
        at = index.get(name) if name is not None else driver.where(avail)
        if at is not None and avail[at]:
            starts, name = True, driver.placements[at].name
    attempt = Attempt(
        number=number,
        capacity=decision.capacity,
        job_name=f"sim-a{number}",
        job_id=f"sim-{number}",
        backend="sim",
        state=AttemptState.RUNNING if starts else AttemptState.PENDING,
        submitted_at=t,
        started_at=t if starts else None,
        progress_start=run.done / work_s,
        placement=name,
    )
    run.attempts.append(attempt)
    if starts:
        run.overhead[number] = overhead_s


def _cancel(run: _Run, decision: Cancel, t: float) -> Attempt:
    if decision.attempt is None:
        i = max(i for i, a in enumerate(run.attempts) if a.live)
    else:
        i = decision.attempt - 1
    a = run.attempts[i]
    if not a.live:
        raise RuntimeError(f"the planner cancelled attempt {a.number}, which already ended")
    run.attempts[i] = _ended(a, decision.outcome, t, decision.reason, handoff=decision.handoff)
    return a


def _ended(a: Attempt, outcome: Outcome, t: float, reason=None, *, handoff=False) -> Attempt:
    return a.model_copy(
        update={
            "state": AttemptState.DONE,
            "outcome": outcome,
            "ended_at": t,
            "reason": reason,
            "handoff": handoff,
        }
    )


def _started(a: Attempt, t: float, placement: str) -> Attempt:
    return a.model_copy(
        update={"state": AttemptState.RUNNING, "started_at": t, "placement": placement}
    )


def _result(start: int, run: _Run, left: float, failure: str | None) -> ScenarioResult:
    ended = [a.ended_at for a in run.attempts if a.outcome is Outcome.SUCCEEDED]
    return ScenarioResult(
        start,
        run.spent,
        max(0.0, left),
        ended[-1] if ended and left <= _EPS else None,
        sum(1 for a in run.attempts if a.outcome is not Outcome.RACED),
        failure,
        tuple(run.attempts),
    )
