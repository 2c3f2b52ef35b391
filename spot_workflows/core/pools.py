"""The pool planner: ``decide_pool`` -- racing, probes and handoff over several placements.

Pure, like :func:`~spot_workflows.core.planner.decide`, which it builds on: the capacity (SPOT or
ON_DEMAND) is still chosen by the registered strategies through ``decide``, on a *collapsed view*
of the ledger; this layer only decides placements, racing, probes and handoff.

* **Collapsed view**: RACED attempts are dropped (they never count against a budget,
  ``max_attempts`` or the history sentence); a group of pending SPOT attempts racing in several
  placements is seen as ONE pending SPOT attempt (submitted when the first of them was); a probe
  (a SPOT attempt kept while the step is on ON_DEMAND) is left out.
* **Racing**: while the step waits for spot, up to ``SpotPolicy.race_placements`` (None: all) SPOT
  placements hold a pending attempt, ranked by :mod:`~spot_workflows.core.placement_choice`. The
  first to start wins and the others are cancelled ``RACED``; several started at once: the
  cheapest placement is kept, then the lowest attempt number. When the strategy gives up waiting,
  the group ends as ONE ``NO_CAPACITY`` (its newest attempt), the rest ``RACED``.
* **Probe and handoff**: while on ON_DEMAND under a deadline-aware strategy, and the caller does not
  know spot availability itself (``Outlook.spot_available`` is None), one pending SPOT probe is kept
  in the best SPOT placement. When it starts, the strategy is asked (through ``decide``) as if spot
  had been available since the probe started (since the first of a chain of probes each started the
  moment it was submitted: nothing showed an outage in between). Switch:
  ``Cancel(attempt=<on-demand>, outcome=STOPPED, handoff=True)``; stay:
  ``Cancel(attempt=<probe>, outcome=RACED)`` and probe again after an exponential backoff counted
  from the ledger (RACED probes since the step went on ON_DEMAND).

With one SPOT and one ON_DEMAND placement and no probe, the decisions are ``decide``'s, plus
``placement=`` on Submit and ``attempt=`` on Cancel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

from spot_workflows.core.deadline import Outlook, measured_overhead
from spot_workflows.core.outcomes import (
    Attempt,
    AttemptState,
    Cancel,
    Capacity,
    Decision,
    Outcome,
    Submit,
    Wait,
)
from spot_workflows.core.placement_choice import (
    DEFAULT_COOLDOWN_S,
    on_demand_order,
    price_per_hour,
    spot_order,
)
from spot_workflows.core.placements import Placement, by_name, check_placements
from spot_workflows.core.planner import decide
from spot_workflows.core.spot_policy import SpotPolicy
from spot_workflows.core.strategies import is_live, resolve

SPOT, OD = Capacity.SPOT, Capacity.ON_DEMAND
PENDING, RUNNING = AttemptState.PENDING, AttemptState.RUNNING
SAME_INSTANT_S = 60.0
"""An attempt stopped or raced on purpose at most this long ago (and within the decision tick)
still counts as "spot is available now"; older sightings say nothing about now."""
MIN_PROBE_BACKOFF_S = 60.0
"""Shortest pause before probing again after the policy stayed on ON_DEMAND. The pause is
``max(this, decision tick, restart overhead) x 2^(stays - 1)``: a started probe costs about one
restart overhead of spot time, so probing at most once per overhead keeps that cost bounded..."""
MAX_PROBE_BACKOFF_S = 4 * 3600.0
PROBE_BACKOFF_FACTOR = 2.0
"""Each stay doubles the pause before the next round of probes."""
"""...and never waits longer than this between probes."""


def decide_pool(
    attempts: Sequence[Attempt],
    policy: SpotPolicy,
    placements: Sequence[Placement],
    *,
    now: float,
    spent_usd: float | None = None,
    outlook: Outlook | None = None,
    scores: Mapping[str, float] | None = None,
    cooldown_s: float = DEFAULT_COOLDOWN_S,
) -> Decision:
    """What to do next for a step that may hold several live attempts (see the module docs).

    Returns one action; the caller carries it out, updates the ledger and calls again in the same
    tick until it gets Wait, Succeed or Fail. ``scores``: optional spot placement scores (1-10) by
    placement name; ``cooldown_s``: how long a placement that reclaimed the step is avoided."""
    placements = check_placements(placements)
    ranked = spot_order(placements, attempts, policy, now=now, scores=scores, cooldown_s=cooldown_s)
    live = [a for a in attempts if a.live]
    od_live = next((a for a in live if a.capacity is OD), None)
    spot_live = [a for a in live if a.capacity is SPOT]

    leftover = _group_leftover(attempts, spot_live)
    if leftover is not None:
        return Cancel(
            attempt=leftover.number,
            outcome=Outcome.RACED,
            reason=f"attempt {leftover.number}: its racing group gave up waiting for SPOT",
        )
    if od_live is not None:
        probes = [a for a in spot_live if a.number > od_live.number]
        started = [a for a in probes if a.state is RUNNING]
        if started and len(probes) > 1:
            return _race_loser(started, probes, placements, policy)
        if started:
            return _handoff(attempts, od_live, started[0], policy, now, spent_usd, outlook)
    elif spot_live:
        started = [a for a in spot_live if a.state is RUNNING]
        if started and len(spot_live) > 1:
            return _race_loser(started, spot_live, placements, policy)

    view, hidden = _collapse(attempts)
    decision = decide(
        view, policy, now=now, spent_usd=spent_usd, outlook=_seen(attempts, now, outlook)
    )
    if hidden and not (view and view[-1].live):
        # the step's own attempt ended: the probes / racers it kept are no longer needed
        loser = hidden[0]
        return Cancel(
            attempt=loser.number,
            outcome=Outcome.RACED,
            reason=f"attempt {loser.number} is no longer needed: {decision.reason}",
        )
    if isinstance(decision, Submit):
        look = _look_first(attempts, decision, ranked, policy, now, outlook)
        if look is not None:
            return look
        order = (
            ranked
            if decision.capacity is SPOT
            else on_demand_order(placements, attempts, now=now, cooldown_s=cooldown_s)
        )
        if not order:
            return decision.model_copy(update={"placement": None})
        return decision.model_copy(update={"placement": order[0].name})
    if isinstance(decision, Cancel):
        target = view[-1]
        if target.capacity is SPOT and target.state is PENDING:  # the racing group gives up
            target = max((a for a in spot_live if a.state is PENDING), key=_num)
        return decision.model_copy(update={"attempt": target.number})
    if isinstance(decision, Wait) and view and view[-1].live:
        extra = _top_up_or_probe(
            attempts, view[-1], od_live, spot_live, ranked, policy, now, decision, outlook
        )
        if extra is not None:
            return extra
    return decision


def _num(a: Attempt) -> int:
    return a.number


def _group_leftover(attempts: Sequence[Attempt], spot_live: list[Attempt]) -> Attempt | None:
    """A pending SPOT attempt of a racing group that gave up: the group's newest attempt ended
    NO_CAPACITY after this one was submitted."""
    gave_up = [
        a
        for a in attempts
        if a.capacity is SPOT and a.outcome is Outcome.NO_CAPACITY and a.ended_at is not None
    ]
    for a in spot_live:
        if a.state is PENDING and any(
            g.number > a.number and g.ended_at >= a.submitted_at for g in gave_up
        ):
            return a
    return None


def _race_loser(
    started: list[Attempt],
    spot_live: list[Attempt],
    placements: Sequence[Placement],
    policy: SpotPolicy,
) -> Cancel:
    """Several SPOT attempts live and at least one started: keep the cheapest started one (then
    the lowest number), cancel one other as RACED."""

    def price(a: Attempt) -> float:
        p = by_name(placements, a.placement)
        return price_per_hour(p, policy) if p is not None else policy.spot_usd_per_hour

    winner = min(started, key=lambda a: (price(a), a.number))
    losers = [a for a in spot_live if a is not winner]
    loser = max(losers, key=lambda a: (a.state is RUNNING, -a.number))
    return Cancel(
        attempt=loser.number,
        outcome=Outcome.RACED,
        reason=f"attempt {winner.number} started first"
        + (f" in {winner.placement}" if winner.placement else "")
        + f"; cancelling attempt {loser.number}",
    )


def _collapse(attempts: Sequence[Attempt]) -> tuple[list[Attempt], list[Attempt]]:
    """The ledger as ``decide`` should see it, and the live attempts it leaves out (probes and
    racers other than the group's stand-in), oldest first."""
    kept = [a for a in attempts if a.outcome is not Outcome.RACED]
    if attempts and kept and attempts[0].outcome is Outcome.RACED:
        # the step started with a racer that lost: keep its start time (the deadline counts from it)
        kept[0] = kept[0].model_copy(update={"submitted_at": attempts[0].submitted_at})
    probes = _probes(kept)
    if probes:
        return [a for a in kept if a not in probes], probes
    spot_live = [a for a in kept if a.live and a.capacity is SPOT]
    if len(spot_live) <= 1:
        return kept, []
    first = min(spot_live, key=_num)
    stand_in = first.model_copy(update={"submitted_at": min(a.submitted_at for a in spot_live)})
    view = [a for a in kept if not (a.live and a.capacity is SPOT)] + [stand_in]
    return view, [a for a in spot_live if a is not first]


def _probes(attempts: Sequence[Attempt]) -> list[Attempt]:
    """Live SPOT attempts submitted while the step's newest ON_DEMAND attempt was live (unless
    that attempt was stopped to hand the step over to one of them)."""
    od = max((a for a in attempts if a.capacity is OD), key=_num, default=None)
    if od is None or od.handoff:
        return []
    return [
        a
        for a in attempts
        if a.live
        and a.capacity is SPOT
        and a.number > od.number
        and (od.live or od.ended_at is None or a.submitted_at < od.ended_at)
    ]


def _available_since(attempts: Sequence[Attempt], probe: Attempt) -> float:
    """When spot became available as far as the probes tell: the start of the first of a chain of
    stay-probes (RACED after starting) each of which, like ``probe``, started the moment it was
    submitted."""
    since = probe.started_at if probe.started_at is not None else probe.submitted_at
    if probe.started_at != probe.submitted_at:
        return since
    earlier = [a for a in attempts if a.capacity is SPOT and a.number < probe.number]
    for a in reversed(earlier):
        if a.outcome is Outcome.RACED and a.started_at is None:
            continue  # a racer that lost while pending: spot was up elsewhere
        if a.outcome is not Outcome.RACED:
            break
        since = a.started_at
        if a.started_at != a.submitted_at:
            break
    return since


def _seen(attempts: Sequence[Attempt], now: float, outlook: Outlook | None) -> Outlook | None:
    """Spot availability as the step's own attempts saw it, unless the caller knows it: a SPOT
    attempt running now, or one that ran until this decision tick (stopped or raced on purpose),
    means available (since it started); otherwise not available, since the first sign of an
    outage after spot was last seen (a reclaim, or an attempt left waiting for capacity)."""
    if outlook is not None and outlook.spot_available is not None:
        return outlook
    base = outlook or Outlook()
    spot = [a for a in attempts if a.capacity is SPOT]
    if not spot:  # never looked: a pending SPOT attempt is a free look, so assume there is some
        return replace(base, spot_available=True, spot_state_since=now)
    window = min(max(base.tick_s, 1.0), SAME_INSTANT_S)  # seen up this very decision tick
    up_since: float | None = None
    last_up = -math.inf
    for a in spot:
        if a.started_at is None:
            continue
        end = now if a.live else (a.ended_at if a.ended_at is not None else a.started_at)
        if a.outcome is Outcome.PREEMPTED:
            end = a.started_at
        if end >= last_up:
            last_up = end
            if (a.live or a.outcome is not Outcome.PREEMPTED) and now - end <= window:
                up_since = _available_since(attempts, a)
    if up_since is not None:
        return replace(base, spot_available=True, spot_state_since=up_since)
    downs = [a.ended_at for a in spot if a.outcome is Outcome.PREEMPTED and a.ended_at is not None]
    downs += [a.submitted_at for a in spot if a.started_at is None or a.started_at > a.submitted_at]
    after = [t for t in downs if t >= last_up]
    since = min(after) if after else (last_up if last_up > -math.inf else now)
    return replace(base, spot_available=False, spot_state_since=min(since, now))


def _handoff(
    attempts: Sequence[Attempt],
    od: Attempt,
    probe: Attempt,
    policy: SpotPolicy,
    now: float,
    spent_usd: float | None,
    outlook: Outlook | None,
) -> Decision:
    """The probe started while the step is on ON_DEMAND: switch to it, or stay and drop it."""
    view = [a for a in attempts if a.outcome is not Outcome.RACED and a is not probe]
    base = outlook or Outlook()
    blind = decide(view, policy, now=now, spent_usd=spent_usd, outlook=base)
    if not isinstance(blind, Wait):  # not about spot (budget cap, capacity timeout, ended)
        if isinstance(blind, Cancel):
            return blind.model_copy(update={"attempt": od.number})
        return Cancel(
            attempt=probe.number,
            outcome=Outcome.RACED,
            reason=f"probe attempt {probe.number} is no longer needed: {blind.reason}",
        )
    seen = replace(base, spot_available=True, spot_state_since=_available_since(attempts, probe))
    told = decide(view, policy, now=now, spent_usd=spent_usd, outlook=seen)
    if isinstance(told, Cancel) and told.outcome is Outcome.STOPPED:
        return Cancel(
            attempt=od.number,
            outcome=Outcome.STOPPED,
            handoff=True,
            reason=f"probe attempt {probe.number} got SPOT capacity"
            + (f" in {probe.placement}" if probe.placement else "")
            + f"; handing the step over from ON_DEMAND attempt {od.number}: {told.reason}",
        )
    return Cancel(
        attempt=probe.number,
        outcome=Outcome.RACED,
        reason=f"probe attempt {probe.number} got SPOT capacity but the policy stays on "
        f"ON_DEMAND: {told.reason}",
    )


def _look_first(
    attempts: Sequence[Attempt],
    decision: Submit,
    ranked: Sequence[Placement],
    policy: SpotPolicy,
    now: float,
    outlook: Outlook | None,
) -> Submit | None:
    """Before a deadline-aware strategy leaves an idle step for ON_DEMAND on what the ledger
    says (spot unavailable), look for spot capacity where nothing was seen this instant: a pending
    SPOT attempt costs nothing and starts at once if capacity is there. Only a reclaim or a
    pending attempt says a placement has none *now*; the strategy decides again after the look."""
    if decision.capacity is not OD or not ranked or policy.deadline_s is None:
        return None
    if not is_live(resolve(policy)):
        return None
    if outlook is not None and outlook.spot_available is not None:
        return None  # the caller knows spot availability
    window = min(max(outlook.tick_s if outlook else 0.0, 1.0), SAME_INSTANT_S)
    seen = {
        a.placement
        for a in attempts
        if a.capacity is SPOT
        and (a.live or (a.ended_at is not None and now - a.ended_at <= window))
    }
    k = policy.race_placements if policy.race_placements is not None else len(ranked)
    unseen = [p for p in ranked[:k] if p.name not in seen]
    if not unseen or len(unseen) == len(ranked[:k]):
        return None  # nothing new to look at (or no reclaim/wait this instant: trust the strategy)
    return Submit(
        capacity=SPOT,
        placement=unseen[0].name,
        reason=f"looking for SPOT capacity in {unseen[0].name} before going ON_DEMAND "
        f"({decision.reason})",
    )


def _top_up_or_probe(
    attempts: Sequence[Attempt],
    own: Attempt,
    od_live: Attempt | None,
    spot_live: list[Attempt],
    ranked: Sequence[Placement],
    policy: SpotPolicy,
    now: float,
    decision: Wait,
    outlook: Outlook | None,
) -> Decision | None:
    """On a Wait: add a racer to the waiting group, or keep a probe while on ON_DEMAND."""
    held = {a.placement for a in spot_live}
    free = [p for p in ranked if p.name not in held]
    k = policy.race_placements if policy.race_placements is not None else len(ranked)
    if own.capacity is SPOT and own.state is PENDING and od_live is None:
        if free and len(spot_live) < k:
            return Submit(
                capacity=SPOT,
                placement=free[0].name,
                reason=f"racing for SPOT capacity in {len(spot_live) + 1} placements "
                f"(up to {k}): adding {free[0].name}",
            )
        return None
    if od_live is None or not free or len(spot_live) >= k:
        return None
    if not is_live(resolve(policy)) or policy.deadline_s is None:
        return None
    if outlook is not None and outlook.spot_available is not None:
        return None  # the caller knows spot availability: nothing to learn from a probe
    if not spot_live:  # a new round of probes: after the backoff
        due = _probe_due(attempts, od_live, policy, outlook)
        if due > now:
            recheck = due if decision.recheck_at is None else min(due, decision.recheck_at)
            return decision.model_copy(update={"recheck_at": recheck})
    return Submit(
        capacity=SPOT,
        placement=free[0].name,
        reason=f"on ON_DEMAND (attempt {od_live.number}): probing for SPOT capacity in "
        f"{free[0].name} ({len(spot_live) + 1} of up to {k} placements); the policy decides "
        "whether to switch back when a probe starts",
    )


def _probe_due(
    attempts: Sequence[Attempt], od: Attempt, policy: SpotPolicy, outlook: Outlook | None
) -> float:
    """When the next probe may go in: at once, or after ``base x 2^(stays - 1)`` from the last
    stay-probe, counting the stays since the step went on ON_DEMAND."""
    on_spot_until = max(
        (
            a.number
            for a in attempts
            if a.capacity is SPOT and a.outcome not in (None, Outcome.RACED)
        ),
        default=0,
    )
    on_od_since = min(
        (a.number for a in attempts if a.capacity is OD and a.number > on_spot_until),
        default=od.number,
    )
    stays = [
        a
        for a in attempts
        if a.number > on_od_since
        and a.capacity is SPOT
        and a.outcome is Outcome.RACED
        and a.started_at is not None
    ]
    if not stays:
        return od.submitted_at
    tick = outlook.tick_s if outlook is not None else 0.0
    overhead = (
        outlook.restart_overhead_s
        if outlook is not None and outlook.restart_overhead_s is not None
        else measured_overhead(attempts, policy)
    )
    base = max(MIN_PROBE_BACKOFF_S, tick, overhead)
    pause = min(MAX_PROBE_BACKOFF_S, base * PROBE_BACKOFF_FACTOR ** (len(stays) - 1))
    last = max(stays, key=_num)
    return (last.ended_at if last.ended_at is not None else last.submitted_at) + pause
