"""Provider status -> :class:`Outcome`.

Pure functions: each takes what a provider reports about a job (state, status reason, exit code,
status events) and says whether the attempt is still waiting, running, or how it ended. Facts are
from the providers' documentation; every rule has a row in ``tests/unit/test_classify.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from spot_workflows.core.outcomes import RESERVED_EXIT_CODE, AttemptState, Outcome

SIGTERM_EXIT = 143  # 128 + SIGTERM: what a container shows when it was stopped by the host
SIGKILL_EXIT = 137  # 128 + SIGKILL

CANCEL_REASON_PREFIX = "spot-workflows:"
"""Reasons the package itself gives when it cancels a job start with this prefix."""

# ---------------------------------------------------------------------------------------------
# local backend
# ---------------------------------------------------------------------------------------------


def classify_local(
    exit_code: int | None, *, reclaimed: bool = False, cancelled: bool = False
) -> Outcome:
    """Outcome of a finished local attempt.

    ``reclaimed``: the simulated market took the capacity (like ``Host EC2 ... terminated.``).
    """
    if cancelled:
        return Outcome.CANCELLED
    if exit_code == 0:
        return Outcome.SUCCEEDED  # finished before the reclaim took effect
    if reclaimed or exit_code == RESERVED_EXIT_CODE:
        return Outcome.PREEMPTED
    if exit_code is None:
        return Outcome.INFRA_ERROR  # the worker vanished without an exit status
    return Outcome.APP_ERROR


# ---------------------------------------------------------------------------------------------
# AWS Batch
# ---------------------------------------------------------------------------------------------

AWS_PENDING_STATES = frozenset({"SUBMITTED", "PENDING", "RUNNABLE", "STARTING"})
AWS_RUNNING_STATES = frozenset({"RUNNING"})
AWS_TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED"})

_HOST_TERMINATED = re.compile(r"^Host EC2 \(instance (i-[0-9a-zA-Z]+)\) terminated\.?")
_AWS_INFRA = (
    "CannotPullContainerError",
    "CannotStartContainerError",
    "CannotCreateContainerError",
    "CannotInspectContainerError",
    "ResourceInitializationError",
    "DockerTimeoutError",
    "Task failed to start",
    "ECS was unable to assume",
    "Timeout waiting for network interface",
)
_AWS_TIMEOUT = ("Job attempt duration exceeded timeout",)
# The container itself ended (its own exit, or the memory limit the step asked for): the app's
# doing even when Batch reports no exit code (it sometimes omits it on these reasons).
_AWS_APP = ("Essential container in task exited", "OutOfMemoryError")
_AWS_CANCELLED = ("Terminated by user", "Cancelled by user", CANCEL_REASON_PREFIX)


def aws_reclaimed_instance(status_reason: str | None) -> str | None:
    """The instance id in a ``Host EC2 (instance i-...) terminated.`` reason, else None."""
    if not status_reason:
        return None
    m = _HOST_TERMINATED.match(status_reason.strip())
    return m.group(1) if m else None


def classify_aws(
    status: str,
    status_reason: str | None = None,
    exit_code: int | None = None,
    *,
    notice_seen: bool = False,
) -> tuple[AttemptState, Outcome | None]:
    """Classify one AWS Batch job (or one of its ``attempts[]``).

    ``status_reason``: the job's ``statusReason`` or the attempt's ``statusReason`` /
    ``container.reason``. ``notice_seen``: an interruption warning was seen for this job's
    instance (then exit 143 means the host stopped us, not the app).
    """
    status = (status or "").upper()
    reason = (status_reason or "").strip()
    if status in AWS_PENDING_STATES:
        return AttemptState.PENDING, None
    if status in AWS_RUNNING_STATES:
        return AttemptState.RUNNING, None
    if status == "SUCCEEDED":
        return AttemptState.DONE, Outcome.SUCCEEDED
    if status != "FAILED":
        return AttemptState.DONE, Outcome.INFRA_ERROR  # unknown status: never wait forever on it
    if aws_reclaimed_instance(reason) is not None:
        return AttemptState.DONE, Outcome.PREEMPTED
    if exit_code == RESERVED_EXIT_CODE:
        return AttemptState.DONE, Outcome.PREEMPTED
    if exit_code == SIGTERM_EXIT and notice_seen:
        return AttemptState.DONE, Outcome.PREEMPTED
    if reason.startswith("CAPACITY:") or "INSUFFICIENT_INSTANCE_CAPACITY" in reason:
        return AttemptState.DONE, Outcome.NO_CAPACITY
    if reason.startswith(_AWS_CANCELLED):
        return AttemptState.DONE, Outcome.CANCELLED
    if reason.startswith(_AWS_TIMEOUT):
        return AttemptState.DONE, Outcome.TIMEOUT
    if reason.startswith(_AWS_INFRA):
        return AttemptState.DONE, Outcome.INFRA_ERROR
    if reason.startswith(_AWS_APP):
        return AttemptState.DONE, Outcome.APP_ERROR
    if exit_code is None:
        # Failed without a container exit code and no known reason: the host, not the app.
        return AttemptState.DONE, Outcome.INFRA_ERROR
    return AttemptState.DONE, Outcome.APP_ERROR


def aws_capacity_starved(status: str, status_reason: str | None) -> bool:
    """A RUNNABLE job whose reason says Batch cannot get instances for it."""
    reason = status_reason or ""
    return (status or "").upper() == "RUNNABLE" and (
        reason.startswith("CAPACITY:") or "INSUFFICIENT_INSTANCE_CAPACITY" in reason
    )


# ---------------------------------------------------------------------------------------------
# GCP Batch
# ---------------------------------------------------------------------------------------------

GCP_PREEMPTED = 50001
GCP_EXIT_CODES: dict[int, Outcome] = {
    50000: Outcome.INFRA_ERROR,  # other / unknown VM problem
    50001: Outcome.PREEMPTED,  # spot preemption
    50002: Outcome.INFRA_ERROR,  # lost VM updates
    50003: Outcome.INFRA_ERROR,  # VM rebooted
    50004: Outcome.INFRA_ERROR,  # VM and task unresponsive
    50005: Outcome.TIMEOUT,  # max run duration exceeded
    50006: Outcome.INFRA_ERROR,  # VM recreated
}
GCP_PENDING_STATES = frozenset({"STATE_UNSPECIFIED", "QUEUED", "SCHEDULED", "PENDING", "ASSIGNED"})
GCP_RUNNING_STATES = frozenset({"RUNNING"})
_GCP_EVENT_EXIT = re.compile(r"exit code (-?\d+)")


def gcp_exit_code_from_events(descriptions: Iterable[str]) -> int | None:
    """The last exit code named in GCP status events (``... with exit code 50001.``)."""
    code: int | None = None
    for text in descriptions:
        m = _GCP_EVENT_EXIT.search(text or "")
        if m:
            try:
                code = int(m.group(1))
            except ValueError:  # pragma: no cover - regex guarantees digits
                continue
    return code


def classify_gcp(
    state: str,
    exit_code: int | None = None,
    events: Iterable[str] = (),
) -> tuple[AttemptState, Outcome | None]:
    """Classify a GCP Batch job (or task) state with its task exit code and status events."""
    state = (state or "").upper().removeprefix("STATE.")
    events = list(events)
    if state in GCP_PENDING_STATES:
        return AttemptState.PENDING, None
    if state in GCP_RUNNING_STATES:
        return AttemptState.RUNNING, None
    if state == "SUCCEEDED":
        return AttemptState.DONE, Outcome.SUCCEEDED
    if state in ("DELETION_IN_PROGRESS", "CANCELLED", "CANCELLATION_IN_PROGRESS"):
        return AttemptState.DONE, Outcome.CANCELLED
    if state != "FAILED":
        return AttemptState.DONE, Outcome.INFRA_ERROR
    if exit_code is None:
        exit_code = gcp_exit_code_from_events(events)
    if exit_code is None:
        if any("Spot Preemption" in (e or "") for e in events):
            return AttemptState.DONE, Outcome.PREEMPTED
        return AttemptState.DONE, Outcome.INFRA_ERROR
    if exit_code in GCP_EXIT_CODES:
        return AttemptState.DONE, GCP_EXIT_CODES[exit_code]
    if exit_code == RESERVED_EXIT_CODE:
        return AttemptState.DONE, Outcome.PREEMPTED
    if exit_code == 0:
        return AttemptState.DONE, Outcome.SUCCEEDED
    return AttemptState.DONE, Outcome.APP_ERROR
