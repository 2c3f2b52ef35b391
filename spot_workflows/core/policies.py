"""Deadline-aware escalation strategies: ``deadline`` (ours), ``uniform_progress``, ``greedy``.

Each is a pure function of the :class:`~spot_workflows.core.deadline.Situation` (carried by the
:class:`~spot_workflows.core.escalation.History`) and answers, at any moment, which capacity the
step should be on: SPOT (run on spot, or wait for spot capacity: an idle step is a SPOT attempt
waiting for capacity) or ON_DEMAND. The planner turns a change of answer while an attempt is live
into a cancel (``STOPPED``, or ``NO_CAPACITY`` for a SPOT attempt still waiting) and a new submit.

Notation (seconds): ``R`` time left, ``C`` work left, ``s = R - C`` slack, ``d`` restart overhead,
``tau`` decision tick, ``a`` how long spot has been in its current state (available or not).
"""

from __future__ import annotations

import math

from spot_workflows.core.deadline import HOUR, Situation
from spot_workflows.core.escalation import Choice, History, register
from spot_workflows.core.outcomes import Capacity
from spot_workflows.core.spot_policy import SpotPolicy

SPOT, OD = Capacity.SPOT, Capacity.ON_DEMAND

# -- ours: age-aware slack reserve -----------------------------------------------------------
# Shapes come from an age-aware dynamic program over a semi-Markov model of spot availability
# (up and down periods both have decreasing hazards: the longer spot has been up, the longer it
# will stay; the longer it has been down, the longer it stays down). Its thresholds are close to
# linear in the time left, so they are expressed as fractions of R (docs/policies.md). Safety
# does not rest on them: it is the exact tick-level check of Situation.can_wait/can_take_spot.
WAIT_BASE = 0.07
"""Idle without spot: wait while the spare slack is at least this fraction of the time left..."""
WAIT_PER_OVERHEAD_HOUR = 0.4
"""...plus this fraction per hour of restart overhead (restarts will cost more slack)..."""
WAIT_PER_OUTAGE_HOUR = 0.25
"""...times (1 + this per hour the outage has lasted): long outages tend to last longer."""
AGE_CAP_S = 2 * HOUR
SWITCH_PER_OVERHEAD_HOUR = 1.2
"""On ON_DEMAND with spot back: switch when spare slack >= R x this x d (hours), decaying..."""
SWITCH_AGE_DECAY_S = 0.5 * HOUR
"""...exponentially with how long spot has been back: old spot sessions tend to last."""
FRESH_OUTAGE_FACTOR = 0.5
"""In the first decision period of an outage, when a restart takes longer than a period (d > tau),
the wait reserve is this fraction of the usual one: an outage that has just begun is the likeliest
to end at once, and waiting one period then spends less slack than an ON_DEMAND restart followed by
a switch back."""
OVERHEAD_FIT_CAP_S = 0.2 * HOUR
"""The per-hour-of-d terms above were fitted for d up to 0.2 h; longer overheads use 0.2 h there
(held flat rather than extrapolated: the safety net still counts the real d), and the rules below
add what a longer restart costs."""
GUARD_OVERHEADS = 1.0
"""Spare slack is the slack minus this many restart overheads (the reserves above are on top)."""

# -- beyond the fitted overheads (d > OVERHEAD_FIT_CAP_S) -------------------------------------
# The reserves above hold d flat at the cap, so they no longer see what a restart costs. Three
# rules from the cost model take over there (docs/policies.md); inside the fitted range the
# reserves already price restarts and these rules stay off.
ROUND_TRIP_OVERHEADS = 2.0
"""Escalating from idle and coming back later costs this many restarts of slack (the on-demand
restart, then the spot one): with less spare slack, on-demand now is a one-way trip that costs
what on-demand at the last moment would, so wait instead."""
YOUNG_OUTAGE_OVERHEADS = 1.0
"""Wait through the first this-many d of an outage (it costs at most d of slack, half of the round
trip 2d it avoids, and a young outage is the likeliest to end)..."""
YOUNG_OUTAGE_SPARE_OVERHEADS = 3.0
"""...while the spare slack is at least this many d (the wait, then a round trip, still fit)."""


def _guard(sit: Situation) -> float:
    """Slack set aside before any reserve: one restart overhead."""
    return GUARD_OVERHEADS * sit.overhead_s


def _beyond_fit(sit: Situation) -> bool:
    """Restarts longer than the reserves were fitted for (see OVERHEAD_FIT_CAP_S)."""
    return sit.overhead_s > OVERHEAD_FIT_CAP_S


