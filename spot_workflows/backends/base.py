"""The Backend protocol: what the runner, the Airflow operator and the Prefect task need.

A backend submits one attempt of a step on one capacity, describes live attempts (already
classified into :class:`Observation`), cancels, and finds a job by the name the ledger wrote
ahead of the submission (re-attach after a crash between "recorded" and "submitted").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import Capacity, Observation


def attempt_env(
    spec: StepSpec, *, attempt: int, capacity: Capacity, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The worker environment every attempt's process gets, plus the user's ``env``."""
    env = dict(spec.env)
    env.update(
        {
            "SPOT_CHECKPOINT_URI": spec.checkpoint_uri,
            "SPOT_STEP_KEY": spec.key,
            "SPOT_ATTEMPT": str(attempt),
            "SPOT_CAPACITY": capacity.value,
            "SPOT_NOTICE_SOURCE": spec.notice_source,
        }
    )
    if extra:
        env.update(extra)
    return env


@runtime_checkable
class Backend(Protocol):
    name: str

    def submit(self, spec: StepSpec, *, job_name: str, attempt: int, capacity: Capacity) -> str:
        """Submit one attempt; return the backend's job id. Must not block on capacity.

        A backend with several placements (its ``placements`` attribute, a tuple of
        :class:`~spot_workflows.core.placements.Placement`) also takes ``placement=NAME``: the
        placement of ``capacity`` to submit to (None: its first one). Job ids it returns are
        unique across its placements, so ``describe``/``cancel`` need only the id."""
        ...

    def describe(self, job_ids: Sequence[str]) -> dict[str, Observation]:
        """Observe live jobs. Unknown ids are absent from the result."""
        ...

    def cancel(self, job_id: str, *, reason: str) -> None:
        """Cancel or terminate a job; idempotent."""
        ...

    def find(self, job_name: str) -> str | None:
        """Job id of a job submitted with ``job_name``, if the backend has one."""
        ...
