"""ETL preprocessing on spot: 1M rows normalised, tokenised and feature-hashed into Parquet.

The step (``spot_workflows.examples.etl_shards``) generates its raw dataset (deterministic from the
seed), then two worker processes claim shards (one raw Parquet file each) through the shard
ledger next to the step's checkpoints and commit one Parquet output per shard. When spot is
reclaimed the workers finish or checkpoint their in-flight shard and exit; the operator
resubmits in the same task instance and the next attempt resumes at the next unfinished shard, no
shard processed twice. ``--verify`` compares every committed shard byte for byte with an
uninterrupted run before the step succeeds; ``--export`` copies the outputs to ``output_dir``,
which the downstream task reads. Runs on the local backend out of the box::

    airflow dags test spot_etl_preprocess
    airflow dags trigger spot_etl_preprocess --conf '{"spot_conn_id": "aws_default"}'
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, Param, task

from spot_workflows.airflow.operators import SpotStepOperator

SCRATCH = Path(tempfile.gettempdir()) / "spot-etl-preprocess"

with DAG(
    dag_id="spot_etl_preprocess",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["spot-workflows", "example"],
    params={
        "spot_conn_id": Param("spot_local_default", type="string"),
        "rows": Param(1_000_000, type="integer", minimum=1),
        "rows_per_file": Param(25_000, type="integer", minimum=1),
        "workers": Param(2, type="integer", minimum=1),
        "data_dir": Param(str(SCRATCH / "raw"), type="string"),
        "output_dir": Param(str(SCRATCH / "out"), type="string"),
        # extra seconds per 4096-row batch: slows the step down to watch a reclaim happen
        "delay_s": Param(0.0, type="number", minimum=0),
    },
) as dag:
    preprocess = SpotStepOperator(
        task_id="preprocess",
        spot_conn_id="{{ params.spot_conn_id }}",
        command=(
            "python -m spot_workflows.examples.etl_shards"
            " --data {{ params.data_dir }} --rows {{ params.rows }}"
            " --rows-per-file {{ params.rows_per_file }} --workers {{ params.workers }}"
            " --delay-s {{ params.delay_s }}"
            " --verify --export {{ params.output_dir }}/{{ run_id | replace(':', '_') }}"
        ),
        policy={"preemption_budget": 3, "app_error_retries": 1, "capacity_timeout_s": 900},
        step_resources={"vcpus": 2, "memory_mib": 4096},
        poll_interval=1.0,
    )

    @task
    def load(summary: dict, params: dict | None = None, run_id: str | None = None) -> dict:
        """Read the exported Parquet outputs: every row once, token statistics downstream."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        out = Path(params["output_dir"]) / run_id.replace(":", "_")
        files = sorted(out.glob("part-*.parquet"))
        if not files:
            raise ValueError(f"no outputs under {out}; did the step export them?")
        table = pq.read_table(files, columns=["id", "n_tokens"])
        rows, distinct = table.num_rows, pc.count_distinct(table["id"]).as_py()
        if rows != params["rows"] or distinct != rows:
            raise ValueError(f"expected {params['rows']} rows once each, got {rows} ({distinct})")
        totals = {
            "rows": rows,
            "files": len(files),
            "tokens": pc.sum(table["n_tokens"]).as_py(),
            "attempts": len(summary["attempts"]),
        }
        print(f"loaded {totals}")
        return totals

    load(preprocess.output)
