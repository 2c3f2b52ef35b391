"""StepSummary: what a step's attempts add up to, computed in one place.

The demo report, the Airflow XCom summary, the Prefect artifact and :class:`RunResult` all read
these numbers (escalated, preemptions, final capacity, per-attempt rows) from here, so they can
never disagree. Pure: no I/O, no prices (the cost block is added by the callers that have a price
catalog).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from spot_workflows.core.outcomes import Attempt, Capacity, Outcome


@dataclass(frozen=True)
class StepSummary:
    """The attempts of one step (oldest first), summed up."""

    step_key: str
    attempts: tuple[Attempt, ...]

    @classmethod
    def of(cls, step_key: str, attempts: Sequence[Attempt]) -> StepSummary:
        return cls(step_key, tuple(attempts))

    @property
    def capacities(self) -> list[str]:
        return [a.capacity.value for a in self.attempts]

    @property
    def outcomes(self) -> list[str | None]:
        return [a.outcome.value if a.outcome else None for a in self.attempts]

    @property
    def preemptions(self) -> int:
        return sum(a.outcome is Outcome.PREEMPTED for a in self.attempts)

    @property
    def ran(self) -> tuple[Attempt, ...]:
        """The attempts that ran the step or waited for it: all but the RACED ones (losers of
        a race between placements, spot probes the policy did not switch to)."""
        return tuple(a for a in self.attempts if a.outcome is not Outcome.RACED)

    @property
    def raced(self) -> int:
        return len(self.attempts) - len(self.ran)

    @property
    def escalated(self) -> bool:
        """The step ran on spot and then (or also) on on-demand capacity."""
        caps = {a.capacity for a in self.ran}
        return Capacity.SPOT in caps and Capacity.ON_DEMAND in caps

    @property
    def final_capacity(self) -> Capacity | None:
        return self.ran[-1].capacity if self.ran else None

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-able row per attempt: the columns every report shows."""
        return [attempt_row(a) for a in self.attempts]


def attempt_row(a: Attempt) -> dict[str, Any]:
    """One attempt as a JSON-able row (outcome, or the state while it is live)."""
    return {
        "attempt": a.number,
        "capacity": a.capacity.value,
        "placement": a.placement,
        "outcome": a.outcome.value if a.outcome else a.state.value,
        "job_id": a.job_id,
        "exit_code": a.exit_code,
        "resumed_from_step": a.resumed_from_step,
        "instance_type": a.instance_type,
        "zone": a.zone,
        "seconds": round(a.run_seconds(), 2),
        "reason": a.reason,
    }
