"""One error root for the whole package.

Every exception the package raises on purpose derives from :class:`SpotWorkflowsError`, so a DAG
or a flow can catch one type. Cloud SDK and engine errors are translated into these at the
boundary; the message always says what to fix.
"""

from __future__ import annotations


class SpotWorkflowsError(Exception):
    """Root of every error raised by spot-workflows."""


class ConfigError(SpotWorkflowsError, ValueError):
    """A step spec, policy or backend setting is invalid; the message names the field."""


class CheckpointError(SpotWorkflowsError):
    """A checkpoint could not be saved, found or verified."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's manifest or files failed validation (bad JSON, checksum mismatch, missing file)."""


class LedgerError(SpotWorkflowsError):
    """The attempt ledger is unreadable or inconsistent."""


class BackendError(SpotWorkflowsError):
    """A backend (local, AWS Batch, GCP Batch) refused or failed an operation."""


class CredentialsError(BackendError):
    """Credentials are missing or rejected; the message says where they are looked for."""


class NotFoundError(BackendError):
    """A queue, job, compute environment or bucket does not exist."""


class CapacityError(BackendError):
    """The requested capacity (instance type, quota) cannot be provided."""


class NoticeError(SpotWorkflowsError):
    """A metadata endpoint answered something that is not a valid termination notice."""


class StepFailedError(SpotWorkflowsError):
    """The planner gave up on a step; ``reason`` says why in one sentence."""

    def __init__(self, reason: str, *, step_key: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.step_key = step_key


class BudgetExceededError(StepFailedError):
    """Continuing would exceed the step's budget cap."""


class DeadlineInfeasibleError(StepFailedError):
    """The deadline cannot be met even on on-demand capacity."""


class StepInterruptedError(SpotWorkflowsError):
    """The user interrupted a blocking run (Ctrl-C, SIGTERM): the live attempt was stopped and
    recorded as stopped, so running the same step again resumes from its checkpoint."""

    def __init__(self, reason: str, *, step_key: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.step_key = step_key


class WriteConflictError(SpotWorkflowsError):
    """A compare-and-swap write found the object changed by another writer since it was read;
    nothing was written. Re-read the object, re-apply the change and write again."""
