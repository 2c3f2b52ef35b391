"""A spot step that waits in its task (``deferrable=False``) with one Airflow retry: the real
Airflow tests SIGKILL its task process mid-step and check that the retry re-attaches to the job.

On ``spot_local_default`` (never reclaims) by default; ``steps`` sets how long it runs (0.03 s
each, a checkpoint every 10)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from spot_workflows.airflow.operators import SpotStepOperator

with DAG(
    dag_id="spot_kill_retry",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["spot-workflows", "test"],
    params={
        "spot_conn_id": Param("spot_local_default", type="string"),
        "steps": Param(600, type="integer", minimum=1),
    },
) as dag:
    SpotStepOperator(
        task_id="step",
        spot_conn_id="{{ params.spot_conn_id }}",
        command=[
            "python",
            "-m",
            "spot_workflows.examples.toy_train",
            "--steps={{ params.steps }}",
            "--every=10",
            "--step-seconds=0.03",
        ],
        policy={"preemption_budget": 2},
        poll_interval=1.0,
        deferrable=False,
        retries=1,
        retry_delay=timedelta(seconds=1),
    )
