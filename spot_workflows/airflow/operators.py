"""``SpotStepOperator``: run one step on spot capacity from an Airflow task, deferrably.

Each time the task runs (first start, resume after a trigger, Airflow retry) it does one round of
the same loop the CLI and Prefect use (:meth:`StepRunner.tick`): reconcile the live attempt with
the backend (re-attach through the ledger), ask the planner, carry the decision out. Then:

* ``SUBMIT`` / ``WAIT`` -> defer to :class:`SpotJobTrigger` (no worker slot while the job runs);
  with ``deferrable=False``, wait ``poll_interval`` in the task and go round again;
* ``CANCEL`` (spot got no capacity in time; a running attempt stopped for the budget cap or the
  deadline) -> record it and decide again at once;
* ``SUCCEED`` -> push the summary and return it;
* ``FAIL`` -> push the summary and fail with the planner's reason, without Airflow retries
  (they could not change the answer: the ledger keeps the history).

Because the ledger is written ahead of every submission and lives with the checkpoints, an
Airflow retry after a crashed worker re-attaches to the live job instead of submitting another.

One live job per step, whatever Airflow does to the task:

* the try that waits on the live attempt (deferred or not) records itself in the ledger as the
  attempt's ``watcher`` (:func:`~spot_workflows.airflow.steps.watcher_id`; a clear or a retry
  raises the try number, a resume after a deferral keeps it);
* when a task is cleared, marked or killed, its ``on_kill`` (or its trigger's) records the
  attempt as stopped, write-ahead, then cancels the job: the next try resumes from the
  checkpoint instead of failing on a cancel "from outside";
* a try that is no longer the watcher (a newer try re-attached) leaves the job alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from spot_workflows.airflow.connections import DEFAULT_CONN_ID
from spot_workflows.airflow.hooks import SpotBackendHook
from spot_workflows.airflow.links import SpotJobConsoleLink
from spot_workflows.airflow.steps import (
    build_spec,
    default_step_key,
    is_templated,
    parse_policy,
    step_summary,
    stop_as_watcher,
    watch_attempt,
    watcher_id,
)
from spot_workflows.airflow.triggers import SpotJobTrigger, settle_deadline
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.classify import CANCEL_REASON_PREFIX
from spot_workflows.core.outcomes import Action, Attempt, AttemptState, Decision, Wait
from spot_workflows.errors import ConfigError, LedgerError, NotFoundError
from spot_workflows.ledger import Ledger
from spot_workflows.runner import RunnerEvent, StepRunner, market_probe
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

if TYPE_CHECKING:
    from airflow.sdk import Context

SUMMARY_KEY = "spot_summary"
MAX_DECISIONS_PER_ROUND = 32
"""Decisions carried out in one round before the task waits (a racing top-up is one submit per
placement; a cancel is followed by the next decision at once)."""


def step_key_for(context: Context, task_id: str) -> str:
    """The default step key of ``task_id`` in the context's DAG run."""
    ti = context["ti"]
    return default_step_key(
        dag_id=ti.dag_id,
        task_id=task_id,
        run_id=context["run_id"],
        map_index=getattr(ti, "map_index", -1) if task_id == ti.task_id else -1,
    )


def step_attempts(
    context: Context,
    task_id: str,
    *,
    spot_conn_id: str = DEFAULT_CONN_ID,
    step_key: str | None = None,
    checkpoint_uri: str | None = None,
) -> tuple[str, str, list[Attempt]]:
    """The step key, checkpoint URI and ledger attempts of :class:`SpotStepOperator` task
    ``task_id`` of the context's DAG run (its defaults unless ``step_key`` / ``checkpoint_uri``
    are given): what a downstream task routes on, whatever the task's own state says."""
    key = step_key or step_key_for(context, task_id)
    uri = checkpoint_uri or f"{SpotBackendHook(spot_conn_id=spot_conn_id).checkpoint_root()}/{key}"
    return key, uri, list(Ledger.open(CheckpointStore(uri), key).attempts)


