"""The pool planner ``decide_pool``: racing, give-up, probes and handoff (pure tables), and the
equivalence with ``decide`` for one SPOT and one ON_DEMAND placement."""

from __future__ import annotations

import pytest

from spot_workflows.config import SpotPolicy
from spot_workflows.core.deadline import Outlook
from spot_workflows.core.outcomes import (
    Action,
    Attempt,
    AttemptState,
    Cancel,
    Capacity,
    Outcome,
    Submit,
    Wait,
)
from spot_workflows.core.placements import Placement
from spot_workflows.core.planner import decide
from spot_workflows.core.pools import MIN_PROBE_BACKOFF_S, decide_pool
from spot_workflows.sim import Cell, load_trace
from spot_workflows.sim.engine import simulate
from spot_workflows.sim.pool import Driver, simulate_pool

H = 3600.0
SPOT, OD = Capacity.SPOT, Capacity.ON_DEMAND
PENDING, RUNNING, DONE = AttemptState.PENDING, AttemptState.RUNNING, AttemptState.DONE
A = Placement(name="a")
B = Placement(name="b", usd_per_hour=0.5)
ODP = Placement(name="od", capacity=OD)
POOL = (A, B, ODP)


def att(n, cap, placement, *, sub=0.0, start=None, end=None, outcome=None, handoff=False):
    state = DONE if outcome is not None else (RUNNING if start is not None else PENDING)
    return Attempt(
        number=n,
        capacity=cap,
        job_name=f"j{n}",
        job_id=f"id{n}",
        backend="t",
        state=state,
        outcome=outcome,
        submitted_at=sub,
        started_at=start,
        ended_at=end,
        placement=placement,
        handoff=handoff,
        progress_start=0.0,
    )


def deadline_policy(work_h=10.0, deadline_h=100.0, d_h=0.05, **kw):
    return SpotPolicy(
        deadline_s=deadline_h * H,
        work_s=work_h * H,
        restart_overhead_s=d_h * H,
        max_attempts=200,
        **kw,
    )


def look(progress=0.0, work_h=10.0, d_h=0.05, tick=600.0, **kw):
    return Outlook(
        progress=progress, work_s=work_h * H, restart_overhead_s=d_h * H, tick_s=tick, **kw
    )


ATTEMPTS = SpotPolicy(capacity_timeout_s=900)


def test_racing_fills_every_spot_placement_then_waits():
    pol, now = deadline_policy(), 0.0
    first = decide_pool([], pol, POOL, now=now, outlook=look())
    assert isinstance(first, Submit) and (first.capacity, first.placement) == (SPOT, "b")  # cheaper
    ledger = [att(1, SPOT, "b")]
    second = decide_pool(ledger, pol, POOL, now=now, outlook=look())
    assert isinstance(second, Submit) and (second.capacity, second.placement) == (SPOT, "a")
    ledger.append(att(2, SPOT, "a"))
    assert isinstance(decide_pool(ledger, pol, POOL, now=now, outlook=look()), Wait)


def test_race_placements_caps_the_racing_group():
    pol = deadline_policy(race_placements=1)
    decision = decide_pool([att(1, SPOT, "b")], pol, POOL, now=0.0, outlook=look())
    assert isinstance(decision, Wait)


@pytest.mark.parametrize(
    ("ledger", "cancelled"),
    [
        # first start wins, the pending one is cancelled
        ([att(1, SPOT, "b"), att(2, SPOT, "a", start=600.0)], 1),
        ([att(1, SPOT, "b", start=600.0), att(2, SPOT, "a")], 2),
        # both started in the same instant: keep the cheaper placement (b) ...
        ([att(1, SPOT, "a", start=600.0), att(2, SPOT, "b", start=600.0)], 1),
        # ... and at equal prices the lowest attempt number
        (
            [att(1, SPOT, "a", start=600.0), att(2, SPOT, "c", start=600.0)],
            2,
        ),
    ],
)
def test_first_start_wins_and_the_others_are_raced(ledger, cancelled):
    pool = (*POOL, Placement(name="c"))
    decision = decide_pool(ledger, deadline_policy(), pool, now=600.0, outlook=look())
    assert isinstance(decision, Cancel)
    assert (decision.attempt, decision.outcome) == (cancelled, Outcome.RACED)


