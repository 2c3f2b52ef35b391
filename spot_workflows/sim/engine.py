"""The tick engine: replays one trace scenario through the real planner (``core.planner.decide``).

Semantics (Wu et al., NSDI'24, as written in issue #7):

* time advances in ticks of the trace's ``gap_seconds``; spot is available at tick ``k`` iff
  ``data[k] > 0``;
* a running SPOT attempt is reclaimed (``PREEMPTED``) at the first tick with no availability; its
  progress so far is kept (checkpointed);
* a SPOT attempt waiting for capacity (the step is *idle*) starts at the first available tick;
  an ON_DEMAND attempt starts at once;
* every start costs the restart overhead ``d``: no progress during it, still billed;
* each tick an attempt is running is billed at its capacity's hourly price (the last tick too);
* a deadline miss is work left at the deadline.

Each tick the engine tells the planner what production would (progress, work, restart overhead,
spent money) plus what only a simulator knows (spot availability now and since when), and
carries out its decision: SUBMIT adds an attempt, CANCEL ends the live one (then the planner is
asked again in the same tick), WAIT lets the tick run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spot_workflows.config import SpotPolicy
from spot_workflows.core.deadline import Outlook, price_per_s
from spot_workflows.core.outcomes import (
    Action,
    Attempt,
    AttemptState,
    Cancel,
    Capacity,
    Outcome,
    Submit,
)
from spot_workflows.core.planner import decide
from spot_workflows.errors import ConfigError
from spot_workflows.sim.traces import Trace

_EPS = 1e-6
_MAX_DECISIONS_PER_TICK = 4


@dataclass(frozen=True)
class ScenarioResult:
    start_tick: int
    cost_usd: float
    work_left_s: float
    finished_s: float | None
    attempts: int
    failure: str | None = None
    ledger: tuple[Attempt, ...] = ()
    """The attempts the planner made, as the ledger would hold them."""

    @property
    def missed(self) -> bool:
        return self.work_left_s > _EPS


def simulate(
    trace: Trace,
    start_tick: int,
    policy: SpotPolicy,
    *,
    work_s: float,
    restart_overhead_s: float,
) -> ScenarioResult:
    """Run one scenario of ``work_s`` seconds of work from ``start_tick`` until it finishes, fails
    or reaches ``policy.deadline_s``."""
    if policy.deadline_s is None:
        raise ConfigError("the simulator needs a policy with deadline_s set")
    if not (math.isfinite(work_s) and work_s > 0):
        raise ConfigError(f"work_s must be a finite number > 0, got {work_s!r}")
    if not (math.isfinite(restart_overhead_s) and restart_overhead_s >= 0):
        raise ConfigError(
            f"restart_overhead_s must be a finite number >= 0, got {restart_overhead_s!r}"
        )
    gap = trace.gap_s
    avail = trace.available
    deadline = policy.deadline_s
    last_tick = start_tick + int(deadline // gap) + 1
    if start_tick < 0 or last_tick >= len(avail):
        raise ConfigError(
            f"scenario at tick {start_tick} runs past the end of trace {trace.name} "
            f"({len(avail)} ticks); see Trace.starts()"
        )
    rates = {cap: price_per_s(policy, cap) for cap in Capacity}
    attempts: list[Attempt] = []
    done = 0.0
    overhead_left = 0.0
    spent = 0.0
    since = 0.0
    prev: bool | None = None
    k = 0
    while True:
        t = k * gap
        has = avail[start_tick + k]
        if has is not prev:
            since, prev = t, has
        live = attempts[-1] if attempts and attempts[-1].state is not AttemptState.DONE else None
        if live is not None:
            if done >= work_s - _EPS:
                live = None
                _finish(attempts, Outcome.SUCCEEDED, t)
            elif live.capacity is Capacity.SPOT and live.state is AttemptState.RUNNING and not has:
                live = None
                _finish(attempts, Outcome.PREEMPTED, t)
            elif live.capacity is Capacity.SPOT and live.state is AttemptState.PENDING and has:
                live = _start(attempts, t)
                overhead_left = restart_overhead_s
        if done < work_s - _EPS and t >= deadline - _EPS:
            return ScenarioResult(
                start_tick, spent, work_s - done, None, len(attempts), None, tuple(attempts)
            )
        outlook = Outlook(
            progress=done / work_s,
            work_s=work_s,
            restart_overhead_s=restart_overhead_s,
            spot_available=has,
            spot_state_since=since,
            tick_s=gap,
        )
        for _ in range(_MAX_DECISIONS_PER_TICK):
            decision = decide(attempts, policy, now=t, spent_usd=spent, outlook=outlook)
            action = decision.action
            if action is Action.WAIT:
                break
            if isinstance(decision, Submit):
                live = _submit(attempts, decision.capacity, t, done / work_s, has)
                if live.state is AttemptState.RUNNING:
                    overhead_left = restart_overhead_s
                break
            if isinstance(decision, Cancel):
                _finish(attempts, decision.outcome, t, decision.reason)
                live = None
                continue
            if action is Action.SUCCEED:
                return ScenarioResult(
                    start_tick,
                    spent,
                    0.0,
                    _finished_at(attempts),
                    len(attempts),
                    None,
                    tuple(attempts),
                )
            return ScenarioResult(
                start_tick,
                spent,
                work_s - done,
                None,
                len(attempts),
                decision.reason,
                tuple(attempts),
            )
        if live is not None and live.state is AttemptState.RUNNING:
            spent += rates[live.capacity] * gap
            progress = gap - overhead_left if overhead_left < gap else 0.0
            overhead_left = overhead_left - gap if overhead_left > gap else 0.0
            done = min(work_s, done + progress)
        k += 1


def _submit(
    attempts: list[Attempt], capacity: Capacity, t: float, progress: float, has: bool
) -> Attempt:
    number = len(attempts) + 1
    runs = capacity is Capacity.ON_DEMAND or has
    attempt = Attempt(
        number=number,
        capacity=capacity,
        job_name=f"sim-a{number}",
        job_id=f"sim-{number}",
        backend="sim",
        state=AttemptState.RUNNING if runs else AttemptState.PENDING,
        submitted_at=t,
        started_at=t if runs else None,
        progress_start=progress,
    )
    attempts.append(attempt)
    return attempt


def _start(attempts: list[Attempt], t: float) -> Attempt:
    attempts[-1] = attempts[-1].model_copy(update={"state": AttemptState.RUNNING, "started_at": t})
    return attempts[-1]


def _finish(attempts: list[Attempt], outcome: Outcome, t: float, reason: str | None = None) -> None:
    attempts[-1] = attempts[-1].model_copy(
        update={"state": AttemptState.DONE, "outcome": outcome, "ended_at": t, "reason": reason}
    )


def _finished_at(attempts: list[Attempt]) -> float | None:
    return attempts[-1].ended_at if attempts else None