def watcher_for(context: Context) -> str:
    """This try of the context's task, as the ledger's ``watcher`` of the attempt it waits on."""
    ti = context["ti"]
    return watcher_id(
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        run_id=context["run_id"],
        map_index=getattr(ti, "map_index", -1),
        try_number=int(getattr(ti, "try_number", 0) or 0),
    )


class SpotStepOperator(BaseOperator):
    """Run a command as a spot-workflows step: spot first, resume from checkpoints after reclaims,
    escalate to on-demand per ``policy``; the backend comes from ``spot_conn_id``.

    :param command: program and arguments (list, or a string split like a shell would). On the
        local backend a leading ``python`` is the interpreter running Airflow.
    :param spot_conn_id: ``spot_local`` / ``aws`` / ``google_cloud_platform`` connection.
    :param checkpoint_uri: the step's checkpoint prefix (``file://``, ``s3://``, ``gs://``);
        default ``<connection checkpoint_root>/<step key>``. The ledger lives there too.
    :param policy: a :class:`SpotPolicy`, a dict or a JSON string (e.g. ``"{{ params.policy }}"``).
    :param env: extra environment for the step (``SPOT_*`` is reserved).
    :param step_key: stable id of the step; default ``<dag_id>.<task_id>.<run_id>``.
    :param step_resources: ``image``, ``vcpus``, ``memory_mib``, ``gpus``, ``instance_types``,
        ``timeout_s``.
    :param poll_interval: seconds between status polls (the trigger's, or the task's own when
        not deferrable).
    :param deferrable: wait for the job in the triggerer (default: no worker slot is held while
        it runs). ``False`` waits in the task itself, polling every ``poll_interval``, for
        deployments without a triggerer; clearing or killing the task then stops the live job
        (recorded as stopped: the next try resumes from its checkpoint), as stopping a deferred
        task does.
    """

    template_fields: Sequence[str] = (
        "command",
        "env",
        "checkpoint_uri",
        "policy",
        "step_key",
        "spot_conn_id",
        "step_resources",
    )
    template_fields_renderers = {"env": "json", "policy": "json", "step_resources": "json"}
    operator_extra_links = (SpotJobConsoleLink(),)
    ui_color = "#fde8c8"
    replan_interval: float = 60.0
    """Seconds between planner looks at a running attempt when the policy has a budget cap or a
    deadline-aware strategy (the task wakes from deferral that often); else it wakes only when
    the attempt ends or may have waited too long for capacity."""

    def __init__(
        self,
        *,
        command: Sequence[str] | str,
        spot_conn_id: str = DEFAULT_CONN_ID,
        checkpoint_uri: str | None = None,
        policy: SpotPolicy | Mapping[str, Any] | str | None = None,
        env: Mapping[str, str] | str | None = None,
        step_key: str | None = None,
        step_resources: Mapping[str, Any] | str | None = None,
        poll_interval: float = 5.0,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.command = command
        self.spot_conn_id = spot_conn_id
        self.checkpoint_uri = checkpoint_uri
        self.policy = policy
        self.env = env
        self.step_key = step_key
        self.step_resources = step_resources
        if poll_interval <= 0:
            raise ConfigError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        self.poll_interval = float(poll_interval)
        self.deferrable = bool(deferrable)
        self.console_url: str | None = None
        # (backend, job id, checkpoint URI, step key, watcher) while waiting in the task
        self._waiting_on: tuple[Any, list[str], str, str, str] | None = None
        # Fail at DAG parse time when the values are already known.
        if not is_templated(policy):
            parse_policy(policy)
        static = {"command": command, "env": env, "resources": step_resources}
        if not any(is_templated(v) for v in static.values()):
            build_spec(key="parse-check", checkpoint_uri="file:///parse-check", **static)

    # -- Airflow entry points ------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        return self._advance(context)

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if event and event.get("status") == "error":
            # Retryable: the next try re-attaches to the same job through the ledger.
            raise AirflowException(
                f"lost track of job {event.get('job_id')}: {event.get('message')}"
            )
        return self._advance(context)

    # -- one round of the loop ----------------------------------------------------------------
    def _resolve(self, context: Context, hook: SpotBackendHook) -> tuple[StepSpec, SpotPolicy]:
        try:
            key = self.step_key or step_key_for(context, self.task_id)
            uri = self.checkpoint_uri or f"{hook.checkpoint_root()}/{key}"
            spec = build_spec(
                key=key,
                command=self.command,
                checkpoint_uri=uri,
                env=self.env,
                resources=self.step_resources,
            )
            return spec, parse_policy(self.policy)
        except ConfigError as exc:
            raise AirflowFailException(f"{self.task_id}: {exc}") from exc

    def _advance(self, context: Context) -> dict[str, Any]:
        hook = SpotBackendHook(spot_conn_id=self.spot_conn_id)
        spec, policy = self._resolve(context, hook)
        try:
            backend = hook.get_backend()
            runner = StepRunner(
                spec=spec,
                backend=backend,
                policy=policy,
                # the planner's tick: how often it decides (every poll when waiting in the task)
                poll_interval=self.replan_interval if self.deferrable else self.poll_interval,
                on_event=self._log_event,
                spot_probe=market_probe(backend, spec.key),  # local market: may go back to spot
            )
        except (ConfigError, LedgerError) as exc:  # retrying cannot fix these
            raise AirflowFailException(f"{self.task_id}: {exc}") from exc
        ti = context["ti"]
        watcher = watcher_for(context)
        decision = self._decide(runner)
        self._push_console_link(hook, runner, ti)
        while decision.action in (Action.SUBMIT, Action.WAIT):
            self._watch(runner, watcher)
            if self.deferrable:
                self._defer_on_live(runner, decision, watcher)  # raises TaskDeferred
            decision = self._wait_in_task(runner, backend, watcher)
            self._push_console_link(hook, runner, ti)
        attempts = runner.ledger.attempts
        summary = step_summary(
            spec=spec,
            attempts=attempts,
            decision=decision,
            backend=backend.name,
            conn_id=self.spot_conn_id,
            console_url=self.console_url,
        )
        ti.xcom_push(key=SUMMARY_KEY, value=summary)
        if decision.action is Action.SUCCEED:
            self.log.info("step %s succeeded: %s", spec.key, summary["history"])
            return summary
        raise AirflowFailException(_failure(spec, decision))

    def _push_console_link(self, hook: SpotBackendHook, runner: StepRunner, ti: Any) -> None:
        attempts = runner.ledger.attempts
        url = hook.console_url(attempts[-1].job_id if attempts else None)
        if url and url != self.console_url:
            ti.xcom_push(key=SpotJobConsoleLink().xcom_key, value=url)
        self.console_url = url

    def _watch(self, runner: StepRunner, watcher: str) -> None:
        """Record this try as the one waiting on the live attempts (no write when it is)."""
        for live in runner.ledger.live_attempts:
            try:
                now = watch_attempt(runner.ledger, live, watcher)
            except LedgerError as exc:  # bookkeeping only: waiting on the job is still right
                self.log.warning("could not record %s as the watcher of attempt %d: %s",
                                 watcher, live.number, exc)  # fmt: skip
                continue
            if now.watcher != watcher:
                self.log.warning(
                    "attempt %d is watched by a newer try (%s); this try (%s) will not stop its "
                    "job",
                    now.number,
                    now.watcher,
                    watcher,
                )

    def _wait_in_task(self, runner: StepRunner, backend: Any, watcher: str) -> Decision:
        """``deferrable=False``: one poll interval in the task, then the next decision."""
        jobs = [a.job_id for a in runner.ledger.live_attempts if a.job_id]
        spec = runner.spec
        self._waiting_on = (backend, jobs, spec.checkpoint_uri, spec.key, watcher) if jobs else None
        try:
            time.sleep(self.poll_interval)
            return self._decide(runner)
        finally:
            self._waiting_on = None

    def on_kill(self) -> None:
        """The task was stopped (cleared, marked, killed) while waiting in it
        (``deferrable=False``): record the attempt as stopped, then cancel its job -- unless a
        newer try of the task now waits on it."""
        waiting = self._waiting_on
        if waiting is None:
            return
        backend, job_ids, uri, key, watcher = waiting
        for job_id in job_ids:
            try:
                ledger = Ledger.open(CheckpointStore(uri), key)
                why_not = stop_as_watcher(ledger, job_id, watcher)
            except LedgerError as exc:  # cannot record it: cancel anyway (the task is going away)
                self.log.warning("could not record the stop of job %s in the ledger: %s",
                                 job_id, exc)  # fmt: skip
                why_not = None
            if why_not is not None:
                self.log.info("task stopped: leaving job %s alone: %s", job_id, why_not)
                continue
            self.log.info("task stopped: attempt recorded as stopped; cancelling job %s", job_id)
            try:
                backend.cancel(
                    job_id, reason=f"{CANCEL_REASON_PREFIX} the Airflow task was stopped"
                )
            except NotFoundError:
                self.log.info("job %s is already gone", job_id)

    def _decide(self, runner: StepRunner) -> Decision:
        """Reconcile, decide, carry out; again at once after a CANCEL (e.g. no spot capacity)."""
        try:
            decision = runner.tick()
            # after a cancel, decide again at once; after a submit while attempts race in several
            # placements, carry out the next submits of this round too (no new look at the jobs)
            for _ in range(MAX_DECISIONS_PER_ROUND):
                if decision.action is Action.CANCEL:
                    decision = runner.tick()
                    continue
                if decision.action is Action.SUBMIT and runner.placements:
                    following = runner.plan()
                    if following.action is Action.SUBMIT:
                        runner.execute(following)
                        decision = following
                        continue
                break
        except (ConfigError, LedgerError) as exc:  # a bad setting: retrying cannot fix it
            raise AirflowFailException(f"{self.task_id}: {exc}") from exc
        return decision

    def _defer_on_live(self, runner: StepRunner, decision: Decision, watcher: str) -> None:
        live = runner.ledger.live
        if live is None or live.job_id is None:  # the runner always leaves one after SUBMIT/WAIT
            raise AirflowException(f"step {runner.spec.key}: no live attempt to wait on")
        # when the planner wants to look again although the job did not change (a capacity
        # timeout, a deadline or budget tick); after a submit, ask it about the new attempt
        wait = decision if isinstance(decision, Wait) else runner.plan()
        wake_at = wait.recheck_at if isinstance(wait, Wait) else None
        self.log.info(
            "deferring on attempt %d (%s, job %s)", live.number, live.capacity.value, live.job_id
        )
        others = [  # racing attempts in other placements, or a spot probe: any start is news
            a.job_id
            for a in runner.ledger.live_attempts
            if a.number != live.number and a.job_id and a.state is AttemptState.PENDING
        ]
        self.defer(
            trigger=SpotJobTrigger(
                spot_conn_id=self.spot_conn_id,
                job_id=live.job_id,
                other_job_ids=others,
                job_state=live.state.value,
                poll_interval=self.poll_interval,
                wake_at=wake_at,
                # no resume within seconds of this deferral: Airflow could fail the task
                not_before=settle_deadline(),
                # so that a stop of this try records the attempt as stopped, unless a newer
                # try waits on it by then
                checkpoint_uri=runner.spec.checkpoint_uri,
                step_key=runner.spec.key,
                watcher=watcher,
            ),
            method_name="execute_complete",
        )

    def _log_event(self, event: RunnerEvent) -> None:
        self.log.info("%s: %s", event.kind, event.message)


def _failure(spec: StepSpec, decision: Decision) -> str:
    return (
        f"step {spec.key} failed: {decision.reason}. The ledger at {spec.checkpoint_uri} keeps "
        "this history, so retrying the task gives the same answer; to run the step again, fix "
        "the cause and use a new checkpoint_uri (after a cancel from outside: "
        f"'spot-workflows ledger reopen {spec.checkpoint_uri} --key {spec.key}')"
    )