def test_a_waiting_group_gives_up_as_one_no_capacity():
    ledger = [att(1, SPOT, "b"), att(2, SPOT, "a")]
    give_up = decide_pool(ledger, ATTEMPTS, POOL, now=1000.0)
    assert isinstance(give_up, Cancel)
    assert (give_up.attempt, give_up.outcome) == (2, Outcome.NO_CAPACITY)
    assert "capacity timeout 900s" in give_up.reason
    ledger[1] = att(2, SPOT, "a", end=1000.0, outcome=Outcome.NO_CAPACITY)
    rest = decide_pool(ledger, ATTEMPTS, POOL, now=1000.0)
    assert isinstance(rest, Cancel) and (rest.attempt, rest.outcome) == (1, Outcome.RACED)
    ledger[0] = att(1, SPOT, "b", end=1000.0, outcome=Outcome.RACED)
    escalate = decide_pool(ledger, ATTEMPTS, POOL, now=1000.0)
    assert isinstance(escalate, Submit)
    assert (escalate.capacity, escalate.placement, escalate.escalated) == (OD, "od", True)


def test_raced_attempts_do_not_count_against_max_attempts():
    pol = SpotPolicy(max_attempts=2, preemption_budget=5)
    ledger = [
        att(1, SPOT, "a", end=10.0, outcome=Outcome.RACED),
        att(2, SPOT, "b", start=10.0, end=20.0, outcome=Outcome.PREEMPTED),
    ]
    assert decide(ledger, pol, now=20.0).action is Action.FAIL  # the raw ledger: cap reached
    decision = decide_pool(ledger, pol, POOL, now=20.0)
    assert isinstance(decision, Submit) and decision.capacity is SPOT
    assert decision.placement == "a"  # b just reclaimed the step


def test_on_demand_keeps_spot_probes_with_backoff():
    pol = deadline_policy()
    od = att(1, OD, "od", start=0.0)
    probe = decide_pool([od], pol, POOL, now=600.0, outlook=look(0.01))
    assert isinstance(probe, Submit) and (probe.capacity, probe.placement) == (SPOT, "b")
    assert "probing" in probe.reason
    ledger = [od, att(2, SPOT, "b", sub=600.0)]
    second = decide_pool(ledger, pol, POOL, now=600.0, outlook=look(0.01))
    assert isinstance(second, Submit) and second.placement == "a"
    ledger.append(att(3, SPOT, "a", sub=600.0))
    assert isinstance(decide_pool(ledger, pol, POOL, now=600.0, outlook=look(0.01)), Wait)
    # after a stay (a probe that started and was raced), the next probe waits for the backoff
    stayed = [
        od,
        att(2, SPOT, "b", sub=600.0, start=1200.0, end=1200.0, outcome=Outcome.RACED),
        att(3, SPOT, "a", sub=600.0, end=1200.0, outcome=Outcome.RACED),
    ]
    pause = max(MIN_PROBE_BACKOFF_S, 600.0, 0.05 * H)
    early = decide_pool(stayed, pol, POOL, now=1800.0 - 1, outlook=look(0.02))
    assert isinstance(early, Wait) and early.recheck_at == pytest.approx(1200.0 + pause)
    due = decide_pool(stayed, pol, POOL, now=1200.0 + pause, outlook=look(0.02))
    assert isinstance(due, Submit) and due.capacity is SPOT


@pytest.mark.parametrize(
    ("policy", "outlook"),
    [
        (SpotPolicy(), None),  # not deadline-aware: nothing would switch back
        (deadline_policy(), look(0.01, spot_available=False)),  # the caller knows
    ],
)
def test_no_probe_without_a_use_for_it(policy, outlook):
    decision = decide_pool([att(1, OD, "od", start=0.0)], policy, POOL, now=600.0, outlook=outlook)
    assert isinstance(decision, Wait)


