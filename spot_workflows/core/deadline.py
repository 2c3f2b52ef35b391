"""What deadline- and budget-aware strategies reason about: time left, work left, slack, money.

Pure: the caller (the runner in production, the trace simulator in ``spot_workflows.sim``) passes
an :class:`Outlook` with what it knows beyond the ledger; :func:`situation` derives the rest from
the ledger's attempts and the policy. Times are seconds on the caller's clock.

* **work left** ``C``: ``(1 - progress) * W``; progress comes from the latest checkpoint manifest
  (runner) or the simulator's own count; ``W`` from ``Outlook.work_s``, ``SpotPolicy.work_s`` or,
  failing both, estimated from the ledger (running time so far / progress so far).
* **deadline**: the step's first submission plus ``SpotPolicy.deadline_s``.
* **restart overhead** ``d``: ``Outlook.restart_overhead_s``, ``SpotPolicy.restart_overhead_s``, or
  measured from the ledger (submit-to-running) plus ``SpotPolicy.restore_s``.
* **slack**: ``time left - work left``; every idle second and every restart spends it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from spot_workflows.core.outcomes import Attempt, AttemptState, Capacity, Outcome
from spot_workflows.core.spot_policy import SpotPolicy

HOUR = 3600.0
DEFAULT_OVERHEAD_S = 300.0
"""Restart overhead assumed until the ledger has measured one (5 minutes)."""
MIN_PROGRESS_FOR_ESTIMATE = 0.02
"""Progress needed before the total work is estimated from the ledger's running time."""
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Outlook:
    """What the caller knows beyond the ledger; every field is optional."""

    progress: float | None = None
    """Fraction of the step's work done (latest checkpoint manifest, or the simulator's count)."""
    work_s: float | None = None
    """Total work in seconds on one machine; overrides ``SpotPolicy.work_s``."""
    restart_overhead_s: float | None = None
    """Measured restart overhead; overrides the policy and the ledger measurement."""
    spot_available: bool | None = None
    """Whether spot capacity is obtainable now (simulator, market probe); None: unknown."""
    spot_state_since: float | None = None
    """When spot availability last changed (caller's clock); None: unknown."""
    tick_s: float = 0.0
    """How often the planner is consulted (simulator tick, runner poll interval)."""
    stop_s: float = 0.0
    """How long stopping a running attempt takes until billing ends (cancel to exit, measured
    by the runner); added to the budget cap's safety window."""


def price_per_s(policy: SpotPolicy, capacity: Capacity) -> float:
    hourly = (
        policy.spot_usd_per_hour if capacity is Capacity.SPOT else policy.on_demand_usd_per_hour
    )
    return hourly / HOUR


def attempt_cost(attempt: Attempt, policy: SpotPolicy, now: float) -> float:
    """Dollars an attempt has cost: its running time (start to end, or to ``now``) at its price."""
    if attempt.cost_usd is not None:
        return attempt.cost_usd
    if attempt.started_at is None:
        return 0.0
    end = attempt.ended_at if attempt.ended_at is not None else now
    return max(0.0, end - attempt.started_at) * price_per_s(policy, attempt.capacity)


def spent_usd(attempts: Sequence[Attempt], policy: SpotPolicy, now: float) -> float:
    """What the step has cost so far, from the ledger."""
    return sum(attempt_cost(a, policy, now) for a in attempts)


def measured_overhead(attempts: Sequence[Attempt], policy: SpotPolicy) -> float:
    """Restart overhead in seconds: the policy's fixed value, else measured from the ledger.

    Submit-to-running of ON_DEMAND attempts (median) is a clean measurement; SPOT attempts also
    wait for capacity, so only their fastest start counts. ``restore_s`` is added to either.
    """
    if policy.restart_overhead_s is not None:
        return policy.restart_overhead_s
    od, spot = [], []
    for a in attempts:
        if a.started_at is not None:
            (od if a.capacity is Capacity.ON_DEMAND else spot).append(
                max(0.0, a.started_at - a.submitted_at)
            )
    if od:
        base = statistics.median(od)
    elif spot:
        base = min(spot)
    else:
        return DEFAULT_OVERHEAD_S + policy.restore_s
    return base + policy.restore_s


