"""Placement choice: which SPOT placement first, which ON_DEMAND placement next (pure tables)."""

from __future__ import annotations

import pytest

from spot_workflows.config import SpotPolicy
from spot_workflows.core.outcomes import Attempt, AttemptState, Capacity, Outcome
from spot_workflows.core.placement_choice import on_demand_order, price_per_hour, spot_order
from spot_workflows.core.placements import Placement
from spot_workflows.errors import ConfigError

SPOT, OD = Capacity.SPOT, Capacity.ON_DEMAND
POLICY = SpotPolicy(spot_usd_per_hour=1.0, on_demand_usd_per_hour=3.0)


def place(name, capacity=SPOT, price=None):
    return Placement(name=name, capacity=capacity, usd_per_hour=price)


def ended(n, placement, outcome, at, capacity=SPOT):
    return Attempt(
        number=n,
        capacity=capacity,
        job_name=f"j{n}",
        job_id=f"id{n}",
        backend="t",
        state=AttemptState.DONE,
        outcome=outcome,
        submitted_at=at - 100,
        started_at=at - 50,
        ended_at=at,
        placement=placement,
    )


A, B, C = place("a"), place("b"), place("c")
ODX, ODY = place("odx", OD), place("ody", OD)


@pytest.mark.parametrize(
    ("placements", "attempts", "now", "scores", "expected"),
    [
        # user's order when nothing else differs
        ([A, B, C], [], 1000, None, "abc"),
        # cheaper first (own price beats the policy's price)
        ([A, place("b", price=0.5), C], [], 1000, None, "bac"),
        ([place("a", price=2.0), B], [], 1000, None, "ba"),
        # a placement that just reclaimed the step goes last...
        ([A, B, C], [ended(1, "a", Outcome.PREEMPTED, 900)], 1000, None, "bca"),
        # ...even when it is the cheapest...
        ([place("a", price=0.1), B], [ended(1, "a", Outcome.PREEMPTED, 900)], 1000, None, "ba"),
        # ...but only within the cooldown (1 h by default)
        ([A, B], [ended(1, "a", Outcome.PREEMPTED, 900)], 900 + 3601, None, "ab"),
        # two recent reclaims: the older one first
        (
            [A, B, C],
            [ended(1, "a", Outcome.PREEMPTED, 950), ended(2, "b", Outcome.PREEMPTED, 900)],
            1000,
            None,
            "cba",
        ),
        # a RACED or NO_CAPACITY attempt is not a reclaim
        ([A, B], [ended(1, "a", Outcome.RACED, 900)], 1000, None, "ab"),
        ([A, B], [ended(1, "a", Outcome.NO_CAPACITY, 900)], 1000, None, "ab"),
        # scores weigh in: a score of 10 beats a score of 1 at equal prices
        ([A, B], [], 1000, {"a": 1, "b": 10}, "ba"),
        # ...but not a price 2x lower (score 1 adds at most 25 %)
        ([place("a", price=0.5), B], [], 1000, {"a": 1, "b": 10}, "ab"),
        # ON_DEMAND placements are not ranked here
        ([ODX, A, B], [], 1000, None, "ab"),
    ],
)
def test_spot_order(placements, attempts, now, scores, expected):
    got = spot_order(placements, attempts, POLICY, now=now, scores=scores)
    assert "".join(p.name for p in got) == expected


@pytest.mark.parametrize(
    ("attempts", "now", "expected"),
    [
        ([], 1000, ["odx", "ody"]),
        ([ended(1, "odx", Outcome.NO_CAPACITY, 900, OD)], 1000, ["ody", "odx"]),
        ([ended(1, "odx", Outcome.NO_CAPACITY, 900, OD)], 900 + 3601, ["odx", "ody"]),
        ([ended(1, "odx", Outcome.STOPPED, 900, OD)], 1000, ["odx", "ody"]),
        (
            [
                ended(1, "odx", Outcome.NO_CAPACITY, 900, OD),
                ended(2, "ody", Outcome.NO_CAPACITY, 950, OD),
            ],
            1000,
            ["odx", "ody"],
        ),
    ],
)
def test_on_demand_order(attempts, now, expected):
    got = on_demand_order([A, ODX, ODY], attempts, now=now)
    assert [p.name for p in got] == expected


def test_price_falls_back_to_the_policy():
    assert price_per_hour(A, POLICY) == 1.0
    assert price_per_hour(ODX, POLICY) == 3.0
    assert price_per_hour(place("z", price=0.25), POLICY) == 0.25


@pytest.mark.parametrize("score", [0, 11, -1])
def test_scores_out_of_range_are_refused(score):
    with pytest.raises(ConfigError, match="scores run from 1 to 10"):
        spot_order([A, B], [], POLICY, now=0, scores={"a": score})