def _repay_s(sit: Situation) -> float:
    """How long spot must have been back before a switch from ON_DEMAND is worth its restarts.

    A switch bills the spot restart d (no progress) and, after the reclaim, an ON_DEMAND restart
    d; each second of spot progress saves the price difference. It pays when spot runs, beyond
    its restart, at least d x (p_od + p_spot) / (p_od - p_spot) (1.93 d at the default prices).
    With decreasing hazards a session that has lasted some time is expected to last at least as
    long again, so the policy waits until spot has been back that long. Infinite when spot is
    not cheaper.
    """
    od, spot = sit.on_demand_usd_per_s, sit.spot_usd_per_s
    if od <= spot:
        return math.inf
    return sit.overhead_s * (od + spot) / (od - spot)


def _hours(seconds: float) -> float:
    return seconds / HOUR


@register("deadline", live=True)
def deadline_aware(history: History, policy: SpotPolicy, now: float) -> Choice:
    """Cheapest while never late: spend slack where spot is likely, ON_DEMAND only when needed.

    1. Running on spot: stay until reclaimed.
    2. Safety net (exact, in whole ticks): SPOT is entered only if an ON_DEMAND restart after a
       reclaim at any later tick still finishes in time, and idling only while one more idle
       tick keeps ON_DEMAND feasible; otherwise ON_DEMAND now (back to SPOT only when this same
       check passes again, which a small restart overhead can allow: never "to the end").
    3. On ON_DEMAND and spot is back: switch when the spare slack (s - d) covers a reserve of
       R x 1.2 x d[h] x exp(-a / 0.5 h); else stay. With d beyond the fitted 0.2 h, also only
       once spot has been back for d x (p_od + p_spot) / (p_od - p_spot) (``_repay_s``).
    4. Idle and spot is available: take it.
    5. Idle without spot: wait while the spare slack is at least R x (0.07 + 0.4 x d[h]) x
       (1 + 0.25 x a[h]) (half that in an outage's first tick when d > tau); else go ON_DEMAND.
       With d beyond 0.2 h, also wait (as greedy does) while the spare slack is under 2d (going
       ON_DEMAND could not be followed by a switch back), and through an outage's first d while
       the spare slack is at least 3d. On ON_DEMAND without spot: stay.
    """
    sit = _need(history)
    if sit.on_spot:
        return Choice(SPOT, "running on SPOT; staying until reclaimed")
    spare = sit.slack_s - _guard(sit)
    r = max(sit.time_left_s, 0.0)
    d_h = _hours(min(sit.overhead_s, OVERHEAD_FIT_CAP_S))
    if sit.spot_available:
        if not sit.can_take_spot():
            return _safety_net(sit)
        if not sit.on_demand:
            return Choice(SPOT, f"SPOT capacity available; slack {_fmt(sit.slack_s)}")
        reserve = (
            r * SWITCH_PER_OVERHEAD_HOUR * d_h * math.exp(-sit.spot_age_s / SWITCH_AGE_DECAY_S)
        )
        repay = _repay_s(sit)
        if _beyond_fit(sit) and sit.spot_age_s < repay:
            return Choice(
                OD,
                f"staying on ON_DEMAND: SPOT back for {_fmt(sit.spot_age_s)}, not yet the "
                f"{_fmt(repay)} of SPOT running that repays a switch and the restart after it",
            )
        if spare >= reserve:
            return Choice(
                SPOT,
                f"SPOT is back (for {_fmt(sit.spot_age_s)}) and slack {_fmt(sit.slack_s)} covers "
                f"the switch reserve {_fmt(reserve + _guard(sit))}; switching back to SPOT",
            )
        return Choice(OD, f"staying on ON_DEMAND: slack {_fmt(sit.slack_s)} too thin to switch")
    if sit.on_demand:
        return Choice(OD, "staying on ON_DEMAND while SPOT is unavailable")
    if not sit.can_wait():
        return _safety_net(sit)
    age = min(sit.spot_age_s, AGE_CAP_S)
    reserve = (
        r * (WAIT_BASE + WAIT_PER_OVERHEAD_HOUR * d_h) * (1 + WAIT_PER_OUTAGE_HOUR * _hours(age))
    )
    if sit.spot_age_s < sit.tick_s < sit.overhead_s:
        reserve *= FRESH_OUTAGE_FACTOR
    if _beyond_fit(sit):
        d = sit.overhead_s
        if spare < ROUND_TRIP_OVERHEADS * d:
            return Choice(
                SPOT,
                f"waiting for SPOT capacity: spare slack {_fmt(spare)} cannot pay for ON_DEMAND "
                "and a switch back; the safety net escalates in time",
            )
        if (
            sit.spot_age_s < YOUNG_OUTAGE_OVERHEADS * d
            and spare >= YOUNG_OUTAGE_SPARE_OVERHEADS * d
        ):
            return Choice(
                SPOT,
                f"waiting for SPOT capacity: the outage ({_fmt(sit.spot_age_s)}) is younger than "
                f"a restart ({_fmt(d)})",
            )
    if spare >= reserve:
        return Choice(SPOT, f"waiting for SPOT capacity; slack {_fmt(sit.slack_s)} to spare")
    return Choice(
        OD,
        f"no SPOT capacity for {_fmt(sit.spot_age_s)} and slack {_fmt(sit.slack_s)} is below the "
        f"reserve {_fmt(reserve + _guard(sit))} for {_fmt(r)} left; escalating to ON_DEMAND",
        escalated=True,
    )


