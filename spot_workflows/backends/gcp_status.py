"""Pure helpers of the GCP Batch backend: job ids, labels, and job status -> Observation.

No API calls here: ``observe_job`` classifies a ``batch_v1.Job`` (state, task exit codes from the
status events' ``task_execution``, and the status-event text) through ``classify_gcp``.
"""

from __future__ import annotations

import hashlib
import re

from google.cloud import batch_v1

from spot_workflows.core.classify import classify_gcp, gcp_exit_code_from_events
from spot_workflows.core.outcomes import AttemptState, Capacity, Observation

PREEMPTION_EXIT_CODE = 50001
LABEL_STEP = "spot-workflows-step"
LABEL_ATTEMPT = "spot-workflows-attempt"
LABEL_CAPACITY = "spot-workflows-capacity"
LABEL_MANAGED = "managed-by"
PROVISIONING = {
    Capacity.SPOT: batch_v1.AllocationPolicy.ProvisioningModel.SPOT,
    Capacity.ON_DEMAND: batch_v1.AllocationPolicy.ProvisioningModel.STANDARD,
}
_JOB_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_INSTANCE = re.compile(r"zones/([a-z0-9-]+)/instances/([A-Za-z0-9_-]+)")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def gcp_job_id(job_name: str) -> str:
    """A valid Batch job id (``^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$``) for a ledger job name.

    Deterministic (``find`` recomputes it); names that had to be changed get a short hash of the
    original so two different names never map to the same id.
    """
    base = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", job_name.lower())).strip("-")
    if not base[:1].isalpha():
        base = f"j-{base}".rstrip("-")
    if base == job_name and _JOB_ID.match(base):
        return base
    return f"{base[:54].rstrip('-')}-{_digest(job_name)}"


def gcp_label_value(value: str) -> str:
    """A GCP label value (<= 63 of ``[a-z0-9_-]``) for ``value``; hashed suffix when changed."""
    clean = re.sub(r"[^a-z0-9_-]", "-", value.lower())
    if clean == value and len(clean) <= 63:
        return clean
    return f"{clean[:54]}-{_digest(value)}"


def labels_step(step_key: str) -> str:
    """The value of the ``spot-workflows-step`` label for a step key."""
    return gcp_label_value(step_key)


def job_step_key(job: batch_v1.Job) -> str | None:
    """The exact step key of a job we submitted (its SPOT_STEP_KEY), else the label value."""
    for group in job.task_groups:
        key = group.task_spec.environment.variables.get("SPOT_STEP_KEY")
        if key:
            return key
    return job.labels.get(LABEL_STEP) or None


def _ts(value) -> float | None:  # type: ignore[no-untyped-def]
    return value.timestamp() if value is not None else None


def observe_job(job: batch_v1.Job, *, job_id: str | None = None) -> Observation:
    """Classify a Batch job: state + task exit codes + status-event text (``classify_gcp``)."""
    events = sorted(job.status.status_events, key=lambda e: _ts(e.event_time) or 0.0)
    texts = [e.description for e in events]
    exit_code = next(
        (
            e.task_execution.exit_code
            for e in reversed(events)
            if "task_execution" in e and e.task_execution.exit_code
        ),
        None,
    )
    state, outcome = classify_gcp(job.status.state.name, exit_code, texts)
    if exit_code is None:
        exit_code = gcp_exit_code_from_events(texts)
    started = [_ts(e.event_time) for e in events if re.search(r"\bto RUNNING\b", e.description)]
    started_at = started[0] if started else None
    if started_at is None and state is AttemptState.RUNNING:
        started_at = _ts(job.update_time)
    ended_at = None
    if state is AttemptState.DONE:
        ended_at = (_ts(events[-1].event_time) if events else None) or _ts(job.update_time)
    zone = instance = None
    for text in texts:
        if m := _INSTANCE.search(text):
            zone, instance = m.group(1), m.group(2)
    machine = None
    if job.allocation_policy.instances:
        machine = job.allocation_policy.instances[0].policy.machine_type or None
    reason = texts[-1][:500] if texts else job.status.state.name
    return Observation(
        job_id=job_id or job.name,
        state=state,
        outcome=outcome,
        reason=reason,
        exit_code=exit_code,
        started_at=started_at,
        ended_at=ended_at,
        instance_id=instance,
        instance_type=machine,
        zone=zone,
    )
