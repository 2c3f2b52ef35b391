"""The blocking submit -> watch -> decide loop over any backend.

Used by the CLI and the Prefect task (the Airflow operator runs the same :meth:`StepRunner.tick`
between deferrals). Clock and sleep are injectable; every change is written to the ledger before
the next action, so the loop can be killed at any point and re-run: it re-attaches to the live
attempt instead of submitting a duplicate.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from spot_workflows.backends.base import Backend
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.classify import CANCEL_REASON_PREFIX
from spot_workflows.core.deadline import spent_usd
from spot_workflows.core.outcomes import (
    Action,
    Attempt,
    AttemptState,
    Cancel,
    Capacity,
    Decision,
    Fail,
    FailCause,
    Outcome,
    Submit,
)
from spot_workflows.core.placements import Placement
from spot_workflows.core.planner import decide
from spot_workflows.core.pools import decide_pool
from spot_workflows.errors import (
    BudgetExceededError,
    DeadlineInfeasibleError,
    NotFoundError,
    StepFailedError,
    StepInterruptedError,
)
from spot_workflows.ledger import AttemptIsLive, Ledger, LedgerMoved
from spot_workflows.run_checkpoints import interrupted_error, record_last_checkpoint
from spot_workflows.run_events import (  # noqa: F401  (RunnerEvent, RunResult, market_probe: public here)
    OUTCOME_EVENTS,
    RunnerEvent,
    RunResult,
    market_probe,
    with_backend_defaults,
)
from spot_workflows.run_outlook import (  # noqa: F401  (DEFAULT_STOP_LATENCY_S: public here)
    DEFAULT_STOP_LATENCY_S,
    RunOutlook,
)
from spot_workflows.run_owners import owner_gone
from spot_workflows.run_placements import PlacementScores, pool_placements
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore
from spot_workflows.runtime.store.handoff import write_handoff

log = logging.getLogger("spot_workflows.runner")

_FAIL_ERRORS = {FailCause.BUDGET: BudgetExceededError, FailCause.DEADLINE: DeadlineInfeasibleError}


class StepRunner:
    def __init__(
        self,
        *,
        spec: StepSpec,
        backend: Backend,
        policy: SpotPolicy | None = None,
        store: CheckpointStore | None = None,
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        on_event: Callable[[RunnerEvent], None] | None = None,
        cancel_wait_s: float = 120.0,
        spot_probe: Callable[[], bool | None] | None = None,
        submit_grace_s: float = 60.0,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.policy = with_backend_defaults(policy or SpotPolicy(), backend)
        self.store = store or CheckpointStore(spec.checkpoint_uri)
        self.poll_interval = poll_interval
        self.clock = clock
        self.sleep = sleep
        self.on_event = on_event
        self.cancel_wait_s = cancel_wait_s
        self.submit_grace_s = submit_grace_s
        """How long another runner's recorded attempt may stay unsubmitted before this runner
        takes it over (sooner when its owner is a process of this host that no longer runs)."""
        self.ledger = Ledger.open(self.store, spec.key)
        self.spot_probe = spot_probe
        """Optional market view, ``() -> bool | None``: is spot capacity obtainable now? With it,
        deadline policies also see spot come back while on ON_DEMAND and may switch back to it
        (see :func:`market_probe`); without it they stay on ON_DEMAND once there."""
        self._placements: tuple[Placement, ...] | None = None
        self._scores = PlacementScores(backend, spec)
        self._outlook = RunOutlook(backend, self.store)
        """Planner inputs beyond the ledger, among them how long a stop takes (the backend's
        estimate, raised to the longest stop measured here)."""

    # -- public ----------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run the step to a final decision; raise :class:`StepFailedError` if it fails.

        Ctrl-C (KeyboardInterrupt) stops the live attempt through the backend, records it as
        stopped (resumable: the next run resumes from its checkpoint) and raises
        :class:`StepInterruptedError`."""
        try:
            while True:
                decision = self.tick()
                if decision.action is Action.WAIT:
                    self.sleep(self.poll_interval)
                    continue
                if decision.action is Action.SUCCEED:
                    return self.result(decision)
                if isinstance(decision, Fail):
                    error = _FAIL_ERRORS.get(decision.cause, StepFailedError)
                    raise error(decision.reason, step_key=self.spec.key)
        except KeyboardInterrupt:
            raise self.interrupt("stopped by the user (interrupted)") from None

    def interrupt(self, reason: str) -> StepInterruptedError:
        """Stop the live attempts (if any) and record them as stopped, write-ahead; returns the
        error that says where the checkpoint is and how to resume."""
        stopped = None
        for live in self.ledger.live_attempts:
            job_id = live.job_id or self.backend.find(live.job_name)
            if job_id is not None and live.job_id is None:
                live = self.ledger.set_job_id(live, job_id)
            live = self.ledger.update(live, stopping=Outcome.STOPPED, reason=reason)
            if job_id is not None:
                with contextlib.suppress(NotFoundError):
                    self.backend.cancel(job_id, reason=f"{CANCEL_REASON_PREFIX} {reason}")
                if live.state is not AttemptState.PENDING:
                    self._await_exit(live, timeout_s=min(self.cancel_wait_s, 30.0))
            self._finish_stopped(live, Outcome.STOPPED, reason)
            stopped = live.number
        return interrupted_error(self.spec, self.store, stopped)

    def tick(self) -> Decision:
        """Reconcile the live attempt with the backend, decide, and carry out the decision
        (everything except waiting). Returns the decision taken."""
        self.reconcile()
        decision = self.plan(tick=True)
        self.execute(decision)
        return decision

    def plan(self, *, tick: bool = False) -> Decision:
        """The planner's answer for the ledger as this runner last read it: no backend call,
        nothing carried out (e.g. when to look again after a submit). ``tick``: this is a
        decision tick (it counts towards the measured decision period)."""
        now = self.clock()
        attempts = self.ledger.attempts
        spent = spent_usd(attempts, self.policy, now)
        outlook = self._outlook.at(
            now,
            tick=tick,
            poll_interval=self.poll_interval,
            deadline_s=self.policy.deadline_s,
            spot_probe=self.spot_probe,
        )
        if self.placements:
            return decide_pool(
                attempts,
                self.policy,
                self.placements,
                now=now,
                spent_usd=spent,
                outlook=outlook,
                scores=self._scores.at(now),
            )
        return decide(attempts, self.policy, now=now, spent_usd=spent, outlook=outlook)

    @property
    def placements(self) -> tuple[Placement, ...]:
        """The backend's placements when the pool planner drives the step: several SPOT
        placements (racing), placements the user named, or a backend without a market view (the
        clouds: a pending SPOT probe beside an on-demand attempt is how spot is seen coming
        back). Empty: the single-placement planner (the local spot cloud's default market, whose
        availability the backend can tell directly). Prices the user did not set come from the
        price catalog for the step's first instance type, where the backend can look them up."""
        if self._placements is None:
            self._placements = pool_placements(self.backend, self.spec)
        return self._placements

    def result(self, decision: Decision) -> RunResult:
        return RunResult(self.spec.key, list(self.ledger.attempts), decision)

    # -- steps -------------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Bring every live attempt up to date with the backend (another runner of the step
        may have written the ledger meanwhile)."""
        for live in self.ledger.refresh().live_attempts:
            self._reconcile(live)

    def _reconcile(self, live: Attempt) -> None:
        if live.job_id is None:
            # Recorded, not (yet) known to be submitted: by us, by another runner of the step
            # right now, or by one that crashed between the two writes.
            job_id = self.backend.find(live.job_name)
            if job_id is None:
                if live.owner != self.ledger.owner and not owner_gone(
                    live, clock=self.clock, grace_s=self.submit_grace_s
                ):
                    return  # its owner is submitting it: wait, never submit a duplicate
                if live.owner != self.ledger.owner:
                    live = self.ledger.take_over(live)
                    if live.owner != self.ledger.owner or live.job_id is not None:
                        return  # someone else took it over first
                self._submit_recorded(live)
                return
            live = self.ledger.set_job_id(live, job_id)
            self._emit("reattached", live, f"found job {job_id} by name {live.job_name}")
        obs = self.backend.describe([live.job_id]).get(live.job_id)
        if live.stopping is not None and (
            obs is None
            or obs.outcome is Outcome.CANCELLED
            or (
                live.handoff
                and obs.state is AttemptState.DONE
                and obs.outcome is not Outcome.SUCCEEDED
            )
        ):
            self._finish_stopped(live, live.stopping, live.reason or "stopped by spot-workflows")
            return
        if obs is None:
            self.ledger.finish(
                live,
                Outcome.INFRA_ERROR,
                now=self.clock(),
                reason=f"job {live.job_id} is no longer known to the {self.backend.name} backend",
            )
            return
        before = live.state
        live = self.ledger.observe(live, obs)
        if live.state is AttemptState.DONE and before is not AttemptState.DONE:
            live = record_last_checkpoint(self.ledger, self.store, live)
        if before is not AttemptState.RUNNING and live.state is AttemptState.RUNNING:
            self._emit("started", live, f"attempt {live.number} running on {live.capacity.value}")
        if live.state is AttemptState.DONE and live.outcome is not None:
            self._emit(
                OUTCOME_EVENTS[live.outcome],
                live,
                f"attempt {live.number} on {live.capacity.value} {live.outcome.value}"
                + (f": {live.reason}" if live.reason else ""),
            )

    def execute(self, decision: Decision) -> None:
        if isinstance(decision, Submit):
            check = getattr(self.backend, "check_spec", None)  # refuse before the ledger write
            if check is not None:
                check(self.spec)
            latest = self.store.latest()
            seen = len(self.ledger.attempts)  # what the decision was based on
            try:
                attempt = self.ledger.begin(
                    capacity=decision.capacity,
                    backend=self.backend.name,
                    now=self.clock(),
                    resumed_from_step=latest.step if latest else None,
                    progress=latest.progress if latest else None,
                    after=seen,
                    placement=decision.placement,
                    beside_live=decision.placement is not None,
                )
            except LedgerMoved:  # another runner finished or added an attempt: decide again
                return
            except AttemptIsLive as live:  # another runner of the step won: re-attach to it
                self._emit(
                    "reattached",
                    live.attempt,
                    f"attempt {live.attempt.number} was recorded by another runner; re-attaching",
                )
                return
            if decision.escalated:
                self._emit("escalated", attempt, decision.reason)
            self._submit_recorded(attempt)
        elif isinstance(decision, Cancel):
            target = (
                self.ledger.live
                if decision.attempt is None
                else self.ledger.attempt(decision.attempt)
            )
            if target is None or not target.live or target.job_id is None:
                return  # finished or not yet submitted meanwhile (another runner): decide again
            if decision.handoff:
                self._hand_off(target, decision)
                return
            # write-ahead: a re-run after a crash past the cancel records what was meant here
            target = self.ledger.update(target, stopping=decision.outcome, reason=decision.reason)
            cancelled_at = self.clock()
            self.backend.cancel(target.job_id, reason=f"{CANCEL_REASON_PREFIX} {decision.reason}")
            if target.state is AttemptState.RUNNING:
                self._await_exit(target)
                self._outlook.stop_took(self.clock() - cancelled_at)
            self._finish_stopped(target, decision.outcome, decision.reason)
        elif decision.action is Action.FAIL:
            self._emit("failed", None, decision.reason)

    def _hand_off(self, attempt: Attempt, decision: Cancel) -> None:
        """Stop ``attempt`` through a handoff notice: its worker saves and exits (75), and the
        attempt that takes over resumes from that save. Cancelled through the backend only when
        the worker has not exited within ``cancel_wait_s``."""
        attempt = self.ledger.update(
            attempt, stopping=decision.outcome, handoff=True, reason=decision.reason
        )
        write_handoff(self.store, attempt.number, reason=decision.reason, now=self.clock())
        self._emit("handoff", attempt, decision.reason)
        self._await_exit(attempt)
        obs = self.backend.describe([attempt.job_id]).get(attempt.job_id)
        if obs is not None and obs.state is not AttemptState.DONE:
            self.backend.cancel(
                attempt.job_id, reason=f"{CANCEL_REASON_PREFIX} {decision.reason} (no handoff exit)"
            )
            self._await_exit(attempt, timeout_s=min(self.cancel_wait_s, 30.0))
        self._finish_stopped(attempt, decision.outcome, decision.reason)

    def _finish_stopped(self, live: Attempt, outcome: Outcome, reason: str) -> None:
        live = self.ledger.finish(live, outcome, now=self.clock(), reason=reason)
        if live.started_at is not None:
            live = record_last_checkpoint(self.ledger, self.store, live)
        self._emit(OUTCOME_EVENTS[outcome], live, reason)

    def _await_exit(self, attempt: Attempt, timeout_s: float | None = None) -> None:
        """Wait (bounded) for a stopped attempt's worker to exit, so its emergency checkpoint is
        durable before the next attempt restores, and two workers never write one prefix."""
        deadline = self.clock() + (self.cancel_wait_s if timeout_s is None else timeout_s)
        while self.clock() < deadline:
            obs = self.backend.describe([attempt.job_id]).get(attempt.job_id)
            if obs is None or obs.state is AttemptState.DONE:
                return
            self.sleep(self.poll_interval)
        log.warning(
            "%s: attempt %s did not exit within %.0fs of being stopped; continuing",
            self.spec.key,
            attempt.number,
            self.cancel_wait_s if timeout_s is None else timeout_s,
        )

    def _submit_recorded(self, attempt: Attempt) -> None:
        where = {"placement": attempt.placement} if attempt.placement is not None else {}
        job_id = self.backend.submit(
            self.spec,
            job_name=attempt.job_name,
            attempt=attempt.number,
            capacity=attempt.capacity,
            **where,
        )
        attempt = self.ledger.set_job_id(attempt, job_id)
        if attempt.job_id != job_id:  # another runner took the attempt over and submitted too
            self.backend.cancel(
                job_id, reason=f"{CANCEL_REASON_PREFIX} duplicate of {attempt.job_id}, not run"
            )
            return
        self._emit(
            "submitted",
            attempt,
            f"attempt {attempt.number} on {attempt.capacity.value}"
            + (f" in {attempt.placement}" if self._several(attempt.capacity) else "")
            + f" as {job_id}"
            + (
                f", resuming from step {attempt.resumed_from_step}"
                if attempt.resumed_from_step is not None
                else ""
            ),
        )

    def _several(self, capacity: Capacity) -> bool:
        """Whether the step has several placements of ``capacity`` (then messages name them)."""
        return sum(p.capacity is capacity for p in self.placements) > 1

    def _emit(self, kind: str, attempt: Attempt | None, message: str) -> None:
        log.info("%s: %s", self.spec.key, message)
        if self.on_event is not None:
            self.on_event(RunnerEvent(kind, self.spec.key, attempt, message))