# -- baselines -------------------------------------------------------------------------------


@register("uniform_progress", live=True)
def uniform_progress(history: History, policy: SpotPolicy, now: float) -> Choice:
    """Uniform Progress (Wu et al., NSDI'24), exactly as in issue #7. Line: ``t * W / D``.

    (4) idle and time left < work left + 2d: ON_DEMAND to the end; (3) on ON_DEMAND: stay until
    progress >= the line at t + 2d; (2) take spot whenever available and stay until reclaimed;
    (1) idle and behind the line: ON_DEMAND. Otherwise stay where it is (idle waits for spot).
    """
    sit = _need(history)
    committed = _committed_at_submission(sit)
    if committed:
        return _final(sit)
    if sit.idle and sit.must_commit(2 * sit.overhead_s):
        return _final(sit)
    line = _line(sit)
    if sit.on_demand and sit.done_s < line(sit.elapsed_s + 2 * sit.overhead_s):
        return Choice(OD, "on ON_DEMAND until progress reaches the line at t + 2d")
    if sit.on_spot:
        return Choice(SPOT, "running on SPOT; staying until reclaimed")
    if sit.spot_available:
        return Choice(SPOT, "SPOT capacity available")
    if sit.on_demand:
        return Choice(OD, "staying on ON_DEMAND while SPOT is unavailable")
    if sit.done_s < line(sit.elapsed_s):
        return Choice(OD, "behind the uniform-progress line; escalating to ON_DEMAND", True)
    return Choice(SPOT, "ahead of the uniform-progress line; waiting for SPOT capacity")


@register("greedy", live=True)
def greedy(history: History, policy: SpotPolicy, now: float) -> Choice:
    """Spot whenever possible, wait for it otherwise, ON_DEMAND to the end once slack runs out."""
    sit = _need(history)
    if sit.on_spot:
        return Choice(SPOT, "running on SPOT; staying until reclaimed")
    if sit.on_demand or sit.must_commit(2 * sit.overhead_s):
        return _final(sit)
    return Choice(SPOT, "SPOT available" if sit.spot_available else "waiting for SPOT capacity")


# -- helpers ---------------------------------------------------------------------------------


def _need(history: History) -> Situation:
    sit = history.situation
    if sit is None:  # the planner only calls live strategies with a situation
        raise ValueError("deadline-aware strategies need a Situation (work and deadline known)")
    return sit


def _final(sit: Situation) -> Choice:
    return Choice(
        OD,
        f"final phase: {_fmt(sit.work_left_s)} of work left and {_fmt(sit.time_left_s)} to the "
        f"deadline (restart overhead {_fmt(sit.overhead_s)}); ON_DEMAND to the end",
        escalated=not sit.on_demand,
    )


def _safety_net(sit: Situation) -> Choice:
    """ON_DEMAND now, but not "to the end": with a small restart overhead a later spot session
    can be safe again (the exact check decides), so this policy never promises to stay."""
    return Choice(
        OD,
        f"safety net: {_fmt(sit.work_left_s)} of work left and {_fmt(sit.time_left_s)} to the "
        f"deadline (restart overhead {_fmt(sit.overhead_s)}) leave no slack to wait for or risk "
        "SPOT; ON_DEMAND now, SPOT again only when the exact safety net allows it",
        escalated=not sit.on_demand,
    )


def _line(sit: Situation):
    deadline_s = (sit.deadline_at or math.inf) - sit.started_at
    rate = sit.work_s / deadline_s
    return lambda t: t * rate


def _committed_at_submission(sit: Situation) -> bool:
    """UP's rule 4 is sticky: the live ON_DEMAND attempt was submitted under the safety net."""
    live = sit.live
    if live is None or live.capacity is not OD or live.progress_start is None:
        return False
    left = (1.0 - live.progress_start) * sit.work_s
    return sit.must_commit(2 * sit.overhead_s, work_left_s=left, at=live.submitted_at)


def _fmt(seconds: float) -> str:
    if seconds == math.inf:
        return "no deadline"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds >= HOUR:
        return f"{sign}{seconds / HOUR:.2f} h"
    if seconds >= 60:
        return f"{sign}{seconds / 60:.1f} min"
    return f"{sign}{seconds:.1f} s"
