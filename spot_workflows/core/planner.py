"""The state machine: ``decide(attempts, policy, now=...) -> Decision``.

Pure: the caller passes the ledger's attempts, the policy and the current time; the planner says
what to do next and never does it. The runner, the Airflow operator and the Prefect task each
carry the decision out (decision separate from execution, as tenacity does).

Budgets are separate: preemptions are charged to ``preemption_budget`` (then escalate), app errors
to ``app_error_retries``, infra faults to ``infra_error_retries``; ``max_attempts`` caps them all.

Deadline-aware strategies (``core.policies``) are consulted while an attempt is live too: the
caller passes an :class:`~spot_workflows.core.deadline.Outlook` (progress, decision tick, and in
the simulator spot availability) and the spend; the planner refuses an infeasible deadline or
budget up front, stops a running attempt before the budget cap, and turns a strategy's change of
capacity into CANCEL (``STOPPED`` / ``NO_CAPACITY``) followed by SUBMIT. The trace simulator
(``spot_workflows.sim``) drives this same function.
"""

from __future__ import annotations

from collections.abc import Sequence

from spot_workflows.core.deadline import HOUR, Outlook, Situation, price_per_s, situation
from spot_workflows.core.outcomes import (
    Attempt,
    AttemptState,
    Capacity,
    Decision,
    FailCause,
    Outcome,
)
from spot_workflows.core.spot_policy import SpotPolicy
from spot_workflows.core.strategies import (
    DEFAULT_WITHOUT_DEADLINE,
    Choice,
    History,
    Strategy,
    get_strategy,
    is_live,
    resolve,
)


def describe_history(attempts: Sequence[Attempt]) -> str:
    """One human sentence for the attempts so far, e.g.
    ``preempted 3 times on SPOT, escalated, ON_DEMAND attempt failed with app error exit 2``."""
    parts: list[str] = []
    run: tuple[Capacity, Outcome | None] | None = None
    n = 0
    escalated = False

    def flush() -> None:
        if run is None:
            return
        cap, outcome = run
        parts.append(_phrase(cap, outcome, n))

    for a in attempts:
        if a.outcome is None:
            continue
        key = (a.capacity, a.outcome)
        if key == run and a.outcome is not Outcome.APP_ERROR:
            n += 1
            continue
        flush()
        if a.capacity is Capacity.ON_DEMAND and not escalated and parts:
            parts.append("escalated")
            escalated = True
        run, n = key, 1
        last_exit = a.exit_code
        if a.outcome in (Outcome.APP_ERROR, Outcome.INFRA_ERROR) and last_exit is not None:
            parts.append(f"{a.capacity.value} attempt {_outcome_words(a.outcome)} exit {last_exit}")
            run = None
    flush()
    return ", ".join(parts) if parts else "no attempt finished"


def _outcome_words(outcome: Outcome) -> str:
    return {
        Outcome.APP_ERROR: "failed with app error",
        Outcome.INFRA_ERROR: "failed with infrastructure error",
    }.get(outcome, outcome.value.lower())


def _phrase(cap: Capacity, outcome: Outcome | None, n: int) -> str:
    times = f"{n} time{'s' if n != 1 else ''}"
    if outcome is Outcome.PREEMPTED:
        return f"preempted {times} on {cap.value}"
    if outcome is Outcome.NO_CAPACITY:
        return f"no {cap.value} capacity {times}"
    if outcome is None:
        return f"{cap.value} attempt live"
    return f"{cap.value} attempt {_outcome_words(outcome)}" + (f" ({times})" if n > 1 else "")


BUDGET_TICKS = 2
"""A running attempt is stopped when less than this many decision periods of spend (plus the
time a stop takes, ``Outlook.stop_s``) are left."""


def _last_reason(last: Attempt) -> str:
    return f"; attempt {last.number}: {last.reason}" if last.reason else ""


def _capacity_timeout(policy: SpotPolicy, capacity: Capacity) -> float | None:
    if capacity is Capacity.SPOT:
        return policy.capacity_timeout_s
    return policy.on_demand_capacity_timeout_s


