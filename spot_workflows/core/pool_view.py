"""The pool planner's view of the ledger: what ``decide`` sees, and what the attempts tell about
spot availability (pure helpers of :mod:`spot_workflows.core.pools`).

* :func:`collapse`: RACED attempts dropped; a racing group of pending SPOT attempts seen as ONE
  (submitted when its first member was); probes kept while on ON_DEMAND left out.
* :func:`seen`: spot availability from the step's own attempts when the caller does not know it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from spot_workflows.core.deadline import Outlook
from spot_workflows.core.outcomes import Attempt, Capacity, Outcome

SPOT, OD = Capacity.SPOT, Capacity.ON_DEMAND

SAME_INSTANT_S = 60.0
"""An attempt stopped or raced on purpose at most this long ago (and within the decision tick)
still counts as "spot is available now"; older sightings say nothing about now."""


def collapse(attempts: Sequence[Attempt]) -> tuple[list[Attempt], list[Attempt]]:
    """The ledger as ``decide`` should see it, and the live attempts it leaves out (probes and
    racers other than the group's stand-in), oldest first."""
    kept = [a for a in attempts if a.outcome is not Outcome.RACED]
    if attempts and kept and attempts[0].outcome is Outcome.RACED:
        # the step started with a racer that lost: keep its start time (the deadline counts from it)
        kept[0] = kept[0].model_copy(update={"submitted_at": attempts[0].submitted_at})
    probes = hidden_probes(kept)
    if probes:
        return [a for a in kept if a not in probes], probes
    spot_live = [a for a in kept if a.live and a.capacity is SPOT]
    if len(spot_live) <= 1:
        return kept, []
    first = min(spot_live, key=lambda a: a.number)
    stand_in = first.model_copy(update={"submitted_at": min(a.submitted_at for a in spot_live)})
    view = [a for a in kept if not (a.live and a.capacity is SPOT)] + [stand_in]
    return view, [a for a in spot_live if a is not first]


def hidden_probes(attempts: Sequence[Attempt]) -> list[Attempt]:
    """Live SPOT attempts submitted while the step's newest ON_DEMAND attempt was live (unless
    that attempt was stopped to hand the step over to one of them)."""
    od = max((a for a in attempts if a.capacity is OD), key=lambda a: a.number, default=None)
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


def available_since(attempts: Sequence[Attempt], probe: Attempt) -> float:
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


def seen(attempts: Sequence[Attempt], now: float, outlook: Outlook | None) -> Outlook | None:
    """Spot availability as the step's own attempts saw it, unless the caller knows it: a SPOT
    attempt running now, or one that ran until this decision tick (stopped or raced on purpose),
    means available (since it started); otherwise not available, since the first sign of an
    outage after spot was last seen (a reclaim, or an attempt left waiting for capacity)."""
    if outlook is not None and outlook.spot_available is not None:
        return outlook
    base = outlook or Outlook()
    spot = [a for a in attempts if a.capacity is SPOT]
    if not spot:
        if any(a.live for a in attempts):
            return outlook  # on ON_DEMAND and never looked: unknown, the probes will tell
        # idle and never looked: a pending SPOT attempt is a free look, so assume there is some
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
                up_since = available_since(attempts, a)
    if up_since is not None:
        return replace(base, spot_available=True, spot_state_since=up_since)
    downs = [a.ended_at for a in spot if a.outcome is Outcome.PREEMPTED and a.ended_at is not None]
    downs += [a.submitted_at for a in spot if a.started_at is None or a.started_at > a.submitted_at]
    after = [t for t in downs if t >= last_up]
    since = min(after) if after else (last_up if last_up > -math.inf else now)
    return replace(base, spot_available=False, spot_state_since=min(since, now))
