"""The state machine: ``decide(attempts, policy, now=...) -> Decision``.

Pure: the caller passes the ledger's attempts, the policy and the current time; the planner says
what to do next and never does it. The runner, the Airflow operator and the Prefect task each
carry the decision out (decision separate from execution, as tenacity does).

Budgets are separate: preemptions are charged to ``preemption_budget`` (then escalate), app errors
to ``app_error_retries``, infra faults to ``infra_error_retries``; ``max_attempts`` caps them all.
"""

from __future__ import annotations

from collections.abc import Sequence

from spot_workflows.config import SpotPolicy
from spot_workflows.core.escalation import History, get_strategy
from spot_workflows.core.outcomes import Attempt, AttemptState, Capacity, Decision, Outcome


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
) -> Decision:
    """What to do next for a step whose ledger holds ``attempts`` (oldest first)."""
    strategy = get_strategy(policy.strategy)
    history = History(attempts)
    if not attempts:
        choice = strategy(history, policy, now)
        return Decision.submit(choice.capacity, choice.reason)

    last = attempts[-1]
    if last.state is not AttemptState.DONE:
        timeout = _capacity_timeout(policy, last.capacity)
        if (
            last.state is AttemptState.PENDING
            and last.job_id is not None
            and timeout is not None
            and now - last.submitted_at >= timeout
        ):
            return Decision.cancel(
                Outcome.NO_CAPACITY,
                f"{last.capacity.value} attempt {last.number} got no capacity in "
                f"{now - last.submitted_at:.0f}s (capacity timeout {timeout:.0f}s)",
            )
        return Decision.wait(f"attempt {last.number} is {last.state.value}")

    outcome = last.outcome
    if outcome is Outcome.SUCCEEDED:
        return Decision.succeed(f"attempt {last.number} on {last.capacity.value} succeeded")

    summary = describe_history(attempts)
    if outcome is Outcome.CANCELLED:
        return Decision.fail(
            f"attempt {last.number} was cancelled outside spot-workflows: {summary}"
        )
    if outcome is Outcome.TIMEOUT:
        return Decision.fail(f"attempt {last.number} exceeded its run-time limit: {summary}")
    if outcome is Outcome.APP_ERROR:
        errors = history.count(Outcome.APP_ERROR)
        if errors > policy.app_error_retries:
            return Decision.fail(
                f"{summary} (app-error retries {policy.app_error_retries} spent; "
                "fix the step's command, preemptions were not the cause)"
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
            )

    if len(attempts) >= policy.max_attempts:
        return Decision.fail(f"{summary} (attempt cap {policy.max_attempts} reached)")
    if policy.budget_usd is not None and spent_usd is not None and spent_usd >= policy.budget_usd:
        return Decision.fail(
            f"{summary}; spent ${spent_usd:.2f} of the ${policy.budget_usd:.2f} budget cap, "
            "stopping before exceeding it"
        )

    if outcome in (Outcome.APP_ERROR, Outcome.INFRA_ERROR):
        # Not the capacity's fault: retry on the same capacity, unless the strategy has moved on.
        choice = strategy(history, policy, now)
        capacity = Capacity.ON_DEMAND if choice.capacity is Capacity.ON_DEMAND else last.capacity
        return Decision.submit(capacity, f"retrying after {outcome.value.lower()}: {summary}")
    choice = strategy(history, policy, now)
    return Decision.submit(choice.capacity, choice.reason, escalated=choice.escalated)
