"""Triggers: tiny, serializable (ids, a connection id, a URI), polling the backend off the loop.

* :class:`SpotJobTrigger` waits on one attempt's job for the spot step operator: it fires when the
  job is done or gone, or at ``wake_at`` (when the planner must look again, e.g. a spot attempt
  that may have waited too long for capacity). The operator, not the trigger, decides what next.
  When the deferred task is cleared or marked, its ``on_kill`` records the attempt as stopped in
  the step's ledger, then cancels the job -- unless a newer try of the task waits on it.
* :class:`SpotTerminationTrigger` fires on termination notices (interruption warnings, rebalance
  recommendations, preempted jobs) for a step or a job queue. It is a ``BaseEventTrigger``, so it
  also works in an ``AssetWatcher`` for event-driven scheduling (there it yields every notice).

Blocking calls (describe, reading the events file or the ledger) run in ``asyncio.to_thread``.

A trigger created by a deferring task holds its first event until ``not_before``
(:func:`settle_deadline`): see there why a trigger must not fire within seconds of the deferral.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from airflow.sdk.configuration import conf
from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

from spot_workflows.airflow.connections import build_backend, build_notice_source
from spot_workflows.airflow.hooks import SpotBackendHook
from spot_workflows.airflow.steps import STOPPED_REASON, stop_as_watcher
from spot_workflows.airflow.watch import DEFAULT_KINDS, TerminationWatch, normalize_kinds
from spot_workflows.core.classify import CANCEL_REASON_PREFIX
from spot_workflows.core.outcomes import AttemptState
from spot_workflows.errors import LedgerError, NotFoundError
from spot_workflows.ledger import Ledger
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

MAX_DESCRIBE_FAILURES = 5
SETTLE_MARGIN_S = 5.0
"""Seconds, on top of the workers' ``min_heartbeat_interval``, that a deferring task's trigger
waits before it may fire (:func:`settle_deadline`)."""
MAX_HOLD_S = 60.0


def settle_deadline(now: float | None = None) -> float | None:
    """The earliest time (epoch seconds) a trigger created now, by a task that is deferring, may
    fire: ``now + [workers] min_heartbeat_interval + SETTLE_MARGIN_S`` (10 s by default). None
    (fire at once) when the task runs in-process (``dag.test()``, ``airflow dags test``): there
    the trigger runs inline and no executor reports on the task.

    Why: a deferred task resumes under the same try number. The worker that ran the deferring
    part reports that try "success" to the executor only when its supervisor notices the task
    process is gone, which takes up to ``min_heartbeat_interval`` (the supervisor's wait between
    checks), and the scheduler reads the report on a later loop: about 5-6 s after the deferral
    on an idle machine, more on a loaded one. If the trigger has fired by then and the scheduler
    has already queued the resumed task, it takes that stale report for the resumed run ("finished
    with state success, but the task instance's state attribute is queued") and fails the task.
    While the task is still deferred the report is harmless. So the trigger holds its first event
    until the report has surely been read. Only a wait that ends sooner than this is delayed; a
    job that runs longer is not slowed at all.
    """
    if _runs_in_process():
        return None
    interval = conf.getfloat("workers", "min_heartbeat_interval", fallback=5.0)
    return (time.time() if now is None else now) + max(0.0, interval) + SETTLE_MARGIN_S


def _runs_in_process() -> bool:
    """Whether this task runs under Airflow's in-process test supervisor (``dag.test()``). If
    Airflow's internals moved, False: holding a trigger is safe, only slower."""
    try:
        from airflow.sdk.execution_time import task_runner
        from airflow.sdk.execution_time.supervisor import InProcessSupervisorComms
    except ImportError:
        return False
    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    return isinstance(comms, InProcessSupervisorComms)


async def hold_until(not_before: float | None) -> None:
    """Sleep until ``not_before`` (epoch seconds); at once if it is None or past. Never longer
    than ``MAX_HOLD_S``: a triggerer whose clock runs behind the worker's must not stall."""
    if not_before is not None:
        delay = min(not_before - time.time(), MAX_HOLD_S)
        if delay > 0:
            await asyncio.sleep(delay)


class SpotJobTrigger(BaseTrigger):
    """Fires when job ``job_id`` of connection ``spot_conn_id`` is done or gone, or at ``wake_at``;
    never before ``not_before`` (:func:`settle_deadline`, set by the deferring operator).

    ``checkpoint_uri`` and ``step_key`` (the step's ledger) and ``watcher`` (the deferring try,
    :func:`~spot_workflows.airflow.steps.watcher_id`) are for :meth:`on_kill`; a trigger
    serialized without them (older versions) cancels the job on a stop, as those did.

    With ``other_job_ids`` (attempts racing in other placements, or a spot probe beside an
    on-demand attempt) it also fires ``"changed"`` when one of them leaves PENDING, or when
    ``job_id`` leaves ``job_state`` (its state at the deferral): the operator must then cancel the
    losers or decide on the probe at once.

    Event payloads: ``{"status": "done" | "gone" | "wake" | "changed" | "error", "job_id": ...}``.
    """

    def __init__(
        self,
        *,
        spot_conn_id: str,
        job_id: str,
        poll_interval: float = 5.0,
        wake_at: float | None = None,
        not_before: float | None = None,
        checkpoint_uri: str | None = None,
        step_key: str | None = None,
        watcher: str | None = None,
        other_job_ids: Sequence[str] = (),
        job_state: str | None = None,
    ) -> None:
        super().__init__()
        self.spot_conn_id = spot_conn_id
        self.job_id = job_id
        self.other_job_ids = list(other_job_ids)
        self.job_state = job_state
        self.poll_interval = float(poll_interval)
        self.wake_at = None if wake_at is None else float(wake_at)
        self.not_before = None if not_before is None else float(not_before)
        self.checkpoint_uri = checkpoint_uri
        self.step_key = step_key
        self.watcher = watcher

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "spot_conn_id": self.spot_conn_id,
                "job_id": self.job_id,
                "poll_interval": self.poll_interval,
                "wake_at": self.wake_at,
                "not_before": self.not_before,
                "checkpoint_uri": self.checkpoint_uri,
                "step_key": self.step_key,
                "watcher": self.watcher,
                "other_job_ids": self.other_job_ids,
                "job_state": self.job_state,
            },
        )

    def _event(self, status: str, **payload: Any) -> TriggerEvent:
        return TriggerEvent({"status": status, "job_id": self.job_id, **payload})

    async def _backend(self):
        info = await SpotBackendHook.aget_info(self.spot_conn_id)
        return await asyncio.to_thread(build_backend, info)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        event = await self._wait()
        await hold_until(self.not_before)
        yield event

    async def _wait(self) -> TriggerEvent:
        """The one event this trigger fires (not yet held until ``not_before``)."""
        try:
            backend = await self._backend()
        except Exception as exc:  # the task must learn why, not time out
            return self._event("error", message=f"cannot build backend: {exc}")
        from spot_workflows.errors import ConfigError, CredentialsError
        from spot_workflows.retrying import Backoff, async_retrying

        # a describe that fails (API down, throttled) is retried with backoff from the poll
        # interval, MAX_DESCRIBE_FAILURES tries in a row at most; bad settings or credentials
        # are reported at once
        describe_backoff = Backoff(
            attempts=MAX_DESCRIBE_FAILURES,
            base_s=self.poll_interval,
            cap_s=max(self.poll_interval, 60.0),
        )
        while True:
            tries = 0
            try:
                async for attempt in async_retrying(
                    describe_backoff,
                    lambda exc: not isinstance(exc, ConfigError | CredentialsError),
                    what=f"describe {self.job_id}",
                    kind="backend",
                    logger=self.log,
                ):
                    with attempt:
                        tries = attempt.retry_state.attempt_number
                        seen = await asyncio.to_thread(
                            backend.describe, [self.job_id, *self.other_job_ids]
                        )
            except Exception as exc:  # the task must learn why, not time out
                times = "once" if tries == 1 else f"{tries} times"
                return self._event("error", message=f"describe failed {times}: {exc}")
            for other in self.other_job_ids:  # racers / a spot probe: any start is news
                got = seen.get(other)
                if got is None or got.state is not AttemptState.PENDING:
                    state = got.state.value if got is not None else "GONE"
                    return self._event("changed", other_job_id=other, state=state)
            obs = seen.get(self.job_id)
            if obs is None:
                return self._event("gone")
            if obs.state is AttemptState.DONE:
                outcome = obs.outcome.value if obs.outcome else None
                return self._event("done", outcome=outcome, reason=obs.reason)
            if self.other_job_ids and self.job_state and obs.state.value != self.job_state:
                # racing: this job started while the others wait; they must be cancelled now
                return self._event("changed", state=obs.state.value)
            now = time.time()
            if self.wake_at is not None and now >= self.wake_at:
                return self._event("wake", state=obs.state.value)
            delay = self.poll_interval
            if self.wake_at is not None:
                delay = max(0.0, min(delay, self.wake_at - now))
            await asyncio.sleep(delay)

    async def on_kill(self) -> None:
        """A user cleared the deferred task or marked it failed/success: record the attempt (and
        any racing or probing attempts beside it) as stopped (write-ahead: the next try resumes
        from its checkpoint), then cancel their jobs -- unless a newer try of the task now waits
        on the attempt: then the jobs are left alone."""
        backend = None
        for job_id in [self.job_id, *self.other_job_ids]:
            why_not = await asyncio.to_thread(self._record_stop, job_id)
            if why_not is not None:
                self.log.info("task stopped: leaving job %s alone: %s", job_id, why_not)
                continue
            backend = backend or await self._backend()
            self.log.info("task stopped: cancelling job %s", job_id)
            try:
                await asyncio.to_thread(
                    backend.cancel, job_id, reason=f"{CANCEL_REASON_PREFIX} {STOPPED_REASON}"
                )
            except NotFoundError:
                self.log.info("job %s is already gone", job_id)

    def _record_stop(self, job_id: str | None = None) -> str | None:
        """:func:`stop_as_watcher` on the step's ledger for ``job_id`` (default: the watched
        job); None (cancel) without a ledger."""
        job_id = job_id or self.job_id
        if not (self.checkpoint_uri and self.step_key):
            return None  # serialized by an older version: no ledger to write
        try:
            ledger = Ledger.open(CheckpointStore(self.checkpoint_uri), self.step_key)
            return stop_as_watcher(ledger, job_id, self.watcher)
        except LedgerError as exc:  # cannot record it: cancel anyway, as a user asked
            self.log.warning("could not record the stop of %s in the ledger: %s", job_id, exc)
            return None


