"""Table-driven tests of the planner (pure code, no fakes)."""

import factories
import pytest
from pydantic import ValidationError

from spot_workflows.config import SpotPolicy
from spot_workflows.core.deadline import Outlook
from spot_workflows.core.outcomes import (
    Action,
    AttemptState,
    Cancel,
    Capacity,
    Fail,
    FailCause,
    Outcome,
    Submit,
    Succeed,
    Wait,
)
from spot_workflows.core.planner import decide, describe_history
from spot_workflows.errors import ConfigError

SPOT, OD = Capacity.SPOT, Capacity.ON_DEMAND
P, OK, NC, APP, INF, TO, CAN = (
    Outcome.PREEMPTED,
    Outcome.SUCCEEDED,
    Outcome.NO_CAPACITY,
    Outcome.APP_ERROR,
    Outcome.INFRA_ERROR,
    Outcome.TIMEOUT,
    Outcome.CANCELLED,
)


def done(n, cap, outcome, exit_code=None):
    return factories.done(n, cap, outcome, exit_code=exit_code, started=None, ended=None)


def history(*items):
    return [done(i + 1, cap, out) for i, (cap, out) in enumerate(items)]


CASES = [
    # (attempts, policy kwargs, expected action, expected capacity, escalated)
    ([], {}, Action.SUBMIT, SPOT, False),
    ([], {"start_on": "ON_DEMAND"}, Action.SUBMIT, OD, False),
    (history((SPOT, OK)), {}, Action.SUCCEED, None, False),
    (history((SPOT, P)), {}, Action.SUBMIT, SPOT, False),
    (history((SPOT, P), (SPOT, P)), {}, Action.SUBMIT, SPOT, False),
    (history((SPOT, P), (SPOT, P), (SPOT, P)), {}, Action.SUBMIT, OD, True),
    (history((SPOT, P), (SPOT, P)), {"preemption_budget": 2}, Action.SUBMIT, OD, True),
    (history((SPOT, P)), {"preemption_budget": 0}, Action.SUBMIT, OD, True),
    (history((SPOT, P), (SPOT, P), (SPOT, P), (OD, OK)), {}, Action.SUCCEED, None, False),
    # app errors are charged to their own budget, never to the preemption budget
    (history((SPOT, APP)), {}, Action.FAIL, None, False),
    (history((SPOT, APP)), {"app_error_retries": 1}, Action.SUBMIT, SPOT, False),
    (history((SPOT, P), (SPOT, APP)), {"app_error_retries": 1}, Action.SUBMIT, SPOT, False),
    (history((SPOT, APP), (SPOT, APP)), {"app_error_retries": 1}, Action.FAIL, None, False),
    # after escalation an app error retries on ON_DEMAND, never back to spot
    (
        history((SPOT, P), (OD, APP)),
        {"preemption_budget": 1, "app_error_retries": 1},
        Action.SUBMIT,
        OD,
        False,
    ),
    # no capacity on spot escalates at once (or retries spot if the policy says so)
    (history((SPOT, NC)), {}, Action.SUBMIT, OD, True),
    (history((SPOT, NC)), {"no_capacity_escalates": False}, Action.SUBMIT, SPOT, False),
    (history((SPOT, NC), (OD, NC)), {"infra_error_retries": 1}, Action.SUBMIT, OD, False),
    (history((SPOT, NC), (OD, NC), (OD, NC)), {"infra_error_retries": 1}, Action.FAIL, None, False),
    (history((SPOT, INF)), {}, Action.SUBMIT, SPOT, False),
    (history((SPOT, INF), (SPOT, INF), (SPOT, INF)), {}, Action.FAIL, None, False),
    (history((SPOT, TO)), {}, Action.FAIL, None, False),
    (history((SPOT, CAN)), {}, Action.FAIL, None, False),
    # absolute attempt cap
    (history((SPOT, P), (SPOT, P)), {"max_attempts": 2}, Action.FAIL, None, False),
    (history(*[(SPOT, P)] * 9), {"preemption_budget": 20}, Action.SUBMIT, SPOT, False),
    (history(*[(SPOT, P)] * 10), {"preemption_budget": 20}, Action.FAIL, None, False),
    # stopped on purpose by the planner (switch or budget): not a failure, not a preemption
    (history((SPOT, Outcome.STOPPED)), {}, Action.SUBMIT, SPOT, False),
    (history((SPOT, P), (OD, Outcome.STOPPED)), {"preemption_budget": 1}, Action.SUBMIT, OD, False),
]


@pytest.mark.parametrize("attempts,kw,action,capacity,escalated", CASES)
def test_decide_table(attempts, kw, action, capacity, escalated):
    d = decide(attempts, SpotPolicy(**kw), now=100.0)
    assert d.action is action, d.reason
    assert getattr(d, "capacity", None) == capacity  # only a Submit names a capacity
    assert getattr(d, "escalated", False) is escalated
    assert d.reason


def live(n, cap, state, submitted_at=0.0, job_id="j"):
    return factories.attempt(n, cap, state, at=submitted_at, job_id=job_id, started=None)


def test_live_attempt_waits():
    d = decide([live(1, SPOT, AttemptState.RUNNING)], SpotPolicy(), now=10_000.0)
    assert d.action is Action.WAIT


def test_pending_spot_past_capacity_timeout_is_cancelled_as_no_capacity():
    policy = SpotPolicy(capacity_timeout_s=60)
    assert decide([live(1, SPOT, AttemptState.PENDING)], policy, now=59.0).action is Action.WAIT
    d = decide([live(1, SPOT, AttemptState.PENDING)], policy, now=60.0)
    assert d.action is Action.CANCEL and d.outcome is Outcome.NO_CAPACITY
    assert "60s" in d.reason