def estimated_work(attempts: Sequence[Attempt], progress: float | None, now: float) -> float | None:
    """Total work estimated from the ledger: running seconds so far / progress so far.

    Overheads and work lost to reclaims make it an over-estimate, which errs on the safe side.
    """
    if progress is None or progress < MIN_PROGRESS_FOR_ESTIMATE:
        return None
    ran = sum(a.run_seconds() if a.ended_at is not None else _running(a, now) for a in attempts)
    return ran / progress if ran > 0 else None


def _running(attempt: Attempt, now: float) -> float:
    return 0.0 if attempt.started_at is None else max(0.0, now - attempt.started_at)


@dataclass(frozen=True, slots=True)
class Situation:
    """Everything a deadline- or budget-aware strategy decides on, derived once per decision."""

    now: float
    started_at: float
    deadline_at: float | None
    work_s: float
    work_left_s: float
    overhead_s: float
    tick_s: float
    live: Attempt | None
    """The attempt the step is on: the live one, or one the planner stopped at this very
    instant to switch capacity (so the decision that follows a switch sees where it came from)."""
    spot_available: bool
    spot_age_s: float
    spent_usd: float
    spot_usd_per_s: float
    on_demand_usd_per_s: float

    @property
    def time_left_s(self) -> float:
        return math.inf if self.deadline_at is None else self.deadline_at - self.now

    @property
    def slack_s(self) -> float:
        """Time left minus work left: what idling and restarts may still spend."""
        return self.time_left_s - self.work_left_s

    @property
    def elapsed_s(self) -> float:
        return self.now - self.started_at

    @property
    def done_s(self) -> float:
        return self.work_s - self.work_left_s

    @property
    def on_spot(self) -> bool:
        """A SPOT attempt is running (one that got capacity only within the last decision
        period counts as idle with spot available: its restart is not sunk yet)."""
        live = self.live
        if (
            live is None
            or live.capacity is not Capacity.SPOT
            or live.started_at is None
            or not (live.state is AttemptState.RUNNING or live.outcome is Outcome.STOPPED)
        ):
            return False
        if self.tick_s <= 0:
            return live.started_at < self.now
        return live.started_at <= self.now - self.tick_s

    @property
    def on_demand(self) -> bool:
        """An ON_DEMAND attempt is live (pending or running)."""
        return self.live is not None and self.live.capacity is Capacity.ON_DEMAND

    @property
    def idle(self) -> bool:
        """No attempt makes progress or holds capacity: none live, or SPOT waiting for capacity."""
        return not self.on_spot and not self.on_demand

    def can_wait(self) -> bool:
        """Exact safety net for idling: after one more idle tick, ON_DEMAND (one restart ``d``)
        still finishes the work left by the deadline."""
        if self.deadline_at is None:
            return True
        left, work, tick = self.time_left_s, self.work_left_s, self.tick_s
        if tick <= 0:
            return work + self.overhead_s < left
        return _ticks_for(work + self.overhead_s, tick) <= _ticks_in(left, tick) - 1

    def can_take_spot(self) -> bool:
        """Exact safety net for starting SPOT now (restart ``d``): however soon it is reclaimed,
        an ON_DEMAND restart afterwards still finishes by the deadline. A reclaim comes at the
        earliest one tick after the start; after the restart, each tick on SPOT buys as much
        work as it spends time, so only the ticks of the restart itself need checking."""
        if self.deadline_at is None:
            return True
        left, work, d, tick = self.time_left_s, self.work_left_s, self.overhead_s, self.tick_s
        if tick <= 0:
            return work + 2 * d <= left
        ticks = _ticks_in(left, tick)
        j = 1
        while True:
            done = max(0.0, j * tick - d)
            if _ticks_for(work - done + d, tick) > ticks - j:
                return False
            if j * tick >= d:
                return True
            j += 1

    def must_commit(
        self, margin_s: float, *, work_left_s: float | None = None, at: float | None = None
    ) -> bool:
        """True when finishing needs ON_DEMAND from now on: the ticks needed for the work left
        plus ``margin_s`` reach the ticks left before the deadline (continuous when tick is 0)."""
        if self.deadline_at is None:
            return False
        left = self.deadline_at - (self.now if at is None else at)
        work = self.work_left_s if work_left_s is None else work_left_s
        need = work + margin_s
        if self.tick_s <= 0:
            return need >= left
        return math.ceil(need / self.tick_s - _EPS) >= math.floor(left / self.tick_s + _EPS)