def decide(
    attempts: Sequence[Attempt],
    policy: SpotPolicy,
    *,
    now: float,
    spent_usd: float | None = None,
    outlook: Outlook | None = None,
) -> Decision:
    """What to do next for a step whose ledger holds ``attempts`` (oldest first).

    ``spent_usd``: what the step cost so far (the runner computes it from the ledger); with
    ``SpotPolicy.budget_usd`` the planner stops a running attempt before the cap is reached.
    ``outlook``: progress, work, restart overhead, spot availability and the decision tick, for
    deadline-aware strategies (see :mod:`spot_workflows.core.deadline`).
    """
    name = resolve(policy)
    strategy = get_strategy(name)
    live_strategy = is_live(name)
    sit = None
    if live_strategy or (policy.budget_usd is not None and spent_usd is not None):
        sit = situation(attempts, policy, now=now, spent=spent_usd, outlook=outlook)
        if sit is not None and policy.deadline_s is None and live_strategy:
            sit = None  # deadline strategies without a deadline: nothing to reason about
    if live_strategy and sit is None:
        strategy, live_strategy = get_strategy(DEFAULT_WITHOUT_DEADLINE), False
    history = History(attempts, sit)
    # spend that may still accrue before a stop takes effect: decision periods + stop latency
    window = BUDGET_TICKS * outlook.tick_s + outlook.stop_s if outlook is not None else 0.0

    if not attempts:
        infeasible = _infeasible(policy, sit)
        if infeasible is not None:
            return infeasible
        choice = strategy(history, policy, now)
        return _submit(choice, policy, sit, spent_usd, window)

    last = attempts[-1]
    if last.state is not AttemptState.DONE:
        tick_s = outlook.tick_s if outlook is not None else None
        periodic = live_strategy or (policy.budget_usd is not None and spent_usd is not None)
        return _decide_live(
            last, history, policy, strategy, now, spent_usd, window,
            live_strategy=live_strategy,
            every=tick_s if periodic else None,
        )  # fmt: skip

    outcome = last.outcome
    if outcome is Outcome.SUCCEEDED:
        return Decision.succeed(f"attempt {last.number} on {last.capacity.value} succeeded")

    summary = describe_history(attempts)
    if outcome is Outcome.CANCELLED:
        return Decision.fail(
            f"attempt {last.number} was cancelled outside spot-workflows: {summary}; "
            "'spot-workflows ledger reopen CHECKPOINT_URI --key STEP_KEY' lets it run again"
        )
    if outcome is Outcome.TIMEOUT:
        return Decision.fail(f"attempt {last.number} exceeded its run-time limit: {summary}")
    if outcome is Outcome.APP_ERROR:
        errors = history.count(Outcome.APP_ERROR)
        if errors > policy.app_error_retries:
            return Decision.fail(
                f"{summary} (app-error retries {policy.app_error_retries} spent; "
                "fix the step's command, preemptions were not the cause)" + _last_reason(last)
            )
    if outcome is Outcome.INFRA_ERROR or (
        outcome is Outcome.NO_CAPACITY and last.capacity is Capacity.ON_DEMAND
    ):
        faults = history.count(Outcome.INFRA_ERROR) + history.count(
            Outcome.NO_CAPACITY, Capacity.ON_DEMAND
        )
        if faults > policy.infra_error_retries:
            return Decision.fail(
                f"{summary} (infrastructure retries {policy.infra_error_retries} spent)"
                + _last_reason(last)
            )

    if len(attempts) >= policy.max_attempts:
        return Decision.fail(f"{summary} (attempt cap {policy.max_attempts} reached)")
    if policy.budget_usd is not None and spent_usd is not None and spent_usd >= policy.budget_usd:
        return Decision.fail(
            f"{summary}; spent ${spent_usd:.2f} of the ${policy.budget_usd:.2f} budget cap, "
            "stopping before exceeding it",
            cause=FailCause.BUDGET,
        )

    choice = strategy(history, policy, now)
    if outcome in (Outcome.APP_ERROR, Outcome.INFRA_ERROR):
        # Not the capacity's fault: retry on the same capacity, unless the strategy has moved on.
        capacity = Capacity.ON_DEMAND if choice.capacity is Capacity.ON_DEMAND else last.capacity
        choice = Choice(capacity, f"retrying after {outcome.value.lower()}: {summary}")
    return _submit(choice, policy, sit, spent_usd, window, summary=summary)


