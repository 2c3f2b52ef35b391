"""``SpotTerminationSensor``: wait for a termination notice of a step (or a job queue) mid-DAG.

Fires on interruption warnings, rebalance recommendations or preempted jobs, from the backend's
event source (local events file; AWS SQS consumer; GCP watcher) and from the watched step's
ledger. Its XCom value says what happened, so a branch can pick a resume path::

    {"terminated": True, "kind": "INTERRUPTION", "step_key": ..., "job_id": ..., "notice": {...}}
    {"terminated": False, "step_key": ..., "reason": "step ... finished: attempt 1 SUCCEEDED"}

Deferrable by default (the wait runs in the triggerer; its trigger never fires before
:func:`~spot_workflows.airflow.triggers.settle_deadline`); ``deferrable=False`` pokes instead, in
``poke`` or ``reschedule`` mode. In reschedule mode under a scheduler keep ``poke_interval`` at
10 s or more: Airflow can fail a task that is re-queued within seconds of its previous report.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from spot_workflows.airflow.connections import DEFAULT_CONN_ID
from spot_workflows.airflow.hooks import SpotBackendHook
from spot_workflows.airflow.operators import step_key_for
from spot_workflows.airflow.triggers import SpotTerminationTrigger, settle_deadline
from spot_workflows.errors import ConfigError
from spot_workflows.termination import DEFAULT_KINDS, TerminationWatch, normalize_kinds

if TYPE_CHECKING:
    from airflow.sdk import Context


class SpotTerminationSensor(BaseSensorOperator):
    """Wait until a step (or a job queue) gets a termination notice, or the step finishes without one.

    :param watch_task_id: a :class:`SpotStepOperator` task of this DAG run to watch, using its
        default step key and checkpoint URI (pass ``step_key`` / ``checkpoint_uri`` when that task
        sets its own).
    :param step_key: the step to watch (notices for other steps are ignored).
    :param checkpoint_uri: the watched step's checkpoint URI: its ledger reports preempted
        attempts and tells the sensor when the step finished.
    :param job_queue: only notices about jobs of this queue (AWS job queue name or ARN).
    :param kinds: notice kinds to fire on: ``INTERRUPTION``, ``REBALANCE``, ``PREEMPTED``, ...
    :param since: epoch seconds; older notices are ignored (default: when the DAG run started).
    :param deferrable: wait in the triggerer (default) instead of poking.
    """

    template_fields: Sequence[str] = (
        "spot_conn_id",
        "watch_task_id",
        "step_key",
        "checkpoint_uri",
        "job_queue",
    )

    def __init__(
        self,
        *,
        spot_conn_id: str = DEFAULT_CONN_ID,
        watch_task_id: str | None = None,
        step_key: str | None = None,
        checkpoint_uri: str | None = None,
        job_queue: str | None = None,
        kinds: Sequence[str] = DEFAULT_KINDS,
        since: float | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spot_conn_id = spot_conn_id
        self.watch_task_id = watch_task_id
        self.step_key = step_key
        self.checkpoint_uri = checkpoint_uri
        self.job_queue = job_queue
        self.kinds = normalize_kinds(kinds)
        self.since = since
        self.deferrable = deferrable

    def _target(self, context: Context) -> tuple[str | None, str | None, float]:
        hook = SpotBackendHook(spot_conn_id=self.spot_conn_id)
        step_key, uri = self.step_key, self.checkpoint_uri
        try:
            if self.watch_task_id:
                step_key = step_key or step_key_for(context, self.watch_task_id)
                uri = uri or f"{hook.checkpoint_root()}/{step_key}"
        except ConfigError as exc:
            raise AirflowFailException(f"{self.task_id}: {exc}") from exc
        since = self.since
        if since is None:
            started = context["dag_run"].start_date
            since = started.timestamp() if started is not None else 0.0
        return step_key, uri, float(since)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        step_key, uri, since = self._target(context)
        self.defer(
            trigger=SpotTerminationTrigger(
                spot_conn_id=self.spot_conn_id,
                step_key=step_key,
                job_queue=self.job_queue,
                kinds=self.kinds,
                since=since,
                checkpoint_uri=uri,
                poll_interval=self.poke_interval,
                # no resume within seconds of this deferral: Airflow could fail the task
                not_before=settle_deadline(),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        if not event or event.get("terminated") is None:
            raise AirflowException(f"termination watch ended without an answer: {event!r}")
        self._log_result(event)
        return event

    def poke(self, context: Context) -> PokeReturnValue | bool:
        step_key, uri, since = self._target(context)
        hook = SpotBackendHook(spot_conn_id=self.spot_conn_id)
        try:
            source = hook.get_notice_source(since=since)
            watch = TerminationWatch(
                source=source,
                step_key=step_key,
                job_queue=self.job_queue,
                kinds=self.kinds,
                since=since,
                checkpoint_uri=uri,
            )
        except ConfigError as exc:
            raise AirflowFailException(f"{self.task_id}: {exc}") from exc
        payloads = watch.check()
        if not payloads:
            return False
        self._log_result(payloads[0])
        return PokeReturnValue(is_done=True, xcom_value=payloads[0])

    def _log_result(self, payload: dict[str, Any]) -> None:
        if payload.get("terminated"):
            self.log.info(
                "termination notice: %s for step %s (job %s)",
                payload.get("kind"),
                payload.get("step_key"),
                payload.get("job_id"),
            )
        else:
            self.log.info("no termination: %s", payload.get("reason"))
