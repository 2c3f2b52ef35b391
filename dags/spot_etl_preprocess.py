"""ETL preprocessing on spot: a sharded CPU step that checkpoints per shard (example DAG).

The step (``spot_workflows.examples.etl_preprocess``) cleans and standardizes synthetic sensor
shards and folds their statistics into a checkpoint after every shard, so a reclaim costs at most
one shard. The downstream task reads the result from the step's last checkpoint: the checkpoint
URI doubles as the step's output location. Runs on the local backend out of the box::

    airflow dags test spot_etl_preprocess
    airflow dags trigger spot_etl_preprocess --conf '{"spot_conn_id": "google_cloud_default"}'
"""

from __future__ import annotations

import json
from datetime import datetime

from airflow.sdk import DAG, Param, task

from spot_workflows.airflow.operators import SpotStepOperator

with DAG(
    dag_id="spot_etl_preprocess",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["spot-workflows", "example"],
    params={
        "spot_conn_id": Param("spot_local_default", type="string"),
        "shards": Param(20, type="integer", minimum=1),
        "rows": Param(20000, type="integer", minimum=1),
    },
) as dag:
    preprocess = SpotStepOperator(
        task_id="preprocess",
        spot_conn_id="{{ params.spot_conn_id }}",
        command=(
            "python -m spot_workflows.examples.etl_preprocess "
            "--shards {{ params.shards }} --rows {{ params.rows }}"
        ),
        policy={"preemption_budget": 3, "app_error_retries": 1, "capacity_timeout_s": 900},
        step_resources={"vcpus": 2, "memory_mib": 4096},
        poll_interval=1.0,
    )

    @task
    def load(summary: dict) -> dict:
        """Read the step's output (its last checkpoint) and hand the totals downstream."""
        from spot_workflows.runtime.store import CheckpointStore

        store = CheckpointStore(summary["checkpoint_uri"])
        latest = store.latest()
        if latest is None:
            raise ValueError(f"no checkpoint under {summary['checkpoint_uri']}")
        state = json.loads(store.read_file(latest, "state.json"))
        print(f"{state['shard']} shards: {state['totals']}")
        return state["totals"]

    load(preprocess.output)