def test_probe_start_with_slack_hands_over():
    pol = deadline_policy()  # 10 h of work, 100 h deadline: lots of slack
    ledger = [att(1, OD, "od", start=0.0), att(2, SPOT, "b", sub=600.0, start=1200.0)]
    decision = decide_pool(ledger, pol, POOL, now=1200.0, outlook=look(0.03))
    assert isinstance(decision, Cancel)
    assert (decision.attempt, decision.outcome, decision.handoff) == (1, Outcome.STOPPED, True)
    # once handed over, the spot attempt is the step's: stay on it
    ledger[0] = att(1, OD, "od", start=0.0, end=1200.0, outcome=Outcome.STOPPED, handoff=True)
    assert isinstance(decide_pool(ledger, pol, POOL, now=1200.0, outlook=look(0.03)), Wait)


def test_probe_start_without_slack_stays_on_demand():
    pol = deadline_policy(work_h=48.0, deadline_h=52.0, d_h=0.2)
    ledger = [att(1, OD, "od", start=0.0), att(2, SPOT, "b", sub=600.0, start=1200.0)]
    decision = decide_pool(ledger, pol, POOL, now=1200.0, outlook=look(1 / 144, 48.0, 0.2))
    assert isinstance(decision, Cancel)
    assert (decision.attempt, decision.outcome, decision.handoff) == (2, Outcome.RACED, False)
    assert "stays on ON_DEMAND" in decision.reason


def test_success_cancels_the_probe_then_succeeds():
    ledger = [
        att(1, OD, "od", start=0.0, end=H, outcome=Outcome.SUCCEEDED),
        att(2, SPOT, "b", sub=600.0),
    ]
    first = decide_pool(ledger, deadline_policy(), POOL, now=H, outlook=look(1.0))
    assert isinstance(first, Cancel) and (first.attempt, first.outcome) == (2, Outcome.RACED)
    ledger[1] = att(2, SPOT, "b", sub=600.0, end=H, outcome=Outcome.RACED)
    assert decide_pool(ledger, deadline_policy(), POOL, now=H).action is Action.SUCCEED


def _same(pool_decision, single):
    drop = {"placement", "attempt"}
    return pool_decision.model_dump(exclude=drop) == single.model_dump(exclude=drop)


@pytest.mark.parametrize("strategy", ["auto", "uniform_progress", "greedy"])
@pytest.mark.parametrize(("deadline_h", "d_h"), [(52.0, 0.2), (56.0, 0.05)])
def test_one_spot_one_on_demand_equals_decide(strategy, deadline_h, d_h):
    """Replay the single-trace simulator's scenarios through ``decide_pool``: every decision
    equals ``decide``'s, and so do the costs."""
    trace = load_trace("aws-10-26-2022/us-west-2a_v100_1")
    cell = Cell(48.0, deadline_h, d_h, 6)
    policy = cell.policy(strategy)
    calls = []

    def both(attempts, policy, placements, *, now, spent_usd, outlook):
        pooled = decide_pool(
            attempts, policy, placements, now=now, spent_usd=spent_usd, outlook=outlook
        )
        single = decide(attempts, policy, now=now, spent_usd=spent_usd, outlook=outlook)
        assert _same(pooled, single), (now, pooled, single)
        calls.append(pooled)
        return pooled

    places = (Placement(name="only"), Placement(name="od", capacity=OD))
    for start in trace.starts(deadline_h, cell.starts):
        kw = {"work_s": 48.0 * H, "restart_overhead_s": d_h * H}
        ref = simulate(trace, start, policy, **kw)
        got = simulate_pool(
            [trace],
            start,
            policy,
            driver=Driver(
                places, decider=both, knows_availability=True, ask_again_after_submit=False
            ),
            **kw,
        )
        assert got.cost_usd == pytest.approx(ref.cost_usd)
        assert got.missed == ref.missed
        assert [(a.capacity, a.outcome) for a in got.ledger] == [
            (a.capacity, a.outcome) for a in ref.ledger
        ]
    assert any(isinstance(c, Submit) and c.placement == "only" for c in calls)
