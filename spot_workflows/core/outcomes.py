"""Value types shared by every layer: capacity, outcome, attempt, decision, termination notice.

Pure: no I/O and no clock reads; times are passed in as aware datetimes or epoch seconds.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class Capacity(StrEnum):
    SPOT = "SPOT"
    ON_DEMAND = "ON_DEMAND"


class Outcome(StrEnum):
    """How an attempt ended."""

    SUCCEEDED = "SUCCEEDED"
    PREEMPTED = "PREEMPTED"
    NO_CAPACITY = "NO_CAPACITY"
    INFRA_ERROR = "INFRA_ERROR"
    APP_ERROR = "APP_ERROR"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    STOPPED = "STOPPED"  # stopped on purpose by the planner: switching capacity, or the budget cap
    RACED = "RACED"  # a pending attempt cancelled because another placement's attempt started
    # first (or a probe the policy chose not to switch to): not a reclaim, not a failure


class AttemptState(StrEnum):
    """Where a live attempt is; terminal attempts carry an :class:`Outcome` instead."""

    PENDING = "PENDING"  # submitted, waiting for capacity (Batch RUNNABLE / GCP QUEUED, SCHEDULED)
    RUNNING = "RUNNING"
    DONE = "DONE"


class NoticeKind(StrEnum):
    INTERRUPTION = "INTERRUPTION"  # AWS spot/instance-action, GCE preempted=TRUE, local notice
    REBALANCE = "REBALANCE"  # AWS rebalance recommendation (advisory)
    MAINTENANCE = "MAINTENANCE"  # GCE TERMINATE_ON_HOST_MAINTENANCE
    SIGTERM = "SIGTERM"  # the process got SIGTERM with no metadata notice first
    PREEMPTED = "PREEMPTED"  # orchestrator-side: the job is already gone
    HANDOFF = (
        "HANDOFF"  # the planner moves the step to another attempt (on-demand -> spot): save, exit
    )


class TerminationNotice(BaseModel):
    """A termination warning seen by a worker, or an event seen by the orchestrator."""

    model_config = ConfigDict(frozen=True)

    kind: NoticeKind
    source: str  # "aws", "gcp", "local", "signal", "eventbridge", "gcp-batch"
    action: str | None = None  # AWS: terminate | stop | hibernate
    deadline: datetime | None = None  # when the capacity goes away, if known
    seen_at: datetime | None = None
    instance_id: str | None = None
    job_id: str | None = None
    step_key: str | None = None
    detail: dict = Field(default_factory=dict)


class Attempt(BaseModel):
    """One submission of a step on one capacity type: one row of the ledger."""

    number: int = Field(ge=1)
    capacity: Capacity
    job_name: str  # deterministic per (step, attempt): written to the ledger BEFORE submitting
    job_id: str | None = None  # set once the backend accepted the submission
    backend: str
    state: AttemptState = AttemptState.PENDING
    outcome: Outcome | None = None
    reason: str | None = None  # raw provider reason, kept for humans
    exit_code: int | None = None
    instance_type: str | None = None
    zone: str | None = None
    instance_id: str | None = None
    submitted_at: float  # epoch seconds
    started_at: float | None = None
    ended_at: float | None = None
    resumed_from_step: int | None = None
    progress_start: float | None = None  # checkpoint progress fraction when the attempt began
    progress_end: float | None = None
    last_checkpoint_step: int | None = None  # newest durable checkpoint when the attempt ended
    last_checkpoint_at: float | None = None  # its creation time (epoch seconds)
    cost_usd: float | None = None
    stopping: Outcome | None = None
    """Written (ahead) when spot-workflows cancels the attempt: the outcome it is recording, so
    a runner killed between the cancel and its record does not read its own cancel back as a
    cancel from outside."""
    placement: str | None = None
    """Name of the placement (queue / region / market) the attempt was submitted to; None for
    a backend with one placement per capacity."""
    handoff: bool = False
    """Set (ahead) when the planner stops this attempt to hand the step to another one: its
    worker gets a handoff notice, saves and exits; the next attempt resumes from that save."""
    owner: str | None = None
    """The runner that won the right to submit this attempt (written ahead, with the job name);
    any other runner of the step re-attaches to the job instead of submitting one."""
    watcher: str | None = None
    """The orchestrator task (try) now waiting on the attempt, when the engine says (Airflow: the
    task instance and try). A stop from a task that is no longer the watcher (a newer try has
    re-attached) leaves the job alone."""

    @property
    def live(self) -> bool:
        return self.state is not AttemptState.DONE

    def run_seconds(self) -> float:
        if self.started_at is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else self.started_at
        return max(0.0, end - self.started_at)


class Observation(BaseModel):
    """What a backend saw of a live attempt in one describe call (already classified)."""

    job_id: str
    state: AttemptState
    outcome: Outcome | None = None
    reason: str | None = None
    exit_code: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    instance_id: str | None = None
    instance_type: str | None = None
    zone: str | None = None


class Action(StrEnum):
    SUBMIT = "SUBMIT"  # submit a new attempt on `capacity`
    WAIT = "WAIT"  # keep watching the live attempt
    CANCEL = "CANCEL"  # cancel the live attempt and record `outcome` for it (e.g. NO_CAPACITY)
    SUCCEED = "SUCCEED"
    FAIL = "FAIL"


class FailCause(StrEnum):
    """Why a FAIL decision was taken, when a specific error class fits (see ``errors``)."""

    BUDGET = "BUDGET"  # -> BudgetExceededError
    DEADLINE = "DEADLINE"  # -> DeadlineInfeasibleError


class Decision(BaseModel):
    """What to do next. The planner returns one of its subclasses -- :class:`Submit`,
    :class:`Wait`, :class:`Cancel`, :class:`Succeed`, :class:`Fail` -- each with only the fields
    its action needs; the runner / operator / task carries it out (``match`` on the type, or
    compare ``action``)."""

    model_config = ConfigDict(frozen=True)

    action: Action
    reason: str = ""

    @classmethod
    def submit(cls, capacity: Capacity, reason: str, *, escalated: bool = False) -> Submit:
        return Submit(capacity=capacity, reason=reason, escalated=escalated)

    @classmethod
    def wait(cls, reason: str = "attempt is live", *, recheck_at: float | None = None) -> Wait:
        return Wait(reason=reason, recheck_at=recheck_at)

    @classmethod
    def cancel(cls, outcome: Outcome, reason: str) -> Cancel:
        return Cancel(outcome=outcome, reason=reason)

    @classmethod
    def succeed(cls, reason: str = "attempt succeeded") -> Succeed:
        return Succeed(reason=reason)

    @classmethod
    def fail(cls, reason: str, *, cause: FailCause | None = None) -> Fail:
        return Fail(reason=reason, cause=cause)


class Submit(Decision):
    """Submit a new attempt on ``capacity``."""

    action: Literal[Action.SUBMIT] = Action.SUBMIT
    capacity: Capacity
    escalated: bool = False  # this decision moves the step from SPOT to ON_DEMAND
    placement: str | None = None
    """Where to submit (a placement name); None: the backend's one placement for ``capacity``."""


