"""Attempts for tests of pure code: one factory instead of a helper per test file."""

from __future__ import annotations

from typing import Any

from spot_workflows.core.outcomes import Attempt, AttemptState, Capacity, Outcome

_UNSET: Any = object()


def attempt(
    n: int = 1,
    capacity: Capacity = Capacity.SPOT,
    state: AttemptState = AttemptState.RUNNING,
    *,
    outcome: Outcome | None = None,
    at: float = 0.0,
    started: float | None = _UNSET,
    ended: float | None = None,
    job_id: str | None = _UNSET,
    backend: str = "t",
    **fields: Any,
) -> Attempt:
    """Attempt ``n`` submitted at ``at``; started then too unless it is PENDING (or ``started``
    says otherwise); job ``j<n>`` unless ``job_id`` is given (None: recorded, not submitted)."""
    if started is _UNSET:
        started = None if state is AttemptState.PENDING else at
    return Attempt(
        number=n,
        capacity=capacity,
        job_name=f"s-a{n}",
        job_id=f"j{n}" if job_id is _UNSET else job_id,
        backend=backend,
        state=state,
        outcome=outcome,
        submitted_at=at,
        started_at=started,
        ended_at=ended,
        **fields,
    )


def done(n: int, capacity: Capacity, outcome: Outcome, **fields: Any) -> Attempt:
    """A finished attempt (submitted, started and ended at 0 unless given)."""
    fields.setdefault("ended", fields.get("at", 0.0))
    return attempt(n, capacity, AttemptState.DONE, outcome=outcome, **fields)
