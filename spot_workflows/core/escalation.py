"""Named escalation strategies: which capacity the next attempt gets.

A strategy is a pure function of the step's history. It never reads the clock (``now`` is passed
in) and never does I/O. The planner asks it once per decision; new strategies register by name
and are selected with ``SpotPolicy.strategy``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from spot_workflows.config import SpotPolicy
from spot_workflows.core.outcomes import Attempt, Capacity, Outcome
from spot_workflows.errors import ConfigError


@dataclass(frozen=True)
class History:
    """Counts the planner and strategies need, derived from the ledger's attempts."""

    attempts: Sequence[Attempt]

    def count(self, outcome: Outcome, capacity: Capacity | None = None) -> int:
        return sum(
            1
            for a in self.attempts
            if a.outcome is outcome and (capacity is None or a.capacity is capacity)
        )

    @property
    def spot_preemptions(self) -> int:
        return self.count(Outcome.PREEMPTED, Capacity.SPOT)

    @property
    def on_demand_since(self) -> int | None:
        """Attempt number from which the step runs on on-demand for good, if it escalated."""
        for a in self.attempts:
            if a.capacity is Capacity.ON_DEMAND:
                return a.number
        return None


@dataclass(frozen=True)
class Choice:
    capacity: Capacity
    reason: str
    escalated: bool = False


Strategy = Callable[[History, SpotPolicy, float], Choice]
"""(history, policy, now) -> capacity of the next attempt, after a non-terminal outcome."""

_REGISTRY: dict[str, Strategy] = {}


def register(name: str) -> Callable[[Strategy], Strategy]:
    def deco(fn: Strategy) -> Strategy:
        _REGISTRY[name] = fn
        return fn

    return deco


def get_strategy(name: str) -> Strategy:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"unknown escalation strategy {name!r}; choose one of: {known}") from None


def strategy_names() -> list[str]:
    return sorted(_REGISTRY)


@register("attempts")
def attempts_based(history: History, policy: SpotPolicy, now: float) -> Choice:
    """Spot until the preemption budget is spent or spot cannot get capacity, then on-demand."""
    if policy.start_on is Capacity.ON_DEMAND:
        return Choice(Capacity.ON_DEMAND, "policy starts on ON_DEMAND")
    if history.on_demand_since is not None:
        return Choice(Capacity.ON_DEMAND, "step already escalated to ON_DEMAND")
    last = history.attempts[-1] if history.attempts else None
    if last is None:
        return Choice(Capacity.SPOT, "first attempt on SPOT")
    preempted = history.spot_preemptions
    if preempted >= policy.preemption_budget and last.outcome is Outcome.PREEMPTED:
        return Choice(
            Capacity.ON_DEMAND,
            f"preempted {preempted} time{'s' if preempted != 1 else ''} on SPOT "
            f"(budget {policy.preemption_budget}); escalating to ON_DEMAND",
            escalated=True,
        )
    if last.outcome is Outcome.NO_CAPACITY and policy.no_capacity_escalates:
        return Choice(
            Capacity.ON_DEMAND, "no SPOT capacity; escalating to ON_DEMAND", escalated=True
        )
    return Choice(
        Capacity.SPOT, f"resubmitting on SPOT (preemptions {preempted}/{policy.preemption_budget})"
    )
