"""What a step run reports: its events (progress bars, Prefect events), its result, and the
backend-given inputs the runner starts from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from spot_workflows.backends.base import Backend
from spot_workflows.config import SpotPolicy
from spot_workflows.core.outcomes import Action, Attempt, Decision, Outcome
from spot_workflows.core.summary import StepSummary


@dataclass(frozen=True)
class RunnerEvent:
    """Something a user or an engine may want to react to (progress bars, Prefect events)."""

    kind: str  # submitted | reattached | started | preempted | no_capacity | escalated | ...
    step_key: str
    attempt: Attempt | None
    message: str


@dataclass
class RunResult:
    step_key: str
    attempts: list[Attempt]
    decision: Decision

    @property
    def succeeded(self) -> bool:
        return self.decision.action is Action.SUCCEED

    @property
    def summary(self) -> StepSummary:
        return StepSummary.of(self.step_key, self.attempts)

    @property
    def escalated(self) -> bool:
        return self.summary.escalated


OUTCOME_EVENTS = {
    Outcome.PREEMPTED: "preempted",
    Outcome.NO_CAPACITY: "no_capacity",
    Outcome.SUCCEEDED: "succeeded",
    Outcome.APP_ERROR: "app_error",
    Outcome.INFRA_ERROR: "infra_error",
    Outcome.TIMEOUT: "timeout",
    Outcome.CANCELLED: "cancelled",
    Outcome.STOPPED: "stopped",
    Outcome.RACED: "raced",
}


def market_probe(backend: Backend, step_key: str | None = None) -> Callable[[], bool | None] | None:
    """A spot-availability probe for ``StepRunner(spot_probe=...)``, where the backend can give
    one: its ``spot_available(step_key)`` (the local spot cloud's market of that step). None for
    the clouds, which have no cheap, reliable probe (a pending SPOT job is the probe: the planner
    reads it from the ledger)."""
    probe = getattr(backend, "spot_available", None)
    if not callable(probe):
        return None
    return (lambda: probe(step_key)) if step_key is not None else probe


def with_backend_defaults(policy: SpotPolicy, backend: Backend) -> SpotPolicy:
    """The policy, with the backend's default on-demand capacity timeout where it sets none."""
    default = getattr(backend, "default_on_demand_capacity_timeout_s", None)
    if policy.on_demand_capacity_timeout_s is None and default is not None:
        return policy.model_copy(update={"on_demand_capacity_timeout_s": float(default)})
    return policy
