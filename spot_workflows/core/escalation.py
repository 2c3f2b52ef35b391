"""Named escalation strategies: which capacity the next attempt gets.

A strategy is a pure function of the step's history. It never reads the clock (``now`` is passed
in) and never does I/O. The planner asks it once per decision; new strategies register by name
and are selected with ``SpotPolicy.strategy``.

*Live* strategies (registered with ``live=True``: the deadline-aware ones in
``spot_workflows.core.policies``) are also asked while an attempt is live, and read the
:class:`~spot_workflows.core.deadline.Situation` (time left, work left, slack, prices) carried by
:class:`History`; the planner turns a change of their answer into a cancel and a new submit.
``auto`` (the default) resolves to ``deadline`` when the policy has a deadline, else ``attempts``.

This module holds the registry and the ``attempts`` strategy; look strategies up through
:mod:`spot_workflows.core.strategies`, which registers every built-in one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from spot_workflows.core.deadline import Situation
from spot_workflows.core.outcomes import Attempt, Capacity, Outcome
from spot_workflows.core.spot_policy import SpotPolicy
from spot_workflows.errors import ConfigError


@dataclass(frozen=True)
class History:
    """Counts the planner and strategies need, derived from the ledger's attempts."""

    attempts: Sequence[Attempt]
    situation: Situation | None = None
    """Deadline/budget view of the step (live strategies only; None when the work is unknown)."""

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
_LIVE: set[str] = set()
AUTO = "auto"
DEFAULT_WITH_DEADLINE = "deadline"
DEFAULT_WITHOUT_DEADLINE = "attempts"


def register(name: str, *, live: bool = False) -> Callable[[Strategy], Strategy]:
    def deco(fn: Strategy) -> Strategy:
        _REGISTRY[name] = fn
        if live:
            _LIVE.add(name)
        return fn

    return deco


def resolve(policy: SpotPolicy) -> str:
    """The strategy name a policy means: ``auto`` picks by whether a deadline is set."""
    if policy.strategy == AUTO:
        return DEFAULT_WITH_DEADLINE if policy.deadline_s is not None else DEFAULT_WITHOUT_DEADLINE
    return policy.strategy


def get_strategy(name: str) -> Strategy:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join([AUTO, *sorted(_REGISTRY)])
        raise ConfigError(f"unknown escalation strategy {name!r}; choose one of: {known}") from None


def is_live(name: str) -> bool:
    """Whether the strategy also decides while an attempt is live (deadline-aware)."""
    return name in _LIVE


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
