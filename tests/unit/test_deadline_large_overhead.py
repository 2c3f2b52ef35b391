"""The ``deadline`` strategy with restarts longer than its reserves were fitted for (d > 0.2 h).

Through the real planner (``core.planner.decide``) and the real trace simulator; no fakes.
"""

from __future__ import annotations

import random

import factories
import pytest

from spot_workflows.config import SpotPolicy
from spot_workflows.core.deadline import Outlook
from spot_workflows.core.outcomes import Action, AttemptState, Capacity, Outcome
from spot_workflows.core.planner import decide
from spot_workflows.sim import trace_from_data
from spot_workflows.sim.engine import simulate

SPOT, OD = Capacity.SPOT, Capacity.ON_DEMAND
H = 3600.0


def policy(restart_h=1.0, deadline_h=96.0, **kw):
    return SpotPolicy(
        deadline_s=deadline_h * H, work_s=48 * H, restart_overhead_s=restart_h * H, **kw
    )


def look(done_h, *, spot, since):
    return Outlook(progress=done_h / 48, spot_available=spot, spot_state_since=since, tick_s=600.0)


def on_demand():
    return [factories.attempt(1, OD, progress_start=0.0)]


def waiting():
    return [factories.attempt(1, SPOT, AttemptState.PENDING, progress_start=0.0)]


# -- rule 3: on ON_DEMAND, switch back only once spot has lasted long enough to repay it ---------


def test_switch_back_waits_until_spot_has_lasted_the_break_even():
    # 86 h left, 38 h of work: 48 h of slack, so only the break-even holds it back:
    # d x (3.06 + 0.9731) / (3.06 - 0.9731) = 1.93 h for d = 1 h
    now = 10 * H
    young = decide(on_demand(), policy(), now=now, outlook=look(10, spot=True, since=now - H))
    assert young.action is Action.WAIT
    assert "1.93 h of SPOT running" in young.reason
    lasted = decide(on_demand(), policy(), now=now, outlook=look(10, spot=True, since=now - 2 * H))
    assert lasted.action is Action.CANCEL and lasted.outcome is Outcome.STOPPED
    assert "switching back to SPOT" in lasted.reason


def test_the_break_even_is_not_applied_within_the_fitted_overheads():
    now = 10 * H  # same step with d = 0.2 h: the fitted reserve alone decides, and allows it
    d = decide(on_demand(), policy(0.2), now=now, outlook=look(10, spot=True, since=now - 600))
    assert d.action is Action.CANCEL and "switching back to SPOT" in d.reason


def test_the_break_even_follows_the_prices():
    now, since = 10 * H, 10 * H - 2 * H  # spot back for 2 h
    near = policy(spot_usd_per_hour=2.5, on_demand_usd_per_hour=3.06)  # break-even 9.9 h
    d = decide(on_demand(), near, now=now, outlook=look(10, spot=True, since=since))
    assert d.action is Action.WAIT and "9.93 h of SPOT running" in d.reason
    dearer = policy(spot_usd_per_hour=3.5, on_demand_usd_per_hour=3.06)  # spot never repays
    d = decide(on_demand(), dearer, now=now, outlook=look(10, spot=True, since=now - 50 * H))
    assert d.action is Action.WAIT and "staying on ON_DEMAND" in d.reason


# -- rule 5: idle without spot --------------------------------------------------------------------


def test_idle_waits_when_on_demand_could_not_be_followed_by_a_switch_back():
    # D = 52 h; 50.5 h left, 48 h of work: 2.5 h of slack, spare 1.5 h < 2d. The reserve
    # (10.4 h) says escalate, but on ON_DEMAND the step could never come back: wait like greedy
    now, outlook = 1.5 * H, look(0, spot=False, since=0.0)
    d = decide(waiting(), policy(deadline_h=52), now=now, outlook=outlook)
    assert d.action is Action.WAIT and "cannot pay for ON_DEMAND and a switch back" in d.reason
    # the same slack with d = 0.2 h (within the fit): the reserve escalates as before
    d = decide(waiting(), policy(0.2, deadline_h=52), now=now, outlook=outlook)
    assert d.action is Action.CANCEL and d.outcome is Outcome.NO_CAPACITY


