"""Deadline- and budget-aware strategies through the real planner (pure code, no fakes)."""

from __future__ import annotations

import factories
import pytest

from spot_workflows.config import SpotPolicy
from spot_workflows.core.deadline import (
    DEFAULT_OVERHEAD_S,
    Outlook,
    measured_overhead,
    situation,
    spent_usd,
)
from spot_workflows.core.outcomes import (
    Action,
    AttemptState,
    Capacity,
    FailCause,
    Outcome,
)
from spot_workflows.core.planner import decide
from spot_workflows.core.strategies import resolve

SPOT, OD = Capacity.SPOT, Capacity.ON_DEMAND
H = 3600.0


def attempt(n, cap, state=AttemptState.RUNNING, *, progress=0.0, **kw):
    return factories.attempt(n, cap, state, progress_start=progress, **kw)


def policy(**kw):
    base = dict(deadline_s=70 * H, work_s=48 * H, restart_overhead_s=0.2 * H)
    base.update(kw)
    return SpotPolicy(**base)


def look(progress, *, spot=None, since=None, tick=600.0):
    return Outlook(progress=progress, spot_available=spot, spot_state_since=since, tick_s=tick)


# -- strategy resolution and up-front feasibility ------------------------------------------------


def test_auto_is_deadline_with_a_deadline_and_attempts_without():
    assert SpotPolicy().strategy == "auto"
    assert resolve(SpotPolicy()) == "attempts"
    assert resolve(SpotPolicy(deadline_s=10)) == "deadline"
    assert resolve(SpotPolicy(deadline_s=10, strategy="uniform_progress")) == "uniform_progress"


def test_infeasible_deadline_fails_up_front():
    d = decide([], policy(deadline_s=48 * H), now=0.0, outlook=look(0.0))
    assert d.action is Action.FAIL and d.cause is FailCause.DEADLINE
    assert "deadline infeasible" in d.reason and "48.00 h" in d.reason


def test_infeasible_budget_fails_up_front():
    d = decide([], policy(budget_usd=40.0), now=0.0, spent_usd=0.0, outlook=look(0.0))
    assert d.action is Action.FAIL and d.cause is FailCause.BUDGET
    assert "budget infeasible" in d.reason and "$46.71" in d.reason


def test_feasible_deadline_starts_on_spot():
    d = decide([], policy(), now=0.0, outlook=look(0.0, spot=False, since=0.0))
    assert d.action is Action.SUBMIT and d.capacity is SPOT


def test_deadline_strategy_without_a_work_estimate_falls_back_to_attempts():
    p = SpotPolicy(deadline_s=10 * H)
    assert decide([], p, now=0.0).capacity is SPOT
    preempted = [attempt(i, SPOT, AttemptState.DONE, outcome=Outcome.PREEMPTED) for i in (1, 2, 3)]
    assert decide(preempted, p, now=0.0).capacity is OD  # preemption budget 3 applies again


# -- ours: deadline ----------------------------------------------------------------------------


def test_idle_without_spot_waits_while_slack_is_large():
    live = [attempt(1, SPOT, AttemptState.PENDING)]
    d = decide(live, policy(), now=1 * H, outlook=look(0.0, spot=False, since=0.0))
    assert d.action is Action.WAIT and "waiting for SPOT" in d.reason


def test_idle_without_spot_leaves_for_on_demand_when_slack_runs_low():
    live = [attempt(1, SPOT, AttemptState.PENDING)]
    # 20 h left, 18 h of work left: 2 h of slack is below the reserve for 20 h
    now = 50 * H
    d = decide(live, policy(), now=now, outlook=look(30 / 48, spot=False, since=40 * H))
    assert d.action is Action.CANCEL and d.outcome is Outcome.NO_CAPACITY
    assert "escalating to ON_DEMAND" in d.reason
    after = [
        live[0].model_copy(update={"state": AttemptState.DONE, "outcome": Outcome.NO_CAPACITY})
    ]
    d = decide(after, policy(), now=now, outlook=look(30 / 48, spot=False, since=40 * H))
    assert d.action is Action.SUBMIT and d.capacity is OD and d.escalated


