"""Test DAG: the spot step waits in the task (``deferrable=False``) instead of the triggerer."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from spot_workflows.airflow.operators import SpotStepOperator

with DAG(
    dag_id="spot_test_in_task",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"spot_conn_id": Param("spot_local_default", type="string"), "steps": 300},
) as dag:
    SpotStepOperator(
        task_id="train",
        spot_conn_id="{{ params.spot_conn_id }}",
        command=[
            "python",
            "-m",
            "spot_workflows.examples.toy_train",
            "--steps={{ params.steps }}",
            "--every=25",
            "--step-seconds=0.01",
        ],
        policy={"preemption_budget": 1},
        deferrable=False,
        poll_interval=0.2,
    )