def _ticks_for(seconds: float, tick: float) -> int:
    """Whole ticks needed to do ``seconds`` of work."""
    return math.ceil(seconds / tick - _EPS)


def _ticks_in(seconds: float, tick: float) -> int:
    """Whole ticks that fit in ``seconds``."""
    return math.floor(seconds / tick + _EPS)


def situation(
    attempts: Sequence[Attempt],
    policy: SpotPolicy,
    *,
    now: float,
    spent: float | None,
    outlook: Outlook | None,
) -> Situation | None:
    """Derive the situation, or None when the work is unknown (no estimate, no progress)."""
    outlook = outlook or Outlook()
    work = outlook.work_s or policy.work_s or estimated_work(attempts, outlook.progress, now)
    if work is None:
        return None
    progress = min(1.0, max(0.0, outlook.progress or 0.0))
    started = attempts[0].submitted_at if attempts else now
    deadline = None if policy.deadline_s is None else started + policy.deadline_s
    overhead = (
        outlook.restart_overhead_s
        if outlook.restart_overhead_s is not None
        else measured_overhead(attempts, policy)
    )
    last = attempts[-1] if attempts else None
    live = last if last is not None and last.live else None
    available, since = _spot_knowledge(attempts, live, outlook, now)
    stopped_now = (
        last is not None
        and last.outcome is Outcome.STOPPED
        and last.ended_at is not None
        and last.ended_at >= now
    )
    if live is None and stopped_now:
        live = last  # stopped this instant to switch: decide as if still on it
    return Situation(
        now=now,
        started_at=started,
        deadline_at=deadline,
        work_s=work,
        work_left_s=(1.0 - progress) * work,
        overhead_s=overhead,
        tick_s=max(0.0, outlook.tick_s),
        live=live,
        spot_available=available,
        spot_age_s=max(0.0, now - since),
        spent_usd=spent if spent is not None else spent_usd(attempts, policy, now),
        spot_usd_per_s=price_per_s(policy, Capacity.SPOT),
        on_demand_usd_per_s=price_per_s(policy, Capacity.ON_DEMAND),
    )


def _spot_knowledge(
    attempts: Sequence[Attempt], live: Attempt | None, outlook: Outlook, now: float
) -> tuple[bool, float]:
    """Is spot available, and since when? From the outlook when the caller knows (simulator),
    else from the ledger: a running SPOT attempt means yes; otherwise assume no, since the last
    SPOT attempt ended or started waiting."""
    if outlook.spot_available is not None:
        since = outlook.spot_state_since if outlook.spot_state_since is not None else now
        return outlook.spot_available, since
    if live is not None and live.capacity is Capacity.SPOT:
        if live.state is AttemptState.RUNNING:
            return True, live.started_at if live.started_at is not None else now
        return False, live.submitted_at
    for a in reversed(attempts):
        if a.capacity is Capacity.SPOT and a.outcome is Outcome.NO_CAPACITY:
            return False, a.submitted_at  # it waited for capacity all along
        if a.capacity is Capacity.SPOT and a.outcome is Outcome.PREEMPTED:
            return False, a.ended_at if a.ended_at is not None else a.submitted_at
    return False, now