def test_a_long_outage_needs_more_slack_to_keep_waiting():
    live = [attempt(1, SPOT, AttemptState.PENDING)]
    p, now, progress = policy(), 40 * H, 0.5  # 30 h left, 24 h of work left: 6 h of slack
    fresh = decide(live, p, now=now, outlook=look(progress, spot=False, since=now))
    old = decide(live, p, now=now, outlook=look(progress, spot=False, since=now - 2 * H))
    assert fresh.action is Action.WAIT
    assert old.action is Action.CANCEL


def test_on_demand_switches_back_to_spot_only_with_slack_to_spare():
    live = [attempt(1, OD)]
    roomy = decide(live, policy(), now=10 * H, outlook=look(10 / 48, spot=True, since=9 * H))
    assert roomy.action is Action.CANCEL and roomy.outcome is Outcome.STOPPED
    assert "switching back to SPOT" in roomy.reason
    # 10 h left, 9.6 h of work: 24 min of slack, one 12 min restart leaves too little to switch
    thin = decide(live, policy(), now=60 * H, outlook=look(38.4 / 48, spot=True, since=59 * H))
    assert thin.action is Action.WAIT and "too thin to switch" in thin.reason


def test_fresh_spot_needs_more_slack_than_spot_that_has_lasted():
    live = [attempt(1, OD)]
    p, now, progress = policy(), 30 * H, 10.2 / 48  # 40 h left, 37.8 h of work: slack 2.2 h
    fresh = decide(live, p, now=now, outlook=look(progress, spot=True, since=now))
    lasted = decide(live, p, now=now, outlook=look(progress, spot=True, since=now - 2 * H))
    assert fresh.action is Action.WAIT
    assert lasted.action is Action.CANCEL


def test_safety_net_is_exact_in_whole_ticks():
    p = policy(work_s=10 * H, deadline_s=12 * H)  # d = 12 min, 10 min ticks
    live = [attempt(1, SPOT, AttemptState.PENDING)]

    def at(now, work_left_min):
        sit = situation(live, p, now=now, spent=None, outlook=look(1 - work_left_min / 600))
        assert sit is not None
        return sit

    assert at(0.0, 600).can_wait() and at(0.0, 600).can_take_spot()
    # 1 h 10 min left, 50 min of work: ON_DEMAND needs 62 min = 7 ticks of the 7 left
    late = at(10 * H + 50 * 60, 50)
    assert not late.can_wait() and not late.can_take_spot()
    # 1 h 20 min (8 ticks) left. Idle one tick: 7 remain, ON_DEMAND needs ceil((C + 12) / 10):
    # fine for 58 min of work, not for 59. SPOT: no progress in its first tick (restart 12 min),
    # 8 min in its second; a reclaim then leaves 6 ticks for C - 8 + 12: fine for 56, not 57
    now = 10 * H + 40 * 60
    assert at(now, 58).can_wait() and not at(now, 59).can_wait()
    assert at(now, 56).can_take_spot() and not at(now, 57).can_take_spot()


def test_a_fresh_outage_is_waited_out_when_a_restart_outlasts_a_tick():
    live = [attempt(1, SPOT, AttemptState.PENDING)]
    p, now, progress = policy(), 65 * H, 43.75 / 48  # 5 h left, 4.25 h of work: 45 min slack
    fresh = decide(live, p, now=now, outlook=look(progress, spot=False, since=now))
    later = decide(live, p, now=now, outlook=look(progress, spot=False, since=now - 600))
    assert fresh.action is Action.WAIT and "waiting for SPOT" in fresh.reason
    assert later.action is Action.CANCEL


def test_running_spot_is_kept_even_in_the_final_phase():
    live = [attempt(1, SPOT)]
    d = decide(live, policy(), now=69 * H, outlook=look(47.5 / 48, spot=True, since=0.0))
    assert d.action is Action.WAIT