def _decide_live(
    live: Attempt,
    history: History,
    policy: SpotPolicy,
    strategy: Strategy,
    now: float,
    spent_usd: float | None,
    window: float,
    *,
    live_strategy: bool,
    every: float | None,
) -> Decision:
    """``every``: the policy reasons about time (deadline strategy, budget cap): a WAIT asks to
    be rechecked one decision tick later."""
    periodic = now + every if every is not None else None
    if live.job_id is None:  # recorded but not yet submitted: the runner resolves it first
        return Decision.wait(f"attempt {live.number} is being submitted")
    running = live.state is AttemptState.RUNNING
    if running and policy.budget_usd is not None and spent_usd is not None:
        rate = price_per_s(policy, live.capacity)
        if spent_usd + rate * window >= policy.budget_usd:
            return Decision.cancel(
                Outcome.STOPPED,
                f"spent ${spent_usd:.2f} of the ${policy.budget_usd:.2f} budget cap; stopping "
                f"{live.capacity.value} attempt {live.number} before it exceeds the cap",
            )
    wait_reason = f"attempt {live.number} is {live.state.value}"
    if live_strategy:
        choice = strategy(history, policy, now)
        if choice.capacity is not live.capacity:
            waiting_spot = live.capacity is Capacity.SPOT and not running
            return Decision.cancel(
                Outcome.NO_CAPACITY if waiting_spot else Outcome.STOPPED,
                f"leaving {live.capacity.value} attempt {live.number}: {choice.reason}",
            )
        if live.capacity is Capacity.SPOT:  # the strategy, not the capacity timeout, decides
            return Decision.wait(choice.reason, recheck_at=periodic)
        wait_reason = choice.reason
    timeout = _capacity_timeout(policy, live.capacity)
    if (
        live.state is AttemptState.PENDING
        and timeout is not None
        and now - live.submitted_at >= timeout
    ):
        return Decision.cancel(
            Outcome.NO_CAPACITY,
            f"{live.capacity.value} attempt {live.number} got no capacity in "
            f"{now - live.submitted_at:.0f}s (capacity timeout {timeout:.0f}s)",
        )
    expires = None
    if live.state is AttemptState.PENDING and timeout is not None:
        expires = live.submitted_at + timeout
    due = [t for t in (expires, periodic) if t is not None]
    return Decision.wait(wait_reason, recheck_at=min(due) if due else None)


def _infeasible(policy: SpotPolicy, sit: Situation | None) -> Decision | None:
    """Say up front when the deadline or the budget cannot be met whatever happens."""
    if sit is None:
        return None
    hours = sit.work_s / HOUR
    if policy.deadline_s is not None and sit.work_s + sit.overhead_s > policy.deadline_s:
        return Decision.fail(
            f"deadline infeasible: {hours:.2f} h of work plus a {sit.overhead_s / 60:.1f} min "
            f"restart overhead do not fit in the {policy.deadline_s / HOUR:.2f} h deadline even "
            "on ON_DEMAND; extend the deadline or shorten the step",
            cause=FailCause.DEADLINE,
        )
    cheapest = sit.work_s * min(sit.spot_usd_per_s, sit.on_demand_usd_per_s)
    if policy.budget_usd is not None and cheapest > policy.budget_usd:
        return Decision.fail(
            f"budget infeasible: {hours:.2f} h of work costs at least ${cheapest:.2f} even on "
            f"SPOT, above the ${policy.budget_usd:.2f} budget cap; raise the cap",
            cause=FailCause.BUDGET,
        )
    return None


def _submit(
    choice: Choice,
    policy: SpotPolicy,
    sit: Situation | None,
    spent_usd: float | None,
    window: float,
    *,
    summary: str | None = None,
) -> Decision:
    """Submit the strategy's choice, unless the budget cap cannot pay for it."""
    cap = policy.budget_usd
    if cap is None or spent_usd is None:
        return Decision.submit(choice.capacity, choice.reason, escalated=choice.escalated)
    left = cap - spent_usd
    story = f"{summary}; " if summary else ""
    if sit is not None:
        cheapest = min(sit.spot_usd_per_s, sit.on_demand_usd_per_s)
        need = sit.work_left_s * cheapest
        if need > left:
            return Decision.fail(
                f"{story}the work left ({sit.work_left_s / HOUR:.2f} h) costs at least "
                f"${need:.2f} but only ${left:.2f} of the ${cap:.2f} budget cap is left; stopping "
                "before exceeding it",
                cause=FailCause.BUDGET,
            )
        if choice.capacity is Capacity.ON_DEMAND and spent_usd + sit.on_demand_usd_per_s * (
            sit.work_left_s + sit.overhead_s
        ) > cap >= spent_usd + sit.spot_usd_per_s * (sit.work_left_s + sit.overhead_s):
            choice = Choice(
                Capacity.SPOT,
                f"ON_DEMAND would exceed the ${cap:.2f} budget cap before the work is done; "
                "staying on SPOT (the budget cap comes before the deadline)",
            )
    if spent_usd + price_per_s(policy, choice.capacity) * window >= cap:
        return Decision.fail(
            f"{story}spent ${spent_usd:.2f} of the ${cap:.2f} budget cap, stopping before "
            "exceeding it",
            cause=FailCause.BUDGET,
        )
    return Decision.submit(choice.capacity, choice.reason, escalated=choice.escalated)
