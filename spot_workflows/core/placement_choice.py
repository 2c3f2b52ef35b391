"""Which placement gets a step's next attempt (pure: ledger, placements and prices in, order out).

SPOT placements are ranked for a new attempt, a racing set or a probe:

1. **Avoid a placement right after it reclaimed the step** (SkyPilot's ``EAGER_NEXT_REGION``): a
   placement whose SPOT attempt of this step ended ``PREEMPTED`` within ``cooldown_s`` goes after
   every other one (a reclaim says that pool is short now; its capacity tends to stay short a
   while). Several such placements: the one that reclaimed longest ago first.
2. **Prefer cheaper**: the price is ``Placement.usd_per_hour``, else the policy's price for the
   capacity. An optional *spot placement score* (1-10, higher = likelier to get and keep capacity,
   e.g. AWS ``GetSpotPlacementScores``) passed in by the caller scales that price: a score of 10
   leaves it as it is, every point below 10 adds ``SCORE_WEIGHT / 9`` of it (score 1: +25 %).
3. Ties: the user's order.

ON_DEMAND placements are tried in the user's order; one whose ON_DEMAND attempt just ended
``NO_CAPACITY`` (within ``cooldown_s``) moves behind the others (on-demand GPUs run out too), the
one that failed longest ago first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from spot_workflows.core.deadline import HOUR
from spot_workflows.core.outcomes import Attempt, Capacity, Outcome
from spot_workflows.core.placements import Placement, of_capacity
from spot_workflows.core.spot_policy import SpotPolicy
from spot_workflows.errors import ConfigError

DEFAULT_COOLDOWN_S = 1 * HOUR
"""How long a placement stays "just reclaimed" (or "just out of on-demand capacity")."""
SCORE_WEIGHT = 0.25
"""Price penalty of a score of 1 against a score of 10 (fraction of the price)."""
MIN_SCORE, MAX_SCORE = 1, 10


def price_per_hour(placement: Placement, policy: SpotPolicy) -> float:
    """The placement's own price, else the policy's price for its capacity."""
    if placement.usd_per_hour is not None:
        return float(placement.usd_per_hour)
    if placement.capacity is Capacity.SPOT:
        return policy.spot_usd_per_hour
    return policy.on_demand_usd_per_hour


def _last_end(
    attempts: Sequence[Attempt], name: str, capacity: Capacity, outcome: Outcome
) -> float | None:
    """When an attempt of ``capacity`` in placement ``name`` last ended with ``outcome``."""
    ends = [
        a.ended_at if a.ended_at is not None else a.submitted_at
        for a in attempts
        if a.placement == name and a.capacity is capacity and a.outcome is outcome
    ]
    return max(ends) if ends else None


def _recent(end: float | None, now: float, cooldown_s: float) -> bool:
    return end is not None and now - end < cooldown_s


def spot_order(
    placements: Sequence[Placement],
    attempts: Sequence[Attempt],
    policy: SpotPolicy,
    *,
    now: float,
    scores: Mapping[str, float] | None = None,
    cooldown_s: float = DEFAULT_COOLDOWN_S,
) -> tuple[Placement, ...]:
    """The SPOT placements, best first (see the module docstring for the rule)."""
    spot = of_capacity(placements, Capacity.SPOT)
    scores = scores or {}
    for name, score in scores.items():
        if not MIN_SCORE <= score <= MAX_SCORE:
            raise ConfigError(
                f"spot placement score for {name!r} is {score!r}; scores run from "
                f"{MIN_SCORE} to {MAX_SCORE}"
            )

    def key(item: tuple[int, Placement]) -> tuple:
        index, p = item
        end = _last_end(attempts, p.name, Capacity.SPOT, Outcome.PREEMPTED)
        recent = _recent(end, now, cooldown_s)
        score = scores.get(p.name, MAX_SCORE)
        price = price_per_hour(p, policy) * (1 + SCORE_WEIGHT * (MAX_SCORE - score) / 9)
        return (recent, end if recent else 0.0, price, index)

    return tuple(p for _, p in sorted(enumerate(spot), key=key))


def on_demand_order(
    placements: Sequence[Placement],
    attempts: Sequence[Attempt],
    *,
    now: float,
    cooldown_s: float = DEFAULT_COOLDOWN_S,
) -> tuple[Placement, ...]:
    """The ON_DEMAND placements in the user's order, those that just gave NO_CAPACITY last."""
    od = of_capacity(placements, Capacity.ON_DEMAND)

    def key(item: tuple[int, Placement]) -> tuple:
        index, p = item
        end = _last_end(attempts, p.name, Capacity.ON_DEMAND, Outcome.NO_CAPACITY)
        recent = _recent(end, now, cooldown_s)
        return (recent, end if recent else 0.0, index)

    return tuple(p for _, p in sorted(enumerate(od), key=key))