class Wait(Decision):
    """Keep watching the live attempt. ``recheck_at`` (epoch seconds): when to ask the planner
    again even if the attempt does not change -- a capacity timeout expires then, or the policy
    reasons about time (deadline, budget) and wants its next tick. ``None``: only a change of
    the attempt (it starts, ends, or is reclaimed) can change this answer."""

    action: Literal[Action.WAIT] = Action.WAIT
    recheck_at: float | None = None


class Cancel(Decision):
    """Cancel a live attempt and record ``outcome`` for it (e.g. NO_CAPACITY, STOPPED, RACED).

    ``attempt``: which one (its number); None: the step's one live attempt. ``handoff``: stop it
    through a handoff notice (the worker saves and exits) because another attempt takes over."""

    action: Literal[Action.CANCEL] = Action.CANCEL
    outcome: Outcome
    attempt: int | None = None
    handoff: bool = False


class Succeed(Decision):
    """The step is done: its last attempt succeeded."""

    action: Literal[Action.SUCCEED] = Action.SUCCEED


class Fail(Decision):
    """The step failed for good; ``cause`` says when budget or deadline is the reason."""

    action: Literal[Action.FAIL] = Action.FAIL
    cause: FailCause | None = None


AnyDecision = Annotated[Submit | Wait | Cancel | Succeed | Fail, Field(discriminator="action")]
"""A decision of any type, for models that hold one (validated back to its own type)."""


RESERVED_EXIT_CODE = 75
"""Exit code of ``spot-run`` when it stopped because of a notice after saving (EX_TEMPFAIL)."""