def test_safety_net_goes_on_demand_without_promising_to_stay():
    d = decide(
        [attempt(1, SPOT, AttemptState.DONE, outcome=Outcome.PREEMPTED, ended=60 * H)],
        policy(),
        now=60 * H,
        outlook=look(38 / 48, spot=True, since=60 * H),
    )
    assert d.action is Action.SUBMIT and d.capacity is OD and "safety net" in d.reason
    assert "to the end" not in d.reason  # a later spot session may be safe again


def test_without_a_market_view_on_demand_is_kept():
    # production: spot availability unknown, so ON_DEMAND is never left for a guess
    d = decide([attempt(1, OD)], policy(), now=10 * H, outlook=look(10 / 48))
    assert d.action is Action.WAIT


def test_spot_capacity_timeout_does_not_apply_to_deadline_strategies():
    live = [attempt(1, SPOT, AttemptState.PENDING)]
    p = policy(capacity_timeout_s=60)
    assert decide(live, p, now=3600, outlook=look(0.0)).action is Action.WAIT
    assert decide(live, SpotPolicy(capacity_timeout_s=60), now=3600).action is Action.CANCEL


# -- baselines ---------------------------------------------------------------------------------


def up(**kw):
    return policy(strategy="uniform_progress", **kw)


def test_uniform_progress_goes_on_demand_when_idle_and_behind_the_line():
    live = [attempt(1, SPOT, AttemptState.PENDING)]
    # at 7 h the line is 4.8 h of work; 4 h done
    d = decide(live, up(), now=7 * H, outlook=look(4 / 48, spot=False, since=0.0))
    assert d.action is Action.CANCEL and d.outcome is Outcome.NO_CAPACITY
    ahead = decide(live, up(), now=7 * H, outlook=look(5 / 48, spot=False, since=0.0))
    assert ahead.action is Action.WAIT


def test_uniform_progress_hysteresis_then_spot():
    live = [attempt(1, OD)]
    # line at t + 2d = 10.4 h is 7.13 h of work: with 7 h done it stays on ON_DEMAND
    stay = decide(live, up(), now=10 * H, outlook=look(7 / 48, spot=True, since=0.0))
    assert stay.action is Action.WAIT
    go = decide(live, up(), now=10 * H, outlook=look(7.2 / 48, spot=True, since=0.0))
    assert go.action is Action.CANCEL and go.outcome is Outcome.STOPPED


def test_uniform_progress_safety_net_is_sticky():
    p = up()
    # submitted ON_DEMAND at 55 h with 14.7 h of work left (+2d does not fit in 15 h): committed
    first = attempt(1, SPOT, AttemptState.DONE, outcome=Outcome.PREEMPTED, ended=55 * H)
    live = [first, attempt(2, OD, at=55 * H, progress=33.3 / 48)]
    d = decide(live, p, now=56 * H, outlook=look(35 / 48, spot=True, since=0.0))
    assert d.action is Action.WAIT and "final phase" in d.reason


def test_greedy_waits_for_spot_then_commits():
    p = policy(strategy="greedy")
    live = [attempt(1, SPOT, AttemptState.PENDING)]
    assert decide(live, p, now=10 * H, outlook=look(0.0, spot=False, since=0.0)).action is (
        Action.WAIT
    )
    late = decide(live, p, now=21.8 * H, outlook=look(0.0, spot=False, since=0.0))
    assert late.action is Action.CANCEL


# -- budget ------------------------------------------------------------------------------------