class SpotTerminationTrigger(BaseEventTrigger):
    """Fires on termination notices for ``step_key`` (or ``job_queue``, or any) since ``since``.

    With ``checkpoint_uri`` (the watched step's), it also reads the step's ledger: a preempted
    attempt counts as a notice, and a step that finished without one ends the wait with
    ``{"terminated": False}``. In an ``AssetWatcher`` leave ``checkpoint_uri`` out: the trigger
    then runs forever and yields one event per notice. A deferring sensor passes ``not_before``
    (:func:`settle_deadline`): no event is yielded before it.
    """

    def __init__(
        self,
        *,
        spot_conn_id: str,
        step_key: str | None = None,
        job_queue: str | None = None,
        kinds: Sequence[str] = DEFAULT_KINDS,
        since: float | None = None,
        checkpoint_uri: str | None = None,
        poll_interval: float = 5.0,
        not_before: float | None = None,
    ) -> None:
        super().__init__()
        self.spot_conn_id = spot_conn_id
        self.step_key = step_key
        self.job_queue = job_queue
        self.kinds = normalize_kinds(kinds)
        self.since = None if since is None else float(since)
        self.checkpoint_uri = checkpoint_uri
        self.poll_interval = float(poll_interval)
        self.not_before = None if not_before is None else float(not_before)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "spot_conn_id": self.spot_conn_id,
                "step_key": self.step_key,
                "job_queue": self.job_queue,
                "kinds": list(self.kinds),
                "since": self.since,
                "checkpoint_uri": self.checkpoint_uri,
                "poll_interval": self.poll_interval,
                "not_before": self.not_before,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        since = self.since if self.since is not None else time.time()
        info = await SpotBackendHook.aget_info(self.spot_conn_id)
        source = await asyncio.to_thread(build_notice_source, info, since=since)
        watch = TerminationWatch(
            source=source,
            step_key=self.step_key,
            job_queue=self.job_queue,
            kinds=self.kinds,
            since=since,
            checkpoint_uri=self.checkpoint_uri,
        )
        while True:
            payloads = await asyncio.to_thread(watch.check)
            if payloads:
                await hold_until(self.not_before)
            for payload in payloads:
                yield TriggerEvent(payload)
                if not payload["terminated"]:
                    return  # the watched step finished: nothing more will come
            await asyncio.sleep(self.poll_interval)
