"""A spot step on a connection with two spot placements (two markets of the local spot cloud):
the real Airflow tests check that it races them, runs in the one with capacity, and records the
other as RACED, with one job doing the work.

On ``spot_pool`` by default (set by the lab: ``zone-a`` has no spot capacity, ``zone-b`` has);
``steps`` sets how long it runs (0.03 s each, a checkpoint every 10)."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from spot_workflows.airflow.operators import SpotStepOperator

with DAG(
    dag_id="spot_pool",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["spot-workflows", "test"],
    params={
        "spot_conn_id": Param("spot_pool", type="string"),
        "steps": Param(150, type="integer", minimum=1),
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
        poll_interval=1.0,
    )
