"""Prefect events for what happens to a spot step, so automations can trigger on them.

Every :class:`~spot_workflows.runner.RunnerEvent` becomes a Prefect event named
``spot-workflows.step.<kind>`` (``preempted``, ``escalated``, ``no-capacity``, ``succeeded``,
``failed``, ``submitted``, ...). The event's resource is the step
(``spot-workflows.step.<step key>``); the attempt's backend job is a related resource with role
``job``. Inside a flow or task run Prefect also relates the flow run, task run and flow.
"""

from __future__ import annotations

from typing import Any

from prefect.events import Event, emit_event

from spot_workflows.core.outcomes import Attempt
from spot_workflows.runner import RunnerEvent

EVENT_PREFIX = "spot-workflows.step."
STEP_RESOURCE_PREFIX = "spot-workflows.step."
JOB_RESOURCE_PREFIX = "spot-workflows.job."

AUTOMATION_EVENTS = ("preempted", "escalated", "no-capacity", "succeeded", "failed")
"""The events automations usually watch: preemption, escalation, no capacity, completion."""


def event_name(kind: str) -> str:
    """``no_capacity`` -> ``spot-workflows.step.no-capacity``."""
    return EVENT_PREFIX + kind.replace("_", "-")


def step_resource(*, step_key: str, backend: str, checkpoint_uri: str) -> dict[str, str]:
    return {
        "prefect.resource.id": STEP_RESOURCE_PREFIX + step_key,
        "prefect.resource.name": step_key,
        "spot-workflows.backend": backend,
        "spot-workflows.checkpoint-uri": checkpoint_uri,
    }


def job_resource(attempt: Attempt) -> dict[str, str]:
    """The backend job of one attempt, as a related resource (role ``job``)."""
    job = attempt.job_id or attempt.job_name
    return {
        "prefect.resource.id": f"{JOB_RESOURCE_PREFIX}{attempt.backend}.{job}",
        "prefect.resource.role": "job",
        "prefect.resource.name": attempt.job_name,
        "spot-workflows.attempt": str(attempt.number),
        "spot-workflows.capacity": attempt.capacity.value,
    }


def event_payload(event: RunnerEvent) -> dict[str, Any]:
    payload: dict[str, Any] = {"kind": event.kind, "message": event.message}
    a = event.attempt
    if a is not None:
        payload.update(
            attempt=a.number,
            capacity=a.capacity.value,
            job_id=a.job_id,
            job_name=a.job_name,
            outcome=a.outcome.value if a.outcome else None,
            reason=a.reason,
            exit_code=a.exit_code,
            instance_type=a.instance_type,
            zone=a.zone,
            resumed_from_step=a.resumed_from_step,
            progress_start=a.progress_start,
        )
    return payload


class StepEventEmitter:
    """Turns runner events of one step into Prefect events; each follows the previous one."""

    def __init__(self, *, step_key: str, backend: str, checkpoint_uri: str) -> None:
        self.resource = step_resource(
            step_key=step_key, backend=backend, checkpoint_uri=checkpoint_uri
        )
        self.emitted: list[Event] = []

    def __call__(self, event: RunnerEvent) -> Event | None:
        related = [job_resource(event.attempt)] if event.attempt is not None else []
        sent = emit_event(
            event=event_name(event.kind),
            resource=self.resource,
            related=related,
            payload=event_payload(event),
            follows=self.emitted[-1] if self.emitted else None,
        )
        if sent is not None:
            self.emitted.append(sent)
        return sent