def test_the_safety_net_still_escalates_when_waiting_is_no_longer_safe():
    # 50.9 h left, 48 h of work... at 1.9 h with d = 1 h: 2.1 h of slack is still a tick of
    # waiting; at 2.9 h (1.1 h of slack, less than d + one 10 min tick) it is not
    ok = decide(waiting(), policy(deadline_h=52), now=1.9 * H, outlook=look(0, spot=False, since=0))
    assert ok.action is Action.WAIT
    late = decide(
        waiting(), policy(deadline_h=52), now=2.9 * H, outlook=look(0, spot=False, since=0)
    )
    assert late.action is Action.CANCEL and "safety net" in late.reason


@pytest.mark.parametrize(
    ("work_done_h", "age_h", "waits"),
    [
        (4, 0.5, True),  # 50 h left, 44 h of work: spare 5 h >= 3d, outage younger than d
        (4, 1.0, False),  # the outage has lasted d: the reserve (9.4 h) decides: escalate
        (1.5, 0.5, False),  # spare 2.5 h < 3d: no slack for a wait and then a round trip
    ],
)
def test_a_young_outage_is_waited_through_while_slack_allows(work_done_h, age_h, waits):
    now = 20 * H
    outlook = look(work_done_h, spot=False, since=now - age_h * H)
    d = decide(waiting(), policy(deadline_h=70), now=now, outlook=outlook)
    if waits:
        assert d.action is Action.WAIT and "younger than a restart" in d.reason
    else:
        assert d.action is Action.CANCEL and d.outcome is Outcome.NO_CAPACITY


# -- whole scenarios in the simulator ------------------------------------------------------------


def run(name, data, *, work_h, deadline_h, restart_h, gap=600.0):
    p = SpotPolicy(
        strategy=name,
        deadline_s=deadline_h * H,
        work_s=work_h * H,
        restart_overhead_s=restart_h * H,
        max_attempts=200,
    )
    trace = trace_from_data("hand", gap, data)
    return simulate(trace, 0, p, work_s=work_h * H, restart_overhead_s=restart_h * H)


def test_short_spot_sessions_do_not_pull_the_step_off_on_demand():
    """d = 1 h. No spot for 10 h (the step escalates), then 1 h spot sessions every 2 h: each
    switch would bill a restart on both sides for no progress. Ours stays on ON_DEMAND and
    costs no more than greedy; it makes no OD -> SPOT round trip."""
    data = [0] * 60 + ([1] * 6 + [0] * 6) * 40
    ours = run("deadline", data, work_h=24, deadline_h=40, restart_h=1.0)
    greedy = run("greedy", data, work_h=24, deadline_h=40, restart_h=1.0)
    assert not ours.missed and not greedy.missed
    stopped_od = [a for a in ours.ledger if a.capacity is OD and a.outcome is Outcome.STOPPED]
    assert stopped_od == []
    assert ours.cost_usd <= greedy.cost_usd + 1e-9


def test_long_spot_sessions_still_bring_the_step_back_from_on_demand():
    """Same start, then spot for the rest: once it has lasted the break-even (~2 h), the step
    switches to SPOT and finishes there, cheaper than all-ON_DEMAND."""
    data = [0] * 60 + [1] * 340
    ours = run("deadline", data, work_h=24, deadline_h=40, restart_h=1.0)
    assert not ours.missed
    assert ours.ledger[-1].capacity is SPOT and ours.ledger[-1].outcome is Outcome.SUCCEEDED
    switch = next(a for a in ours.ledger if a.capacity is OD and a.outcome is Outcome.STOPPED)
    assert switch.ended_at - 60 * 600 >= 1.93 * H  # spot had been back for the break-even
    assert ours.cost_usd < 24 * 3.06


@pytest.mark.parametrize("restart_h", [0.5, 1.0, 2.0])
def test_no_misses_on_random_traces_with_long_restarts(restart_h):
    rng = random.Random(int(restart_h * 10))
    for _ in range(12):
        data, state = [], rng.random() < 0.5
        while len(data) < 400:
            data += [int(state)] * rng.randint(1, 30)
            state = not state
        work_h = rng.choice([12, 24])
        deadline_h = work_h + restart_h + rng.choice([0.5, 2, 6, 20])  # down to barely feasible
        r = run("deadline", data, work_h=work_h, deadline_h=deadline_h, restart_h=restart_h)
        assert not r.missed, (restart_h, work_h, deadline_h, data)
