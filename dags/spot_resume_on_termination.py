"""A long step on spot, watched by the termination sensor; a branch resumes it on on-demand.

``train`` gets one spot attempt (``preemption_budget=0, max_attempts=1``): a reclaim fails it
instead of escalating inside the task, so the DAG decides. ``watch_train`` fires on the step's
interruption warning or preemption (or ends with ``terminated: False`` when the step finished
cleanly). ``choose`` routes on the step's ledger, not on
what the sensor returned: a successful last attempt goes straight to ``publish``; a reclaimed or
stopped one (or one still live) goes to ``resume_on_demand``, which continues the SAME step (same
step key, so the same ledger and checkpoints) on on-demand from its last checkpoint; anything else
(the command failed, the job was cancelled from outside, no attempt at all) fails ``choose``, and
with it the run. ``publish`` runs only when nothing upstream failed and checks that the step did
succeed, so the run never ends ``success`` with an unfinished step. With ``spot_local_demo`` the
reclaim comes 2 s after the first checkpoint::

    airflow dags test spot_resume_on_termination
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from spot_workflows.airflow.operators import SpotStepOperator, step_attempts
from spot_workflows.airflow.sensors import SpotTerminationSensor

TRAIN = ["python", "-m", "spot_workflows.examples.toy_train", "--every=25", "--step-seconds=0.01"]
RESUMABLE = {"PREEMPTED", "STOPPED", "NO_CAPACITY", "INFRA_ERROR"}
"""Outcomes of train's last attempt that the on-demand resume may continue from."""

with DAG(
    dag_id="spot_resume_on_termination",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["spot-workflows", "example"],
    params={
        "spot_conn_id": Param("spot_local_demo", type="string"),
        "steps": Param(400, type="integer", minimum=1),
    },
) as dag:
    train = SpotStepOperator(
        task_id="train",
        spot_conn_id="{{ params.spot_conn_id }}",
        command=[*TRAIN, "--steps={{ params.steps }}"],
        policy={"preemption_budget": 0, "max_attempts": 1},
        poll_interval=1.0,
    )
    # Reschedule mode, so that `airflow dags test` (one task at a time) never waits in the sensor
    # while the step it watches has not run. Under a scheduler keep poke_interval >= 10 s: a
    # task re-queued within seconds of its previous report can be failed by the scheduler. (Or
    # leave deferrable=True there: the wait then runs in the triggerer.)
    watch = SpotTerminationSensor(
        task_id="watch_train",
        spot_conn_id="{{ params.spot_conn_id }}",
        watch_task_id="train",
        kinds=["INTERRUPTION", "PREEMPTED"],
        deferrable=False,
        mode="reschedule",
        poke_interval=10,
        timeout=6 * 3600,
    )

    @task.branch(trigger_rule="all_done")
    def choose(notice: dict | None = None) -> list[str]:
        context = get_current_context()
        key, _, attempts = step_attempts(
            context, "train", spot_conn_id=context["params"]["spot_conn_id"]
        )
        context["ti"].xcom_push(key="step_key", value=key)
        if notice and notice.get("terminated"):
            print(f"{notice['kind']} notice for {notice['step_key']}")
        if not attempts:
            raise AirflowFailException(f"step {key} has no attempt: train never submitted it")
        last = attempts[-1]
        outcome = last.outcome.value if last.outcome else None
        if outcome == "SUCCEEDED":
            return ["publish"]
        if last.live or outcome in RESUMABLE:
            print(f"attempt {last.number} is {outcome or last.state.value}: resuming on on-demand")
            return ["resume_on_demand"]
        raise AirflowFailException(
            f"step {key}: attempt {last.number} ended {outcome} ({last.reason}); not resumable"
        )

    resume = SpotStepOperator(
        task_id="resume_on_demand",
        spot_conn_id="{{ params.spot_conn_id }}",
        step_key="{{ ti.xcom_pull(task_ids='choose', key='step_key') }}",
        command=[*TRAIN, "--steps={{ params.steps }}"],
        policy={"preemption_budget": 0, "max_attempts": 4},
        poll_interval=1.0,
    )

    @task(trigger_rule="none_failed_min_one_success")
    def publish(ti=None, params=None) -> dict:
        key, _, attempts = step_attempts(
            get_current_context(), "train", spot_conn_id=params["spot_conn_id"]
        )
        if (
            not attempts
            or attempts[-1].outcome is None
            or attempts[-1].outcome.value != "SUCCEEDED"
        ):
            raise AirflowFailException(f"step {key} did not finish: {attempts[-1:]}")
        summary = ti.xcom_pull(task_ids="resume_on_demand", key="spot_summary") or ti.xcom_pull(
            task_ids="train", key="spot_summary"
        )
        print(f"{summary['step_key']}: {summary['history']}")
        return summary

    decision = choose(watch.output)
    done = publish()
    [train, watch] >> decision >> [resume, done]
    resume >> done
