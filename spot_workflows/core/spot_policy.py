"""The spot policy: how a step spends spot capacity and when it escalates to on-demand."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import ConfigDict, Field, field_validator, model_validator

from spot_workflows.core.outcomes import Capacity
from spot_workflows.validation import Amount, Checked, Count, problem


class SpotPolicy(Checked):
    """How a step spends spot capacity and when it escalates to on-demand.

    Preemptions are charged to ``preemption_budget``; application errors to ``app_error_retries``;
    they never share one budget (unlike AWS/GCP Batch's own retry settings). Every number must be
    finite; counts are integers (not booleans); ``strategy`` must be a registered strategy.
    """

    model_config = ConfigDict(extra="forbid")
    _what: ClassVar[str] = "spot policy"

    preemption_budget: Annotated[Count, Field(ge=0, le=100)] = 3
    """Spot attempts that may end PREEMPTED before the step escalates to on-demand."""
    app_error_retries: Annotated[Count, Field(ge=0, le=20)] = 0
    """Times an application error (non-zero exit not caused by a reclaim) is retried."""
    infra_error_retries: Annotated[Count, Field(ge=0, le=20)] = 2
    """Retries for infrastructure faults (lost VM, host errors that are not reclaims)."""
    capacity_timeout_s: Annotated[Amount, Field(gt=0, le=7 * 24 * 3600)] = 900.0
    """A spot attempt still waiting for capacity after this long is cancelled as NO_CAPACITY."""
    on_demand_capacity_timeout_s: Annotated[Amount, Field(gt=0)] | None = None
    """Same for on-demand attempts; None waits as long as the backend does."""
    no_capacity_escalates: bool = True
    """NO_CAPACITY on spot escalates to on-demand at once (else it is retried on spot)."""
    max_attempts: Annotated[Count, Field(ge=1, le=200)] = 10
    """Absolute cap on attempts of the step, all capacities together."""
    start_on: Capacity = Capacity.SPOT
    """Capacity of the first attempt (ON_DEMAND skips spot entirely)."""
    strategy: str = "auto"
    """Escalation strategy name (see ``spot_workflows.core.escalation``). ``auto`` is
    ``deadline`` when ``deadline_s`` is set and ``attempts`` otherwise."""
    deadline_s: Annotated[Amount, Field(gt=0)] | None = None
    """Seconds from the step's first submission by which it must finish (deadline-aware strategies)."""
    budget_usd: Annotated[Amount, Field(gt=0)] | None = None
    """Cap on the step's total spend in US dollars; never exceeded (the planner stops first)."""
    work_s: Annotated[Amount, Field(gt=0)] | None = None
    """The step's total run time on one machine, in seconds (the user's estimate). With the
    checkpoint manifest's progress it gives the work left; None: estimated from the ledger."""
    restart_overhead_s: Annotated[Amount, Field(ge=0)] | None = None
    """Seconds a new attempt spends before it makes progress (submit-to-running plus restore).
    None: measured from the ledger, plus ``restore_s``."""
    restore_s: Annotated[Amount, Field(ge=0)] = 0.0
    """Seconds a resumed attempt needs to restore its checkpoint (added to the measured overhead)."""
    spot_usd_per_hour: Annotated[Amount, Field(gt=0)] = 0.9731
    """Hourly price of the step's SPOT capacity (budget and cost arithmetic)."""
    on_demand_usd_per_hour: Annotated[Amount, Field(gt=0)] = 3.06
    """Hourly price of the step's ON_DEMAND capacity."""
    race_placements: Annotated[Count, Field(ge=1, le=64)] | None = None
    """With several SPOT placements: how many may hold a pending attempt at once while the step
    waits for spot (the first to start wins, the others are cancelled as RACED); None: all."""

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        from spot_workflows.core.strategies import AUTO, strategy_names

        if v != AUTO and v not in strategy_names():
            raise problem(
                f"unknown escalation strategy {v!r}; choose one of: "
                + ", ".join([AUTO, *strategy_names()])
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> SpotPolicy:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        return self
