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


def describe_invalid(exc: object, what: str, *, limit: int = 3) -> str:
    """One line for a pydantic ``ValidationError``: ``field: message (got value)`` for the first
    ``limit`` problems; ``what`` names the thing when an error has no field."""
    parts = []
    for err in exc.errors()[:limit]:  # type: ignore[attr-defined]
        field = ".".join(str(p) for p in err["loc"]) or what
        got = err.get("input")
        shown = repr(got) if not isinstance(got, dict) else "{...}"
        parts.append(f"{field}: {err['msg']} (got {shown[:80]})")
    return "; ".join(parts)


def config_error(exc: object, what: str, *, hint: str = "") -> ConfigError:
    """The :class:`ConfigError` for a pydantic ``ValidationError`` raised while building
    ``what`` (a step, a policy, a connection's extras): one line naming the field and the
    accepted range; ``hint`` says where the fields are documented. Raise it ``from None``."""
    message = f"invalid {what}: {describe_invalid(exc, what)}"
    return ConfigError(f"{message}; {hint}" if hint else message)