def test_pending_on_demand_waits_unless_its_own_timeout_is_set():
    attempts = [live(1, OD, AttemptState.PENDING)]
    assert decide(attempts, SpotPolicy(), now=1e9).action is Action.WAIT
    d = decide(attempts, SpotPolicy(on_demand_capacity_timeout_s=30), now=31)
    assert d.action is Action.CANCEL


def test_a_running_attempt_is_never_cancelled_for_capacity():
    d = decide([live(1, SPOT, AttemptState.RUNNING)], SpotPolicy(capacity_timeout_s=1), now=1e6)
    assert d.action is Action.WAIT


def test_recorded_but_unsubmitted_attempt_is_not_timed_out():
    attempt = live(1, SPOT, AttemptState.PENDING, job_id=None)
    d = decide([attempt], SpotPolicy(capacity_timeout_s=1), now=1e6)
    assert d.action is Action.WAIT


def test_budget_cap_stops_before_exceeding():
    d = decide(history((SPOT, P)), SpotPolicy(budget_usd=10), now=0, spent_usd=10.0)
    assert d.action is Action.FAIL and "budget" in d.reason
    assert d.cause is FailCause.BUDGET


def test_failure_message_tells_the_whole_story():
    attempts = [
        done(1, SPOT, P),
        done(2, SPOT, P),
        done(3, SPOT, P),
        done(4, OD, APP, exit_code=2),
    ]
    d = decide(attempts, SpotPolicy(), now=0)
    assert d.action is Action.FAIL
    assert d.reason.startswith(
        "preempted 3 times on SPOT, escalated, ON_DEMAND attempt failed with app error exit 2"
    )
    assert describe_history([]) == "no attempt finished"


@pytest.mark.parametrize(
    "field,value",
    [
        ("preemption_budget", -1),
        ("app_error_retries", -2),
        ("capacity_timeout_s", 0),
        ("max_attempts", 0),
        ("budget_usd", -5),
        ("start_on", "SOMETIMES"),
        ("preemption_budjet", 3),
    ],
)
def test_invalid_policy_names_the_field(field, value):
    with pytest.raises(ValidationError) as err:
        SpotPolicy(**{field: value})
    assert field in str(err.value)


def test_unknown_strategy_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown escalation strategy 'magic'"):
        decide([], SpotPolicy(strategy="magic"), now=0)


def test_budget_window_counts_the_time_a_stop_takes():
    from spot_workflows.core.deadline import Outlook

    running = done(1, SPOT, P).model_copy(
        update={"state": AttemptState.RUNNING, "outcome": None, "started_at": 0.0, "ended_at": None}
    )
    policy = SpotPolicy(budget_usd=10, spot_usd_per_hour=3600.0)  # $1 a second
    quick = Outlook(tick_s=1.0, stop_s=0.0)  # 2 ticks = $2 of reserve
    slow = Outlook(tick_s=1.0, stop_s=3.0)  # + 3 s to stop = $5 of reserve
    assert decide([running], policy, now=6, spent_usd=6.0, outlook=quick).action is Action.WAIT
    stop = decide([running], policy, now=6, spent_usd=6.0, outlook=slow)
    assert stop.action is Action.CANCEL and "budget cap" in stop.reason


# -- when to look again: Wait.recheck_at -----------------------------------------------------------
def test_a_pending_attempt_is_rechecked_when_its_capacity_timeout_expires():
    d = decide(
        [live(1, SPOT, AttemptState.PENDING, submitted_at=100.0)],
        SpotPolicy(capacity_timeout_s=60),
        now=130.0,
    )
    assert isinstance(d, Wait) and d.recheck_at == 160.0


def test_nothing_but_a_change_of_the_attempt_changes_a_plain_wait():
    for attempt in (live(1, SPOT, AttemptState.RUNNING), live(1, OD, AttemptState.PENDING)):
        d = decide([attempt], SpotPolicy(), now=10.0, outlook=Outlook(tick_s=30.0))
        assert isinstance(d, Wait) and d.recheck_at is None, d


def test_a_budget_cap_rechecks_a_running_attempt_every_tick():
    d = decide(
        [live(1, SPOT, AttemptState.RUNNING)],
        SpotPolicy(budget_usd=100.0),
        now=50.0,
        spent_usd=1.0,
        outlook=Outlook(tick_s=30.0),
    )
    assert isinstance(d, Wait) and d.recheck_at == 80.0


def test_a_deadline_policy_rechecks_every_tick_and_not_after_its_capacity_timeout():
    policy = SpotPolicy(deadline_s=10 * 3600, work_s=3600, capacity_timeout_s=600)
    attempt = live(1, SPOT, AttemptState.PENDING, submitted_at=0.0)
    d = decide([attempt], policy, now=20.0, outlook=Outlook(tick_s=15.0, progress=0.0))
    assert isinstance(d, Wait) and d.recheck_at == 35.0, d


def test_each_action_is_its_own_type():
    submit = decide([], SpotPolicy(), now=0.0)
    assert isinstance(submit, Submit) and submit.capacity is SPOT
    cancel = decide([live(1, SPOT, AttemptState.PENDING)], SpotPolicy(capacity_timeout_s=1), now=5)
    assert isinstance(cancel, Cancel) and cancel.outcome is NC
    assert isinstance(decide([done(1, SPOT, OK)], SpotPolicy(), now=1.0), Succeed)
    failed = decide([done(1, SPOT, CAN)], SpotPolicy(), now=1.0)
    assert isinstance(failed, Fail) and not hasattr(failed, "capacity")
