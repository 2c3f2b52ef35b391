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
* **Spot knowledge** (:mod:`~spot_workflows.core.pool_view`): unless the caller knows spot
  availability (``Outlook.spot_available`` set), it comes from the step's own attempts: a SPOT
  attempt running (or stopped / raced on purpose this instant) means available since it started;
  otherwise unavailable since the first reclaim or wait after spot was last seen. Before any SPOT
  attempt an idle step assumes spot is there (a pending attempt is a free look).
* **Look before leaving**: when a deadline-aware strategy moves an idle step to ON_DEMAND while
  some racing placement was not looked at this instant (e.g. right after a reclaim in another
  one), a SPOT attempt is submitted there first; it starts at once if capacity is there, and the
  strategy decides again.
* **Probes and handoff**: while on ON_DEMAND under a deadline-aware strategy (caller does not know
  spot availability), pending SPOT probes are kept in up to K placements, best first (a pending
  job is free; one probe per placement, since each sees only its own pool). When one starts (the
  others are cancelled RACED), the strategy is asked through ``decide`` as if spot had been
  available since that probe started (since the first of a chain of stay-probes each started the
  moment it was submitted: nothing showed an outage in between). Switch:
  ``Cancel(attempt=<on-demand>, outcome=STOPPED, handoff=True)``; stay:
  ``Cancel(attempt=<probe>, outcome=RACED)`` and a new round of probes after an exponential
  backoff counted from the ledger (started RACED probes since the step went on ON_DEMAND).

With one SPOT and one ON_DEMAND placement and no probe, the decisions are ``decide``'s, plus
``placement=`` on Submit and ``attempt=`` on Cancel.
"""

from __future__ import annotations

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
from spot_workflows.core.pool_view import SAME_INSTANT_S, available_since, collapse, seen
from spot_workflows.core.spot_policy import SpotPolicy
from spot_workflows.core.strategies import is_live, resolve

SPOT, OD = Capacity.SPOT, Capacity.ON_DEMAND
PENDING, RUNNING = AttemptState.PENDING, AttemptState.RUNNING
MIN_PROBE_BACKOFF_S = 60.0
"""Shortest pause before probing again after the policy stayed on ON_DEMAND. The pause is
``max(this, decision tick, restart overhead) x 2^(stays - 1)``: a started probe costs about one
restart overhead of spot time, so probing at most once per overhead keeps that cost bounded..."""
MAX_PROBE_BACKOFF_S = 4 * 3600.0
"""...and never waits longer than this between probes."""
PROBE_BACKOFF_FACTOR = 2.0
"""Each stay doubles the pause before the next round of probes."""


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

    view, hidden = collapse(attempts)
    decision = decide(
        view, policy, now=now, spent_usd=spent_usd, outlook=seen(attempts, now, outlook)
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
    seen = replace(base, spot_available=True, spot_state_since=available_since(attempts, probe))
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
    looked = {
        a.placement
        for a in attempts
        if a.capacity is SPOT
        and (a.live or (a.ended_at is not None and now - a.ended_at <= window))
    }
    k = policy.race_placements if policy.race_placements is not None else len(ranked)
    unseen = [p for p in ranked[:k] if p.name not in looked]
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