def test_a_running_attempt_is_stopped_before_the_budget_cap():
    p = SpotPolicy(budget_usd=10.0)
    live = [attempt(1, SPOT)]
    rate = p.spot_usd_per_hour / H
    ok = decide(live, p, now=0.0, spent_usd=9.0, outlook=Outlook(tick_s=60))
    assert ok.action is Action.WAIT
    d = decide(live, p, now=0.0, spent_usd=10.0 - rate * 100, outlook=Outlook(tick_s=60))
    assert d.action is Action.CANCEL and d.outcome is Outcome.STOPPED and "budget cap" in d.reason
    stopped = [live[0].model_copy(update={"state": AttemptState.DONE, "outcome": Outcome.STOPPED})]
    d = decide(stopped, p, now=0.0, spent_usd=10.0 - rate * 100, outlook=Outlook(tick_s=60))
    assert d.action is Action.FAIL and d.cause is FailCause.BUDGET


def test_budget_keeps_the_step_on_spot_when_on_demand_would_exceed_it():
    # 2 h of work left, 2.3 h to go: final phase; ON_DEMAND would cost $6.12 more, SPOT $1.95
    p = policy(budget_usd=40.0, work_s=10 * H, deadline_s=10.3 * H)
    done = [attempt(1, SPOT, AttemptState.DONE, outcome=Outcome.PREEMPTED, ended=8 * H)]
    d = decide(done, p, now=8 * H, spent_usd=36.0, outlook=look(0.8, spot=False, since=8 * H))
    assert d.action is Action.SUBMIT and d.capacity is SPOT and "budget cap" in d.reason


def test_budget_too_small_for_the_work_left_fails_early():
    p = policy(budget_usd=40.0, work_s=10 * H, deadline_s=20 * H)
    done = [attempt(1, SPOT, AttemptState.DONE, outcome=Outcome.PREEMPTED, ended=8 * H)]
    d = decide(done, p, now=8 * H, spent_usd=39.0, outlook=look(0.5, spot=True, since=8 * H))
    assert d.action is Action.FAIL and d.cause is FailCause.BUDGET and "work left" in d.reason


# -- inputs derived from the ledger ------------------------------------------------------------


def test_restart_overhead_is_measured_from_the_ledger():
    p = SpotPolicy(restore_s=30)
    assert measured_overhead([], p) == DEFAULT_OVERHEAD_S + 30
    attempts = [
        attempt(1, SPOT, AttemptState.DONE, at=0, started=500, outcome=Outcome.PREEMPTED),
        attempt(2, SPOT, AttemptState.DONE, at=900, started=960, outcome=Outcome.PREEMPTED),
    ]
    assert measured_overhead(attempts, p) == 60 + 30  # fastest spot start
    attempts.append(attempt(3, OD, at=2000, started=2100))
    assert measured_overhead(attempts, p) == 100 + 30  # on-demand starts are clean
    assert measured_overhead(attempts, SpotPolicy(restart_overhead_s=7)) == 7


def test_spend_and_deadline_come_from_the_ledger():
    p = SpotPolicy(
        deadline_s=10 * H, work_s=4 * H, spot_usd_per_hour=1.0, on_demand_usd_per_hour=3.0
    )
    attempts = [
        attempt(
            1,
            SPOT,
            AttemptState.DONE,
            at=100,
            started=100,
            outcome=Outcome.PREEMPTED,
            ended=100 + H,
        ),
        attempt(2, OD, at=2 * H, started=2 * H),
    ]
    assert spent_usd(attempts, p, now=3 * H) == pytest.approx(1.0 + 3.0)
    sit = situation(attempts, p, now=3 * H, spent=None, outlook=Outlook(progress=0.5))
    assert sit is not None
    assert sit.deadline_at == 100 + 10 * H
    assert sit.work_left_s == 2 * H and sit.slack_s == pytest.approx(10 * H + 100 - 3 * H - 2 * H)
    assert sit.on_demand and not sit.spot_available


def test_total_work_is_estimated_from_progress_when_not_given():
    p = SpotPolicy(deadline_s=10 * H)
    attempts = [attempt(1, SPOT, at=0, started=0)]
    sit = situation(attempts, p, now=H, spent=None, outlook=Outlook(progress=0.25))
    assert sit is not None and sit.work_s == pytest.approx(4 * H)
    assert situation(attempts, p, now=H, spent=None, outlook=Outlook(progress=0.0)) is None
