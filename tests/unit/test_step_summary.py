"""StepSummary with spot pools: RACED attempts (race losers, probes not switched to) never
count as having run the step."""

from __future__ import annotations

from factories import attempt

from spot_workflows.core.outcomes import AttemptState, Capacity, Outcome
from spot_workflows.core.summary import StepSummary

DONE = AttemptState.DONE
SPOT, OD = Capacity.SPOT, Capacity.ON_DEMAND


def summary(*attempts) -> StepSummary:
    return StepSummary.of("s", attempts)


def test_a_raced_probe_beside_on_demand_is_no_escalation():
    s = summary(
        attempt(1, OD, DONE, outcome=Outcome.SUCCEEDED, placement="od"),
        attempt(2, SPOT, DONE, outcome=Outcome.RACED, placement="zone-a"),
    )
    assert not s.escalated
    assert s.final_capacity is OD
    assert s.raced == 1 and [a.number for a in s.ran] == [1]


def test_the_winner_of_a_race_is_the_final_capacity_and_rows_name_placements():
    s = summary(
        attempt(1, SPOT, DONE, outcome=Outcome.SUCCEEDED, placement="zone-b"),
        attempt(2, SPOT, DONE, outcome=Outcome.RACED, placement="zone-a"),
    )
    assert s.final_capacity is SPOT and not s.escalated and s.preemptions == 0
    assert [(r["placement"], r["outcome"]) for r in s.rows()] == [
        ("zone-b", "SUCCEEDED"),
        ("zone-a", "RACED"),
    ]


def test_a_handoff_back_to_spot_after_escalation_is_escalated():
    s = summary(
        attempt(1, SPOT, DONE, outcome=Outcome.PREEMPTED),
        attempt(2, OD, DONE, outcome=Outcome.STOPPED, handoff=True),
        attempt(3, SPOT, DONE, outcome=Outcome.SUCCEEDED),
    )
    assert s.escalated and s.final_capacity is SPOT and s.preemptions == 1
