"""A long step on spot, watched by the termination sensor; a branch resumes it on on-demand.

``train`` gets one spot attempt (``preemption_budget=0, max_attempts=1``): a reclaim fails it
instead of escalating inside the task, so the DAG decides. ``watch_train`` fires on the step's
interruption warning or preemption (or ends with ``terminated: False`` when the step finished
cleanly); ``choose`` then routes to ``resume_on_demand``, which continues the SAME step (same step
key, so the same ledger and checkpoints) on on-demand from its last checkpoint, or straight to
``publish``. With ``spot_local_demo`` the reclaim happens 3 s in::

    airflow dags test spot_resume_on_termination

The sensor pokes in reschedule mode here because ``airflow dags test`` runs one task at a time;
under a scheduler you may set ``deferrable=True`` so the wait runs in the triggerer.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, task

from spot_workflows.airflow.operators import SpotStepOperator
from spot_workflows.airflow.sensors import SpotTerminationSensor

TRAIN = ["python", "-m", "spot_workflows.examples.toy_train", "--every=25", "--step-seconds=0.01"]

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
    watch = SpotTerminationSensor(
        task_id="watch_train",
        spot_conn_id="{{ params.spot_conn_id }}",
        watch_task_id="train",
        kinds=["INTERRUPTION", "PREEMPTED"],
        deferrable=False,
        mode="reschedule",
        poke_interval=5,
        timeout=6 * 3600,
    )

    @task.branch(trigger_rule="all_done")
    def choose(notice: dict | None) -> list[str]:
        if notice and notice.get("terminated"):
            print(f"{notice['kind']} for {notice['step_key']}: resuming on on-demand")
            return ["resume_on_demand", "publish"]
        return ["publish"]

    resume = SpotStepOperator(
        task_id="resume_on_demand",
        spot_conn_id="{{ params.spot_conn_id }}",
        step_key="{{ ti.xcom_pull(task_ids='watch_train')['step_key'] }}",
        command=[*TRAIN, "--steps={{ params.steps }}"],
        policy={"preemption_budget": 0, "max_attempts": 4},
        poll_interval=1.0,
    )

    @task(trigger_rule="none_failed_min_one_success")
    def publish(ti=None) -> dict:
        summary = ti.xcom_pull(task_ids="resume_on_demand", key="spot_summary") or ti.xcom_pull(
            task_ids="train", key="spot_summary"
        )
        print(f"{summary['step_key']}: {summary['history']}")
        return summary

    decision = choose(watch.output)
    done = publish()
    [train, watch] >> decision >> [resume, done]
    resume >> done
